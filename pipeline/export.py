"""Write a published version back as the JSON Lines a trainer reads: Alpaca, ShareGPT
or OpenAI messages, with the LLaMA-Factory and axolotl settings that load the file.

A version holds conversations in the canonical form (``pipeline.schema``); this is its
inverse of :mod:`pipeline.readers.formats`, so that reading an export gives the version's
rows again: the same ``row_id`` (written as the source's id key), messages, tools and
passed-through columns. Roles are written in the target format's standard names (user
is ``human`` in ShareGPT). What a format cannot hold is never dropped: a message's
fields other than role and content (names, tool call ids, weights, extra keys) are
written as keys of the message, which trainers skip; a row Alpaca has no place for
(tool calls, per-message fields, turns that are not user/assistant pairs) stops the
export with one line naming it, and the formats that can hold it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.files import write_atomically
from pipeline.inspect import VersionRef
from pipeline.readers.formats import DEFAULT_TAGS, TAG_ROLES, calls_to_text, plain_message
from pipeline.schema import AUGMENT_OPS, CHANGED_BY, JSON_TEXT, ORIGIN, ROW_ID, SOURCE_ROW_ID, SPLIT, TOOLS
from pipeline.version import SPLIT_ORDER

EXPORT_FORMATS = ("alpaca", "sharegpt", "openai")
BOOKKEEPING = (ROW_ID, CHANGED_BY, SPLIT, ORIGIN, SOURCE_ROW_ID, AUGMENT_OPS)
"""The pipeline's own columns, not the data's: not exported."""
CONTENT_COLUMNS = ("messages", "prompt", "response", TOOLS)
MESSAGE_KEYS = ("name", "tool_calls", "tool_call_id", "weight")
"""Message fields written as keys of their own (``extra`` is spread into the message)."""
ROLE_NAMES = {
    fmt: {TAG_ROLES[key]: str(name) for key, name in tags.items() if key in TAG_ROLES and key != "function_tag" and name}
    for fmt, tags in DEFAULT_TAGS.items()
}
"""Canonical role -> the format's standard name (ShareGPT: user is ``human``); a role not
listed is written as it is."""
FUNCTION_TAG = str(DEFAULT_TAGS["sharegpt"]["function_tag"])
"""ShareGPT's role of a tool call turn."""


class Unfit(ValueError):
    """A row the target format cannot hold."""


@dataclass
class Export:
    """What an export wrote, and how to load it."""

    path: Path
    format: str
    rows: dict[str, int]
    """Rows per split."""
    present: set[str] = field(default_factory=set)
    """What the rows use that a loader must be told about: ``system``, ``history``,
    ``tools``, ``tool_calls``, ``name``, ``tool_call_id``, ``weight``."""
    notes: Counter[str] = field(default_factory=Counter)
    """What the format made of the data, with counts (e.g. text kept beside a call)."""

    def dataset_info(self, name: str) -> dict[str, Any]:
        """The entry of LLaMA-Factory's ``data/dataset_info.json`` that loads the file."""
        entry: dict[str, Any] = {"file_name": str(self.path.resolve())}
        if self.format == "alpaca":
            columns = {"prompt": "instruction", "query": "input", "response": "output"}
            columns.update({key: key for key in ("system", "history") if key in self.present})
            return {name: {**entry, "formatting": "alpaca", "columns": columns}}
        tags = {k: v for k, v in DEFAULT_TAGS[self.format].items() if v is not None}
        columns = {"messages": "conversations" if self.format == "sharegpt" else "messages"}
        if TOOLS in self.present:
            columns["tools"] = TOOLS
        return {name: {**entry, "formatting": "sharegpt", "columns": columns, "tags": tags}}

    def axolotl(self) -> str:
        """The ``datasets:`` block of an axolotl config that loads the file."""
        lines = ["datasets:", f"  - path: {self.path.resolve()}", "    ds_type: json"]
        if self.format == "alpaca":
            return "\n".join(lines + ["    type: alpaca"])
        lines += ["    type: chat_template"]
        if self.format == "sharegpt":
            lines += ["    field_messages: conversations", "    message_property_mappings:",
                      "      role: from", "      content: value", "    roles:"]
            names = ROLE_NAMES["sharegpt"]
            lines += [f"      {role}: [{names[role]}]" for role in ("user", "assistant", "system", "tool")]
            return "\n".join(lines)
        lines += ["    field_messages: messages"]
        if TOOLS in self.present:
            lines += [f"    field_tools: {TOOLS}"]
        mapped = [key for key in ("name", "tool_calls", "tool_call_id") if key in self.present]
        if mapped:
            lines += ["    message_property_mappings:", "      role: role", "      content: content"]
            lines += [f"      {key}: {key}" for key in mapped]
        if "weight" in self.present:
            lines += ["    message_field_training: weight"]
        return "\n".join(lines)

    def loader_notes(self) -> list[str]:
        """What a loader will not read of the file, said plainly."""
        notes = []
        if self.format == "openai" and "tool_calls" in self.present:
            notes.append("LLaMA-Factory reads tool calls as ShareGPT function_call turns: export --format sharegpt for it")
        if self.format == "sharegpt" and "tool_calls" in self.present:
            notes.append("axolotl reads tool calls from OpenAI messages: export --format openai for it")
        if self.format == "alpaca" and self.present & {"system", "history"}:
            notes.append("axolotl's alpaca type reads instruction, input and output only: export --format sharegpt "
                         "or openai to train on the system prompts and history with it")
        return notes + [f"{count} {note}" for note, count in sorted(self.notes.items())]


