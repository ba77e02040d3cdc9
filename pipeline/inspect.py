"""Read published versions back: list them, show why rows left, compare two of them.

A version folder already holds everything a person asks after a run (the manifest,
the kept rows, the ledger of removed rows), but answering "what did v0007 drop, and
what changed since v0006?" meant writing pandas by hand. These functions answer it
from the files alone, without Prefect or the config that made the version, and
return plain data: the CLI prints it as tables or JSON, and tests assert on it.

A version is named ``DATASET/vNNNN`` or ``DATASET`` (its latest) under a store root,
or by the path of its folder, so versions in different output folders compare too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.schema import CHANGED_BY, ROW_ID
from pipeline.store import MANIFEST, Store

CHANGED = "changed"
"""The reason ``show`` gives a kept row that a stage rewrote (the ledger's reasons are
for removed rows only)."""

_VERSION_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)(?:/v(\d+))?/?$")
"""``DATASET`` or ``DATASET/vNNNN``; dataset names follow ``DatasetConfig.name``."""


@dataclass(frozen=True)
class VersionRef:
    """One published version folder and what its manifest says it is."""

    dataset: str
    version: str
    path: Path
    manifest: dict[str, Any] = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.version}"


@dataclass
class VersionSummary:
    """A row of ``versions``: a version and how it differs from the one before it."""

    dataset: str
    version: str
    latest: bool
    created: str
    splits: dict[str, int]
    config_hash: str
    rows_added: int | None
    """Kept row ids not kept by the previous version; None for a dataset's first."""
    rows_removed: int | None
    config_changed: bool | None
    path: str


@dataclass
class ShowResult:
    """Removed and rewritten rows of a version that match the filters."""

    version: str
    path: str
    total: int
    """All matching rows, not only the ``rows`` listed."""
    rows: list[dict[str, Any]]


@dataclass
class RowMove:
    """A row kept by one version and not the other, and why the other let it go."""

    row_id: str
    stage: str | None
    """The stage that removed it in the other version; None when the other version's
    inputs did not hold it at all."""
    reason: str | None


@dataclass
class DiffResult:
    """What separates version ``a`` from version ``b`` (``b`` is the newer one by intent)."""

    a: str
    b: str
    kept_rows: tuple[int, int]
    added: list[RowMove]
    removed: list[RowMove]
    changed: list[dict[str, Any]]
    """``{"row_id", "columns"}``: kept by both with different content in ``columns``."""
    config: list[dict[str, Any]]
    """``{"key", "old", "new"}`` per dotted config key that differs; a key missing on
    one side has no ``old`` / ``new``."""
    stages: list[dict[str, Any]]
    """``{"stage", "a", "b"}``: rows each version removed in the stage."""


# ---- resolving names -------------------------------------------------------------


def resolve_version(spec: str, root: Path | None) -> VersionRef:
    """A version from a folder path, ``DATASET/vNNNN`` or ``DATASET`` (its latest).

    An existing folder wins over a name, so ``out/reviews/v0003`` works from anywhere
    and needs no store root; a dataset folder given as a path means its latest.
    """
    path = Path(spec)
    if path.is_dir():
        return _from_folder(path)
    match = _VERSION_SPEC.match(spec)
    if match is None:
        raise PipelineError(f"{spec}: no such folder, and not a version name (DATASET or DATASET/vNNNN)")
    if root is None:
        raise PipelineError(f"{spec} is not a folder; to name a version DATASET/vNNNN, pass --output DIR")
    dataset, number = match.groups()
    store = dataset_store(root, dataset)
    if number is None:
        return load_version(store.dir / store.versions()[-1])
    version = f"v{int(number):04d}"  # v7 and v0007 name the same folder
    if version not in store.versions():
        raise PipelineError(f"unknown version {spec} in {root} (versions: {', '.join(store.versions())})")
    return load_version(store.dir / version)


def _from_folder(path: Path) -> VersionRef:
    """A version folder, or a dataset folder standing for its latest version."""
    versions = Store(path.parent, path.name).versions()
    if versions and not (path / MANIFEST).is_file():
        return load_version(path / versions[-1])
    return load_version(path)


