"""The label review loop end to end: export the worst issues, a person decides, import,
and the next run applies the decisions (and records them)."""

from __future__ import annotations

import csv
import json
import shutil
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
    line = 3 + rows[0]["text"].count("\n")  # the line an editor shows: the first row's text may span lines
    assert err.startswith(f"error: {edited}:{line} ") and message in err and len(err.strip().splitlines()) == 1
    assert (before.read_text() if before.exists() else None) == snapshot


def test_export_of_a_version_without_label_issues_says_why(first, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, out, result = first
    (Path(result["path"]) / "reports" / "label_issues.parquet").rename(tmp_path / "moved.parquet")
    try:
        assert main(["review", "export", "labelled/v1", "--output", str(out), "--out", str(tmp_path / "x.csv")]) == 2
        assert "has no reports/label_issues.parquet" in capsys.readouterr().err
    finally:
        (tmp_path / "moved.parquet").rename(Path(result["path"]) / "reports" / "label_issues.parquet")


def _store_copy(out: Path, root: Path) -> Path:
    """A store of its own holding v0001, so that an import changes no other test's."""
    shutil.copytree(out / "labelled" / "v0001", root / "labelled" / "v0001")
    return root


def _write(path: Path, rows: list[dict], encoding: str = "utf-8", delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding=encoding) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("encoding", "delimiter"),
    [("utf-8-sig", ","), ("latin-1", ","), ("cp1252", ";"), ("utf-16", "\t")],
    ids=["utf-8-bom", "latin-1", "windows-1252-semicolons", "utf-16-tabs"],
)
def test_a_file_as_spreadsheet_programs_save_it_imports(first, tmp_path: Path, encoding: str, delimiter: str) -> None:
    _, out, _ = first
    root = _store_copy(out, tmp_path / "store")
    rows = _export(out, tmp_path / "export.csv", "--top", "3", "--all")
    rows[0]["decision"], rows[1]["decision"] = "keep", "drop"
    rows[0]["text"] = "Café crème, naïve résumé"  # not UTF-8 once saved as Latin-1 or Windows-1252
    edited = _write(tmp_path / "review.csv", rows, encoding, delimiter)
    assert main(["review", "import", str(edited), "--output", str(root)]) == 0
    stored = (root / "labelled" / "review" / "decisions.jsonl").read_text().splitlines()
    assert {json.loads(line)["row_id"]: json.loads(line)["decision"] for line in stored} == {
        rows[0]["row_id"]: "keep", rows[1]["row_id"]: "drop"
    }


def _refused(edited: Path, root: Path, capsys: pytest.CaptureFixture) -> str:
    assert main(["review", "import", str(edited), "--output", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {edited}:"), err
    assert not (root / "labelled" / "review").exists()
    return err[0]


def test_an_unterminated_quote_names_its_line(first, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, out, _ = first
    root = _store_copy(out, tmp_path / "store")
    rows = _export(out, tmp_path / "export.csv", "--top", "3", "--all")
    for row in rows:
        row.update(decision="keep", text="one line")
    lines = _write(tmp_path / "review.csv", rows).read_text().splitlines(keepends=True)
    lines[2] = '"' + lines[2]  # the second row's first field opens a quote that nothing closes
    edited = tmp_path / "review.csv"
    edited.write_text("".join(lines))
    assert "review.csv:3: not valid CSV" in _refused(edited, root, capsys)


def test_a_jsonl_line_that_is_not_an_object_names_its_line(
    first, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, out, _ = first
    root = _store_copy(out, tmp_path / "store")
    rows = _export(out, tmp_path / "export.csv", "--top", "2", "--all")
    edited = tmp_path / "review.jsonl"
    edited.write_text(json.dumps({**rows[0], "decision": "keep"}) + "\n[1,2,3]\n")
    assert "review.jsonl:2: expected a JSON object" in _refused(edited, root, capsys)


def test_a_dataset_that_is_a_path_out_of_the_store_is_refused(
    first, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, out, _ = first
    root = _store_copy(out, tmp_path / "store")
    other = _store_copy(out, tmp_path / "other" / "store")
    rows = _export(out, tmp_path / "export.csv", "--top", "2", "--all")
    for row in rows:
        row.update(decision="drop", dataset="../other/store/labelled")
    edited = _write(tmp_path / "review.csv", rows)
    message = _refused(edited, root, capsys)
    assert "review.csv:2: dataset '../other/store/labelled' is not the name of a dataset" in message
    assert not (other / "labelled" / "review").exists()
