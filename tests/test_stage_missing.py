"""missing: rows without a required role leave with a reason; other gaps are filled."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.schema import MESSAGE_TYPE, DatasetInfo
from pipeline.stages.missing import FillRule, MissingConfig, MissingStage
from tests.conftest import canonical

CLS = DatasetInfo("classification", ("text", "label"))


def run(shards: list[pa.Table], info: DatasetInfo = CLS, **cfg):
    stage = MissingStage(MissingConfig(**cfg), info)
    state = stage.decide([stage.summarize(s) for s in shards])
    return [stage.apply(s, state) for s in shards]


def test_rows_missing_a_required_role_are_removed_with_reasons() -> None:
    table = canonical(text=["fine", "  ", None, "no label"], label=["a", "b", "c", None])
    [out] = run([table])
    assert out.kept.column("row_id").to_pylist() == ["r0"]
    assert out.removed.column("row_id").to_pylist() == ["r1", "r2", "r3"]
    assert out.removed.column("reason").to_pylist() == ["missing:text", "missing:text", "missing:label"]
    assert json.loads(out.removed.column("detail")[2].as_py()) == {"role": "label"}
    assert out.counters["missing:text"] == 2


def test_blank_is_not_missing_when_switched_off() -> None:
    [out] = run([canonical(text=["  ", None], label=["a", "b"])], blank_is_missing=False)
    assert out.kept.column("row_id").to_pylist() == ["r0"]


def test_fills_use_global_median_and_mode_and_are_reported() -> None:
    a = canonical(text=["x", "y"], label=["p", "q"], score=[1.0, None], source=["web", None])
    b = canonical(text=["z", "w"], label=["p", "p"], score=[10.0, 4.0], source=["book", "book"])
    out_a, out_b = run([a, b])
    # median of 1, 10, 4 across both shards is 4; the mode of source is "book".
    assert out_a.kept.column("score").to_pylist() == [1.0, 4.0]
    assert out_a.kept.column("source").to_pylist() == ["web", "book"]
    assert out_a.counters["filled:score"] == 1 and out_a.counters["filled:source"] == 1
    assert out_a.kept.column("changed_by").to_pylist() == ["", "missing"]
    assert out_a.scores.to_pylist() == [
        {"row_id": "r1", "column": "score", "strategy": "median", "value": "4.0"},
        {"row_id": "r1", "column": "source", "strategy": "mode", "value": '"book"'},
    ]
    assert out_b.changed == 0 and out_b.scores is None


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    [out] = run([canonical(text=list("abcde"), label=list("ppppp"), x=[1.0, 2.0, 3.0, 10.0, None], n=[1, 2, 4, 10, None])])
    assert out.kept.column("x").to_pylist()[-1] == 2.5
    assert out.kept.column("n").to_pylist()[-1] == 3  # an integer column gets the rounded median


def test_optional_text_role_gets_the_unk_token_and_rules_override() -> None:
    info = DatasetInfo("text", ("text", "label"))
    table = canonical(text=["a", "b"], label=[None, "x"], note=[None, "n"])
    [out] = run([table], info, fill={"note": FillRule(strategy="constant", value="none")})
    assert out.kept.column("note").to_pylist() == ["none", "n"]
    assert out.kept.column("label").to_pylist() == ["x", "x"]  # mode
    [out] = run([canonical(prompt=["p"], response=["r"], text=pa.array([None], pa.string()))], DatasetInfo("instruction", ("text", "prompt", "response")))
    assert out.kept.column("text").to_pylist() == ["[UNK]"]


def test_fill_optional_off_leaves_nulls() -> None:
    [out] = run([canonical(text=["a"], label=["p"], score=[None])], fill_optional=False)
    assert out.kept.column("score").to_pylist() == [None] and out.changed == 0


def test_constant_that_does_not_fit_the_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"stages\.missing\.fill\.score: 'abc' does not fit"):
        run([canonical(text=["a"], label=["p"], score=[None])], fill={"score": FillRule(strategy="constant", value="abc")})


def test_instruction_data_needs_prompt_and_response() -> None:
    info = DatasetInfo("instruction", ("prompt", "response"))
    [out] = run([canonical(prompt=["q", "", "q2"], response=["a", "a", None])], info)
    assert out.kept.column("row_id").to_pylist() == ["r0"]
    assert out.removed.column("reason").to_pylist() == ["missing:prompt", "missing:response"]


def test_messages_with_only_blank_contents_are_missing() -> None:
    info = DatasetInfo("instruction", ("messages",))
    messages = pa.array(
        [[{"role": "user", "content": "hi"}], [{"role": "user", "content": " "}], [], None], MESSAGE_TYPE
    )
    [out] = run([canonical(messages=messages)], info)
    assert out.kept.column("row_id").to_pylist() == ["r0"]
    assert out.removed.num_rows == 3
