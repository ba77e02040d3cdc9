"""``versions``, ``show`` and ``diff`` on two real versions whose differences are known.

The two versions are published once for the module (each run costs seconds): the
second one's input drops rows 3 and 4, adds 9 and 10, rewrites row 5's text and turns
row 6 German, and its config lowers ``stages.quality.min_words`` (which removes
nothing here). Both inputs hold the same planted exact duplicates, a German row and
a row the noise stage rewrites.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config

pytestmark = pytest.mark.flow

BASE = {
    "1": "The committee approved the new budget for the public library on Tuesday evening.",
    "2": "Slow-roasted tomatoes with garlic make a rich sauce for fresh pasta in winter.",
    "3": "The striker scored twice in the second half to win the championship final.",
    "4": "Heavy rain flooded several streets near the river after the storm last night.",
    "5": "The museum opened a new exhibition of early photographs from the harbour town.",
    "6": "Our team spent the weekend repairing the old wooden bridge across the stream.",
    "7": "A small bakery on the corner sells warm bread and cinnamon rolls every morning.",
    "8": "Students planted thirty young oak trees along the path behind the school.",
    "d1": "the committee approved the new budget for the public library on tuesday evening.",
    "d2": "SLOW-ROASTED TOMATOES WITH GARLIC MAKE A RICH SAUCE FOR FRESH PASTA IN WINTER.",
    "g1": "Der Ausschuss hat gestern den neuen Haushalt für die öffentliche Bibliothek genehmigt.",
    "h1": "<p>Write to the organisers at events@example.com to reserve a seat for the concert.</p>",
}
NEW = {
    "5": "Volunteers cleaned the beach and collected four bags of plastic before lunch.",
    "6": "Unser Team hat am Wochenende die alte Holzbrücke über den Bach repariert.",
    "9": "The orchestra rehearsed the symphony twice before the sold-out opening concert.",
    "10": "Engineers tested the new electric ferry on a calm morning across the bay.",
}
SECOND = {**{k: v for k, v in BASE.items() if k not in ("3", "4")}, **NEW}
LABELS = {"d1": "news", "g1": "news"}


def _write(folder: Path, texts: dict[str, str]) -> Path:
    folder.mkdir()
    path = folder / "data.jsonl"
    rows = ({"id": i, "text": t, "label": LABELS.get(i, "misc")} for i, t in texts.items())
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# One split: with nine rows a single row added or removed moves the split cuts, and
# these tests are about content changes (test_stage_split covers split stability).
ONE_SPLIT = ("stages.split.train=1.0", "stages.split.validation=0", "stages.split.test=0")


def _publish(path: Path, output: Path, *overrides: str) -> dict:
    from flows.curate import curate

    cfg = load_config(None, inputs=[str(path)], output=str(output), overrides=["shard_rows=4", *ONE_SPLIT, "stages.language.allowed=[en]", *overrides])
    return curate(config=cfg.model_dump(mode="json"), dataset=cfg.datasets[0].name)


@pytest.fixture(scope="module")
def store(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store root holding ``data/v0001`` (BASE) and ``data/v0002`` (SECOND)."""
    tmp = tmp_path_factory.mktemp("inspect")
    root = tmp / "out"
    first = _publish(_write(tmp / "first", BASE), root)
    second = _publish(_write(tmp / "second", SECOND), root, "stages.quality.min_words=2")
    assert (first["version"], second["version"]) == ("v0001", "v0002")
    return root


def _json(capsys: pytest.CaptureFixture, *argv: str) -> object:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_diff_reports_exactly_the_known_changes(store: Path, capsys: pytest.CaptureFixture) -> None:
    diff = _json(capsys, "diff", "data/v0001", "data/v0002", "--output", str(store), "--json")
    assert diff["a"] == "data/v0001" and diff["b"] == "data/v0002"
    assert diff["kept_rows"] == [9, 8]
    assert diff["added"] == [
        {"row_id": "10", "stage": None, "reason": None},
        {"row_id": "9", "stage": None, "reason": None},
    ]
    assert diff["removed"] == [
        {"row_id": "3", "stage": None, "reason": None},
        {"row_id": "4", "stage": None, "reason": None},
        {"row_id": "6", "stage": "language", "reason": "language:de"},
    ]
    assert diff["changed"] == [{"row_id": "5", "columns": ["text"]}]
    assert diff["config"] == [{"key": "stages.quality.min_words", "old": 3, "new": 2}]
    removed = {s["stage"]: (s["a"], s["b"]) for s in diff["stages"]}
    assert removed["language"] == (1, 2) and removed["exact_dedup"] == (2, 2) and removed["quality"] == (0, 0)


