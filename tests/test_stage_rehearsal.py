"""rehearsal: general rows mixed into train only, drawn by seed, with lineage."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import PipelineError
from pipeline.schema import DatasetInfo
from pipeline.stages.base import stats_of
from pipeline.stages.rehearsal import RehearsalConfig, RehearsalStage
from tests.conftest import canonical, clean_sample_rows

CLS = DatasetInfo("classification", ("text", "label"))
INSTRUCTION = DatasetInfo("instruction", ("prompt", "response"))
SAMPLE = clean_sample_rows()


def dataset(n: int) -> pa.Table:
    """``n`` computers rows, the first 80% train, then validation and test."""
    texts = [t for _, t in SAMPLE["computers"][:n]]
    split = ["train"] * (n * 8 // 10) + ["validation"] * (n // 10)
    split += ["test"] * (n - len(split))
    return canonical(text=texts, label=["computers"] * n, split=split)


def general(tmp_path: Path, rows: list[dict], name: str = "general.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def general_rows() -> list[dict]:
    return [{"id": i, "text": t, "label": label} for label in ("politics", "science") for i, t in SAMPLE[label][:100]]


def run(shards: list[pa.Table], info: DatasetInfo = CLS, **cfg):
    stage = RehearsalStage(RehearsalConfig(enabled=True, **cfg), info)
    state = stage.decide([stage.summarize(s) for s in shards])
    return state, [stage.apply(s, state) for s in shards]


def test_mixes_a_fraction_of_train_into_train_only(tmp_path: Path) -> None:
    path = general(tmp_path, general_rows())
    table = dataset(100)
    state, outputs = run([table.slice(0, 60), table.slice(60)], inputs=[str(path)], fraction=0.25)
    out = pa.concat_tables([o.kept for o in outputs]).to_pylist()
    mixed = [r for r in out if r["origin"] == "rehearsal"]
    assert len(mixed) == 20 == stats_of(state)["mixed_in"]  # 25% of 80 train rows
    assert all(r["split"] == "train" and r["row_id"] == f"rehearsal:{r['source_row_id']}" for r in mixed)
    source = {r["id"]: r for r in general_rows()}
    assert all(r["text"] == source[r["source_row_id"]]["text"] for r in mixed)
    originals = [r for r in out if r["origin"] == "original"]
    assert [r["row_id"] for r in originals] == table.column("row_id").to_pylist()
    assert all(r["source_row_id"] is None for r in originals)
    assert all(o.removed.num_rows == 0 for o in outputs)


def test_the_draw_depends_on_ids_and_seed_not_on_file_order(tmp_path: Path) -> None:
    rows = general_rows()
    shuffled = rows[:]
    random.Random(4).shuffle(shuffled)
    drawn = {}
    for name, r in (("a.jsonl", rows), ("b.jsonl", shuffled)):
        state, _ = run([dataset(100)], inputs=[str(general(tmp_path, r, name))], fraction=0.25)
        drawn[name] = set(state.column("row_id").to_pylist())
    assert drawn["a.jsonl"] == drawn["b.jsonl"]
    more, _ = run([dataset(100)], inputs=[str(general(tmp_path, rows))], fraction=0.5)
    assert drawn["a.jsonl"] < set(more.column("row_id").to_pylist()), "a larger fraction keeps the rows drawn before"
    other, _ = run([dataset(100)], inputs=[str(general(tmp_path, rows))], fraction=0.25, seed=1)
    assert set(other.column("row_id").to_pylist()) != drawn["a.jsonl"]


def test_rows_without_the_needed_roles_are_skipped_and_a_short_supply_is_said(tmp_path: Path) -> None:
    rows = general_rows()[:10] + [{"id": "blank", "text": "   ", "label": "x"}, {"id": "null", "text": None, "label": "x"}]
    state, _ = run([dataset(100)], inputs=[str(general(tmp_path, rows))], fraction=0.5)
    stats = stats_of(state)
    assert stats["mixed_in"] == 10 and stats["general_rows_incomplete"] == 2
    assert "only 10 usable rows; 40 were wanted" in stats["message"]


def test_a_general_dataset_without_the_roles_is_refused(tmp_path: Path) -> None:
    path = general(tmp_path, general_rows())
    with pytest.raises(PipelineError, match=r"needs \['prompt', 'response'\]: set stages.rehearsal.columns"):
        run([canonical(prompt=["q"], response=["a"])], info=INSTRUCTION, inputs=[str(path)])


def test_instruction_rows_map_their_own_columns(tmp_path: Path) -> None:
    rows = [{"id": i, "question": f"What is item {i}?", "answer": f"Item {i} is a thing."} for i in range(50)]
    path = general(tmp_path, rows)
    table = canonical(prompt=[f"p{i}" for i in range(20)], response=[f"r{i}" for i in range(20)])
    state, (out,) = run(
        [table], info=INSTRUCTION, inputs=[str(path)], fraction=0.5,
        columns={"prompt": "question", "response": "answer"},
    )
    mixed = [r for r in out.kept.to_pylist() if r["origin"] == "rehearsal"]
    assert len(mixed) == 10 and all(r["prompt"].startswith("What is item") for r in mixed)


def test_enabled_without_inputs_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="no inputs"):
        RehearsalConfig(enabled=True)
