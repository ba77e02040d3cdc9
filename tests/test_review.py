"""The label review loop end to end: export the worst issues, a person decides, import,
and the next run applies the decisions (and records them)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from tests.conftest import clean_sample_rows

LABELS = ("computers", "food", "politics")
# The language and quality stages are not under test here: off, to keep the runs short.
FAST = ("stages.language.enabled=false", "stages.quality.enabled=false", "stages.split.enabled=false")


def _write_input(path: Path) -> Path:
    sample = clean_sample_rows()
    rows = [{"id": i, "text": t, "label": label} for label in LABELS for i, t in sample[label][:60]]
    for k, row in enumerate(rows[::9]):  # flip every ninth label to the next class
        row["label"] = LABELS[(LABELS.index(row["label"]) + 1) % len(LABELS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _curate(data: Path, out: Path) -> dict:
    from flows.curate import curate

    cfg = load_config(None, inputs=[str(data)], output=str(out), overrides=list(FAST))
    return curate(config=cfg.model_dump(mode="json"), dataset=cfg.datasets[0].name)


@pytest.fixture(scope="module")
def first(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("review")
    data = _write_input(tmp / "labelled.jsonl")
    result = _curate(data, tmp / "out")
    return data, tmp / "out", result


def _export(out: Path, target: Path, *extra: str) -> list[dict]:
    """Export from v0001 (``labelled`` alone would mean the latest)."""
    assert main(["review", "export", "labelled/v1", "--output", str(out), "--out", str(target), *extra]) == 0
    with open(target, newline="") as fh:
        return list(csv.DictReader(fh))


def test_export_lists_the_worst_issues_first(first, tmp_path: Path) -> None:
    _, out, result = first
    rows = _export(out, tmp_path / "review.csv", "--top", "5")
    report = pq.read_table(Path(result["path"]) / "reports" / "label_issues.parquet").to_pylist()
    issues = [r for r in report if r["is_issue"]]
    assert [r["row_id"] for r in rows] == [r["row_id"] for r in issues[:5]]
    qualities = [float(r["label_quality"]) for r in rows]
    assert qualities == sorted(qualities)
    assert all(r["decision"] == "" and r["label"] == r["suggested_label"] for r in rows)
    assert {r["dataset"] for r in rows} == {"labelled"} and {r["version"] for r in rows} == {"v0001"}


def test_imported_decisions_are_applied_by_the_next_run(first, tmp_path: Path) -> None:
    data, out, _ = first
    edited = tmp_path / "review.csv"
    rows = _export(out, edited, "--top", "4")
    relabel, drop, keep = rows[0], rows[1], rows[2]
    relabel["decision"], drop["decision"], keep["decision"] = "relabel", "DROP", "keep"
    with open(edited, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["review", "import", str(edited), "--output", str(out)]) == 0
    stored = [json.loads(line) for line in (out / "labelled" / "review" / "decisions.jsonl").read_text().splitlines()]
    assert {e["row_id"]: e["decision"] for e in stored} == {
        relabel["row_id"]: "relabel", drop["row_id"]: "drop", keep["row_id"]: "keep"
    }

    second = _curate(data, out)
    assert second["version"] == "v0002", "new decisions make a new version"
    version = Path(second["path"])
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["review"]["decisions"] == 3 and len(manifest["review"]["sha256"]) == 64
    removed = {r["row_id"]: r for r in pq.read_table(version / "reports" / "removed.parquet").to_pylist()}
    assert removed[drop["row_id"]]["reason"] == "label_review"
    kept = {r["row_id"]: r for t in version.glob("data/*.parquet") for r in pq.read_table(t).to_pylist()}
    assert kept[relabel["row_id"]]["label"] == relabel["label"]
    assert "label_issues" in kept[relabel["row_id"]]["changed_by"]
    assert kept[keep["row_id"]]["label"] == keep["given_label"]
    report = {r["row_id"]: r for r in pq.read_table(version / "reports" / "label_issues.parquet").to_pylist()}
    assert {report[r["row_id"]]["decided_by"] for r in (relabel, drop, keep)} == {"review"}
    assert _curate(data, out)["status"] == "unchanged", "the same decisions again: nothing new"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"decision": "maybe"}, "decision 'maybe' is not one of keep, drop, relabel"),
        ({"decision": "relabel", "label": "astrology"}, "relabel needs a label, one of the known classes"),
        ({"decision": "drop", "row_id": "no-such-row"}, "no such row in labelled/v0001"),
    ],
)
def test_a_bad_decision_names_the_line_and_imports_nothing(
    first, tmp_path: Path, capsys: pytest.CaptureFixture, edit: dict, message: str
) -> None:
    _, out, _ = first
    edited = tmp_path / "review.csv"
    rows = _export(out, edited, "--top", "3", "--all")
    rows[0]["decision"] = "keep"
    rows[1].update(edit)
    with open(edited, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = (out / "labelled" / "review" / "decisions.jsonl")
    snapshot = before.read_text() if before.exists() else None
    assert main(["review", "import", str(edited), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {edited}:3 ") and message in err and len(err.strip().splitlines()) == 1
    assert (before.read_text() if before.exists() else None) == snapshot


def test_export_of_a_version_without_label_issues_says_why(first, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, out, result = first
    (Path(result["path"]) / "reports" / "label_issues.parquet").rename(tmp_path / "moved.parquet")
    try:
        assert main(["review", "export", "labelled/v1", "--output", str(out), "--out", str(tmp_path / "x.csv")]) == 2
        assert "has no reports/label_issues.parquet" in capsys.readouterr().err
    finally:
        (tmp_path / "moved.parquet").rename(Path(result["path"]) / "reports" / "label_issues.parquet")
