"""near_dedup: verified clusters, survivors by policy, reports, instruction keys."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.errors import PipelineError
from pipeline.schema import DatasetInfo
from pipeline.stages.base import stats_of
from pipeline.stages.near_dedup import NearDedupConfig, NearDedupStage
from pipeline.steps import read_arrow, write_arrow

TEXT = DatasetInfo("text", ("text",))

BASE = (
    "The library committee met on Tuesday evening to discuss the new budget for the coming year, "
    "and after a long debate about opening hours and the children's reading room it approved "
    "an increase for books and a small cut for the café."
)
NEAR = BASE.replace("for the café.", "for the cafeteria.")
OTHER = (
    "Slow-roasted tomatoes with garlic, thyme and a little olive oil make a rich sauce for fresh "
    "pasta; keep the skins on for colour and blend only half of them for texture, then season."
)
THIRD = (
    "The striker scored twice in the second half, and the home side held on through six minutes "
    "of stoppage time to win the championship final in front of a sold-out stadium on Saturday."
)


def table(texts: list[str], ids: list[str] | None = None, **extra: list) -> pa.Table:
    ids = ids or [f"r{i}" for i in range(len(texts))]
    return pa.table({"row_id": ids, "text": texts, **extra, "changed_by": [""] * len(texts)})


def run(shards: list[pa.Table], info: DatasetInfo = TEXT, **cfg):
    stage = NearDedupStage(NearDedupConfig(**cfg), info)
    state = stage.decide([stage.summarize(s) for s in shards])
    return state, [stage.apply(s, state) for s in shards]


def test_near_copy_across_shards_is_removed_and_points_at_the_first() -> None:
    state, (a, b) = run([table([BASE, OTHER], ["a0", "a1"]), table([THIRD, NEAR], ["b0", "b1"])])
    assert a.removed.num_rows == 0
    assert b.kept.column("row_id").to_pylist() == ["b0"]
    assert b.removed.column("reason").to_pylist() == ["near_duplicate"]
    detail = json.loads(b.removed.column("detail")[0].as_py())
    assert detail["duplicate_of"] == "a0" and 0.8 <= detail["similarity"] < 1.0
    report = pa.concat_tables([a.scores, b.scores]).to_pylist()
    assert {r["row_id"]: r["duplicate_of"] for r in report} == {"a0": None, "b1": "a0"}
    assert report[0]["cluster_id"] == report[1]["cluster_id"]
    stats = stats_of(state)
    assert stats["clusters"] == 1 and stats["cluster_sizes"] == {"2": 1}
    assert stats["bands"] * stats["rows"] <= 128 and stats["verified_pairs"] == 1


def test_a_forced_bucket_collision_is_not_merged() -> None:
    # One band of one row: every pair whose signatures share a single minimum value is a
    # candidate. Exact verification must still refuse unrelated texts.
    _, [out] = run([table([BASE, OTHER, THIRD])], bands=128, rows=1)
    assert out.removed.num_rows == 0
    _, [out] = run([table([BASE, OTHER, THIRD])], bands=128, rows=1, verify="estimate")
    assert out.removed.num_rows == 0


def test_a_chain_does_not_drop_a_row_far_from_the_survivor() -> None:
    # a ~ b and b ~ c, but a and c share too little: b goes, c stays.
    words = (BASE + " " + OTHER).split()
    a = " ".join(words[:40])
    b = " ".join(words[4:44])
    c = " ".join(words[8:48])
    _, [out] = run([table([a, b, c])], threshold=0.75)
    assert out.removed.column("row_id").to_pylist() == ["r1"]
    assert out.kept.column("row_id").to_pylist() == ["r0", "r2"]


def test_below_the_threshold_is_kept() -> None:
    half = " ".join(BASE.split()[:20] + OTHER.split()[20:])
    _, [out] = run([table([BASE, half])])
    assert out.removed.num_rows == 0


@pytest.mark.parametrize(
    "keep,extra,survivor",
    [
        ("first", {}, "r0"),
        ("longest", {}, "r1"),
        ("newest", {"newest_column": "year"}, "r0"),
    ],
)
def test_keep_policies(keep: str, extra: dict, survivor: str) -> None:
    longer = BASE + " Members thanked the staff."
    _, [out] = run([table([BASE, longer], year=[2024, 2021])], keep=keep, **extra)
    assert out.kept.column("row_id").to_pylist() == [survivor]


def test_keep_quality_prefers_the_copy_without_markup_noise() -> None:
    tagged = BASE + " #budget #library #news"
    for keep, survivor in (("first", "r0"), ("quality", "r1")):
        _, [out] = run([table([tagged, BASE])], keep=keep)
        assert out.kept.column("row_id").to_pylist() == [survivor]


def test_a_run_over_the_memory_budget_stops_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NearDedupStage, "BYTES_PER_ROW", 2**30)
    with pytest.raises(PipelineError, match=r"memory_budget_mb is 16 MB, but deciding over 3 rows needs about 3,072 MB"):
        run([table([BASE, NEAR, OTHER])], memory_budget_mb=16)


def test_summaries_read_back_memory_mapped_give_the_same_decision(tmp_path) -> None:
    stage = NearDedupStage(NearDedupConfig(), TEXT)
    shards = [table([BASE, OTHER], ["a0", "a1"]), table([THIRD, NEAR], ["b0", "b1"])]
    paths = []
    for i, shard in enumerate(shards):
        paths.append(tmp_path / f"{i}.arrow")
        write_arrow(stage.summarize(shard), paths[-1])
    in_memory = stage.decide([stage.summarize(s) for s in shards])
    mapped = stage.decide([read_arrow(p) for p in paths])
    assert mapped.equals(in_memory)
    assert mapped.column("duplicate_of").to_pylist() == [None, "a0"]


def test_instruction_key_choice() -> None:
    info = DatasetInfo("instruction", ("prompt", "response"))
    rows = pa.table(
        {
            "row_id": ["r0", "r1"],
            "prompt": [BASE, NEAR],
            "response": ["Approved.", "It was a long meeting about many unrelated things in the town."],
            "changed_by": ["", ""],
        }
    )
    stage_prompt = NearDedupStage(NearDedupConfig(key="prompt"), info)
    state = stage_prompt.decide([stage_prompt.summarize(rows)])
    assert stage_prompt.apply(rows, state).removed.column("row_id").to_pylist() == ["r1"]
    _, [out] = run([rows], info, key="response")
    assert out.removed.num_rows == 0


def test_config_checks() -> None:
    with pytest.raises(ValidationError, match="set both bands and rows"):
        NearDedupConfig(bands=10)
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        NearDedupConfig(bands=20, rows=10)
    with pytest.raises(ValidationError, match="newest_column"):
        NearDedupConfig(keep="newest")


def test_empty_and_single_row_shards() -> None:
    empty = pa.table({"row_id": pa.array([], pa.string()), "text": pa.array([], pa.string()), "changed_by": pa.array([], pa.string())})
    state, [out] = run([empty])
    assert out.kept.num_rows == 0 and state.num_rows == 0 and stats_of(state)["clusters"] == 0
    state, outs = run([empty, table([BASE])])
    assert state.num_rows == 0 and [o.kept.num_rows for o in outs] == [0, 1]
