"""Input files: what they are, how they are compressed, and their rows in batches.

An input is Parquet, CSV, JSON (an array of records, an object whose one list holds
the records, or JSON Lines under a ``.json`` name), JSON Lines, or a
``datasets.save_to_disk`` folder; CSV and JSON may be compressed with gzip (``.gz``)
or zstd (``.zst``, ``.zstd``), which pyarrow decompresses as it reads.

Arrow formats come as Arrow tables. JSON comes as Python values per column
(:mod:`pipeline.readers.json_records` parses it record by record), because the
conversations it usually holds mix types from row to row (a message's content is text
here and a list of parts there, a tool's arguments an object or a string), which Arrow's
type inference refuses; the formats of :mod:`pipeline.readers.formats` read those
values, and :mod:`pipeline.readers.columns` types the rest. Every batch knows where
each row came from, so an error names the file and the line (JSON) or row (counted
from 1) at fault.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.inputs import DatasetConfig
from pipeline.readers import columns as cols
from pipeline.readers.bad_records import BadRecordError
from pipeline.readers.json_records import OnBad, json_records, jsonl_records

SUFFIX_FORMATS = {
    ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
JSON_FORMATS = ("json", "jsonl")
PEEK_RECORDS = 1000
"""Records of a JSON input read to find its columns before the run."""
CSV_BLOCK = 1 << 20
"""pyarrow's CSV block to start with; a row longer than a block needs a bigger one."""
CSV_MAX_BLOCK = 1 << 30


@dataclass(frozen=True)
class InputFile:
    path: Path
    format: str
    label: str
    """Short name used in derived row ids and messages."""
    compression: str | None = None
    """``gzip`` or ``zstd`` for a compressed CSV or JSON file."""

    def open(self) -> pa.NativeFile:
        """The file's bytes, decompressed."""
        return pa.input_stream(str(self.path), compression=self.compression)


def expand_inputs(dataset: DatasetConfig) -> list[InputFile]:
    """Resolve globs and folders to files, in the order given, each with its format."""
    paths: list[Path] = []
    for pattern in dataset.inputs:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if Path(m).exists()]
        if not matches:
            raise PipelineError(f"input not found: {pattern}")
        paths.extend(Path(m) for m in matches)
    root = Path(os.path.commonpath([p.resolve() for p in paths]))
    files = []
    for p in paths:
        rel = p.resolve().relative_to(root).as_posix() if len(paths) > 1 else p.name
        fmt, compression = _format_of(p, dataset.format)
        files.append(InputFile(path=p, format=fmt, label=rel or p.name, compression=compression))
    return files


def _format_of(path: Path, declared: str) -> tuple[str, str | None]:
    """The file format and compression, from the declared format or the suffixes."""
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf", None
        raise PipelineError(f"input {path} is a folder but not a datasets.save_to_disk folder (no dataset_info.json)")
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    inner = suffixes[-2] if compression and len(suffixes) > 1 else (suffixes[-1] if suffixes and not compression else "")
    fmt = declared if declared != "auto" else SUFFIX_FORMATS.get(inner)
    if fmt is None:
        raise PipelineError(
            f"input {path}: unknown file type {path.suffix!r}; set format: parquet, json, jsonl, csv or hf"
        )
    if compression and fmt not in (*JSON_FORMATS, "csv"):
        raise PipelineError(f"input {path}: a {fmt} input cannot be read {compression}-compressed; decompress it first")
    return fmt, compression


