"""Readers: Parquet, JSONL, CSV and ``datasets.save_to_disk`` folders, as Arrow shards.

Each input file is read in batches, its columns renamed to roles (see
``pipeline.schema``), text roles cast to strings, and every row given a ``row_id``:
the source's id column when it has one, else ``<file>:<position>``, stable as long as
the file is. Anything wrong with an input (missing file, unreadable content, a mapped
column that is not there, a text column of numbers, a duplicate id) raises a
``PipelineError`` naming the file and column.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline.inputs import ColumnsConfig, DatasetConfig
from pipeline.errors import PipelineError
from pipeline.schema import CHANGED_BY, MESSAGE_TYPE, ROLES, ROW_ID, TEXT_ROLES, DatasetInfo, kind_of

# Column names that map themselves to a role when the config leaves the role unset.
AUTO_COLUMNS: dict[str, tuple[str, ...]] = {
    "text": ("text", "content"),
    "label": ("label",),
    "prompt": ("prompt", "instruction"),
    "response": ("response", "output"),
    "messages": ("messages",),
}
AUTO_PROMPT_CONTEXT = "input"
"""Alpaca's optional context column, appended to ``instruction`` in the prompt."""
AUTO_ID = "id"
SUFFIX_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class InputFile:
    path: Path
    format: str
    label: str
    """Short name used in derived row ids and messages."""


@dataclass(frozen=True)
class RoleMap:
    roles: dict[str, tuple[str, ...]]
    """role -> source columns (several only for a joined prompt)."""
    id_column: str | None
    extra: tuple[str, ...]

    @property
    def info(self) -> DatasetInfo:
        roles = tuple(r for r in ROLES if r in self.roles)
        return DatasetInfo(kind=kind_of(roles) or "text", roles=roles)


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
        files.append(InputFile(path=p, format=_format_of(p, dataset.format), label=rel or p.name))
    return files


def _format_of(path: Path, declared: str) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf"
        raise PipelineError(f"input {path} is a folder but not a datasets.save_to_disk folder (no dataset_info.json)")
    if declared != "auto":
        return declared
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PipelineError(f"input {path}: unknown file type {path.suffix!r}; set format: parquet, jsonl, csv or hf")
    return fmt


def _column_names(f: InputFile) -> list[str]:
    """The columns of an input, read from its header only."""
    try:
        if f.format == "parquet":
            return pq.read_schema(f.path).names
        if f.format == "csv":
            reader = pacsv.open_csv(f.path)
            return reader.schema.names
        if f.format == "jsonl":
            with open(f.path, encoding="utf-8") as fh:
                names: dict[str, None] = {}
                for _, line in zip(range(1000), fh):
                    if line.strip():
                        names.update(dict.fromkeys(json.loads(line)))
                if not names:
                    raise PipelineError(f"input {f.path} is empty")
                return list(names)
        return _hf_table(f).schema.names
    except PipelineError:
        raise
    except (pa.ArrowInvalid, OSError, ValueError, UnicodeDecodeError) as exc:
        raise PipelineError(f"input {f.path}: cannot read it as {f.format} ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def resolve_roles(columns: ColumnsConfig, names: list[str], source: str) -> RoleMap:
    """Map roles to the source's columns, from the config first, then by common names."""
    available = set(names)
    roles: dict[str, tuple[str, ...]] = {}
    for role in ROLES:
        configured = getattr(columns, role)
        if configured is not None:
            wanted = (configured,) if isinstance(configured, str) else tuple(configured)
            for col in wanted:
                if col not in available:
                    raise PipelineError(
                        f"columns.{role}: column {col!r} not found in {source} (columns: {', '.join(names)})"
                    )
            roles[role] = wanted
            continue
        used = {c for cols in roles.values() for c in cols}
        found = next((c for c in AUTO_COLUMNS[role] if c in available and c not in used), None)
        if found is not None:
            roles[role] = (found,)
            if role == "prompt" and found == "instruction" and AUTO_PROMPT_CONTEXT in available:
                roles[role] = (found, AUTO_PROMPT_CONTEXT)
    if kind_of(roles) is None:
        raise PipelineError(
            f"{source}: no text column found (columns: {', '.join(names)}); "
            "map one with columns.text, or columns.prompt and columns.response"
        )
    id_column = columns.id if columns.id is not None else (AUTO_ID if AUTO_ID in available else None)
    if id_column is not None and id_column not in available:
        raise PipelineError(f"columns.id: column {id_column!r} not found in {source} (columns: {', '.join(names)})")
    used = {c for cols in roles.values() for c in cols} | {id_column} | set(columns.drop)
    extra = tuple(n for n in names if n not in used)
    for name in extra:
        if name in ROLES or name in (ROW_ID, CHANGED_BY):
            raise PipelineError(
                f"{source}: column {name!r} clashes with a role or bookkeeping column of the same name; "
                f"map it to a role or list it in columns.drop"
            )
    return RoleMap(roles=roles, id_column=id_column, extra=extra)


def _hf_table(f: InputFile) -> pa.Table:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(f.path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise PipelineError(f"input {f.path}: cannot load it with datasets.load_from_disk ({_first_line(exc)})") from exc
    parts = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    return pa.concat_tables([ds.with_format("arrow").data.table for ds in parts])


def _raw_batches(f: InputFile, roles: RoleMap, rows: int) -> Iterator[pa.Table]:
    """Batches of the file's own columns; text roles and ids are read as strings."""
    as_text = {c for r in TEXT_ROLES for c in roles.roles.get(r, ())} | ({roles.id_column} - {None})
    try:
        if f.format == "parquet":
            for batch in pq.ParquetFile(f.path).iter_batches(batch_size=rows):
                yield pa.Table.from_batches([batch])
        elif f.format == "csv":
            convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in as_text}, strings_can_be_null=True)
            with pacsv.open_csv(f.path, convert_options=convert) as reader:
                yield from _rebatch(reader, rows)
        elif f.format == "jsonl":
            table = pajson.read_json(f.path)
            yield from (table.slice(i, rows) for i in range(0, max(table.num_rows, 1), rows))
        else:
            table = _hf_table(f)
            yield from (table.slice(i, rows) for i in range(0, max(table.num_rows, 1), rows))
    except (pa.ArrowInvalid, OSError) as exc:
        raise PipelineError(f"input {f.path}: cannot read it as {f.format} ({_first_line(exc)})") from exc


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


