"""Progress of long stages: what the flow and the stages report, and what a terminal shows."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from pipeline import progress, steps
from pipeline.config import load_config
from pipeline.inputs import DatasetConfig
from pipeline.progress import RichReporter, Step
from pipeline.stages import language
from pipeline.stages.language import LanguageConfig
from pipeline.stages.registry import stage_class

ROWS = [
    {"id": "1", "text": "The committee approved the new budget for the public library on Tuesday.", "label": "news"},
    {"id": "2", "text": "the committee approved the new budget for the public library on tuesday.", "label": "news"},
    {"id": "3", "text": "Contact me at jane.doe@example.com for the full recipe with fresh basil.", "label": "food"},
    {"id": "4", "text": "   ", "label": "food"},
    {"id": "5", "text": "Der Ausschuss hat gestern den neuen Haushalt für die Bibliothek genehmigt.", "label": "news"},
    {"id": "6", "text": "Slow-roasted tomatoes with garlic make a rich sauce for fresh pasta.", "label": "food"},
    {"id": "7", "text": "The striker scored twice in the second half to win the championship final.", "label": "sport"},
]


class Recorder:
    """A reporter that keeps every event, as ``(event, step label, number)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | None]] = []

    def started(self, step: Step, total: int | None) -> None:
        self.events.append(("started", step.label, total))

    def advanced(self, step: Step, rows: int) -> None:
        self.events.append(("advanced", step.label, rows))

    def finished(self, step: Step) -> None:
        self.events.append(("finished", step.label, None))

    def of(self, label: str) -> list[tuple[str, int | None]]:
        return [(event, n) for event, step, n in self.events if step == label]


def write_input(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_flow_reports_each_step_with_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.curate import curate

    monkeypatch.setattr(language, "PROGRESS_ROWS", 1)
    cfg = load_config(
        None, inputs=[str(write_input(tmp_path, ROWS))], output=str(tmp_path / "out"), overrides=["shard_rows=3"]
    )
    with progress.install(Recorder()) as recorder:
        result = curate(config=cfg.model_dump(mode="json"), dataset=cfg.datasets[0].name)

    enabled = [s for s in result["stages"] if s["enabled"]]
    started = [step for event, step, _ in recorder.events if event == "started"]
    expected: list[str] = []
    for s in enabled:
        name, rows = s["stage"], s["rows_in"]
        if stage_class(name).is_global:
            expected += [f"{name} summarize", f"{name} decide"]
            events = recorder.of(f"{name} summarize")
            assert events[0] == ("started", rows) and events[-1] == ("finished", None)
            assert sum(n for event, n in events if event == "advanced") == rows
            assert recorder.of(f"{name} decide") == [("started", None), ("finished", None)]
        expected.append(name)
        events = recorder.of(name)
        assert events[0] == ("started", rows) and events[-1] == ("finished", None), name
        assert sum(n for event, n in events if event == "advanced") == rows, name
    assert started == expected, "one step after the other, disabled stages not at all"
    # The language stage detects while it summarizes and reports row by row
    # (PROGRESS_ROWS=1) from inside its shards; the flow's per-shard updates then add
    # nothing on top.
    language_rows = next(s["rows_in"] for s in enabled if s["stage"] == "language")
    assert [n for event, n in recorder.of("language summarize") if event == "advanced"] == [1] * language_rows


def _language_shard(tmp_path: Path) -> tuple[steps.Ingested, steps.Shard]:
    rows = [*ROWS, {"id": "8", "text": "too short", "label": "x"}, {"id": "9", "text": "42 <URL>", "label": "x"}]
    dataset = DatasetConfig(name="d", inputs=[str(write_input(tmp_path, rows))]).model_dump(mode="json")
    ingested = steps.ingest(dataset, 100, str(tmp_path / "work"))
    return ingested, ingested.shards[0]


def test_language_reports_rows_within_its_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(language, "PROGRESS_ROWS", 2)
    ingested, shard = _language_shard(tmp_path)
    config = LanguageConfig().model_dump(mode="json")
    with progress.install(Recorder()) as recorder, progress.step("language", "apply", shard.rows):
        steps.apply("language", config, ingested, shard, None, str(tmp_path / "language"))
        in_shard = [n for event, n in recorder.of("language") if event == "advanced"]
        progress.shard_finished("language", "apply", shard.name, shard.rows)
    # The detector's batches of two, then the rows too short to judge.
    assert in_shard == [2, 2, 2, 3] and sum(in_shard) == shard.rows == 9
    assert [n for event, n in recorder.of("language") if event == "advanced"] == in_shard, "counted once"


def test_rows_done_away_from_the_reporter_are_made_up_by_the_flow(tmp_path: Path) -> None:
    """As on a Dask worker: the stage's updates go nowhere, the shard's end counts all its rows."""
    ingested, shard = _language_shard(tmp_path)
    config = LanguageConfig().model_dump(mode="json")
    steps.apply("language", config, ingested, shard, None, str(tmp_path / "language"))
    with progress.install(Recorder()) as recorder:
        progress.step_started("language", "apply", shard.rows)
        progress.shard_finished("language", "apply", shard.name, shard.rows)
        progress.step_finished("language", "apply")
        with progress.in_shard("language", "apply", shard.name):
            progress.rows_done(5)  # a straggler after the step ended: dropped
    assert recorder.events == [
        ("started", "language", 9), ("advanced", "language", 9), ("finished", "language", None)
    ]


@pytest.mark.parametrize(
    "console,quiet",
    [(Console(file=io.StringIO()), False), (Console(file=io.StringIO(), force_terminal=True), True)],
    ids=["not-a-terminal", "quiet"],
)
def test_nothing_is_shown_off_a_terminal_or_when_quiet(console: Console, quiet: bool) -> None:
    with progress.display(console, quiet=quiet) as shown:
        progress.step_started("quality", "apply", 100)
        progress.shard_finished("quality", "apply", "shard-00000", 100)
        progress.step_finished("quality", "apply")
        with progress.install(Recorder()):  # no reporter was installed
            pass
    assert shown is False
    assert console.file.getvalue() == ""


def test_terminal_shows_rows_of_the_total_rate_and_time_left() -> None:
    now = [0.0]
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    reporter = RichReporter(console, get_time=lambda: now[0])
    with progress.install(reporter):
        progress.step_started("language", "apply", 2500)
        now[0] = 2.0
        progress.shard_finished("language", "apply", "shard-00000", 1000)
        console.print(reporter.progress.get_renderable())
    out = console.file.getvalue()
    assert "language" in out and "1,000/2,500 rows" in out
    assert "500 rows/s" in out and "0:00:03 left" in out


def test_display_draws_on_a_terminal() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with progress.display(console) as shown:
        progress.step_started("near_dedup", "summarize", 2500)
        progress.shard_finished("near_dedup", "summarize", "shard-00000", 2500)
        progress.step_finished("near_dedup", "summarize")
        progress.step_started("near_dedup", "apply", 2500)
    assert shown is True
    out = console.file.getvalue()
    assert "near_dedup" in out and "0/2,500 rows" in out and "rows/s" in out
