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
from pipeline.report import build_report
from pipeline.schema import ORIGIN, ORIGINAL, ROW_ID, SPLIT, DatasetInfo
from pipeline.files import file_sha256, write_table
from pipeline.steps import Applied, Shard
from pipeline.store import Store

LEDGER_COLUMNS = (ROW_ID, "stage", "reason", "detail")
WRITERS = 4
"""Threads writing a version's Parquet files."""
PACKAGES = ("pyarrow", "pandas", "numpy", "ftfy", "langdetect", "datasketch", "pydantic", "prefect", "datasets")


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


def _ledger(record: RunRecord) -> pa.Table:
    parts = []
    for stage, paths in record.removed.items():
        table = _concat(paths)
        if table is None:
            continue
        parts.append(table.add_column(1, "stage", pa.array([stage] * table.num_rows, pa.string())))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in LEDGER_COLUMNS})
    removed = pa.concat_tables(parts, promote_options="permissive")
    order = list(LEDGER_COLUMNS) + [c for c in removed.column_names if c not in LEDGER_COLUMNS]
    return removed.select(order)


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


def _split_tables(final: list[Shard]) -> dict[str, list[pa.Table]]:
    """The kept rows per split (all ``train`` without a ``split`` column), shard order
    kept within each split."""
    parts: dict[str, list[pa.Table]] = {}
    for shard in final:
        table = pq.read_table(shard.path)
        if table.num_rows == 0:
            continue
        if SPLIT not in table.column_names:
            parts.setdefault("train", []).append(table)
            continue
        for split in pc.unique(table.column(SPLIT)).to_pylist():
            parts.setdefault(split, []).append(table.filter(pc.equal(table.column(SPLIT), split)))
    order = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return dict(sorted(parts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _original_ids(tables: list[pa.Table]) -> pa.ChunkedArray:
    """Row ids of the rows read from the inputs (not augmented or rehearsal rows)."""
    chunks = []
    for table in tables:
        if ORIGIN in table.column_names:
            table = table.filter(pc.equal(table.column(ORIGIN), ORIGINAL))
        chunks += table.column(ROW_ID).chunks
    return pa.chunked_array(chunks, pa.string())


def write_version(record: RunRecord, staging: Path) -> dict[str, Any]:
    """Fill ``staging`` with data, reports and card; return the manifest to publish.

    The files are written by a few threads at once: Parquet encoding releases the
    GIL, and for a large version it is most of publishing's time.
    """
    data = staging / "data"
    data.mkdir()
    reports = staging / "reports"
    splits = _split_tables(record.final) or {"train": [pq.read_table(record.final[0].path)]}
    every = [t for tables in splits.values() for t in tables]
    kept_ids = _original_ids(every)
    ledger = _ledger(record)
    check_ledger(record.input_rows, kept_ids, ledger.column(ROW_ID))
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="publish") as pool:
        data_written = {}
        for split, tables in splits.items():
            for i, table in enumerate(tables):
                path = data / data_file_name(split, record.fingerprint, i, len(tables))
                data_written[f"data/{path.name}"] = pool.submit(_write_hashed, table, path)
        reports_written = [
            pool.submit(write_table, ledger, reports / "removed.parquet"),
            pool.submit(write_table, _stages_table(record.stages), reports / "stages.parquet"),
        ]
        for report, paths in record.scores.items():
            table = _concat(paths)
            if table is None:
                continue
            if report in record.report_order:
                table = table.sort_by([(record.report_order[report], "ascending"), (ROW_ID, "ascending")])
            reports_written.append(pool.submit(write_table, table, reports / f"{report}.parquet"))
        data_files = {name: future.result() for name, future in data_written.items()}
        for future in reports_written:
            future.result()
    origins: Counter[str] = Counter()
    for table in every:
        if ORIGIN in table.column_names:
            origins.update({v["values"]: v["counts"] for v in pc.value_counts(table.column(ORIGIN)).to_pylist()})
        else:
            origins[ORIGINAL] += table.num_rows
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
            "kept_rows": len(kept_ids),
            "removed_rows": ledger.num_rows,
            "splits": {split: sum(t.num_rows for t in tables) for split, tables in splits.items()},
            "origins": dict(sorted(origins.items())),
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
