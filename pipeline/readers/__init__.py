"""Readers: Parquet, CSV, JSON and JSON Lines (plain, gzip or zstd) and
``datasets.save_to_disk`` folders, as canonical Arrow shards.

Each input file is read in batches (:mod:`~pipeline.readers.files`), its rows laid out
as canonical rows by their format (:mod:`~pipeline.readers.formats` for Alpaca,
ShareGPT and OpenAI conversations, :mod:`~pipeline.readers.roles` for text, label,
prompt and response columns), and every row given a ``row_id``: the source's id column
when it has one, else ``<file>:<position>``, stable as long as the file is. Columns no
role or format reads pass through, typed by :mod:`~pipeline.readers.columns`. Anything
wrong with an input (missing file, unreadable content, a mapped column that is not
there, a text column of numbers, a malformed record, a duplicate id) raises a
``PipelineError`` naming the file and column, and the line or row.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import PipelineError
from pipeline.files import read_arrow, write_arrow
from pipeline.inputs import DatasetConfig
from pipeline.readers.bad_records import BadRecordError, Rejects
from pipeline.readers.columns import json_kind, unify_batches
from pipeline.readers.files import JSON_FORMATS, InputFile, RawBatch, column_names, expand_inputs, raw_batches
from pipeline.readers.formats import ChatLayout, layout_for
from pipeline.readers.roles import TextLayout
from pipeline.schema import CHANGED_BY, ROLES, ROW_ID, TEXT_ROLES, DatasetInfo

__all__ = ["InputFile", "Reader", "SourceMap", "expand_inputs"]

AUTO_ID = "id"


@dataclass(frozen=True)
class SourceMap:
    """How one input's rows become canonical rows."""

    layout: TextLayout | ChatLayout
    id_column: str | None
    dropped: frozenset[str]

    @property
    def info(self) -> DatasetInfo:
        return self.layout.info

    @property
    def fixed(self) -> set[str]:
        """The canonical columns the reader types itself (not passed through)."""
        return {ROW_ID, *self.info.roles, *self.layout.produced, CHANGED_BY}

    @classmethod
    def of(cls, dataset: DatasetConfig, names: list[str], source: str) -> SourceMap:
        columns = dataset.columns
        layout = layout_for(columns, names, source)
        id_column = columns.id if columns.id is not None else (AUTO_ID if AUTO_ID in names else None)
        if id_column is not None and id_column not in names:
            raise PipelineError(f"columns.id: column {id_column!r} not found in {source} (columns: {', '.join(names)})")
        source_map = cls(layout, id_column, frozenset(columns.drop))
        source_map.passed_through(names, source)
        return source_map

    def passed_through(self, names: list[str], source: str) -> list[str]:
        """The source columns carried as they are; one named like a canonical column is
        refused, since it would overwrite it."""
        used = self.layout.consumed | self.dropped | {self.id_column}
        extra = [n for n in names if n not in used]
        for name in extra:
            if name in ROLES or name in (ROW_ID, CHANGED_BY) or name in self.layout.produced:
                raise PipelineError(
                    f"{source}: column {name!r} clashes with a role or bookkeeping column of the same name; "
                    f"map it to a role or list it in columns.drop"
                )
        return extra

    def canonical(self, raw: RawBatch) -> tuple[pa.Table, set[str]]:
        """The batch as a canonical table, and the passed-through columns stored as
        JSON text (see :mod:`pipeline.readers.columns`)."""
        columns: dict[str, pa.Array] = {ROW_ID: self._ids(raw)}
        columns.update(self.layout.columns(raw))
        as_json = set()
        for name in self.passed_through(raw.names, raw.source):
            columns[name], encoded = raw.array(name)
            if encoded:
                as_json.add(name)
        columns[CHANGED_BY] = pa.array([""] * raw.num_rows, pa.string())
        return pa.table(columns), as_json

    def _ids(self, raw: RawBatch) -> pa.Array:
        if self.id_column is None:
            return pa.array([f"{raw.file.label}:{raw.position(i)}" for i in range(raw.num_rows)])
        empty = f"{raw.source} {{}}: id column {self.id_column!r} is empty"
        if raw.table is not None:
            ids = raw.table.column(self.id_column).combine_chunks().cast(pa.string())
            if ids.null_count:
                raise PipelineError(empty.format(raw.where(pc.index(ids.is_null(), True).as_py())))
            return ids
        values = raw.values(self.id_column)
        for i, value in enumerate(values):
            if value is None:
                raise BadRecordError(empty.format(raw.where(i)), "bad_id", index=i)
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise BadRecordError(
                    f"{raw.source} {raw.where(i)}: id column {self.id_column!r} holds {json_kind(value)}, "
                    "expected text or a whole number",
                    "bad_id", index=i,
                )
        return pa.array([str(v) for v in values], pa.string())

    def reject_id(self, raw: RawBatch, i: int) -> str:
        """The ledger id of row ``i``, a record skipped as bad: its id column's value when
        it has a usable one, else ``<file>:line-<line>`` (never a derived id's shape)."""
        if self.id_column is not None:
            value = raw.values(self.id_column)[i]
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
        return reject_id(raw.file, raw.lines[i] if raw.lines is not None else raw.position(i) + 1)