@dataclass
class RawBatch:
    """Consecutive rows of one input, in the source's own columns.

    Arrow inputs hold a table; JSON inputs hold each column's Python values and the line
    each row starts on. Formats read a column as values (:meth:`values`), text roles
    read it as strings (:meth:`strings`), and the columns passed through as they are
    read it as an Arrow array (:meth:`array`).
    """

    file: InputFile
    first_row: int
    """Position of the first row in its file, counted from 0 (derived ids use it)."""
    table: pa.Table | None = None
    columns_values: dict[str, list[Any]] = field(default_factory=dict)
    lines: list[int] | None = None
    positions: list[int] | None = None
    """Each row's position in its file when rows were skipped (see :meth:`without`);
    None for consecutive rows from ``first_row``."""

    @property
    def source(self) -> str:
        return str(self.file.path)

    @property
    def names(self) -> list[str]:
        return self.table.column_names if self.table is not None else list(self.columns_values)

    @property
    def num_rows(self) -> int:
        if self.table is not None:
            return self.table.num_rows
        return len(self.lines or [])

    def position(self, i: int) -> int:
        """Row ``i``'s position in its file, counted from 0 (derived ids use it)."""
        return self.positions[i] if self.positions is not None else self.first_row + i

    def without(self, i: int) -> RawBatch:
        """The batch less its row ``i`` (a JSON batch: a bad record skipped), every
        other row keeping its line and its position."""
        keep = [j for j in range(self.num_rows) if j != i]
        return RawBatch(
            file=self.file,
            first_row=self.first_row,
            columns_values={k: [v[j] for j in keep] for k, v in self.columns_values.items()},
            lines=[self.lines[j] for j in keep] if self.lines is not None else None,
            positions=[self.position(j) for j in keep],
        )

    def record_text(self, i: int) -> str:
        """Row ``i`` as a JSON object, as near the source's record as the batch keeps it."""
        return json.dumps({k: v[i] for k, v in self.columns_values.items()}, ensure_ascii=False, default=str)

    def where(self, i: int) -> str:
        """Where row ``i`` of the batch is in its file, for messages: ``line 151`` or
        ``row 12``, both counted from 1."""
        if self.lines is not None:
            return f"line {self.lines[i]}"
        return f"row {self.first_row + i + 1}"

    def values(self, name: str) -> list[Any]:
        """A column's Python values (JSON: null in every row when no record of the
        batch has the key)."""
        if self.table is not None:
            return self.table.column(name).to_pylist()
        return self.columns_values.get(name) or [None] * self.num_rows

    def strings(self, name: str, role: str) -> pa.Array:
        """A text role's column as strings; anything else is refused, naming the row."""
        if self.table is not None:
            return cols.arrow_strings(self.table.column(name), name, role, self.source)
        return cols.value_strings(self.values(name), name, role, self.source, self.where)

    def array(self, name: str) -> tuple[pa.Array, bool]:
        """A column passed through as it is, and whether it was stored as JSON text
        (its values mix types, which one Arrow column cannot hold)."""
        if self.table is not None:
            return self.table.column(name).combine_chunks(), False
        return cols.value_array(self.values(name))

    def scalars(self, name: str, role: str) -> pa.Array:
        """A column of single values (a label): one type, no lists or objects."""
        if self.table is not None:
            return cols.arrow_scalars(self.table.column(name), name, role, self.source)
        return cols.value_scalars(self.values(name), name, role, self.source, self.where)


def column_names(f: InputFile, skip_bad: bool = False) -> list[str]:
    """The columns of an input, read from its header (JSON: its first records, passing
    over bad ones when ``skip_bad``)."""
    try:
        if f.format == "parquet":
            return pq.read_schema(f.path).names
        if f.format == "csv":
            with f.open() as stream, io.TextIOWrapper(stream, encoding="utf-8-sig", newline="") as text:
                header = next(csv.reader(text), None)
            if not header:
                raise PipelineError(f"input {f.path} is empty")
            return header
        if f.format in JSON_FORMATS:
            names: dict[str, None] = {}
            bad: list[BadRecordError] = []
            for _, record in islice(_records(f, (lambda e, _: bad.append(e)) if skip_bad else None), PEEK_RECORDS):
                names.update(dict.fromkeys(record))
            if not names and bad:
                raise PipelineError(f"input {f.path}: none of its first {len(bad)} records can be read (first: {bad[0]})")
            if not names:
                raise PipelineError(f"input {f.path} is empty")
            return list(names)
        return _hf_table(f).schema.names
    except PipelineError:
        raise
    except (pa.ArrowInvalid, OSError, ValueError, UnicodeDecodeError) as exc:
        raise PipelineError(f"input {f.path}: cannot read it as {f.format} ({cols.first_line(exc)})") from exc


