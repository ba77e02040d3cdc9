"""Conversation formats: Alpaca, ShareGPT and OpenAI rows, told apart by their columns,
read into one canonical ``messages`` column (see ``pipeline.schema.MESSAGE_FIELDS``).

- **OpenAI** (``messages`` of ``{role, content}``; ``name``, ``tool_calls``,
  ``tool_call_id``, ``weight``; a row's ``tools``) is the canonical form itself.
- **ShareGPT** (``conversations`` of ``{from, value}``; a row's ``system`` and
  ``tools``): roles are normalised by tags, as LLaMA-Factory does (``human`` -> user,
  ``gpt`` -> assistant, ``observation`` -> tool), and a ``function_call`` turn, whose
  value is the call as JSON, becomes an assistant message with ``tool_calls``. The
  top-level system prompt becomes the first message.
- **Alpaca** with ``history`` or ``system``: the system prompt, each ``[prompt,
  response]`` pair of the history, then instruction (+ input) and output. Plain Alpaca
  stays ``prompt``/``response`` (:mod:`pipeline.readers.roles`).

Nothing of a message is dropped: a key the struct has no field for goes, with its value,
into the message's ``extra`` (JSON text), and so does a known key whose value has another
type than its field (a ``content`` that is a list of parts). Roles no tag names are kept
as written, for the conversation check to judge. :mod:`pipeline.export` writes the
canonical form back in each format, and the round trip gives the same rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.inputs import ColumnsConfig, TagsConfig
from pipeline.readers.bad_records import BadRecordError
from pipeline.readers.columns import json_kind
from pipeline.readers.files import RawBatch
from pipeline.readers.roles import AUTO_PROMPT_CONTEXT, PROMPT_JOIN, TextLayout
from pipeline.schema import CONVERSATION_TYPE, MESSAGE_FIELDS, TOOLS, DatasetInfo

CONVERSATION_FORMATS = ("alpaca", "sharegpt", "openai")
DEFAULT_COLUMNS = {"sharegpt": "conversations", "openai": "messages"}
DEFAULT_TAGS: dict[str, dict[str, str | None]] = {
    "sharegpt": {
        "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "system_tag": "system", "function_tag": "function_call", "observation_tag": "observation",
    },
    "openai": {
        "role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
        "system_tag": "system", "function_tag": None, "observation_tag": "tool",
    },
}
TAG_ROLES = {
    "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system",
    "function_tag": "assistant", "observation_tag": "tool",
}
"""The canonical role each role tag stands for."""
ALPACA_COLUMNS = {"prompt": "instruction", "response": "output", "system": "system", "history": "history"}
MESSAGE_FIELD_NAMES = tuple(f.name for f in MESSAGE_FIELDS)
TEXT_FIELDS = ("name", "tool_call_id")
"""Known message keys held as text; the content key is the format's ``content_tag``."""


class RecordError(ValueError):
    """A record the format cannot read; the layout adds the file and line."""


def dumps(value: Any) -> str:
    """The JSON text the canonical table keeps nested values as."""
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Tags:
    """A format's message keys and role names, resolved from the config and defaults."""

    role: str
    content: str
    roles: dict[str, str]
    """Role as written -> canonical role."""
    calls: frozenset[str]
    """Roles whose content is a tool call."""

    @classmethod
    def of(cls, fmt: str, config: TagsConfig) -> Tags:
        merged = {key: getattr(config, key) if getattr(config, key) is not None else value
                  for key, value in DEFAULT_TAGS[fmt].items()}
        roles: dict[str, str] = {}
        calls: set[str] = set()
        for key, role in TAG_ROLES.items():
            names = merged[key]
            for name in [names] if isinstance(names, str) else names or []:
                roles[name] = role
                if key == "function_tag":
                    calls.add(name)
        return cls(role=str(merged["role_tag"]), content=str(merged["content_tag"]), roles=roles, calls=frozenset(calls))


def plain_message(role: str, content: str | None) -> dict[str, Any]:
    return {**dict.fromkeys(MESSAGE_FIELD_NAMES), "role": role, "content": content}


