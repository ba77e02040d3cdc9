"""Checks that can fail run before Prefect starts (``pipeline.steps.preflight``).

A stage's ``preflight()`` and the files its ``reads()`` names are checked by
``python -m pipeline run`` before any Prefect server is started: the error line comes
in seconds, and no Prefect home or store folder is made.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pytest

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.stages import registry
from pipeline.stages.base import Read, Stage, StageConfig, StageContext, StageOutput, no_removals

ROWS = [
    {"id": "1", "text": "The committee approved the new budget for the public library on Tuesday."},
    {"id": "2", "text": "Slow-roasted tomatoes with garlic make a rich sauce for fresh pasta tonight."},
]


class ModelConfig(StageConfig):
    enabled: bool = True
    model: str = "/nonexistent/model.bin"
    lexicon: str | None = None


class ModelStage(Stage):
    """Needs a model file (checked in ``preflight``) and may read a lexicon (``reads``)."""

    name = "needs_model"
    config_model = ModelConfig
    config: ModelConfig
    loaded: ClassVar[list[str]] = []

    @classmethod
    def reads(cls, config: ModelConfig, context: StageContext) -> list[Read]:
        return [Read("lexicon", Path(config.lexicon), "lexicon", data=False)] if config.lexicon else []

    def preflight(self) -> None:
        if not Path(self.config.model).is_file():
            raise PipelineError(f"stages.needs_model.model: no model file {self.config.model}")
        ModelStage.loaded.append(self.config.model)

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        return StageOutput(table, no_removals(table), 0, Counter())


@pytest.fixture
def stage() -> Iterator[type[ModelStage]]:
    registry.register(ModelStage, after="quality")
    ModelStage.loaded.clear()
    try:
        yield ModelStage
    finally:
        registry.unregister("needs_model")


def _run(tmp_path: Path, *overrides: str) -> int:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    args = ["run", "--input", str(data), "--output", str(tmp_path / "out"), "-q"]
    for override in overrides:
        args += ["--set", override]
    return main(args)


def test_a_stage_that_cannot_load_its_model_fails_before_prefect(
    tmp_path: Path, stage: type[ModelStage], capsys: pytest.CaptureFixture
) -> None:
    assert _run(tmp_path) == 2
    assert capsys.readouterr().err.strip().endswith("error: stages.needs_model.model: no model file /nonexistent/model.bin")
    assert not (tmp_path / "out").exists()  # no Prefect home, no store: nothing started


def test_a_file_a_stage_reads_must_exist(tmp_path: Path, stage: type[ModelStage], capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    assert _run(tmp_path, f"stages.needs_model.model={model}", f"stages.needs_model.lexicon={tmp_path / 'gone.txt'}") == 2
    err = capsys.readouterr().err
    assert f"stages.needs_model reads {tmp_path / 'gone.txt'}, which does not exist" in err
    assert stage.loaded == []  # the files are checked first
    assert not (tmp_path / "out").exists()


def test_a_disabled_stage_is_not_checked(tmp_path: Path, stage: type[ModelStage]) -> None:
    from flows.run import check_inputs
    from pipeline.config import load_config

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = load_config(None, inputs=[str(data)], output=str(tmp_path / "out"), overrides=["stages.needs_model.enabled=false"])
    check_inputs(cfg)  # no error: the model is not needed
    assert stage.loaded == []


def test_built_in_stages_fail_before_prefect(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A WordNet folder without WordNet (augment) and a review file that is not review
    decisions (label_issues) stop the run with the stage's own line, nothing started."""
    empty = tmp_path / "wordnet"
    empty.mkdir()
    assert _run(tmp_path, "stages.augment.enabled=true", "stages.augment.copies_per_row=1", f"stages.augment.wordnet_dir={empty}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(empty) in err and "\n" not in err
    assert not (tmp_path / "out").exists()

    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(r | {"label": "news"}) + "\n" for r in ROWS))
    review = tmp_path / "review.jsonl"
    review.write_text('{"row_id": "1", "decision": "relabel"}\n')
    args = ["run", "--input", str(labelled), "--output", str(tmp_path / "out"), "-q"]
    assert main([*args, "--set", f"stages.label_issues.review_file={review}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"error: {review}:1: not a review decision: decision 'relabel' needs a 'label'")
    assert not (tmp_path / "out").exists()