def load_version(path: Path) -> VersionRef:
    """The version published in ``path``; refuses a folder without a manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} is not a version folder (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path / MANIFEST} cannot be read: {exc}") from exc
    return VersionRef(manifest["dataset"], manifest["version"], path, manifest)


def datasets_in(root: Path) -> list[str]:
    """Datasets with at least one published version under ``root``, by name."""
    if not root.is_dir():
        raise PipelineError(f"store {root} not found: nothing was published there")
    names = (p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(n for n in names if Store(root, n).versions())


def dataset_store(root: Path, dataset: str) -> Store:
    """The store of ``dataset``, refusing a name with no published version."""
    store = Store(root, dataset)
    if not store.versions():
        known = ", ".join(datasets_in(root)) or "none"
        raise PipelineError(f"unknown dataset {dataset!r} in {root} (datasets: {known})")
    return store


# ---- reading a version -------------------------------------------------------------


def kept_rows(ref: VersionRef, columns: list[str] | None = None) -> pa.Table:
    """Every kept row of every split (row ids are unique across splits)."""
    files = sorted((ref.path / "data").glob("*.parquet"))
    tables = [pq.read_table(f, columns=columns) for f in files]
    if not tables:
        raise PipelineError(f"{ref.path} is not a version folder (no data/*.parquet)")
    return pa.concat_tables(tables, promote_options="permissive")


def ledger(ref: VersionRef) -> pa.Table:
    """``reports/removed.parquet``: every removed row with stage, reason and detail."""
    path = ref.path / "reports" / "removed.parquet"
    if not path.is_file():
        raise PipelineError(f"{ref.path} is not a version folder (no reports/removed.parquet)")
    return pq.read_table(path)


def _data_columns(table: pa.Table) -> list[str]:
    """The row's content: everything but the bookkeeping columns and the ledger's own."""
    bookkeeping = {ROW_ID, CHANGED_BY, "stage", "reason", "detail"}
    return [c for c in table.column_names if c not in bookkeeping]


# ---- versions ----------------------------------------------------------------------


def list_versions(root: Path, dataset: str | None = None) -> list[VersionSummary]:
    """Every version of every dataset under ``root`` (or of one), oldest first."""
    names = [dataset_store(root, dataset).dataset] if dataset else datasets_in(root)
    return [summary for name in names for summary in _dataset_versions(Store(root, name))]


def _dataset_versions(store: Store) -> list[VersionSummary]:
    latest = store.latest()
    summaries: list[VersionSummary] = []
    previous: tuple[VersionRef, set[str]] | None = None
    for name in store.versions():
        ref = load_version(store.dir / name)
        ids = set(kept_rows(ref, [ROW_ID]).column(ROW_ID).to_pylist())
        summaries.append(_summary(ref, ids, previous, latest == name))
        previous = (ref, ids)
    return summaries


def _summary(
    ref: VersionRef, ids: set[str], previous: tuple[VersionRef, set[str]] | None, latest: bool
) -> VersionSummary:
    manifest = ref.manifest
    prev_ref, prev_ids = previous if previous else (None, None)
    return VersionSummary(
        dataset=ref.dataset,
        version=ref.version,
        latest=latest,
        created=manifest["created"],
        splits=manifest["counts"]["splits"],
        config_hash=manifest["config_hash"],
        rows_added=len(ids - prev_ids) if prev_ids is not None else None,
        rows_removed=len(prev_ids - ids) if prev_ids is not None else None,
        config_changed=prev_ref.manifest["config_hash"] != manifest["config_hash"] if prev_ref else None,
        path=str(ref.path),
    )


# ---- show --------------------------------------------------------------------------


def show_rows(ref: VersionRef, stage: str | None = None, reason: str | None = None, limit: int = 20) -> ShowResult:
    """Removed rows (from the ledger), then rewritten ones, that match the filters.

    ``reason`` matches exactly or by family (``language`` matches ``language:de``);
    rewritten rows have the reason ``changed``, one entry per stage that rewrote them.
    ``limit`` 0 lists all. An unknown ``stage`` is refused, since it would otherwise
    match nothing and look like a clean result.
    """
    if stage is not None:
        _check_stage(ref, stage)
    removed = _matching(ledger(ref), stage, reason)
    changed = _matching(_changed_entries(ref), stage, reason)
    total = removed.num_rows + changed.num_rows
    shown = pa.concat_tables([removed, changed], promote_options="permissive")
    if limit:
        shown = shown.slice(0, limit)
    rows = [_entry(row, _data_columns(shown)) for row in shown.to_pylist()]
    return ShowResult(version=ref.label, path=str(ref.path), total=total, rows=rows)


def _stage_names(ref: VersionRef) -> list[str]:
    """The version's stages in run order, as its manifest records them."""
    return [s["stage"] for s in ref.manifest["stages"]]


def _check_stage(ref: VersionRef, stage: str) -> None:
    if stage not in _stage_names(ref):
        raise PipelineError(f"unknown stage {stage!r} in {ref.label} (stages: {', '.join(_stage_names(ref))})")


def _changed_entries(ref: VersionRef) -> pa.Table:
    """Kept rows that stages rewrote, one row per (row, stage), in the ledger's shape."""
    kept = kept_rows(ref)
    names = pc.split_pattern(kept.column(CHANGED_BY), ",")
    parents = pc.list_parent_indices(names)
    stages = pc.list_flatten(names)
    entries = kept.take(parents).drop_columns([CHANGED_BY])
    entries = entries.filter(pc.not_equal(stages, ""))
    stages = stages.filter(pc.not_equal(stages, ""))
    n = entries.num_rows
    return (
        entries.add_column(1, "stage", stages)
        .add_column(2, "reason", pa.array([CHANGED] * n, pa.string()))
        .add_column(3, "detail", pa.array(["{}"] * n, pa.string()))
    )