def export_version(ref: VersionRef, fmt: str, out: Path, split: str | None = None) -> Export:
    """Write ``ref``'s kept rows (every split, or ``split``) to ``out`` as ``fmt`` JSON Lines."""
    if fmt not in EXPORT_FORMATS:
        raise PipelineError(f"--format {fmt}: expected one of {', '.join(EXPORT_FORMATS)}")
    kind = ref.manifest.get("kind")
    if kind != "instruction":
        raise PipelineError(f"{ref.label} is a {kind} dataset; export writes instruction data (prompt/response or messages)")
    files = _data_files(ref, split)
    id_key = (ref.manifest.get("config", {}).get("columns", {}) or {}).get("id") or "id"
    export = Export(path=out, format=fmt, rows={})
    unfit: list[tuple[str, str]] = []

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            for split_name, row in _rows(files):
                try:
                    record = _record(row, fmt, id_key, export)
                except Unfit as exc:
                    unfit.append((row[ROW_ID], str(exc)))
                    continue
                _write_line(fh, record)
                export.rows[split_name] = export.rows.get(split_name, 0) + 1
        if unfit:
            first, why = unfit[0]
            raise PipelineError(
                f"{len(unfit)} rows of {ref.label} cannot be written as {fmt} (first: row {first!r}, {why}); "
                f"export them as sharegpt or openai"
            )

    try:
        write_atomically(out, write)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise PipelineError(f"--out {out}: cannot write it ({exc.strerror or exc}{where})") from exc
    return export


def _data_files(ref: VersionRef, split: str | None) -> list[tuple[str, Path]]:
    """(split, file) of the version's data, splits in their usual order."""
    files = []
    for path in sorted((ref.path / "data").glob("*.parquet")):
        files.append((path.name.split("-", 1)[0], path))
    if not files:
        raise PipelineError(f"{ref.path} is not a version folder (no data/*.parquet)")
    order = {name: i for i, name in enumerate(SPLIT_ORDER)}
    files.sort(key=lambda sf: (order.get(sf[0], len(order)), sf[0], sf[1].name))
    if split is not None:
        chosen = [sf for sf in files if sf[0] == split]
        if not chosen:
            splits = ", ".join(dict.fromkeys(name for name, _ in files))
            raise PipelineError(f"--split {split}: {ref.label} has no such split (splits: {splits})")
        return chosen
    return files


