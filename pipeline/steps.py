"""The units of work the curate flow schedules, each from paths to paths.

Tasks pass shard paths, never data frames: a path pickles in microseconds, a frame
in seconds, and a path means the same thing on a Dask worker as in the flow process.
Every output is written atomically (:mod:`pipeline.files`), so a run killed mid-write
leaves no half file behind for the resumed run to pick up. Outputs live in the run's
work folder, one sub-folder per stage named by the settings that decide its outputs
(see :mod:`pipeline.fingerprint`), so a resumed run finds its own files and a changed
input or config never reads stale ones.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import progress
from pipeline.errors import PipelineError
from pipeline.files import read_arrow, write_arrow, write_atomically, write_table
from pipeline.inputs import DatasetConfig
from pipeline.readers import Reader
from pipeline.schema import ROW_ID, DatasetInfo
from pipeline.stages import registry
from pipeline.stages.base import Stage, StageContext, StageOutput, stats_of
from pipeline.stages.registry import stage_class


@dataclass(frozen=True)
class Shard:
    """A shard of rows: the Parquet file at ``path``, less the rows whose ids are in
    the files ``without`` (removed rows, as a stage that only removes rows writes them).

    Why ``without``: a stage that only removes rows (language, quality, the dedups)
    would otherwise write a copy of the rest, 400 MB per stage at a million rows; it
    passes on the shard it read with its removed rows added here instead, and the
    next reader leaves them out (:meth:`read`)."""

    path: str
    rows: int
    without: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def files(self) -> list[str]:
        return [self.path, *self.without]

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The shard's rows (only ``columns``, when given)."""
        wanted = None if columns is None else list(dict.fromkeys([*columns, ROW_ID] if self.without else columns))
        table = pq.read_table(self.path, columns=wanted)
        if not self.without:
            return table
        gone = pa.chunked_array([pq.read_table(p, columns=[ROW_ID]).column(ROW_ID) for p in self.without])
        table = table.filter(pc.invert(pc.is_in(table.column(ROW_ID), value_set=gone.combine_chunks())))
        return table.select(columns) if columns is not None else table


@dataclass
class Ingested:
    shards: list[Shard]
    kind: str
    roles: tuple[str, ...]
    rejected: Shard | None = None
    """The bad records skipped under ``on_bad_record: skip``, as removed rows (see
    :mod:`pipeline.readers.bad_records`); None when the dataset does not skip."""
    rejected_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.kind, self.roles)


@dataclass
class Applied:
    """One stage's output for one shard."""

    kept: Shard
    removed: str | None
    scores: str | None
    rows_in: int
    changed: int
    seconds: float
    counters: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    """Removed rows per reason."""


SHARD_COMPRESSION = "zstd"
"""Compression of the work folder's row shards (ingested and kept). Each stage keeps a
copy of the rows for resuming; with Parquet's default (snappy) a million rows of
English text took 600 MB per stage, zstd about a third less for the same CPU. Published
files are written anew, with the defaults, from the rows read back, so their bytes do
not depend on this."""


def _write_shard(table: pa.Table, path: Path) -> None:
    write_atomically(path, lambda tmp: pq.write_table(table, tmp, compression=SHARD_COMPRESSION))