def _as_strings(column: pa.ChunkedArray, role: str, source: str) -> pa.Array:
    column = column.combine_chunks()
    if pa.types.is_string(column.type):
        return column
    if pa.types.is_large_string(column.type) or pa.types.is_null(column.type):
        return column.cast(pa.string())
    raise PipelineError(f"{source}: column for role {role!r} holds {column.type}, expected text")


def _as_messages(column: pa.ChunkedArray, source: str) -> pa.Array:
    column = column.combine_chunks()
    t = column.type
    if pa.types.is_null(t):
        return pa.nulls(len(column), MESSAGE_TYPE)
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        raise PipelineError(f"{source}: messages column holds {t}, expected a list of {{role, content}}")
    names = {t.value_type.field(i).name for i in range(t.value_type.num_fields)}
    if not {"role", "content"} <= names:
        raise PipelineError(f"{source}: messages need 'role' and 'content' fields, found {sorted(names)}")
    values = column.values
    structs = pa.StructArray.from_arrays(
        [pc.struct_field(values, "role").cast(pa.string()), pc.struct_field(values, "content").cast(pa.string())],
        names=["role", "content"],
    )
    return pa.ListArray.from_arrays(column.offsets.cast(pa.int32()), structs, mask=column.is_null())


def to_canonical(raw: pa.Table, roles: RoleMap, f: InputFile, offset: int) -> pa.Table:
    """Rename roles, type them, add ``row_id`` and ``changed_by``."""
    source = str(f.path)
    n = raw.num_rows
    if roles.id_column is not None:
        ids = raw.column(roles.id_column).combine_chunks().cast(pa.string())
        if ids.null_count:
            bad = offset + pc.index(ids.is_null(), True).as_py()
            raise PipelineError(f"{source} row {bad}: id column {roles.id_column!r} is empty")
    else:
        ids = pa.array([f"{f.label}:{i}" for i in range(offset, offset + n)], pa.string())
    columns: dict[str, pa.Array] = {ROW_ID: ids}
    for role in ROLES:
        if role not in roles.roles:
            continue
        cols = roles.roles[role]
        if role == "messages":
            columns[role] = _as_messages(raw.column(cols[0]), source)
        elif role in TEXT_ROLES:
            parts = [_as_strings(raw.column(c), role, source) for c in cols]
            value = parts[0]
            for extra in parts[1:]:
                # "instruction\n\ninput" when the context is there, the instruction alone when not.
                has = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(extra), ""), False)
                joined = pc.binary_join_element_wise(value, extra, "\n\n")
                value = pc.if_else(has, joined, value)
            columns[role] = value
        else:
            label = raw.column(cols[0]).combine_chunks()
            if pa.types.is_nested(label.type):
                raise PipelineError(f"{source}: label column {cols[0]!r} holds {label.type}, expected a single value")
            columns[role] = label.cast(pa.string()) if pa.types.is_large_string(label.type) else label
    for name in roles.extra:
        columns[name] = raw.column(name).combine_chunks()
    columns[CHANGED_BY] = pa.array([""] * n, pa.string())
    return pa.table(columns)


@dataclass
class Reader:
    """Reads one dataset's inputs as canonical shards."""

    dataset: DatasetConfig
    shard_rows: int

    def __post_init__(self) -> None:
        self.files = expand_inputs(self.dataset)
        self.role_maps = {f: resolve_roles(self.dataset.columns, _column_names(f), str(f.path)) for f in self.files}
        kinds = {(rm.info.kind, rm.info.roles) for rm in self.role_maps.values()}
        if len(kinds) > 1:
            found = ", ".join(f"{f.path}: {rm.info.kind} {list(rm.info.roles)}" for f, rm in self.role_maps.items())
            raise PipelineError(f"dataset {self.dataset.name}: inputs disagree on roles ({found})")

    @property
    def info(self) -> DatasetInfo:
        return next(iter(self.role_maps.values())).info

    def shards(self) -> Iterator[pa.Table]:
        """Canonical tables of ``shard_rows`` rows (the last of each file may be shorter)."""
        label_type: pa.DataType | None = None
        for f in self.files:
            offset = 0
            for raw in _raw_batches(f, self.role_maps[f], self.shard_rows):
                if raw.num_rows == 0:
                    continue
                table = to_canonical(raw, self.role_maps[f], f, offset)
                offset += raw.num_rows
                if "label" in table.column_names:
                    table, label_type = _unify_label(table, label_type, f)
                yield table


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