@dataclass
class Reader:
    """Reads one dataset's inputs as canonical shards."""

    dataset: DatasetConfig
    shard_rows: int
    spill_dir: Path | None = None
    """Where a JSON file's batches wait on disk until the file is read (see
    :meth:`_file_tables`); the system's temporary folder by default."""

    def __post_init__(self) -> None:
        self.skip_bad = self.dataset.on_bad_record == "skip"
        self.rejects = Rejects()
        """The records skipped so far (``on_bad_record: skip``), complete once
        :meth:`shards` is exhausted."""
        self.files = expand_inputs(self.dataset)
        self.maps = {f: SourceMap.of(self.dataset, column_names(f, self.skip_bad), str(f.path)) for f in self.files}
        kinds = {(m.info.kind, m.info.roles) for m in self.maps.values()}
        if len(kinds) > 1:
            found = ", ".join(f"{f.path}: {m.info.kind} {list(m.info.roles)}" for f, m in self.maps.items())
            raise PipelineError(f"dataset {self.dataset.name}: inputs disagree on roles ({found})")

    @property
    def info(self) -> DatasetInfo:
        return next(iter(self.maps.values())).info

    def shards(self) -> Iterator[pa.Table]:
        """Canonical tables of ``shard_rows`` rows (the last of each file may be shorter)."""
        label_type: pa.DataType | None = None
        for f in self.files:
            for table in self._file_tables(f):
                if "label" in table.column_names:
                    table, label_type = _unify_label(table, label_type, f)
                yield table

    def _file_tables(self, f: InputFile) -> Iterator[pa.Table]:
        """One file's canonical tables. JSON types each batch from its own values, so
        a file's tables are given one schema once it is read (:func:`unify_batches`);
        until then they wait on disk, as Arrow files read back memory-mapped, one at a
        time. Held in memory, they were the whole file: 1.4 GB of a million rows of
        JSON Lines, so the reading grew with the rows."""
        source_map = self.maps[f]

        def skip(error: BadRecordError, line: int) -> None:
            self.rejects.add(reject_id(f, line), error, error.raw, self.files.index(f), line)

        on_bad = skip if self.skip_bad else None
        batches = (b for b in raw_batches(f, self.shard_rows, self._as_text(source_map), on_bad) if b.num_rows)
        if f.format not in JSON_FORMATS:
            yield from (source_map.canonical(b)[0] for b in batches)
            return
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".json-batches-", dir=self.spill_dir) as folder:
            spilled = _Spilled(Path(folder))
            for b in batches:
                if (part := self._canonical(source_map, b)) is not None:
                    spilled.append(*part)
            if len(spilled):
                yield from unify_batches(spilled, spilled.as_json, source_map.fixed)

    def _canonical(self, source_map: SourceMap, raw: RawBatch) -> tuple[pa.Table, set[str]] | None:
        """:meth:`SourceMap.canonical`; under ``on_bad_record: skip`` a record at fault
        is set aside and the batch laid out again without it (None when none is left)."""
        while raw.num_rows:
            try:
                return source_map.canonical(raw)
            except BadRecordError as exc:
                if not self.skip_bad or exc.index is None or raw.lines is None:
                    raise
                line = raw.lines[exc.index]
                self.rejects.add(
                    source_map.reject_id(raw, exc.index), exc, raw.record_text(exc.index), self.files.index(raw.file), line
                )
                raw = raw.without(exc.index)
        return None

    @staticmethod
    def _as_text(source_map: SourceMap) -> set[str]:
        """Source columns a CSV must read as strings: text roles and the id."""
        layout = source_map.layout
        text = {c for r in TEXT_ROLES for c in layout.roles.get(r, ())} if isinstance(layout, TextLayout) else set()
        if isinstance(layout, ChatLayout):
            text |= set(layout.prompt) | {c for c in (layout.response, layout.system) if c}
        return text | ({source_map.id_column} - {None})


class _Spilled(Sequence[pa.Table]):
    """Tables written to a folder as they come, read back memory-mapped when asked."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.as_json: list[set[str]] = []

    def append(self, table: pa.Table, as_json: set[str]) -> None:
        write_arrow(table, self.folder / f"{len(self.as_json):06d}.arrow")
        self.as_json.append(as_json)

    def __len__(self) -> int:
        return len(self.as_json)

    def __getitem__(self, index: int) -> pa.Table:  # type: ignore[override]  # no slices: nothing asks for them
        if not 0 <= index < len(self):
            raise IndexError(index)
        return read_arrow(self.folder / f"{index:06d}.arrow")


def reject_id(f: InputFile, line: int) -> str:
    """The ledger id of a bad record that has no id of its own."""
    return f"{f.label}:line-{line}"


def _unify_label(table: pa.Table, label_type: pa.DataType | None, f: InputFile) -> tuple[pa.Table, pa.DataType]:
    """Give every shard the label type of the first non-null one."""
    label = table.column("label")
    if pa.types.is_null(label.type):
        return table, label_type
    if label_type is None or pa.types.is_null(label_type):
        return table, label.type
    if label.type != label_type:
        try:
            label = label.cast(label_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PipelineError(f"{f.path}: labels are {label.type} but earlier inputs had {label_type}") from exc
        table = table.set_column(table.schema.get_field_index("label"), "label", label)
    return table, label_type