def _matching(table: pa.Table, stage: str | None, reason: str | None) -> pa.Table:
    if stage is not None:
        table = table.filter(pc.equal(table.column("stage"), stage))
    if reason is not None:
        reasons = table.column("reason")
        family = pc.starts_with(reasons, reason + ":")
        table = table.filter(pc.or_(pc.equal(reasons, reason), family))
    return table


def _entry(row: dict[str, Any], data_columns: list[str]) -> dict[str, Any]:
    return {
        ROW_ID: row[ROW_ID],
        "stage": row["stage"],
        "reason": row["reason"],
        "detail": json.loads(row["detail"]),
        "fields": {c: row[c] for c in data_columns},
    }


# ---- diff --------------------------------------------------------------------------


def diff_versions(a: VersionRef, b: VersionRef) -> DiffResult:
    """Rows added, removed and changed from ``a`` to ``b``, their config and stage counts."""
    kept_a, kept_b = kept_rows(a), kept_rows(b)
    ids_a, ids_b = kept_a.column(ROW_ID), kept_b.column(ROW_ID)
    return DiffResult(
        a=a.label,
        b=b.label,
        kept_rows=(kept_a.num_rows, kept_b.num_rows),
        added=_moves(ids_b, ids_a, ledger(a)),
        removed=_moves(ids_a, ids_b, ledger(b)),
        changed=_changed_rows(kept_a, kept_b),
        config=config_changes(a.manifest["config"], b.manifest["config"]),
        stages=_stage_counts(a, b),
    )


def _moves(ids: pa.ChunkedArray, other_ids: pa.ChunkedArray, other_ledger: pa.Table) -> list[RowMove]:
    """Ids kept on one side only, each with the other side's removal stage and reason."""
    only = ids.filter(pc.invert(pc.is_in(ids, other_ids))).to_pylist()
    why = {
        r[ROW_ID]: (r["stage"], r["reason"])
        for r in other_ledger.select([ROW_ID, "stage", "reason"]).to_pylist()
    }
    return [RowMove(row_id, *why.get(row_id, (None, None))) for row_id in sorted(only)]


def _changed_rows(kept_a: pa.Table, kept_b: pa.Table) -> list[dict[str, Any]]:
    """Row ids kept by both whose data columns differ, with the columns that differ."""
    a = _common(kept_a, kept_b.column(ROW_ID))
    b = _common(kept_b, kept_a.column(ROW_ID))
    columns = sorted(set(_data_columns(a)) | set(_data_columns(b)))
    differs = {c: _differs(_column(a, c, b), _column(b, c, a)) for c in columns}
    ids = a.column(ROW_ID).to_pylist()
    changed = []
    for i, row_id in enumerate(ids):
        cols = [c for c in columns if differs[c][i]]
        if cols:
            changed.append({ROW_ID: row_id, "columns": cols})
    return changed


def _common(table: pa.Table, other_ids: pa.ChunkedArray) -> pa.Table:
    """The rows whose id the other side keeps too, sorted by id so both sides align."""
    return table.filter(pc.is_in(table.column(ROW_ID), other_ids)).sort_by(ROW_ID)


def _column(table: pa.Table, name: str, other: pa.Table) -> pa.ChunkedArray:
    """A column, or nulls of the other side's type when this side lacks it (roles changed)."""
    if name in table.column_names:
        return table.column(name)
    return pa.chunked_array([pa.nulls(table.num_rows, other.schema.field(name).type)])


def _differs(a: pa.ChunkedArray, b: pa.ChunkedArray) -> list[bool]:
    """Element-wise inequality, null-aware; nested values (chat messages) compare in Python."""
    if pa.types.is_nested(a.type) or not a.type.equals(b.type):
        return [x != y for x, y in zip(a.to_pylist(), b.to_pylist())]
    unequal = pc.fill_null(pc.not_equal(a, b), False)
    one_null = pc.xor(pc.is_null(a), pc.is_null(b))
    return pc.or_(unequal, one_null).to_pylist()


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"stages": {"quality": {"min_words": 3}}}`` -> ``{"stages.quality.min_words": 3}``.

    Lists stay whole values: ``allowed: [en]`` -> ``[en, de]`` reads as one change.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The dotted keys whose values differ between two resolved configs."""
    flat_old, flat_new = flatten(old), flatten(new)
    changes = []
    for key in sorted(flat_old.keys() | flat_new.keys()):
        if key in flat_old and key in flat_new and flat_old[key] == flat_new[key]:
            continue
        change: dict[str, Any] = {"key": key}
        if key in flat_old:
            change["old"] = flat_old[key]
        if key in flat_new:
            change["new"] = flat_new[key]
        changes.append(change)
    return changes


def _stage_counts(a: VersionRef, b: VersionRef) -> list[dict[str, Any]]:
    """Rows removed per stage on each side, in run order; None where a side lacks the stage."""
    removed_a = {s["stage"]: s["rows_removed"] for s in a.manifest["stages"]}
    removed_b = {s["stage"]: s["rows_removed"] for s in b.manifest["stages"]}
    order = [*removed_a, *(s for s in removed_b if s not in removed_a)]
    return [{"stage": s, "a": removed_a.get(s), "b": removed_b.get(s)} for s in order]
