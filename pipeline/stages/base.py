"""The stage contract: every stage, row-local or global, is the same three steps.

A stage gets one shard (a ``pyarrow.Table`` in the canonical schema, see
``pipeline.schema``) and returns the rows it keeps, the rows it removes with a reason,
and counters. Global stages (exact dedup, later near-dedup and label errors) cannot
decide from one shard alone, so the contract splits them in three:

``summarize(shard)``  -> a small per-shard table (hashes, signatures, statistics)
``decide(summaries)`` -> one global state table, computed once
``apply(shard, state)`` -> :class:`StageOutput`

Row-local stages only implement ``apply``. The orchestrator (``flows.curate``) calls
the steps as Prefect tasks over shard paths, so the same code runs in-process or on a
Dask cluster.

Scoring and deciding stay separate: a stage that scores rows returns the scores of
*every* row in ``StageOutput.scores``, and a threshold picks from them, so a threshold
can be tuned from the report without re-running the stage.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.inputs import DatasetConfig
from pipeline.schema import CHANGED_BY, ROW_ID, DatasetInfo
from pipeline.settings import StrictModel
from pipeline.store import Store


class StageConfig(StrictModel):
    """Settings every stage shares."""

    enabled: bool = True


@dataclass(frozen=True)
class StageContext:
    """What a stage may know of its run besides its settings, when it names the files it
    reads (:meth:`Stage.reads`): the dataset, and the dataset's store."""

    dataset: DatasetConfig
    store: Store


@dataclass(frozen=True)
class Read:
    """A file a stage reads besides its shards.

    Its sha256 goes into the version's fingerprint and into the stage's step key, so a
    changed file makes a new version and re-runs the stage (and those after it), while
    the stages before it come from the cache.
    """

    role: str
    """What the file is to the run, as the manifest names it: ``rehearsal`` (general
    data mixed in), ``review`` (a person's label decisions)."""
    path: Path
    label: str
    """The name the manifest gives the file (a path relative to its glob's root)."""
    data: bool = True
    """Rows the run reads, listed with the dataset's own among the manifest's
    ``inputs``. Otherwise (decisions, lists) the file is recorded under its ``role``."""
    setting: str | None = None
    """The stage setting that receives the file's path at run time, if the stage
    cannot find it from its settings alone."""
    detail: dict[str, Any] = field(default_factory=dict)
    """Figures recorded with a non-data file in the manifest (e.g. decisions: 12)."""


@dataclass
class StageOutput:
    """What one stage did to one shard."""

    kept: pa.Table
    removed: pa.Table
    """Removed rows in the input schema plus ``reason`` and ``detail`` (JSON) columns."""
    changed: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    """Named counts: removal reasons, rule hits, fills. Summed across shards."""
    scores: pa.Table | None = None
    """``row_id`` plus one column per score, for every input row (kept or not)."""