def raw_batches(f: InputFile, rows: int, as_text: set[str], on_bad: OnBad = None) -> Iterator[RawBatch]:
    """The input's rows in batches of ``rows``; ``as_text`` names the CSV columns to
    read as strings whatever they look like (text roles and ids); ``on_bad`` takes the
    JSON records that are not records at all, instead of an error."""
    try:
        if f.format in JSON_FORMATS:
            yield from _json_batches(f, rows, on_bad)
            return
        if f.format == "parquet":
            tables: Iterator[pa.Table] = (
                pa.Table.from_batches([b]) for b in pq.ParquetFile(f.path).iter_batches(batch_size=rows)
            )
        elif f.format == "csv":
            tables = _rebatch(_csv_batches(f, as_text), rows)
        else:
            table = _hf_table(f)
            tables = (table.slice(i, rows) for i in range(0, max(table.num_rows, 1), rows))
        offset = 0
        for table in tables:
            yield RawBatch(file=f, first_row=offset, table=table)
            offset += table.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise PipelineError(f"input {f.path}: cannot read it as {f.format} ({cols.first_line(exc)})") from exc


def _records(f: InputFile, on_bad: OnBad = None) -> Iterator[tuple[int, dict[str, Any]]]:
    return (jsonl_records if f.format == "jsonl" else json_records)(f.open, str(f.path), on_bad)


def _json_batches(f: InputFile, rows: int, on_bad: OnBad) -> Iterator[RawBatch]:
    records = _records(f, on_bad)
    offset = 0
    while chunk := list(islice(records, rows)):
        keys = dict.fromkeys(k for _, record in chunk for k in record)
        values = {k: [record.get(k) for _, record in chunk] for k in keys}
        yield RawBatch(file=f, first_row=offset, columns_values=values, lines=[line for line, _ in chunk])
        offset += len(chunk)


def _csv_batches(f: InputFile, as_text: set[str]) -> Iterator[pa.RecordBatch]:
    """The CSV's record batches, with a block big enough for its longest row.

    pyarrow refuses a row longer than its block ("straddling object"); the read then
    starts again with a block 16 times bigger, skipping the rows already given and
    keeping the column types the first blocks set, so that every batch agrees."""
    block, done, types = CSV_BLOCK, 0, {c: pa.string() for c in as_text}
    while True:
        seen = 0
        try:
            read = pacsv.ReadOptions(block_size=block)
            convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
            with f.open() as stream, pacsv.open_csv(stream, read_options=read, convert_options=convert) as reader:
                types = dict(zip(reader.schema.names, reader.schema.types))
                for batch in reader:
                    skip = min(batch.num_rows, max(done - seen, 0))
                    seen += batch.num_rows
                    if skip < batch.num_rows:
                        yield batch.slice(skip)
                        done = seen
            return
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc):
                raise PipelineError(_csv_error(f, exc)) from exc
            if block >= CSV_MAX_BLOCK:
                raise PipelineError(f"input {f.path}: a row is longer than {CSV_MAX_BLOCK >> 20} MB") from exc
            block *= 16


def _csv_error(f: InputFile, exc: pa.ArrowInvalid) -> str:
    """pyarrow's CSV error names no line: find the first row whose field count differs
    from the header's, and name its line."""
    with f.open() as stream, io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="") as text:
        reader = csv.reader(text)
        try:
            header = next(reader, [])
            for row in reader:
                if row and len(row) != len(header):
                    return (
                        f"{f.path} line {reader.line_num}: expected {len(header)} fields, found {len(row)}"
                        " (a quote left open runs on to the next lines)"
                    )
        except csv.Error as err:
            return f"{f.path} line {reader.line_num}: {err}"
    return f"input {f.path}: cannot read it as csv ({cols.first_line(exc)})"


def _hf_table(f: InputFile) -> pa.Table:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(f.path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise PipelineError(f"input {f.path}: cannot load it with datasets.load_from_disk ({cols.first_line(exc)})") from exc
    parts = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    return pa.concat_tables([ds.with_format("arrow").data.table for ds in parts])


def _rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Regroup a stream of record batches of any size into tables of ``rows`` rows."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)
