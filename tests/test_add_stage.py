"""Adding a stage is one class and one registration (docs/architecture.md, Adding a stage).

The stage below lives only in this file. Once registered it runs through the real
flow, its settings validate under ``stages.shout``, it reads a file of its own that
the fingerprint and step keys hash, and the report, the manifest and the stage table
list it, with no edit anywhere else.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.fingerprint import run_fingerprint
from pipeline.stages import registry
from pipeline.stages.base import Read, Stage, StageConfig, StageContext, StageOutput, mark_changed, split_rows

ROWS = [
    {"id": "1", "text": "The committee approved the new budget for the public library on Tuesday."},
    {"id": "2", "text": "Slow-roasted tomatoes with garlic make a rich sauce for fresh pasta tonight."},
    {"id": "3", "text": "The striker scored twice in the second half to win the championship final."},
    {"id": "4", "text": "A forbidden word sits in this sentence, so the new stage removes the row."},
]


class ShoutConfig(StageConfig):
    enabled: bool = True
    banned_words: str | None = None
    """A file of words, one a line: rows holding one are removed."""
    suffix: str = "!"


class ShoutStage(Stage):
    """Removes rows with a banned word, appends ``suffix`` to the rest, scores every row."""

    name = "shout"
    config_model = ShoutConfig
    config: ShoutConfig
    adds_columns = ("shout_length",)

    @classmethod
    def reads(cls, config: ShoutConfig, context: StageContext) -> list[Read]:
        path = context.store.dir.parent / "banned.txt"
        return [Read("banned_words", path, path.name, data=False, setting="banned_words")] if path.is_file() else []

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        banned = Path(self.config.banned_words).read_text().split() if self.config.banned_words else []
        text = table.column("text").to_pylist()
        drop = np.array([any(w in t for w in banned) for t in text], dtype=bool)
        kept, removed, counters = split_rows(table, drop, ["shout:banned"] * int(drop.sum()))
        kept = kept.set_column(
            kept.schema.get_field_index("text"), "text", pc.binary_join_element_wise(kept.column("text"), self.config.suffix, "")
        )
        kept, changed = mark_changed(kept, np.ones(kept.num_rows, dtype=bool), self.name)
        kept = kept.append_column("shout_length", pc.utf8_length(kept.column("text")))
        scores = pa.table({"row_id": table.column("row_id"), "banned": pa.array(drop)})
        return StageOutput(kept, removed, changed, Counter(counters), scores)


@pytest.fixture
def shout() -> Iterator[type[ShoutStage]]:
    registry.register(ShoutStage, after="quality")
    try:
        yield ShoutStage
    finally:
        registry.unregister("shout")


def _config(tmp_path: Path, *overrides: str):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return load_config(None, inputs=[str(data)], output=str(tmp_path / "out"), overrides=["shard_rows=2", *overrides])


def test_a_registered_stage_takes_its_place_in_order_and_config(tmp_path: Path, shout: type[ShoutStage]) -> None:
    names = registry.stage_names()
    assert names[names.index("quality") + 1] == "shout"
    assert registry.stage_class("shout") is shout
    cfg = _config(tmp_path, "stages.shout.suffix=wow")
    assert cfg.stages.shout.suffix == "wow"
    with pytest.raises(PipelineError, match=r"stages\.shout\.sufix: unknown key"):
        _config(tmp_path, "stages.shout.sufix=wow")


def test_registering_is_checked_and_undone(shout: type[ShoutStage]) -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ShoutStage, after="split")
    with pytest.raises(ValueError, match="no stage 'nowhere'"):
        registry.register(type("Lost", (ShoutStage,), {"name": "lost"}), before="nowhere")
    assert "lost" not in registry.stage_names()
    with pytest.raises(ValueError, match="exactly one"):
        registry.register(type("Both", (ShoutStage,), {"name": "both"}), after="split", before="split")


def test_unregistered_stage_leaves_no_trace_in_the_config(tmp_path: Path) -> None:
    assert "shout" not in registry.stage_names()
    with pytest.raises(PipelineError, match=r"stages\.shout: unknown key"):
        _config(tmp_path, "stages.shout.suffix=wow")


def test_the_files_a_stage_reads_key_its_step_and_the_fingerprint(tmp_path: Path, shout: type[ShoutStage]) -> None:
    cfg = _config(tmp_path)
    name = cfg.datasets[0].name
    before = run_fingerprint(cfg, name)
    assert before.reads == {}
    (tmp_path / "out" / "banned.txt").parent.mkdir(parents=True)
    (tmp_path / "out" / "banned.txt").write_text("forbidden\n")
    after = run_fingerprint(cfg, name)
    assert after.value != before.value and after.work_key == before.work_key
    assert after.records()["banned_words"]["file"] == str(tmp_path / "out" / "banned.txt")
    settings = after.stage_settings("shout", {"suffix": "!"})
    assert settings == {"suffix": "!", "banned_words": str(tmp_path / "out" / "banned.txt")}
    assert after.step_key("k", "shout", settings) != before.step_key("k", "shout", settings)
    assert after.step_key("k", "quality", {}) == before.step_key("k", "quality", {})


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_a_stage_defined_here_runs_through_the_flow_into_the_version(tmp_path: Path, shout: type[ShoutStage]) -> None:
    from flows.curate import curate

    cfg = _config(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "banned.txt").write_text("forbidden\n")
    result = curate(config=cfg.model_dump(mode="json"), dataset=cfg.datasets[0].name)
    assert result["status"] == "published"
    path = Path(result["path"])

    stages = pq.read_table(path / "reports" / "stages.parquet").to_pylist()
    names = [s["stage"] for s in stages]
    assert names[names.index("quality") + 1] == "shout"
    row = stages[names.index("shout")]
    assert (row["rows_in"], row["rows_out"], row["rows_changed"]) == (4, 3, 3)

    removed = pq.read_table(path / "reports" / "removed.parquet").to_pylist()
    assert [(r["row_id"], r["stage"], r["reason"]) for r in removed] == [("4", "shout", "shout:banned")]
    assert pq.read_table(path / "reports" / "shout.parquet").column("banned").to_pylist().count(True) == 1

    kept = pa.concat_tables(pq.read_table(f) for f in sorted((path / "data").glob("*.parquet")))
    assert all(t.endswith("!") for t in kept.column("text").to_pylist())
    assert set(kept.column("changed_by").to_pylist()) == {"shout"}
    assert "shout_length" in kept.column_names

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["config"]["stages"]["shout"]["suffix"] == "!"
    assert manifest["banned_words"]["file"] == str(tmp_path / "out" / "banned.txt")
    assert "shout" in (path / "report.html").read_text()


def test_a_stage_that_adds_an_undeclared_column_is_refused(tmp_path: Path) -> None:
    from pipeline import steps

    class Careless(ShoutStage):
        name = "careless"
        adds_columns = ()

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    registry.register(Careless, after="quality")
    try:
        cfg = load_config(None, inputs=[str(data)], output=str(tmp_path / "out"))
        ingested = steps.ingest(cfg.datasets[0].model_dump(mode="json"), 10, str(tmp_path / "work"))
        with pytest.raises(RuntimeError, match="stage careless added the undeclared columns shout_length"):
            steps.apply("careless", {}, ingested, ingested.shards[0], None, str(tmp_path / "work" / "careless"))
    finally:
        registry.unregister("careless")
