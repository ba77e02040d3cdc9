"""Cleaning stages on conversations: quality judges what the assistant says, dedup
compares everything a conversation says (roles, contents, tool calls), and
``key: first_user_turn`` dedups by the question.

The conversations are built from the sample's Debian package Q&A (real package
descriptions) and read through the readers, as in a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.errors import PipelineError
from pipeline.schema import ROW_ID, DatasetInfo
from pipeline.stages.exact_dedup import ExactDedupConfig, ExactDedupStage
from pipeline.stages.near_dedup import NearDedupConfig, NearDedupStage
from pipeline.stages.quality import QualityConfig, QualityStage
from pipeline.text.parts import conversation_text, turns_text
from tests.test_stage_conversation import CHAT, TOOLS, assistant, call, packages, read, tool, user


def dedup(stage: Any, table: pa.Table) -> dict[str, str]:
    """Removed row -> the row it duplicates."""
    out = stage.apply(table, stage.decide([stage.summarize(table)]))
    return {r[ROW_ID]: json.loads(r["detail"])["duplicate_of"] for r in out.removed.to_pylist()}


def test_turn_texts_pick_roles_and_the_first_user_turn(tmp_path: Path) -> None:
    (p1, q1, d1), (_, q2, d2) = packages()[:2]
    table = read(tmp_path, [
        {"id": "a", "messages": [{"role": "system", "content": "Be brief."}, user(q1), assistant(d1), user(q2), assistant(d2)]},
        {"id": "b", "tools": TOOLS, "messages": [user(q1), assistant(None, [call(p1)]), tool(p1, d1), assistant(d1)]},
    ])
    assert turns_text(table, ["assistant"]).to_pylist() == [f"{d1}\n{d2}", d1]
    assert turns_text(table, ["user"], first=True).to_pylist() == [q1, q1]
    keys = conversation_text(table).to_pylist()
    assert keys[0] == f"system: Be brief.\nuser: {q1}\nassistant: {d1}\nuser: {q2}\nassistant: {d2}"
    assert '"name": "apt_show"' in keys[1].splitlines()[1] and keys[1].splitlines()[1].startswith("assistant: ")


def test_conversations_differing_in_a_tool_call_are_not_copies(tmp_path: Path) -> None:
    (p1, q1, d1), (p2, _, _) = packages()[:2]
    def convo(package: str) -> list[dict[str, Any]]:
        return [user(q1), assistant(None, [call(package)]), tool(p1, d1), assistant(d1)]
    table = read(tmp_path, [
        {"id": "first", "tools": TOOLS, "messages": convo(p1)},
        {"id": "other_call", "tools": TOOLS, "messages": convo(p2)},
        {"id": "copy", "tools": TOOLS, "messages": convo(p1)},
    ])
    assert dedup(ExactDedupStage(ExactDedupConfig(), CHAT), table) == {"copy": "first"}
    near = NearDedupStage(NearDedupConfig(), CHAT)
    assert dedup(near, table) == {"copy": "first"}


def test_first_user_turn_keeps_one_answer_per_question(tmp_path: Path) -> None:
    (_, q1, d1), (_, q2, d2) = packages()[:2]
    table = read(tmp_path, [
        {"id": "one", "messages": [user(q1), assistant(d1)]},
        {"id": "again", "messages": [{"role": "system", "content": "Be brief."}, user(q1), assistant(d2)]},
        {"id": "two", "messages": [user(q2), assistant(d1)]},
    ])
    assert dedup(ExactDedupStage(ExactDedupConfig(), CHAT), table) == {}
    assert dedup(ExactDedupStage(ExactDedupConfig(key="first_user_turn"), CHAT), table) == {"again": "one"}
    assert dedup(NearDedupStage(NearDedupConfig(key="first_user_turn"), CHAT), table) == {"again": "one"}


@pytest.mark.parametrize("stage", [
    ExactDedupStage(ExactDedupConfig(key="first_user_turn"), DatasetInfo("text", ("text",))),
    NearDedupStage(NearDedupConfig(key="first_user_turn"), DatasetInfo("classification", ("text", "label"))),
])
def test_first_user_turn_is_refused_without_user_turns(stage: Any) -> None:
    with pytest.raises(PipelineError, match=r"key: first_user_turn needs instruction data, not (text|classification)"):
        stage.preflight()


def test_quality_judges_what_the_assistant_says(tmp_path: Path) -> None:
    """A long, good question does not carry a one-word reply through quality."""
    (_, q1, d1), (_, _, d2) = packages()[:2]
    table = read(tmp_path, [
        {"id": "good", "messages": [user(q1), assistant(d1)]},
        {"id": "terse", "messages": [user(f"{q1} {d2}"), assistant("Yes.")]},
    ])
    out = QualityStage(QualityConfig(), CHAT).apply(table)
    assert out.removed.to_pylist()[0][ROW_ID] == "terse"
    assert out.removed.column("reason").to_pylist() == ["quality:too_few_words"]
    everything = QualityStage(QualityConfig(turns="all"), CHAT).apply(table)
    assert everything.removed.num_rows == 0
