"""conversation: broken conversations leave with one reason each and the message at
fault; good ones, tool calls included, stay untouched.

The conversations are built from the sample's Debian package Q&A (real package
descriptions) as the OpenAI and ShareGPT formats write them, and read through the
readers, so roles and tool calls reach the stage as they would in a run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.inputs import DatasetConfig
from pipeline.readers import Reader
from pipeline.schema import DatasetInfo
from pipeline.stages.conversation import ConversationConfig, ConversationStage
from tests.conftest import REPO

CHAT = DatasetInfo("instruction", ("messages",))
SYSTEM = "You answer questions about Debian packages."
TOOLS = [{"type": "function", "function": {"name": "apt_show", "parameters": {"type": "object"}}}]


def packages() -> list[tuple[str, str, str]]:
    """``(package, question, description)`` from the sample's general Q&A."""
    with open(REPO / "sample_data" / "general.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    return [
        (r["instruction"].removeprefix("What is the ").removesuffix(" package for?"), r["instruction"], r["output"])
        for r in rows
    ]


def call(package: str, arguments: str | None = None, name: str = "apt_show") -> dict[str, Any]:
    args = arguments if arguments is not None else json.dumps({"package": package})
    return {"id": f"call_{package}", "type": "function", "function": {"name": name, "arguments": args}}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str | None, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"role": "assistant", "content": text} | ({"tool_calls": calls} if calls else {})


def tool(package: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": f"call_{package}", "content": text}


def read(tmp_path: Path, rows: list[dict[str, Any]], name: str = "chat.jsonl") -> pa.Table:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    reader = Reader(DatasetConfig(name="chat", inputs=[str(path)]), shard_rows=10_000)
    assert reader.info == CHAT
    return next(reader.shards())


def check(table: pa.Table, **cfg: Any):
    stage = ConversationStage(ConversationConfig(**cfg), CHAT)
    assert stage.applies()
    return stage.apply(table)


def removed(out) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        r["row_id"]: (r["reason"], json.loads(r["detail"]))
        for r in out.removed.select(["row_id", "reason", "detail"]).to_pylist()
    }


def good_rows() -> list[dict[str, Any]]:
    (p1, q1, d1), (p2, q2, d2), (p3, q3, d3) = packages()[:3]
    return [
        {"id": "plain", "messages": [user(q1), assistant(d1)]},
        {"id": "multi", "messages": [{"role": "system", "content": SYSTEM}, user(q1), assistant(d1), user(q2), assistant(d2)]},
        {"id": "tools", "tools": TOOLS, "messages": [
            {"role": "system", "content": SYSTEM}, user(q3), assistant(None, [call(p3)]), tool(p3, d3), assistant(d3)]},
        {"id": "two_calls", "tools": TOOLS, "messages": [
            user(f"{q1} And {q2}"), assistant("Let me look both up.", [call(p1), call(p2)]),
            tool(p1, d1), tool(p2, d2), assistant(f"{d1}\n\n{d2}")]},
    ]


def test_good_conversations_are_kept_as_they_are(tmp_path: Path) -> None:
    table = read(tmp_path, good_rows())
    out = check(table)
    assert out.removed.num_rows == 0
    assert out.kept.equals(table)
    assert out.counters == {"multi_turn": 1, "with_system": 2, "with_tool_calls": 2}
    assert out.scores.to_pylist() == [
        {"row_id": "plain", "turns": 2, "problem": None, "message": None},
        {"row_id": "multi", "turns": 5, "problem": None, "message": None},
        {"row_id": "tools", "turns": 5, "problem": None, "message": None},
        {"row_id": "two_calls", "turns": 5, "problem": None, "message": None},
    ]