def _rows(files: list[tuple[str, Path]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each row with its split; a column the reader stored as JSON text (its values mixed
    types) gets its values back."""
    for split, path in files:
        data = pq.ParquetFile(path)
        encoded = [f.name for f in data.schema_arrow if f.metadata == JSON_TEXT]
        for batch in data.iter_batches():
            for row in batch.to_pylist():
                for name in encoded:
                    if row[name] is not None:
                        row[name] = json.loads(row[name])
                yield split, row


def _write_line(fh: TextIO, record: dict[str, Any]) -> None:
    fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def _record(row: dict[str, Any], fmt: str, id_key: str, export: Export) -> dict[str, Any]:
    """One row in the target format: its id, its conversation, its other columns."""
    if "messages" in row:
        messages = row["messages"]
    else:
        messages = [plain_message("user", row.get("prompt")), plain_message("assistant", row.get("response"))]
    tools = row.get(TOOLS)
    if fmt == "alpaca":
        body = _alpaca(messages, tools, "messages" in row, export)
    elif fmt == "sharegpt":
        body = _sharegpt(messages, tools, export)
    else:
        body = _openai(messages, tools, export)
    record = {id_key: row[ROW_ID], **body}
    for name, value in row.items():
        if name in BOOKKEEPING or name in CONTENT_COLUMNS:
            continue
        if name in record:
            raise PipelineError(f"row {row[ROW_ID]!r}: its column {name!r} has the name {fmt} gives a field of its own")
        record[name] = value
    return record


def _alpaca(messages: list[dict[str, Any]] | None, tools: str | None, chat: bool, export: Export) -> dict[str, Any]:
    """instruction/input/output, the system prompt and the earlier pairs as history.
    A conversation dataset always gets ``history`` (``[]`` for one pair), so that it
    reads back as a conversation."""
    if tools is not None:
        raise Unfit("it offers tools")
    turns = list(messages or [])
    for m in turns:
        held = [key for key in (*MESSAGE_KEYS, "extra") if m[key] is not None]
        if held:
            raise Unfit(f"a {m['role']} message has {held[0]}")
    system = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else None
    roles = [m["role"] for m in turns]
    if not roles or roles != ["user", "assistant"] * (len(roles) // 2):
        raise Unfit(f"its turns ({', '.join(roles) or 'none'}) are not user/assistant pairs")
    pairs = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns), 2)]
    body: dict[str, Any] = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1]}
    if system is not None:
        body["system"] = system
        export.present.add("system")
    if chat:
        body["history"] = pairs[:-1]
        export.present.add("history")
    return body


def _sharegpt(messages: list[dict[str, Any]] | None, tools: str | None, export: Export) -> dict[str, Any]:
    """``conversations`` of from/value; the system prompt stays the first turn (both
    LLaMA-Factory and axolotl read it there), a tool call is a ``function_call`` turn
    (see :func:`~pipeline.readers.formats.calls_to_text`)."""
    conversations = []
    for m in messages or []:
        if m["tool_calls"] is not None and m["role"] == "assistant":
            exact = m["source_role"] == FUNCTION_TAG  # read from a ShareGPT turn: written back as it was
            turn: dict[str, Any] = {"from": FUNCTION_TAG, "value": calls_to_text(m["tool_calls"], exact)}
            export.present.add("tool_calls")
            if m["content"] is not None:
                turn["content"] = m["content"]
                export.notes["assistant turns with text beside their tool calls: the text is kept under the turn's key "
                             "'content', which trainers do not read"] += 1
            conversations.append(_message_keys(turn, {**m, "tool_calls": None}, export))
        else:
            turn = {"from": ROLE_NAMES["sharegpt"].get(m["role"], m["role"]), "value": m["content"]}
            conversations.append(_message_keys(turn, m, export))
    body: dict[str, Any] = {"conversations": conversations}
    if tools is not None:
        body[TOOLS] = tools
        export.present.add(TOOLS)
    return body


def _openai(messages: list[dict[str, Any]] | None, tools: str | None, export: Export) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [_message_keys({"role": m["role"], "content": m["content"]}, m, export) for m in messages or []]
    }
    if tools is not None:
        body[TOOLS] = _json_or_text(tools)
        export.present.add(TOOLS)
    return body


def _message_keys(turn: dict[str, Any], m: dict[str, Any], export: Export) -> dict[str, Any]:
    """``turn`` with the message's other fields as keys: name, tool calls (as JSON),
    tool call id, weight (a whole number as one), then its extra keys. An extra key
    may stand where the turn's content is null (a content that was a list of parts)."""
    for key in MESSAGE_KEYS:
        value = m[key]
        if value is None:
            continue
        if key == "tool_calls":
            value = json.loads(value)
        elif key == "weight" and float(value).is_integer():
            value = int(value)
        turn[key] = value
        export.present.add(key)
    for key, value in json.loads(m["extra"] or "{}").items():
        if turn.get(key) is not None:
            raise PipelineError(f"a {m['role']} message has the key {key!r} twice: as a field and in its extra keys")
        turn[key] = value
    return turn


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
