"""The prompt side and the response side of each row, as one string per row.

Stages that judge an instruction row by one side (decontamination matching only what a
model is asked, or only what it is taught to answer) need that side whatever the row's
layout: ``prompt`` and ``response`` columns, or a ``messages`` conversation, where the
assistant's turns are the response and every other turn (system, user, tool results)
the prompt. A dataset without those roles (``text``, ``classification``) has no sides:
its whole text is used, and :func:`has_sides` says so, for the caller to report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import DatasetInfo, joined_text

Part = Literal["whole", "prompt", "response"]


def has_sides(info: DatasetInfo) -> bool:
    """Whether rows of this dataset have a prompt and a response to tell apart."""
    return "messages" in info.roles or {"prompt", "response"} <= set(info.roles)


def part_text(table: pa.Table, info: DatasetInfo, part: Part) -> pa.Array:
    """One string per row: all its text (``whole``), or one side of it; the whole text
    when the dataset has no sides. Turns of a conversation are joined by a line break;
    a null becomes an empty string."""
    if part == "whole" or not has_sides(info):
        return joined_text(table, info)
    if "messages" not in info.roles:
        return pc.fill_null(table.column(part).combine_chunks().cast(pa.string()), "")
    column = table.column("messages").combine_chunks()
    flat = column.values
    is_assistant = pc.fill_null(pc.equal(pc.struct_field(flat, "role"), "assistant"), False)
    wanted = is_assistant if part == "response" else pc.invert(is_assistant)
    contents = pc.if_else(wanted, pc.fill_null(pc.struct_field(flat, "content"), ""), "")
    joined = pc.binary_join(pa.ListArray.from_arrays(column.offsets, contents), "\n")
    return pc.fill_null(joined, "")


def turns_text(table: pa.Table, roles: Sequence[str], first: bool = False) -> pa.Array:
    """One string per row of a ``messages`` table: the contents of its turns whose role
    is one of ``roles`` and that has content (only the first such turn with ``first``),
    joined by a line break; ``""`` for a row without one. Other turns, and a turn that
    only calls tools, leave no blank line behind, so line statistics judge the turns as
    written."""
    column = table.column("messages").combine_chunks()
    flat = column.values
    parents = np.asarray(pc.list_parent_indices(column).to_numpy(zero_copy_only=False), dtype=np.int64)
    contents = pc.struct_field(flat, "content")
    wanted = pc.and_(pc.is_in(pc.struct_field(flat, "role"), pa.array(list(roles))), pc.is_valid(contents))
    wanted = np.asarray(pc.fill_null(wanted, False), bool)
    picked = np.flatnonzero(wanted)
    if first:
        _, at = np.unique(parents[picked], return_index=True)
        picked = picked[at]
    contents = contents.take(pa.array(picked, pa.int64()))
    counts = np.bincount(parents[picked], minlength=len(column))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pc.binary_join(pa.ListArray.from_arrays(offsets, contents), "\n").cast(pa.large_string())


def conversation_text(table: pa.Table) -> pa.Array:
    """One string per row of a ``messages`` table holding everything a turn says: its
    role, its content and its tool calls (JSON), a line per turn (``user: ...``). Two conversations are
    the same text only when they say the same things in the same roles and call the
    same tools: the dedup key of a conversation (a row that differs from another only
    in a tool call's arguments is not its copy)."""
    column = table.column("messages").combine_chunks()
    flat = column.values
    fields = {f.name for f in flat.type}
    role = pc.binary_join_element_wise(pc.fill_null(pc.struct_field(flat, "role"), ""), "", ":")
    pieces = [role, pc.fill_null(pc.struct_field(flat, "content"), "")]
    if "tool_calls" in fields:
        pieces.append(pc.fill_null(pc.struct_field(flat, "tool_calls"), ""))
    lines = pc.utf8_rtrim_whitespace(pc.binary_join_element_wise(*pieces, " "))
    return pc.fill_null(pc.binary_join(pa.ListArray.from_arrays(column.offsets, lines), "\n"), "")