def broken_rows() -> list[dict[str, Any]]:
    (p1, q1, d1), (_, q2, d2) = packages()[3:5]
    sys = {"role": "system", "content": SYSTEM}
    return [
        {"id": "human", "messages": [{"role": "human", "content": q1}, assistant(d1)]},
        {"id": "late_system", "messages": [user(q1), assistant(d1), sys, user(q2), assistant(d2)]},
        {"id": "starts_assistant", "messages": [sys, assistant(d1), user(q2), assistant(d2)]},
        {"id": "two_users", "messages": [user(q1), user(q2), assistant(d2)]},
        {"id": "trailing_user", "messages": [user(q1), assistant(d1), user(q2)]},
        {"id": "empty_reply", "messages": [user(q1), assistant("  \n")]},
        {"id": "null_reply", "messages": [user(q1), assistant(None)]},
        {"id": "orphan_tool", "messages": [user(q1), tool(p1, d1), assistant(d1)]},
        {"id": "unanswered_call", "tools": TOOLS, "messages": [user(q1), assistant(None, [call(p1)]), assistant(d1)]},
        {"id": "ends_on_call", "tools": TOOLS, "messages": [user(q1), assistant(None, [call(p1)])]},
        {"id": "bad_arguments", "tools": TOOLS, "messages": [
            user(q1), assistant(None, [call(p1, '{"package": "' + p1 + '"')]), tool(p1, d1), assistant(d1)]},
        {"id": "list_arguments", "tools": TOOLS, "messages": [
            user(q1), assistant(None, [call(p1, json.dumps([p1]))]), tool(p1, d1), assistant(d1)]},
        {"id": "unknown_tool", "tools": TOOLS, "messages": [
            user(q1), assistant(None, [call(p1, name="apt_install")]), tool(p1, d1), assistant(d1)]},
        {"id": "user_after_tool", "tools": TOOLS, "messages": [
            user(q1), assistant(None, [call(p1)]), tool(p1, d1), user(q2), assistant(d2)]},
        {"id": "empty", "messages": []},
    ]


def test_each_broken_conversation_leaves_with_its_problem_and_message(tmp_path: Path) -> None:
    out = check(read(tmp_path, good_rows() + broken_rows()))
    assert out.kept.column("row_id").to_pylist() == ["plain", "multi", "tools", "two_calls"]
    found = removed(out)
    assert {k: v[0] for k, v in found.items()} == {
        "human": "conversation:unknown_role",
        "late_system": "conversation:misplaced_system",
        "starts_assistant": "conversation:first_turn",
        "two_users": "conversation:role_order",
        "trailing_user": "conversation:last_turn",
        "empty_reply": "conversation:empty_turn",
        "null_reply": "conversation:empty_turn",
        "orphan_tool": "conversation:orphan_tool_result",
        "unanswered_call": "conversation:missing_tool_result",
        "ends_on_call": "conversation:missing_tool_result",
        "bad_arguments": "conversation:tool_arguments",
        "list_arguments": "conversation:tool_arguments",
        "unknown_tool": "conversation:unknown_tool",
        "user_after_tool": "conversation:role_order",
        "empty": "conversation:no_messages",
    }
    assert {k: v[1]["message"] for k, v in found.items()} == {
        "human": 0, "late_system": 2, "starts_assistant": 1, "two_users": 1, "trailing_user": 2,
        "empty_reply": 1, "null_reply": 1, "orphan_tool": 1, "unanswered_call": 2, "ends_on_call": 1,
        "bad_arguments": 1, "list_arguments": 1, "unknown_tool": 1, "user_after_tool": 3, "empty": 0,
    }
    assert found["human"][1] == {"message": 0, "role": "human"}
    assert found["two_users"][1] == {"message": 1, "role": "user", "after": "user"}
    assert found["unknown_tool"][1]["tools"] == ["apt_show"]
    assert found["list_arguments"][1]["error"] == "arguments are list, expected an object"
    assert out.counters["conversation:role_order"] == 2 and out.counters["conversation:empty_turn"] == 2
    problems = {r["row_id"]: r["problem"] for r in out.scores.to_pylist()}
    assert problems["plain"] is None and problems["human"] == "unknown_role"


