"""The prompt side and the response side of each row, as one string per row.

Stages that judge an instruction row by one side (decontamination matching only what a
model is asked, or only what it is taught to answer) need that side whatever the row's
layout: ``prompt`` and ``response`` columns, or a ``messages`` conversation, where the
assistant's turns are the response and every other turn (system, user, tool results)
the prompt. A dataset without those roles (``text``, ``classification``) has no sides:
its whole text is used, and :func:`has_sides` says so, for the caller to report.
"""

from __future__ import annotations

from typing import Literal

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