def calls_from_text(value: Any) -> str:
    """``tool_calls`` of a ShareGPT ``function_call`` turn: its value is a call
    ``{"name", "arguments"}`` or a list of them, as JSON. A value that is not JSON is
    kept as the call's text, for the conversation check to refuse."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    calls = value if isinstance(value, list) else [value]
    return dumps([{"type": "function", "function": call} for call in calls])


def calls_to_text(tool_calls: str, exact: bool) -> str:
    """A ``function_call`` turn's value for ``tool_calls``. ``exact``: the inverse of
    :func:`calls_from_text`, for calls read from a ShareGPT turn. Otherwise (calls read
    from OpenAI messages) each call is written as LLaMA-Factory reads it: ``{"name",
    "arguments"}`` with the arguments as a JSON object, the call's other keys (its
    ``id``) beside them."""
    calls = []
    for call in json.loads(tool_calls):
        function = call.get("function") if isinstance(call, dict) and call.get("type") == "function" else None
        if exact and set(call if isinstance(call, dict) else ()) == {"type", "function"}:
            call = function
        elif not exact and isinstance(function, dict):
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    pass
            call = {**function, "arguments": arguments, **{k: v for k, v in call.items() if k not in ("type", "function")}}
        calls.append(call)
    if len(calls) != 1:
        return dumps(calls)
    call = calls[0]
    if isinstance(call, str):
        try:
            json.loads(call)
        except ValueError:
            return call  # text that was never JSON goes back as it came
    return dumps(call)


def read_message(message: Any, tags: Tags) -> dict[str, Any]:
    """One source message as the canonical struct."""
    if not isinstance(message, dict):
        raise RecordError(f"is {json_kind(message)}, expected an object")
    written = message.get(tags.role)
    if not isinstance(written, str):
        if tags.role not in message:
            raise RecordError(f"has no {tags.role!r} key (keys: {', '.join(message)}); set columns.format or columns.tags")
        raise RecordError(f"{tags.role!r} is {json_kind(written)}, expected text")
    out = plain_message(tags.roles.get(written, written), None)
    if out["role"] != written:
        out["source_role"] = written
    extra: dict[str, Any] = {}
    for key, value in message.items():
        if key == tags.role or value is None:
            continue
        if key == tags.content and written in tags.calls:
            out["tool_calls"] = calls_from_text(value)
        elif key == "tool_calls":
            out["tool_calls"] = dumps(value)
        elif key == "weight" and isinstance(value, (int, float)) and not isinstance(value, bool):
            out["weight"] = float(value)
        elif isinstance(value, str) and (key == tags.content or key in TEXT_FIELDS):
            out["content" if key == tags.content else key] = value
        else:
            extra[key] = value
    if extra:
        out["extra"] = dumps(extra)
    return out


def read_conversation(value: Any, tags: Tags, what: str) -> list[dict[str, Any]]:
    """A list of source messages (or its JSON text, as CSV holds it) as canonical ones."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise RecordError(f"{what} is text that is not JSON ({exc})") from exc
    if not isinstance(value, list):
        raise RecordError(f"{what} is {json_kind(value)}, expected a list of messages")
    messages = []
    for i, message in enumerate(value):
        try:
            messages.append(read_message(message, tags))
        except RecordError as exc:
            raise RecordError(f"{what}[{i}] {exc}") from exc
    return messages


