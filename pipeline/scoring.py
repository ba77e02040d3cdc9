"""How hard a response is for a small causal LM: the scores behind the ``select`` stage.

Instruction-following difficulty (IFD, Li et al. 2024, "Cherry LLM"): a response the
model predicts easily on its own teaches little, and a prompt that does not make the
response easier to predict is a poor instruction for it. For each row the model gives

* ``loss``: mean cross-entropy of the response tokens given the prompt (rendered with
  the model's chat template), and ``perplexity = exp(loss)``;
* ``loss_alone``: the same for the response without the prompt;
* ``ifd = perplexity / perplexity_alone``. Below 1 the prompt helps; the higher it is
  (while below 1), the harder the instruction is to follow.

Rows are sorted by length and packed into batches of at most ``batch_tokens`` padded
tokens, so short rows are not padded to the longest one. Scores are cached on disk by
a hash of the model, the prompt and the response (:class:`ScoreCache`): the ``select``
stage re-runs when its threshold changes, and then scores nothing again.

Nothing here knows about stages; torch and transformers are imported when a model is
loaded, not when this module is.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.files import write_table

SCORE_COLUMNS = ("loss", "loss_alone", "tokens")


def row_key(model: str, messages: list[dict[str, str]], response: str) -> str:
    """The cache key of one row: sha256 of the model's name, the prompt turns and the response."""
    payload = json.dumps([model, messages, response], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class ScoreCache:
    """Scores by row key, in a folder of Parquet files (one per write, so shards scored
    in parallel threads or processes never write the same file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._known: dict[str, tuple[float, float, int]] | None = None

    def _load(self) -> dict[str, tuple[float, float, int]]:
        if self._known is None:
            self._known = {}
            for path in sorted(self.folder.glob("*.parquet")) if self.folder.is_dir() else []:
                t = pq.read_table(path)
                for key, *values in zip(*(t.column(c).to_pylist() for c in ("key", *SCORE_COLUMNS))):
                    self._known[key] = tuple(values)  # type: ignore[assignment]
        return self._known

    def get(self, keys: list[str]) -> list[tuple[float, float, int] | None]:
        known = self._load()
        return [known.get(k) for k in keys]

    def put(self, keys: list[str], scores: list[tuple[float, float, int]]) -> None:
        if not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        columns = {"key": pa.array(keys, pa.string())}
        for i, name in enumerate(SCORE_COLUMNS):
            columns[name] = pa.array([s[i] for s in scores], pa.int64() if name == "tokens" else pa.float64())
        write_table(pa.table(columns), self.folder / f"{uuid.uuid4().hex}.parquet")
        self._load().update(zip(keys, scores))


@dataclass
class Encoded:
    ids: list[int]
    """Prompt and response tokens (or the response alone)."""
    start: int
    """Where the response starts in ``ids``."""


class ResponseScorer:
    """Scores responses with one causal LM on one device."""

    def __init__(self, model_path: str, device: str = "auto", batch_tokens: int = 8192, max_tokens: int = 1024):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        dtype = torch.float32
        if self.device.startswith("cuda") and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        self.head = self.model.get_output_embeddings()
        self.batch_tokens = batch_tokens
        self.max_tokens = max_tokens
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _encode(self, messages: list[dict[str, str]], response: str) -> tuple[Encoded, Encoded]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "\n\n".join(m["content"] for m in messages) + "\n\n"
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tok(response, add_special_tokens=False)["input_ids"][: self.max_tokens - 1]
        room = self.max_tokens - len(response_ids)
        prompt_ids = prompt_ids[-room:] if room > 0 else []  # a long prompt loses its beginning
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        # alone, the first response token is predicted from BOS (or not scored at all without one)
        return Encoded(prompt_ids + response_ids, len(prompt_ids)), Encoded(bos + response_ids, len(bos))

    def _losses(self, items: list[Encoded]) -> np.ndarray:
        """Mean cross-entropy of each item's response tokens (nan when it has none)."""
        import torch

        out = np.full(len(items), np.nan)
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
        batch: list[int] = []
        batches = []
        for i in order:
            width = len(items[i].ids)
            if batch and width * (len(batch) + 1) > self.batch_tokens:
                batches.append(batch)
                batch = []
            batch.append(i)
        if batch:
            batches.append(batch)
        for batch in batches:
            width = max(len(items[i].ids) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, i in enumerate(batch):
                item = items[i]
                n = len(item.ids)
                ids[row, :n] = torch.tensor(item.ids)
                mask[row, :n] = 1
                labels[row, max(item.start, 1) : n] = ids[row, max(item.start, 1) : n]
            with torch.inference_mode():
                # logits of the scored positions only: a full (batch, length, vocabulary)
                # tensor is gigabytes for a 49k-token vocabulary
                hidden = self.model.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))[0]
                target = labels[:, 1:].to(self.device)
                scored = target != -100
                token_loss = self._token_losses(hidden[:, :-1][scored], target[scored])
                row_of = torch.nonzero(scored)[:, 0]
                sums = torch.zeros(len(batch), device=self.device).index_add_(0, row_of, token_loss)
                counted = scored.sum(1)
            mean = (sums / counted.clamp(min=1)).cpu().numpy()
            for row, i in enumerate(batch):
                if counted[row] > 0:
                    out[i] = float(mean[row])
        return out

    def _token_losses(self, hidden: Any, target: Any) -> Any:
        """Cross-entropy of each scored position, its logits made 1,024 positions at a time."""
        import torch

        losses = [
            torch.nn.functional.cross_entropy(self.head(hidden[i : i + 1024]).float(), target[i : i + 1024], reduction="none")
            for i in range(0, len(hidden), 1024)
        ]
        return torch.cat(losses) if losses else torch.zeros(0, device=self.device)

    def score(self, rows: list[tuple[list[dict[str, str]], str]]) -> list[tuple[float, float, int]]:
        """(loss, loss_alone, response tokens) of each (prompt turns, response) row."""
        pairs = [self._encode(messages, response) for messages, response in rows]
        given = self._losses([p[0] for p in pairs])
        alone = self._losses([p[1] for p in pairs])
        return [
            (float(g), float(a), len(p[0].ids) - p[0].start) for g, a, p in zip(given, alone, pairs)
        ]


def perplexities(scores: pa.Table) -> dict[str, pa.Array]:
    """``perplexity``, ``perplexity_alone`` and ``ifd`` from the ``loss`` columns."""
    ppl = pc.exp(scores.column("loss"))
    alone = pc.exp(scores.column("loss_alone"))
    return {"perplexity": ppl, "perplexity_alone": alone, "ifd": pc.divide(ppl, alone)}