def test_settings_allow_what_a_dataset_means_to_have(tmp_path: Path) -> None:
    table = read(tmp_path, broken_rows())
    kept = lambda **cfg: set(check(table, **cfg).kept.column("row_id").to_pylist())
    assert kept() == set()
    assert kept(last_turn=["assistant", "user"]) == {"trailing_user"}
    assert kept(alternate=False) == {"two_users"}
    assert kept(empty_turns=True) == {"empty_reply", "null_reply"}
    assert kept(roles=["system", "user", "assistant", "tool", "human"]) == {"human"}
    assert kept(check_tools=False) == {"bad_arguments", "list_arguments", "unknown_tool"}


def test_sharegpt_function_calls_and_observations_are_tool_turns(tmp_path: Path) -> None:
    (p1, q1, d1), (p2, q2, d2) = packages()[5:7]
    rows = [
        {"id": "ok", "system": SYSTEM, "tools": json.dumps(TOOLS), "conversations": [
            {"from": "human", "value": q1},
            {"from": "function_call", "value": json.dumps({"name": "apt_show", "arguments": {"package": p1}})},
            {"from": "observation", "value": d1},
            {"from": "gpt", "value": d1}]},
        {"id": "not_json", "conversations": [
            {"from": "human", "value": q2},
            {"from": "function_call", "value": f"apt_show {p2}"},
            {"from": "observation", "value": d2},
            {"from": "gpt", "value": d2}]},
        {"id": "bot", "conversations": [{"from": "human", "value": q2}, {"from": "bot", "value": d2}]},
    ]
    out = check(read(tmp_path, rows))
    assert out.kept.column("row_id").to_pylist() == ["ok"]
    found = removed(out)
    assert found["not_json"][0] == "conversation:bad_tool_call" and found["not_json"][1]["message"] == 1
    assert found["bot"] == ("conversation:unknown_role", {"message": 1, "role": "bot"})


@pytest.mark.parametrize(
    "info", [DatasetInfo("instruction", ("prompt", "response")), DatasetInfo("text", ("text",))]
)
def test_datasets_without_conversations_are_not_checked(info: DatasetInfo) -> None:
    assert not ConversationStage(ConversationConfig(), info).applies()


def test_the_sample_chat_file_loses_exactly_its_broken_conversations() -> None:
    """``sample_data/chat.jsonl``: the rows ``build_chat.BROKEN`` lists leave with their
    reason; the ones only a full run removes (``AFTER_CLEANING``) and the good ones stay."""
    spec = importlib.util.spec_from_file_location("build_chat", REPO / "sample_data" / "build_chat.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    reader = Reader(DatasetConfig(name="chat", inputs=[str(REPO / "sample_data" / "chat.jsonl")]), shard_rows=10_000)
    out = check(next(reader.shards()))
    assert {k: v[0] for k, v in removed(out).items()} == build.BROKEN
    assert out.kept.num_rows == 43 - len(build.BROKEN)
    assert set(build.AFTER_CLEANING) <= set(out.kept.column("row_id").to_pylist())
    assert out.counters["with_tool_calls"] == 8 + 3  # eight good rows call tools, and three broken ones


def test_a_turn_of_content_parts_is_not_empty(tmp_path: Path) -> None:
    """OpenAI content given as a list of parts is kept as written in ``extra`` by the
    readers; the turn holds text, so the conversation stays. A null content does not."""
    (_, q1, d1), (_, q2, d2) = packages()[:2]
    parts = {"role": "user", "content": [{"type": "text", "text": q2}]}
    table = read(tmp_path, [
        {"id": "parts", "messages": [user(q1), assistant(d1), parts, assistant(d2)]},
        {"id": "null", "messages": [user(q1), assistant(d1), {"role": "user", "content": None}, assistant(d2)]},
    ])
    out = check(table)
    assert out.kept.column("row_id").to_pylist() == ["parts"]
    assert removed(out) == {"null": ("conversation:empty_turn", {"message": 2, "role": "user"})}