def _text(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise RecordError(f"{what} is {json_kind(value)}, expected text")
    return value


def alpaca_messages(system: Any, history: Any, prompt: str | None, response: Any) -> list[dict[str, Any]]:
    """An Alpaca row as a conversation: system, the history's pairs, then the row's own pair."""
    messages = []
    if _text(system, "system"):
        messages.append(plain_message("system", system))
    if history is not None and not isinstance(history, list):
        raise RecordError(f"history is {json_kind(history)}, expected a list of [prompt, response] pairs")
    for j, pair in enumerate(history or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(p is None or isinstance(p, str) for p in pair)):
            raise RecordError(f"history[{j}] is not a [prompt, response] pair of texts")
        messages += [plain_message("user", pair[0]), plain_message("assistant", pair[1])]
    return messages + [plain_message("user", prompt), plain_message("assistant", _text(response, "output"))]


@dataclass(frozen=True)
class ChatLayout:
    """Rows whose conversation is read into ``messages`` (and ``tools``)."""

    format: str
    """``alpaca``, ``sharegpt`` or ``openai``."""
    messages: str | None
    """The conversation column (ShareGPT, OpenAI)."""
    system: str | None
    tools: str | None
    history: str | None
    prompt: tuple[str, ...] = ()
    """Alpaca: instruction (+ input)."""
    response: str | None = None
    tags: Tags | None = None

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(kind="instruction", roles=("messages",))

    @property
    def consumed(self) -> frozenset[str]:
        named = (self.messages, self.system, self.tools, self.history, *self.prompt, self.response)
        return frozenset(c for c in named if c is not None)

    @property
    def produced(self) -> tuple[str, ...]:
        return (TOOLS,) if self.tools is not None else ()

    def columns(self, batch: RawBatch) -> dict[str, pa.Array]:
        out = {"messages": self._messages(batch)}
        if self.tools is not None:
            out[TOOLS] = _tools(batch, self.tools)
        return out

    def _messages(self, batch: RawBatch) -> pa.Array:
        if self.format != "alpaca" and batch.table is not None and self.system is None:
            column = batch.table.column(self.messages)
            if column.type == CONVERSATION_TYPE:
                return column.combine_chunks()  # already canonical: a published version read back
        n = batch.num_rows

        def get(name: str | None) -> list[Any]:
            return batch.values(name) if name else [None] * n

        system = get(self.system)
        rows: list[list[dict[str, Any]] | None] = []
        if self.format == "alpaca":
            prompts = batch.strings(self.prompt[0], "prompt").to_pylist()
            contexts = batch.strings(self.prompt[1], "prompt").to_pylist() if len(self.prompt) > 1 else [None] * n
            history, response = get(self.history), get(self.response)
        else:
            conversations = get(self.messages)
        for i in range(n):
            try:
                if self.format == "alpaca":
                    prompt, context = prompts[i], contexts[i]
                    if prompt is not None and context is not None and context.strip():
                        prompt = prompt + PROMPT_JOIN + context
                    rows.append(alpaca_messages(system[i], history[i], prompt, response[i]))
                    continue
                lead = [plain_message("system", system[i])] if _text(system[i], "system") else []
                if conversations[i] is None:
                    rows.append(lead or None)
                else:
                    rows.append(lead + read_conversation(conversations[i], self.tags, self.messages))
            except RecordError as exc:
                raise BadRecordError(f"{batch.source} {batch.where(i)}: {exc}", "bad_conversation", index=i) from exc
        return pa.array(rows, CONVERSATION_TYPE)


def _tools(batch: RawBatch, name: str) -> pa.Array:
    """Tool definitions as JSON text; a string is kept as it is (ShareGPT writes them
    as JSON text already)."""
    if batch.table is not None and pa.types.is_string(batch.table.column(name).type):
        return batch.table.column(name).combine_chunks()
    return pa.array([v if v is None or isinstance(v, str) else dumps(v) for v in batch.values(name)], pa.string())


def detect(columns: ColumnsConfig, names: list[str]) -> str:
    """The format the columns show: a ``conversations`` column is ShareGPT, a
    ``messages`` column OpenAI, Alpaca's names with ``history`` or ``system`` Alpaca;
    anything else is read by its text roles."""
    available = set(names)
    if columns.messages is not None:
        return "sharegpt" if columns.messages == DEFAULT_COLUMNS["sharegpt"] else "openai"
    if DEFAULT_COLUMNS["sharegpt"] in available:
        return "sharegpt"
    if DEFAULT_COLUMNS["openai"] in available:
        return "openai"
    alpaca = {ALPACA_COLUMNS["prompt"], ALPACA_COLUMNS["response"]} <= available
    extended = columns.history is not None or columns.system is not None or bool({"history", "system"} & available)
    return "alpaca" if alpaca and extended else "text"


def layout_for(columns: ColumnsConfig, names: list[str], source: str) -> TextLayout | ChatLayout:
    """How ``source``'s rows become canonical rows, from ``columns.format`` or the
    columns present."""
    fmt = detect(columns, names) if columns.format == "auto" else columns.format
    available = set(names)

    def column(key: str, default: str | None) -> str | None:
        configured = getattr(columns, key)
        if configured is not None and configured not in available:
            raise PipelineError(f"columns.{key}: column {configured!r} not found in {source} (columns: {', '.join(names)})")
        return configured if configured is not None else (default if default in available else None)

    if fmt == "text":
        return TextLayout.of(columns, names, source)
    if fmt == "alpaca":
        history, system = column("history", "history"), column("system", "system")
        if history is None and system is None:
            return TextLayout.of(columns, names, source)
        prompt = columns.prompt or ALPACA_COLUMNS["prompt"]
        prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt)
        if columns.prompt is None and AUTO_PROMPT_CONTEXT in available:
            prompts = (*prompts, AUTO_PROMPT_CONTEXT)
        response = columns.response or ALPACA_COLUMNS["response"]
        for key, col in [("prompt", c) for c in prompts] + [("response", response)]:
            if col not in available:
                raise PipelineError(f"columns.{key}: column {col!r} not found in {source} (columns: {', '.join(names)})")
        return ChatLayout("alpaca", None, system, None, history, prompts, response)
    messages = column("messages", DEFAULT_COLUMNS[fmt])
    if messages is None:
        raise PipelineError(
            f"{source}: no {DEFAULT_COLUMNS[fmt]!r} column for format {fmt} (columns: {', '.join(names)}); "
            "map it with columns.messages"
        )
    system = column("system", "system" if fmt == "sharegpt" else None)
    return ChatLayout(fmt, messages, system, column("tools", TOOLS), None, tags=Tags.of(fmt, columns.tags))
