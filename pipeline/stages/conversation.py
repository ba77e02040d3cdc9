"""Stage ``conversation``: remove conversations a trainer would learn the wrong thing from.

A chat template renders whatever it is given: two user turns in a row, a reply that is
empty, a conversation that ends on the user's question. Training on them teaches the
model to answer nothing, to talk to itself, or (when a trainer masks everything but the
replies) nothing at all while still costing a step. Each row's ``messages`` are checked
in order, and the first problem found removes the row as ``conversation:<problem>``,
with the index of the message at fault in the detail:

``unknown_role``           a role outside ``roles`` (``human``/``bot`` in an OpenAI file:
                           the readers keep a role no tag names as written)
``misplaced_system``       a system turn that is not the first message
``first_turn``             the first turn after the system prompt is not the user's
``role_order``             a turn that cannot follow the one before it (two user turns
                           in a row, assistant after assistant)
``orphan_tool_result``     a tool turn that answers no assistant call
``missing_tool_result``    an assistant call not followed by a tool turn
``empty_turn``             a turn with no text (blank or null content); an assistant
                           turn that only calls tools is not empty, nor is one whose
                           content the readers kept as written in ``extra`` (a list of
                           content parts: text, images)
``bad_tool_call``          ``tool_calls`` that are not a list of calls naming a function
``tool_arguments``         a call whose arguments do not parse as a JSON object
``unknown_tool``           a call to a function the row's ``tools`` do not define (only
                           when the row has ``tools``)
``last_turn``              a conversation that does not end with a role of ``last_turn``
``no_messages``            a null or empty list (the ``missing`` stage removes these
                           first, as ``missing:messages``, when it is on)

The order is: system first, then user and assistant alternating, an assistant turn
that calls tools followed by one or more tool turns, which the assistant then answers
(or calls again). ShareGPT's ``function_call`` and ``observation`` turns reach this stage
as an assistant turn with ``tool_calls`` and a ``tool`` turn (``pipeline.readers``).

The stage runs right after ``missing``: text is repaired and stripped of noise first,
so a turn that held nothing but HTML or boilerplate is seen as the empty turn it has
become, and a conversation with no text at all leaves as ``missing:messages``, so the
reasons here are about structure only. It applies to datasets with a ``messages``
column and does nothing for others.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.schema import ROW_ID, TOOLS
from pipeline.stages.base import Stage, StageConfig, StageOutput, split_rows

ROLES = ("system", "user", "assistant", "tool")
PARTS = "<content parts>"
"""What a turn's content reads as here when its ``content`` is a list of parts, kept
as written in the message's ``extra``: text the stage cannot judge, but not an empty turn."""


class ConversationConfig(StageConfig):
    roles: list[str] = Field(default_factory=lambda: list(ROLES))
    """Roles a message may have; any other is ``conversation:unknown_role``."""
    last_turn: list[str] = Field(default_factory=lambda: ["assistant"])
    """Roles a conversation may end with. ``[assistant, user]`` keeps conversations
    that end on a question (for preference data or generation prompts)."""
    alternate: bool = True
    """User and assistant turns alternate; ``false`` lets a role follow itself (data
    that splits one reply over several messages)."""
    empty_turns: bool = False
    """Keep conversations with an empty turn (blank or null content, no tool calls)."""
    check_tools: bool = True
    """Check tool calls: they parse, their arguments are a JSON object, and their
    function is one of the row's ``tools`` when it has any."""


@dataclass(frozen=True)
class Problem:
    reason: str
    index: int
    """The message at fault (for ``no_messages``, 0)."""
    detail: dict[str, Any]