class Stage(ABC):
    """Base class of all stages; subclasses set ``name``, ``config_model`` and ``kinds``."""

    name: ClassVar[str]
    config_model: ClassVar[type[StageConfig]]
    kinds: ClassVar[frozenset[str]] = frozenset({"text", "classification", "instruction"})
    is_global: ClassVar[bool] = False
    """True when the stage needs ``summarize`` and ``decide`` before ``apply``."""
    report_name: ClassVar[str | None] = None
    """File name (without ``.parquet``) of the per-row report in ``reports/``; the
    stage's name when unset."""
    report_sort_by: ClassVar[str | None] = None
    """Column the published report is sorted by, ascending (worst first), so the rows
    to review are at its top; input order when unset."""
    adds_columns: ClassVar[tuple[str, ...]] = ()
    """Columns the stage may add to the rows it keeps. Any other change to the
    columns is a bug that would lose data, and :func:`pipeline.steps.apply` refuses it."""

    def __init__(self, config: StageConfig, info: DatasetInfo) -> None:
        self.config = config
        self.info = info

    @classmethod
    def reads(cls, config: StageConfig, context: StageContext) -> list[Read]:
        """The files the stage reads besides its shards, with ``config`` enabled.

        Called before the run starts, so everything that decides the stage's output is
        hashed into the fingerprint and the step keys (see :mod:`pipeline.fingerprint`).
        """
        return []

    def applies(self) -> bool:
        return self.config.enabled and self.info.kind in self.kinds

    def summarize(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError(f"stage {self.name} has no summarize step")

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        raise NotImplementedError(f"stage {self.name} has no decide step")

    @abstractmethod
    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        """Process one shard; ``state`` is ``decide``'s result for global stages."""


def split_rows(
    table: pa.Table,
    drop: np.ndarray,
    reasons: list[str] | np.ndarray,
    details: list[dict[str, Any]] | None = None,
) -> tuple[pa.Table, pa.Table, Counter[str]]:
    """Split ``table`` by the boolean mask ``drop``.

    ``reasons`` and ``details`` are given for the dropped rows only, in row order. The
    returned removed table carries them as ``reason`` and ``detail`` (a JSON string),
    and the counter counts rows per reason.
    """
    drop = np.asarray(drop, dtype=bool)
    kept = table.filter(pa.array(~drop))
    removed = table.filter(pa.array(drop))
    reasons = [str(r) for r in reasons]
    if len(reasons) != removed.num_rows:
        raise ValueError(f"{len(reasons)} reasons for {removed.num_rows} removed rows")
    details = details if details is not None else [{}] * removed.num_rows
    removed = removed.append_column("reason", pa.array(reasons, pa.string()))
    removed = removed.append_column(
        "detail", pa.array([json.dumps(d, sort_keys=True, default=str) for d in details], pa.string())
    )
    return kept, removed, Counter(reasons)


def mark_changed(table: pa.Table, changed: np.ndarray | pa.Array, stage: str) -> tuple[pa.Table, int]:
    """Append ``stage`` to the ``changed_by`` column of the rows flagged in ``changed``."""
    changed = pa.array(np.asarray(changed, dtype=bool)) if not isinstance(changed, pa.Array) else changed
    n = pc.sum(changed).as_py() or 0
    if n == 0:
        return table, 0
    old = table.column(CHANGED_BY)
    appended = pc.if_else(
        pc.equal(old, ""), pa.scalar(stage), pc.binary_join_element_wise(old, pa.scalar(stage), ",")
    )
    new = pc.if_else(changed, appended, old)
    idx = table.schema.get_field_index(CHANGED_BY)
    return table.set_column(idx, CHANGED_BY, new), int(n)


STATS_KEY = b"pipeline.stats"


def with_stats(state: pa.Table, stats: dict[str, Any]) -> pa.Table:
    """Attach a global decision's figures (bands chosen, clusters found...) to its state.

    They travel in the state file's schema metadata and end up in the stage's row of
    ``reports/stages.parquet`` and in the manifest.
    """
    return state.replace_schema_metadata({STATS_KEY: json.dumps(stats, sort_keys=True, default=str)})


def state_rows(ids: pa.ChunkedArray | pa.Array, state: pa.Table, stage: str) -> pa.Table:
    """The rows of a global stage's ``state`` (one row per input row, a ``row_id``
    column) for the rows ``ids`` of a shard, in their order.

    A shard's rows are one run of the state (``decide`` joins the summaries in shard
    order), found from its first row id in milliseconds; a hash lookup of every row id
    would take a quarter of a second a shard against a million-row state. Rows in any
    other order are looked up one by one.
    """
    if len(ids):
        start = pc.index(state.column(ROW_ID), ids[0]).as_py()
        run = state.slice(max(start, 0), len(ids))
        if start >= 0 and run.num_rows == len(ids) and pc.all(pc.equal(run.column(ROW_ID), ids)).as_py():
            return run
    at = pc.index_in(ids, value_set=state.column(ROW_ID))
    if at.null_count:
        raise ValueError(f"{stage}.apply: {at.null_count} rows are not in the state from decide()")
    return state.take(at)


def stats_of(state: pa.Table) -> dict[str, Any]:
    raw = (state.schema.metadata or {}).get(STATS_KEY)
    return json.loads(raw) if raw else {}


def no_removals(table: pa.Table) -> pa.Table:
    """An empty removed table with the right schema."""
    empty = table.slice(0, 0)
    empty = empty.append_column("reason", pa.array([], pa.string()))
    return empty.append_column("detail", pa.array([], pa.string()))