def ingest(dataset: dict[str, Any], shard_rows: int, work_dir: str) -> Ingested:
    """Read the inputs into canonical shards under ``work_dir/ingest``.

    ``dataset`` is a ``DatasetConfig`` as a dict (Prefect parameters must be plain
    data). Duplicate row ids across all inputs are an error: the ledger could not
    tell the rows apart.
    """
    out = Path(work_dir) / "ingest"
    reader = Reader(DatasetConfig.model_validate(dataset), shard_rows, spill_dir=out)
    shards, ids = [], []
    # Each shard is written on a thread while the next is read: reading JSON is Python
    # and holds the GIL, compressing and writing Parquet does not. At most one shard
    # waits to be written, so memory stays at two shards.
    with ThreadPoolExecutor(1) as writer:
        pending: Future[None] | None = None
        for i, table in enumerate(reader.shards()):
            path = out / f"shard-{i:05d}.parquet"
            if pending is not None:
                pending.result()
            pending = writer.submit(_write_shard, table, path)
            shards.append(Shard(str(path), table.num_rows))
            # a copy: the table may be a view of a spilled file (readers), kept mapped by a view
            ids.append(pc.take(table.column(ROW_ID), pa.array(np.arange(table.num_rows))))
        if pending is not None:
            pending.result()
    if not shards:
        bad = len(reader.rejects.rows)
        why = f"all {bad:,} of their records are bad ({reader.rejects.reasons()})" if bad else "the inputs hold no rows"
        raise PipelineError(f"dataset {dataset['name']}: {why} ({', '.join(dataset['inputs'])})")
    rejected = None
    if reader.skip_bad:
        table = reader.rejects.table()
        write_table(table, out / "rejected.parquet")
        rejected = Shard(str(out / "rejected.parquet"), table.num_rows)
        ids.append(table.column(ROW_ID))
    all_ids = pa.chunked_array([c for ch in ids for c in ch.chunks], pa.string())
    counts = pc.value_counts(all_ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise PipelineError(
            f"dataset {dataset['name']}: id {dup[0]['values'].as_py()!r} occurs {dup[0]['counts'].as_py()} times "
            f"({len(dup)} duplicated ids); row ids must be unique (set columns.id, or drop the id column)"
        )
    info = reader.info
    return Ingested(shards, info.kind, info.roles, rejected, reader.rejects.reasons() if rejected else {})


def make_stage(name: str, config: dict[str, Any], info: DatasetInfo) -> Stage:
    cls = stage_class(name)
    return cls(cls.config_model.model_validate(config), info)


def preflight(dataset: DatasetConfig, stages: Any, info: DatasetInfo, context: StageContext) -> None:
    """Fail now, with the stage's own error, on what would fail a stage mid-run.

    Run before Prefect starts (``python -m pipeline run``), so a missing model, thesaurus
    or file costs seconds, not the minute of a server start and the stages before it.
    For each stage that applies to the dataset: every file it reads
    (:meth:`Stage.reads`) must exist, and its ``preflight()`` method, where it has one,
    runs: a stage loads what it needs there (a model, a tokenizer, WordNet) or checks
    that it can, and raises :class:`PipelineError`.
    """
    for cls in registry.stages():
        settings = getattr(stages, cls.name)
        stage = cls(settings, info)
        if not stage.applies():
            continue
        for read in cls.reads(settings, context):
            if not Path(read.path).exists():
                raise PipelineError(f"dataset {dataset.name}: stages.{cls.name} reads {read.path}, which does not exist")
        check = getattr(stage, "preflight", None)
        if callable(check):
            check()


def summarize(name: str, config: dict[str, Any], ingested: Ingested, shard: Shard, out_dir: str) -> str:
    """A global stage's per-shard summary, written next to the stage's outputs."""
    stage = make_stage(name, config, ingested.info)
    path = Path(out_dir) / "summaries" / f"{shard.name}.arrow"
    with progress.in_shard(name, "summarize", shard.name):
        summary = stage.summarize(shard.read())
    write_arrow(summary, path)
    return str(path)


@dataclass(frozen=True)
class Decided:
    state: str
    stats: dict[str, Any]
    """Figures of the decision (see ``stages.base.with_stats``)."""


def decide(name: str, config: dict[str, Any], ingested: Ingested, summaries: list[str], out_dir: str) -> Decided:
    """A global stage's decision over all shard summaries, in shard order.

    The summaries are deleted once the state is written: nothing reads them again
    (:func:`decided` finds the state on a later run), and they are the largest files of
    the work folder (near_dedup's shingles and split's texts: 1.5 and 0.9 times the
    input at a million rows of the scale benchmark)."""
    stage = make_stage(name, config, ingested.info)
    state = stage.decide([read_arrow(p) for p in summaries])
    path = _state_path(out_dir)
    write_table(state, path)
    shutil.rmtree(Path(out_dir) / "summaries", ignore_errors=True)
    return Decided(str(path), stats_of(state))


def decided(out_dir: str) -> Decided | None:
    """The decision a global stage has already written in ``out_dir`` (its step key's
    folder), or None. The state file is written atomically, so one that exists is
    whole, and it carries the decision's figures in its metadata."""
    path = _state_path(out_dir)
    if not path.exists():
        return None
    return Decided(str(path), stats_of(pq.read_schema(path).empty_table()))


def _state_path(out_dir: str) -> Path:
    return Path(out_dir) / "state.parquet"


def apply(
    name: str, config: dict[str, Any], ingested: Ingested, shard: Shard, state: str | None, out_dir: str
) -> Applied:
    """Run a stage on one shard; kept rows, removed rows and scores go to ``out_dir``.

    A shard the stage left as it was, or only removed rows from (no row changed or
    added, the same columns), is not copied: its result names the shard it read, with
    the removed rows in ``Shard.without``; that file stays in the work folder as long
    as a result names it (:func:`pipeline.checkpoint.drop_superseded`)."""
    started = time.perf_counter()
    stage = make_stage(name, config, ingested.info)
    table = shard.read()
    with progress.in_shard(name, "apply", shard.name):
        if stage.is_global:
            result = stage.apply(table, pq.read_table(state) if state else None)
        else:
            result = apply_in_slices(stage, table)
    _check_columns(stage, table.schema, result.kept.schema)
    out = Path(out_dir)
    removed_path = scores_path = None
    if result.removed.num_rows:
        removed_path = out / "removed" / f"{shard.name}.parquet"
        write_table(result.removed, removed_path)
    if _only_removed(table, result):
        kept = Shard(shard.path, result.kept.num_rows, shard.without + ((str(removed_path),) if removed_path else ()))
    else:
        kept = Shard(str(out / "kept" / f"{shard.name}.parquet"), result.kept.num_rows)
        _write_shard(result.kept, Path(kept.path))
    if result.scores is not None:
        scores_path = out / "scores" / f"{shard.name}.parquet"
        write_table(result.scores, scores_path)
    reasons = {r["values"]: r["counts"] for r in pc.value_counts(result.removed.column("reason")).to_pylist()}
    return Applied(
        kept=kept,
        removed=str(removed_path) if removed_path else None,
        scores=str(scores_path) if scores_path else None,
        rows_in=table.num_rows,
        changed=result.changed,
        seconds=time.perf_counter() - started,
        counters={k: int(v) for k, v in result.counters.items()},
        reasons=reasons,
    )


def _only_removed(table: pa.Table, result: StageOutput) -> bool:
    """Whether the stage's kept rows are the rows it read, less those it removed, each
    as it was (no row changed, no column added): then the shard it read is passed on,
    with the removed rows left out, and not copied."""
    if not result.kept.schema.equals(table.schema, check_metadata=True):
        return False
    if result.kept.num_rows + result.removed.num_rows != table.num_rows:
        return False
    if not result.removed.num_rows:
        return result.kept.equals(table)
    gone = pc.is_in(table.column(ROW_ID), value_set=result.removed.column(ROW_ID).combine_chunks())
    return result.kept.equals(table.filter(pc.invert(gone)))


SLICE_ROWS = 8_192
"""Rows a row-local stage is handed at a time by :func:`apply_in_slices`."""


def apply_in_slices(stage: Stage, table: pa.Table, rows: int = SLICE_ROWS) -> StageOutput:
    """A row-local stage's output for ``table``, computed ``rows`` rows at a time.

    Why: a row stage's temporaries are many times its input (``quality``'s statistics
    peaked at 11x a 50,000-row shard of English text, 620 MB), and the executor runs
    one shard per core, so they set the run's peak memory. A row-local stage treats
    each row alone, so its output for the whole shard is its outputs for the slices,
    concatenated in order; slices bound the temporaries whatever the shard size."""
    if table.num_rows <= rows:
        return stage.apply(table)
    outputs = [stage.apply(table.slice(lo, rows)) for lo in range(0, table.num_rows, rows)]
    scores = [o.scores for o in outputs if o.scores is not None]
    return StageOutput(
        kept=pa.concat_tables([o.kept for o in outputs]),
        removed=pa.concat_tables([o.removed for o in outputs]),
        changed=sum(o.changed for o in outputs),
        counters=sum((o.counters for o in outputs), Counter()),
        scores=pa.concat_tables(scores) if scores else None,
    )


def _check_columns(stage: Stage, before: pa.Schema, after: pa.Schema) -> None:
    """A stage keeps every column it was given and adds only those it declares
    (``Stage.adds_columns``): a column lost here would be data lost without a trace."""
    lost = [name for name in before.names if name not in after.names]
    added = [name for name in after.names if name not in before.names and name not in stage.adds_columns]
    if lost or added:
        raise RuntimeError(
            f"stage {stage.name} " + ("lost the columns " + ", ".join(lost) if lost else "")
            + (" and " if lost and added else "")
            + ("added the undeclared columns " + ", ".join(added) if added else "")
        )