def test_diff_across_output_folders_by_path(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    elsewhere = tmp_path / "archive" / "v0001"
    shutil.copytree(store / "data" / "v0001", elsewhere)
    by_name = _json(capsys, "diff", "data/v1", "data", "--output", str(store), "--json")
    by_path = _json(capsys, "diff", str(elsewhere), str(store / "data" / "v0002"), "--json")
    assert by_path == by_name
    same = _json(capsys, "diff", str(elsewhere), "data/v0001", "--output", str(store), "--json")
    assert same["added"] == same["removed"] == same["changed"] == same["config"] == []


def test_diff_table_names_the_changes(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["diff", "data/v0001", "data/v0002", "--output", str(store)]) == 0
    out = capsys.readouterr().out
    assert "9 -> 8 rows kept" in out and "stages.quality.min_words" in out and "6 (language:de)" in out


def test_versions_lists_both_with_row_counts(store: Path, capsys: pytest.CaptureFixture) -> None:
    listed = _json(capsys, "versions", "--output", str(store), "--json")
    assert [(v["dataset"], v["version"], v["latest"]) for v in listed] == [
        ("data", "v0001", False),
        ("data", "v0002", True),
    ]
    first, second = listed
    assert first["splits"] == {"train": 9} and second["splits"] == {"train": 8}
    assert first["rows_added"] is None and first["config_changed"] is None
    assert (second["rows_added"], second["rows_removed"], second["config_changed"]) == (2, 3, True)
    assert _json(capsys, "versions", "data", "--output", str(store), "--json") == listed


def test_versions_takes_the_output_of_pipeline_yaml(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "pipeline.yaml").write_text(f"output: {store}\ndatasets: [{{name: data, inputs: [data.jsonl]}}]\n")
    monkeypatch.chdir(tmp_path)
    assert [v["version"] for v in _json(capsys, "versions", "--json")] == ["v0001", "v0002"]
    assert main(["versions"]) == 0 and "v0002*" in capsys.readouterr().out


def test_show_lists_the_planted_duplicates(store: Path, capsys: pytest.CaptureFixture) -> None:
    shown = _json(capsys, "show", "data/v0001", "--reason", "exact_duplicate", "--output", str(store), "--json")
    assert shown["total"] == 2
    assert {(r["row_id"], r["stage"], r["detail"]["duplicate_of"]) for r in shown["rows"]} == {
        ("d1", "exact_dedup", "1"),
        ("d2", "exact_dedup", "2"),
    }
    assert shown["rows"][0]["fields"]["text"] == BASE[shown["rows"][0]["row_id"]]


def test_show_filters_by_stage_reason_family_and_limit(store: Path, capsys: pytest.CaptureFixture) -> None:
    latest = str(store / "data")  # a dataset folder stands for its latest version
    german = _json(capsys, "show", latest, "--reason", "language", "--json")
    assert german["version"] == "data/v0002" and {r["row_id"] for r in german["rows"]} == {"6", "g1"}
    noise = _json(capsys, "show", latest, "--stage", "noise", "--json")
    assert [(r["row_id"], r["reason"]) for r in noise["rows"]] == [("h1", "changed")]
    assert "<EMAIL>" in noise["rows"][0]["fields"]["text"]
    changed = _json(capsys, "show", latest, "--reason", "changed", "--limit", "0", "--json")
    assert len(changed["rows"]) == changed["total"] >= 1
    one = _json(capsys, "show", latest, "--limit", "1", "--json")
    assert len(one["rows"]) == 1 and one["total"] == 4 + changed["total"]  # d1, d2, g1, 6 removed
    assert main(["show", latest, "--reason", "exact_duplicate"]) == 0
    assert "2 of 2 matching rows listed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["show", "nope", "--output", "{store}"], "unknown dataset 'nope'"),
        (["show", "data/v0009", "--output", "{store}"], "unknown version data/v0009"),
        (["diff", "data/v0001", "{store}", "--output", "{store}"], "is not a version folder"),
        (["show", "data/v0001/reports"], "no such folder"),
        (["versions", "nope", "--output", "{store}"], "unknown dataset 'nope'"),
        (["show", "data", "--stage", "nope", "--output", "{store}"], "unknown stage 'nope'"),
        (["versions"], "pass --output DIR"),
    ],
    ids=["dataset", "version", "not-a-version-folder", "not-a-name", "versions-dataset", "stage", "no-output"],
)
def test_errors_are_one_line_and_exit_2(
    store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    argv: list[str],
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # no pipeline.yaml here, so no default store
    assert main([a.replace("{store}", str(store)) for a in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], captured.err
    assert captured.out == ""


def test_report_prints_the_path_and_rebuilds_a_missing_one(store: Path, capsys: pytest.CaptureFixture) -> None:
    page = store / "data" / "v0001" / "report.html"
    assert page.is_file(), "every published version carries its report"
    assert main(["report", "data/v1", "--output", str(store)]) == 0
    assert capsys.readouterr().out.strip() == str(page)
    page.unlink()
    assert main(["report", str(store / "data")]) == 0  # a dataset folder means its latest
    assert not page.exists() and (store / "data" / "v0002" / "report.html").is_file()
    assert main(["report", "data/v1", "--output", str(store)]) == 0
    assert page.is_file() and "v0001" in page.read_text()
