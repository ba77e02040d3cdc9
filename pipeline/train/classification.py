"""Classification: an encoder with a sequence classification head, one output per label.

The loss is cross-entropy, optionally weighted by inverse class frequency so that a
thin class is not drowned by a thick one; metrics are accuracy and macro-F1 (the
unweighted mean of per-class F1, which a thin class moves as much as a thick one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.train.batching import attention_mask, pad

Example = dict[str, Any]


class ClassificationTask:
    kind = "classification"

    def __init__(self, tokenizer: Any, labels: list[str], max_length: int, class_weights: torch.Tensor | None = None):
        self.tokenizer = tokenizer
        self.labels = labels
        self.index = {label: i for i, label in enumerate(labels)}
        self.max_length = max_length
        self.class_weights = class_weights

    @classmethod
    def for_frames(
        cls, tokenizer: Any, frames: Sequence[pd.DataFrame], train: pd.DataFrame, max_length: int, weighted: bool
    ) -> ClassificationTask:
        """Labels of every split, sorted; weights ``rows / (classes * rows of the class)``
        from the train split when ``weighted`` (1 for a class train lacks)."""
        labels = sorted({str(v) for frame in frames for v in frame["label"]})
        weights = None
        if weighted:
            counts = Counter(str(v) for v in train["label"])
            weights = torch.tensor(
                [len(train) / (len(labels) * counts[label]) if counts[label] else 1.0 for label in labels]
            )
        return cls(tokenizer, labels, max_length, weights)

    def encode(self, frame: pd.DataFrame) -> list[Example]:
        ids = self.tokenizer(list(frame["text"]), truncation=True, max_length=self.max_length)["input_ids"]
        return [
            {"row_id": row_id, "input_ids": seq, "label": self.index[str(label)]}
            for row_id, seq, label in zip(frame["row_id"], ids, frame["label"])
        ]

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        seqs = [e["input_ids"] for e in examples]
        return {
            "input_ids": pad(seqs, self.tokenizer.pad_token_id),
            "attention_mask": attention_mask(seqs),
            "labels": torch.tensor([e["label"] for e in examples]),
        }

    def weight(self, batch: dict[str, torch.Tensor]) -> float:
        """The loss's denominator for ``batch``: its examples, or their class weights."""
        if self.class_weights is None:
            return float(len(batch["labels"]))
        labels = batch["labels"]
        return float(self.class_weights.to(labels.device)[labels].sum())

    def _logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def loss_sum(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = None if self.class_weights is None else self.class_weights.to(batch["labels"].device)
        return F.cross_entropy(self._logits(model, batch), batch["labels"], weight=weights, reduction="sum")

    @torch.no_grad()
    def evaluate(self, model: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Loss, accuracy and macro-F1 over ``batches`` (on the model's device)."""
        loss, weight, predicted, truth = 0.0, 0.0, [], []
        weights = None
        for batch in batches:
            logits = self._logits(model, batch)
            if weights is None and self.class_weights is not None:
                weights = self.class_weights.to(logits.device)
            loss += float(F.cross_entropy(logits, batch["labels"], weight=weights, reduction="sum"))
            weight += self.weight(batch)
            predicted.append(logits.argmax(-1).cpu().numpy())
            truth.append(batch["labels"].cpu().numpy())
        y_pred, y_true = np.concatenate(predicted), np.concatenate(truth)
        return {"loss": loss / weight, "accuracy": float((y_pred == y_true).mean()), "macro_f1": macro_f1(y_true, y_pred)}


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over the classes that occur in ``y_true`` or ``y_pred`` (as scikit-learn's
    ``f1_score(average="macro")``)."""
    scores = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_pred == c) & (y_true == c))
        denominator = np.sum(y_pred == c) + np.sum(y_true == c)
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))
