"""exact_dedup: first occurrence wins across shards, on normalised text."""

from __future__ import annotations

import json

import pyarrow as pa

from pipeline.schema import DatasetInfo
from pipeline.stages.exact_dedup import ExactDedupConfig, ExactDedupStage
from tests.conftest import canonical

TEXT = DatasetInfo("text", ("text",))


def run(shards: list[pa.Table], info: DatasetInfo = TEXT, **cfg):
    stage = ExactDedupStage(ExactDedupConfig(**cfg), info)
    state = stage.decide([stage.summarize(s) for s in shards])
    return [stage.apply(s, state) for s in shards]


def ids(table: pa.Table) -> list[str]:
    return table.column("row_id").to_pylist()


def test_case_and_whitespace_copies_are_duplicates_of_the_first() -> None:
    a = pa.table({"row_id": ["a0", "a1"], "text": ["Hello  World", "other"], "changed_by": ["", ""]})
    b = pa.table({"row_id": ["b0", "b1"], "text": ["hello world", "HELLO WORLD "], "changed_by": ["", ""]})
    out_a, out_b = run([a, b])
    assert ids(out_a.kept) == ["a0", "a1"] and out_a.removed.num_rows == 0
    assert ids(out_b.kept) == [] and ids(out_b.removed) == ["b0", "b1"]
    assert [json.loads(d)["duplicate_of"] for d in out_b.removed.column("detail").to_pylist()] == ["a0", "a0"]
    assert out_b.removed.column("reason").to_pylist() == ["exact_duplicate"] * 2
    assert out_b.counters["exact_duplicate"] == 2


def test_punctuation_counts_unless_folded() -> None:
    table = canonical(text=["Hello, world!", "hello world"])
    [out] = run([table])
    assert out.removed.num_rows == 0
    [out] = run([table], fold_punctuation=True)
    assert ids(out.removed) == ["r1"]


def test_case_counts_when_lowercase_is_off() -> None:
    [out] = run([canonical(text=["Hi there", "hi there"])], lowercase=False)
    assert out.removed.num_rows == 0


def test_instruction_rows_need_the_same_prompt_and_response() -> None:
    info = DatasetInfo("instruction", ("prompt", "response"))
    table = canonical(prompt=["Q", "Q", "Q a", "q"], response=["a b", "other", "b", "A  B"])
    [out] = run([table], info)
    # r1 has another answer, r2 moves a word across the fields: both are kept.
    assert ids(out.kept) == ["r0", "r1", "r2"]
    assert ids(out.removed) == ["r3"]
