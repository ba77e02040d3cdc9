"""What a dataset is: its input files and which of their columns plays which role.

Kept apart from :mod:`pipeline.config` so that readers, and stages that read a second
dataset (``rehearsal``), can use it without importing every stage's config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.settings import StrictModel

ConversationFormat = Literal["auto", "alpaca", "sharegpt", "openai", "text"]


class TagsConfig(StrictModel):
    """How a conversation's messages name their keys and roles, as LLaMA-Factory's
    ``dataset_info.json`` ``tags`` do. An unset key takes the format's default (ShareGPT:
    ``from``, ``value``, ``human``, ``gpt``, ``system``, ``function_call``,
    ``observation``; OpenAI: ``role``, ``content``, ``user``, ``assistant``, ``system``,
    none, ``tool``). A role tag may list several names (``assistant_tag: [gpt, bard]``).
    A role that no tag names is kept as it is written, for the conversation check to
    judge."""

    role_tag: str | None = None
    """The message key that holds the role."""
    content_tag: str | None = None
    """The message key that holds the text."""
    user_tag: str | list[str] | None = None
    assistant_tag: str | list[str] | None = None
    system_tag: str | list[str] | None = None
    function_tag: str | list[str] | None = None
    """Roles whose content is a tool call as JSON (``{"name", "arguments"}`` or a list
    of them): read as an assistant message with ``tool_calls``."""
    observation_tag: str | list[str] | None = None
    """Roles that hold a tool's result: read as role ``tool``."""


class ColumnsConfig(StrictModel):
    """Which source column plays which role. Unset roles are found by common names."""

    format: ConversationFormat = "auto"
    """How the rows are laid out: ``alpaca`` (instruction, input, output, optional
    system and history), ``sharegpt`` (conversations of from/value), ``openai``
    (messages of role/content, tool calls), ``text`` (text, label, prompt, response
    columns as they are), or ``auto``: told apart by the columns present. Not the file
    format, which is the dataset's ``format``."""
    text: str | None = None
    label: str | None = None
    prompt: str | list[str] | None = None
    """One column, or several joined by a blank line (Alpaca's instruction + input)."""
    response: str | None = None
    messages: str | None = None
    """The conversation column: OpenAI's ``messages``, ShareGPT's ``conversations``."""
    system: str | None = None
    """Alpaca and ShareGPT: the row's system prompt, read as the first message."""
    tools: str | None = None
    """ShareGPT and OpenAI: the tool definitions a row offers, kept as the ``tools`` column."""
    history: str | None = None
    """Alpaca: the earlier turns, a list of ``[prompt, response]`` pairs."""
    tags: TagsConfig = TagsConfig()
    id: str | None = None
    """The source's id column; default ``id`` when present, else ids come from file
    name and row position."""
    drop: list[str] = []
    """Source columns not to carry into the output."""


class DatasetConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    inputs: list[str] = Field(min_length=1)
    """Files, folders of a ``datasets.save_to_disk`` or globs, read in this order."""
    format: Literal["auto", "parquet", "json", "jsonl", "csv", "hf"] = "auto"
    """The file format; ``auto`` goes by the suffix (``.json``, ``.jsonl``, ``.csv``,
    ``.parquet``, each JSON or CSV also as ``.gz`` or ``.zst``). How the rows are laid
    out (Alpaca, ShareGPT, OpenAI) is ``columns.format``."""
    columns: ColumnsConfig = ColumnsConfig()
    on_bad_record: Literal["error", "skip"] = "error"
    """A JSON record that cannot be read (a line that is not JSON, a record that is not
    an object, a conversation or text field of the wrong shape): ``error`` stops the
    run naming its file and line; ``skip`` removes it as a row with reason
    ``format:<problem>`` and reads on (see :mod:`pipeline.readers.bad_records`)."""
    stages: dict[str, Any] = {}
    """Stage settings for this dataset only, merged over the top-level ``stages``
    (e.g. ``augment: {enabled: true, balance: true}`` for the labelled dataset)."""
