"""The canonical table every stage sees: roles as columns, plus bookkeeping columns.

Readers rename the user's columns to role names (``text``, ``label``, ``prompt``,
``response``, ``messages``), so stages never hard-code a source column name. Two
bookkeeping columns travel with every row: ``row_id`` (stable, unique) and
``changed_by`` (comma-separated names of the stages that rewrote the row).

Conversations (Alpaca with history or a system prompt, ShareGPT, OpenAI ``messages``)
all become one ``messages`` column of :data:`CONVERSATION_TYPE`, and the tool
definitions a row offers become a ``tools`` column (JSON text). The message struct
holds every field a trainer reads, so nothing of a message is lost between reading
and publishing (see ``docs/architecture.md``, "The canonical table").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROW_ID = "row_id"
CHANGED_BY = "changed_by"
ROLES = ("text", "label", "prompt", "response", "messages")
TEXT_ROLES = ("text", "prompt", "response")
MESSAGE_FIELDS = (
    pa.field("role", pa.string()),
    pa.field("content", pa.string()),
    pa.field("name", pa.string()),
    pa.field("tool_calls", pa.string()),
    pa.field("tool_call_id", pa.string()),
    pa.field("weight", pa.float64()),
    pa.field("source_role", pa.string()),
    pa.field("extra", pa.string()),
)
"""One message of a conversation. ``role`` is the normalised role (``human`` is read as
``user``); ``source_role`` the role as the source wrote it, when that differs.
``tool_calls`` is the JSON text of the OpenAI-shaped list of calls
(``[{"type": "function", "function": {"name", "arguments"}, ...}]``) and ``extra`` the
JSON text of every other key of the source message: JSON text because their values mix
types from row to row, which a Parquet column cannot hold."""
CONVERSATION_TYPE = pa.list_(pa.struct(MESSAGE_FIELDS))
"""What readers write for the ``messages`` role."""
MESSAGE_TYPE = pa.list_(pa.struct(MESSAGE_FIELDS[:2]))
"""The least a ``messages`` column holds: ``role`` and ``content``. Stages take any list
of structs that has these two and keep its other fields as they are."""
JSON_TEXT = {b"encoding": b"json"}
"""Field metadata of a passed-through column stored as JSON text, because its values
mix types (a number in one row, an object in the next): a reader of the Parquet, and
``pipeline.export``, can tell it from a column of plain text."""
TOOLS = "tools"
"""The column of a conversation's tool definitions: JSON text, null when it has none.
Not a role: no stage cleans it, and the ``missing`` stage never fills it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What stages need to know about a dataset: its kind and which roles it has."""

    kind: str
    roles: tuple[str, ...]

    @property
    def text_fields(self) -> tuple[str, ...]:
        """Columns holding free text, cleaned field by field (prompt and response apart)."""
        return tuple(r for r in (*TEXT_ROLES, "messages") if r in self.roles)

    @property
    def required(self) -> tuple[str, ...]:
        """Roles a row cannot do without for this kind."""
        return {
            "text": ("text",),
            "classification": ("text", "label"),
            "instruction": ("messages",) if "messages" in self.roles else ("prompt", "response"),
        }[self.kind]


def kind_of(roles: set[str] | tuple[str, ...]) -> str | None:
    """The dataset kind the roles imply, or None when they imply none."""
    roles = set(roles)
    if "messages" in roles or {"prompt", "response"} <= roles:
        return "instruction"
    if {"text", "label"} <= roles:
        return "classification"
    if "text" in roles:
        return "text"
    return None


def field_strings(table: pa.Table, field: str) -> pa.Array:
    """The strings of a text field as one flat array (message contents for ``messages``;
    null for a message that holds only tool calls)."""
    column = table.column(field).combine_chunks()
    if field == "messages":
        return pc.struct_field(pc.list_flatten(column), "content")
    return column


def replace_field_strings(table: pa.Table, field: str, strings: pa.Array) -> pa.Table:
    """Put back strings obtained from :func:`field_strings` after a transformation.

    For ``messages`` only each message's ``content`` is replaced: every other field of
    the message struct (tool calls, names, weights, extras) is carried over as it was.
    """
    idx = table.schema.get_field_index(field)
    if field != "messages":
        return table.set_column(idx, field, strings.cast(table.schema.field(field).type))
    column = table.column(field).combine_chunks()
    flat = pc.list_flatten(column)
    struct_type = flat.type
    children = [
        strings.cast(pa.string()) if struct_type.field(i).name == "content" else flat.field(i)
        for i in range(struct_type.num_fields)
    ]
    structs = pa.StructArray.from_arrays(children, fields=list(struct_type), mask=flat.is_null())
    lengths = np.asarray(pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
    rebuilt = pa.ListArray.from_arrays(offsets, structs, mask=column.is_null())
    return table.set_column(idx, table.schema.field(idx), rebuilt.cast(column.type))


def row_changed(table: pa.Table, field: str, before: pa.Array, after: pa.Array) -> pa.Array:
    """Per-row flag: did any string of ``field`` change between ``before`` and ``after``?"""
    diff = pc.fill_null(pc.not_equal(before, after), False)
    if field != "messages":
        return diff
    column = table.column(field).combine_chunks()
    parents = pc.list_parent_indices(column)
    flags = np.zeros(table.num_rows, dtype=bool)
    hit = np.asarray(diff.to_numpy(zero_copy_only=False), dtype=bool)
    flags[np.asarray(parents)[hit]] = True
    return pa.array(flags)


def transform_text_fields(
    table: pa.Table, info: DatasetInfo, fn: Callable[[pa.Array], pa.Array]
) -> tuple[pa.Table, pa.Array]:
    """Apply a vectorised string function to every text field; return the table and a
    per-row flag of the rows it changed."""
    changed = np.zeros(table.num_rows, dtype=bool)
    for field in info.text_fields:
        before = field_strings(table, field)
        after = fn(before)
        changed |= np.asarray(row_changed(table, field, before, after).to_numpy(zero_copy_only=False))
        table = replace_field_strings(table, field, after)
    return table, pa.array(changed)


def joined_text(table: pa.Table, info: DatasetInfo) -> pa.Array:
    """One string per row joining all its text fields, for row-level judgements
    (language, quality, dedup keys)."""
    parts = []
    for field in info.text_fields:
        if field == "messages":
            column = table.column(field).combine_chunks()
            contents = pc.struct_field(column.values, "content")
            joined = pc.binary_join(
                pa.ListArray.from_arrays(column.offsets, pc.fill_null(contents, "")), "\n"
            )
            parts.append(pc.fill_null(joined, ""))
        else:
            parts.append(pc.fill_null(table.column(field).combine_chunks(), ""))
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*parts, "\n")


ORIGIN = "origin"
SOURCE_ROW_ID = "source_row_id"
AUGMENT_OPS = "augment_ops"
SPLIT = "split"
ORIGINAL = "original"
"""``origin`` of rows read from the dataset's inputs; the others are ``augmented``
(made by the ``augment`` stage from ``source_row_id``) and ``rehearsal`` (mixed in
from a general-purpose dataset). Only original rows enter the ledger."""


def with_origin(table: pa.Table) -> pa.Table:
    """``table`` with the lineage columns ``origin``, ``source_row_id`` and
    ``augment_ops`` (original rows: ``original``, null, null), added when missing.

    Stages that add rows (augment, rehearsal) call this first, so their new rows and
    the originals share one schema."""
    n = table.num_rows
    if ORIGIN not in table.column_names:
        table = table.append_column(ORIGIN, pa.array([ORIGINAL] * n, pa.string()))
    if SOURCE_ROW_ID not in table.column_names:
        table = table.append_column(SOURCE_ROW_ID, pa.nulls(n, pa.string()))
    if AUGMENT_OPS not in table.column_names:
        table = table.append_column(AUGMENT_OPS, pa.nulls(n, pa.string()))
    return table
