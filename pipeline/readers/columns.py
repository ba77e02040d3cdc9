"""Typing a source's columns: text roles as strings, labels as one scalar type, and
every other column as what Arrow can hold, JSON text where its values mix types.

A column a user passes through (an ``id``, a ``source``, a ``meta`` object) must reach
the published Parquet whole, and Parquet needs one type per column. JSON gives no such
promise: ``meta`` may be an object in one row and a string in the next. Such a column
is stored as the JSON text of each value (``docs/reports.md`` says so), and a file whose
batches typed a column differently is given one type for all of them by
:func:`unify_batches`, so that every shard of a file has the same schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.readers.bad_records import BadRecordError
from pipeline.schema import CHANGED_BY, JSON_TEXT

JSON_KINDS = {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list", dict: "an object"}


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def json_kind(value: Any) -> str:
    """How a JSON value is named in messages."""
    return "null" if value is None else JSON_KINDS.get(type(value), type(value).__name__)


def arrow_strings(column: pa.ChunkedArray, name: str, role: str, source: str) -> pa.Array:
    column = column.combine_chunks()
    if pa.types.is_string(column.type):
        return column
    if pa.types.is_large_string(column.type) or pa.types.is_null(column.type):
        return column.cast(pa.string())
    raise PipelineError(f"{source}: column {name!r} for role {role!r} holds {column.type}, expected text")


def value_strings(values: list[Any], name: str, role: str, source: str, where: Callable[[int], str]) -> pa.Array:
    for i, value in enumerate(values):
        if value is not None and not isinstance(value, str):
            raise BadRecordError(
                f"{source} {where(i)}: column {name!r} for role {role!r} holds {json_kind(value)}, expected text",
                "bad_value", index=i,
            )
    return pa.array(values, pa.string())


def arrow_scalars(column: pa.ChunkedArray, name: str, role: str, source: str) -> pa.Array:
    column = column.combine_chunks()
    if pa.types.is_nested(column.type):
        raise PipelineError(f"{source}: {role} column {name!r} holds {column.type}, expected a single value")
    return column.cast(pa.string()) if pa.types.is_large_string(column.type) else column


def value_scalars(values: list[Any], name: str, role: str, source: str, where: Callable[[int], str]) -> pa.Array:
    """Single values of one kind (numbers may mix integers and decimals)."""
    first: str | None = None
    for i, value in enumerate(values):
        if value is None:
            continue
        kind = json_kind(value)
        if isinstance(value, (list, dict)):
            raise BadRecordError(
                f"{source} {where(i)}: {role} column {name!r} holds {kind}, expected a single value", "bad_value", index=i
            )
        if first is None:
            first = kind
        elif kind != first:
            raise PipelineError(f"{source} {where(i)}: {role} column {name!r} holds {kind}, earlier rows {first}")
    return pa.array(values)


def value_array(values: list[Any]) -> tuple[pa.Array, bool]:
    """Values as an Arrow array, or as JSON text when Arrow cannot type them as one
    column (mixed types, integers beyond 64 bits, objects without keys)."""
    try:
        array = pa.array(values)
        if storable(array.type):
            return array, False
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        pass
    return json_strings(values), True


def json_strings(values: list[Any]) -> pa.Array:
    """Each value's JSON text; null stays null."""
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values], pa.string())


def storable(t: pa.DataType) -> bool:
    """Can Parquet store this type? (It cannot store a struct without fields.)"""
    if pa.types.is_struct(t):
        return t.num_fields > 0 and all(storable(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return storable(t.value_type)
    return True


def unify_batches(tables: Sequence[pa.Table], as_json: list[set[str]], fixed: set[str]) -> Iterator[pa.Table]:
    """One schema for all the canonical tables of one file, given one table at a time.

    ``as_json[i]`` names the columns of ``tables[i]`` already stored as JSON text;
    ``fixed`` the columns whose type the reader set (roles, bookkeeping), left alone.
    A column missing from a table is added as nulls; one whose tables disagree on its
    type is widened where Arrow can (integers to decimals) and stored as JSON text in
    every table where it cannot, marked so by its field's metadata
    (:data:`pipeline.schema.JSON_TEXT`). ``changed_by`` stays the last column.

    ``tables`` may be a sequence that loads each table when asked (the reader's
    batches, spilled to disk): it is read through twice, a table at a time, and a
    table is loaded a third time only if one of its columns must be tried in the
    common type. Memory then holds one table, whatever the file's size.
    """
    schemas = [table.schema for table in tables]
    order: dict[str, None] = {}
    for schema in schemas:
        order.update(dict.fromkeys(n for n in schema.names if n != CHANGED_BY))
    names = [*order, CHANGED_BY]
    json_columns: set[str] = set().union(*as_json)
    types: dict[str, pa.DataType] = {}
    for name in names:
        if name in fixed or name in json_columns:
            continue
        known = [pa.schema([(name, s.field(name).type)]) for s in schemas if name in s.names]
        known = [k for k in known if not pa.types.is_null(k.field(name).type)]
        try:
            types[name] = pa.unify_schemas(known, promote_options="permissive").field(name).type if known else pa.null()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            json_columns.add(name)
    for index, schema in enumerate(schemas):
        # a column typed otherwise than the common type must cast to it, or it is JSON text in every table
        other = [n for n, t in types.items() if n in schema.names and schema.field(n).type != t]
        if not other:
            continue
        table = tables[index]
        for name in other:
            try:
                table.column(name).cast(types[name])
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                json_columns.add(name)
                del types[name]
    for table, encoded in zip(tables, as_json):
        columns: dict[str, pa.ChunkedArray | pa.Array] = {}
        for name in names:
            if name not in table.column_names:
                columns[name] = pa.nulls(table.num_rows, pa.string() if name in json_columns else types[name])
            elif name in json_columns and name not in encoded:
                columns[name] = json_strings(table.column(name).to_pylist())
            elif name in types:
                columns[name] = table.column(name).cast(types[name])
            else:
                columns[name] = table.column(name)
        fields = [pa.field(n, columns[n].type, metadata=JSON_TEXT if n in json_columns else None) for n in names]
        yield pa.table(columns, schema=pa.schema(fields))
