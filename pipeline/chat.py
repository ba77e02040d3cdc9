"""Canonical conversations as a chat template takes them, tool calls included.

The canonical ``messages`` column (:mod:`pipeline.schema`) keeps a turn's
``tool_calls`` and a row's ``tools`` as JSON text, so that any shape of call survives
Parquet. A chat template wants them parsed, and a template that knows nothing of tools
(SmolLM2's, the plain one the trainer falls back to) would silently render a
tool-calling turn as an empty reply. Both readers of the rendering, the ``tokens`` stage
(counting) and the trainer (learning), prepare rows here, so what is counted is what is
trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

Message = dict[str, Any]


def template_features(template: str) -> tuple[bool, bool]:
    """Whether a chat template renders a turn's ``tool_calls`` and the ``tools``
    definitions itself (it names them)."""
    return "tool_calls" in template, "tools" in template.replace("tool_calls", "")


def prepare(
    messages: Sequence[Message], tools: str | None, calls_in_template: bool, tools_in_template: bool
) -> tuple[list[Message], dict[str, Any]]:
    """Canonical messages as a template takes them, and the template's extra arguments.

    ``tool_calls`` and ``tools`` are parsed from their JSON for a template that renders
    them; one that does not gets the calls as JSON text after the turn's content and the
    tool definitions as JSON text after the system prompt (a system turn is added when
    there is none), so the model still sees, and learns, them. A null content is ``""``.
    """
    out: list[Message] = []
    for m in messages:
        message: Message = {"role": m["role"], "content": m.get("content")}
        calls = m.get("tool_calls")
        if calls:
            if calls_in_template:
                message["tool_calls"] = _loads(calls)
            else:
                message["content"] = "\n".join(x for x in (message["content"], calls) if x)
        for key in ("name", "tool_call_id", "weight"):
            if m.get(key) is not None:
                message[key] = m[key]
        if message["content"] is None:
            message["content"] = ""
        out.append(message)
    extra: dict[str, Any] = {}
    if tools:
        if tools_in_template:
            extra["tools"] = _loads(tools)
        elif out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{tools}"}
        else:
            out.insert(0, {"role": "system", "content": tools})
    return out, extra


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