class ConversationStage(Stage):
    name = "conversation"
    config_model = ConversationConfig
    config: ConversationConfig
    kinds = frozenset({"instruction"})

    def applies(self) -> bool:
        """Only conversations are checked: prompt/response rows have no turns to order."""
        return super().applies() and "messages" in self.info.roles

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        column = table.column("messages").combine_chunks()
        flat = pc.list_flatten(column)
        lengths = np.asarray(pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False))
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        fields = {f.name for f in flat.type}
        roles = pc.struct_field(flat, "role").to_pylist()
        contents = pc.struct_field(flat, "content").to_pylist()
        calls = pc.struct_field(flat, "tool_calls").to_pylist() if "tool_calls" in fields else [None] * len(flat)
        if "extra" in fields:  # content parts the readers kept as written: the turn is not empty
            extras = pc.struct_field(flat, "extra").to_pylist()
            contents = [PARTS if c is None and _holds_content(e) else c for c, e in zip(contents, extras)]
        tools = table.column(TOOLS).to_pylist() if TOOLS in table.column_names else [None] * table.num_rows

        problems: list[Problem | None] = []
        counters: Counter[str] = Counter()
        for row in range(table.num_rows):
            lo, hi = int(bounds[row]), int(bounds[row + 1])
            turns = [(roles[i], contents[i], calls[i]) for i in range(lo, hi)]
            problems.append(self.check(turns, tools[row]))
            counters["multi_turn"] += sum(1 for role, _, _ in turns if role == "user") > 1
            counters["with_system"] += bool(turns) and turns[0][0] == "system"
            counters["with_tool_calls"] += any(call for _, _, call in turns)

        drop = np.array([p is not None for p in problems], dtype=bool)
        found = [p for p in problems if p is not None]
        details = [{"message": p.index, **p.detail} for p in found]
        kept, removed, reasons = split_rows(table, drop, [f"conversation:{p.reason}" for p in found], details)
        counters.update(reasons)
        scores = pa.table(
            {
                ROW_ID: table.column(ROW_ID),
                "turns": pa.array(lengths, pa.int32()),
                "problem": pa.array([p.reason if p else None for p in problems], pa.string()),
                "message": pa.array([p.index if p else None for p in problems], pa.int32()),
            }
        )
        return StageOutput(kept=kept, removed=removed, counters=counters, scores=scores)

    def check(self, turns: list[tuple[str | None, str | None, str | None]], tools: str | None) -> Problem | None:
        """The first problem of one conversation (``(role, content, tool_calls)`` per
        message), or None when it has none."""
        cfg = self.config
        if not turns:
            return Problem("no_messages", 0, {})
        known = set(cfg.roles)
        defined = _tool_names(tools) if cfg.check_tools else None
        previous: str | None = None
        open_calls = False  # the previous assistant turn called tools no tool turn has answered yet
        for i, (role, content, calls) in enumerate(turns):
            if role not in known:
                return Problem("unknown_role", i, {"role": role})
            blank = content is None or not content.strip()
            if role == "system":
                if i:
                    return Problem("misplaced_system", i, {"role": role})
                if blank and not cfg.empty_turns:
                    return Problem("empty_turn", i, {"role": role})
                continue
            if open_calls and role != "tool":
                return Problem("missing_tool_result", i, {"role": role, "after": "assistant"})
            if role == "tool":
                if not (open_calls or previous == "tool"):
                    return Problem("orphan_tool_result", i, {"role": role, "after": previous})
            elif previous is None and role == "assistant":
                return Problem("first_turn", i, {"role": role})
            elif previous == "tool" and role != "assistant" or cfg.alternate and previous == role:
                return Problem("role_order", i, {"role": role, "after": previous})
            if blank and not calls and not cfg.empty_turns:
                return Problem("empty_turn", i, {"role": role})
            open_calls = False
            if calls:
                if role != "assistant":
                    return Problem("bad_tool_call", i, {"role": role, "error": "only assistant turns call tools"})
                if cfg.check_tools and (problem := _check_calls(calls, defined, i)) is not None:
                    return problem
                open_calls = True
            previous = role
        if open_calls:
            return Problem("missing_tool_result", len(turns) - 1, {"role": "assistant", "after": None})
        last = turns[-1][0]
        if last not in cfg.last_turn:
            return Problem("last_turn", len(turns) - 1, {"role": last, "expected": cfg.last_turn})
        return None


def _holds_content(extra: str | None) -> bool:
    """Whether a message's ``extra`` holds its content (a list of parts, kept as written)."""
    if extra is None:
        return False
    try:
        return json.loads(extra).get("content") is not None
    except (ValueError, AttributeError):
        return False


def _tool_names(tools: str | None) -> set[str] | None:
    """The function names a row's ``tools`` define (OpenAI's ``{"type": "function",
    "function": {"name"}}`` or a bare ``{"name"}``), or None when it defines none or
    they cannot be read (then calls are not checked against them)."""
    if not tools:
        return None
    try:
        parsed = json.loads(tools)
    except ValueError:
        return None
    names = set()
    for tool in parsed if isinstance(parsed, list) else [parsed]:
        if isinstance(tool, dict):
            function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
            if isinstance(function.get("name"), str):
                names.add(function["name"])
    return names or None


def _check_calls(calls: str, defined: set[str] | None, index: int) -> Problem | None:
    """The first problem of one turn's ``tool_calls`` (JSON text of OpenAI-shaped calls)."""

    def bad(error: str, **more: Any) -> Problem:
        return Problem("bad_tool_call", index, {"role": "assistant", "error": error, **more})

    try:
        parsed = json.loads(calls)
    except ValueError as exc:
        return bad(f"tool_calls is not JSON ({exc})")
    if not isinstance(parsed, list) or not parsed:
        return bad("tool_calls is not a non-empty list")
    for n, call in enumerate(parsed):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            return bad("a call has no function object", call=n)
        name = function.get("name")
        if not isinstance(name, str) or not name:
            return bad("a call names no function", call=n)
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                return Problem("tool_arguments", index, {"role": "assistant", "call": n, "function": name, "error": str(exc)})
        if not isinstance(arguments, dict):
            return Problem(
                "tool_arguments", index,
                {"role": "assistant", "call": n, "function": name, "error": f"arguments are {type(arguments).__name__}, expected an object"},
            )
        if defined is not None and name not in defined:
            return Problem("unknown_tool", index, {"role": "assistant", "call": n, "function": name, "tools": sorted(defined)})
    return None
