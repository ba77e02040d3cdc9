"""The curate flow under Prefect's test harness: publish, account, re-run, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import steps
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.files import file_sha256

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_harness")]

ROWS = [
    {"id": "1", "text": "The committee approved the new budget for the public library on Tuesday.", "label": "news"},
    {"id": "2", "text": "the committee approved the new budget for the public library on tuesday.", "label": "news"},
    {"id": "3", "text": "<p>Contact me at jane.doe@example.com for the full recipe with fresh basil.</p>", "label": "food"},
    {"id": "4", "text": "   ", "label": "food"},
    {"id": "5", "text": "Der Ausschuss hat gestern den neuen Haushalt für die Bibliothek genehmigt.", "label": "news"},
    {"id": "6", "text": "Slow-roasted tomatoes with garlic make a rich sauce for fresh pasta.", "label": "food"},
    {"id": "7", "text": "The striker scored twice in the second half to win the championship final.", "label": "sport"},
]

# One German row in seven is a real share of the data, which the language stage keeps by
# default; these tests plant it as the row to remove.
ENGLISH_ONLY = ("stages.language.allowed=[en]",)


def write_input(tmp_path: Path, rows: list[dict] = ROWS) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def curate(tmp_path: Path, *overrides: str) -> dict:
    from flows.curate import curate as curate_flow

    cfg = load_config(None, inputs=[str(write_input(tmp_path))], output=str(tmp_path / "out"), overrides=["shard_rows=3", *ENGLISH_ONLY, *overrides])
    return curate_flow(config=cfg.model_dump(mode="json"), dataset=cfg.datasets[0].name)


def test_publishes_a_version_that_accounts_for_every_row(tmp_path: Path) -> None:
    import datasets

    result = curate(tmp_path)
    assert result["status"] == "published" and result["version"] == "v0001"
    path = Path(result["path"])
    kept = datasets.concatenate_datasets(list(datasets.load_dataset(str(path)).values()))
    removed = pq.read_table(path / "reports" / "removed.parquet").to_pylist()
    assert sorted(list(kept["row_id"]) + [r["row_id"] for r in removed]) == sorted(r["id"] for r in ROWS)
    reasons = {r["row_id"]: r["reason"] for r in removed}
    assert reasons == {"2": "exact_duplicate", "4": "missing:text", "5": "language:de"}
    assert json.loads(next(r for r in removed if r["row_id"] == "2")["detail"]) == {"duplicate_of": "1"}
    text3 = kept.filter(lambda r: r["row_id"] == "3")[0]["text"]
    assert "<p>" not in text3 and "<EMAIL>" in text3
    stages = pq.read_table(path / "reports" / "stages.parquet").to_pylist()
    assert [s["stage"] for s in stages] == [
        "normalize", "noise", "missing", "conversation", "language", "quality", "exact_dedup", "near_dedup", "label_issues",
        "split", "decontaminate", "select", "tokens", "augment", "rehearsal"
    ]
    assert stages[0]["rows_in"] == 7 and stages[-1]["rows_out"] == 4
    assert [s["enabled"] for s in stages[-2:]] == [False, False], "augment and rehearsal are opt-in"
    manifest = json.loads((path / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["input_rows"], counts["kept_rows"], counts["removed_rows"]) == (7, 4, 3)
    assert sum(counts["splits"].values()) == 4 and counts["origins"] == {"original": 4}
    assert set(kept["split"]) == set(counts["splits"]) and "train" in counts["splits"]
    assert len(manifest["inputs"][0]["sha256"]) == 64
    data_files = {f"data/{f.name}": f for f in (path / "data").glob("*.parquet")}
    assert set(manifest["data_files"]) == set(data_files), "the manifest lists every data file"
    for name, listed in manifest["data_files"].items():
        assert listed["sha256"] == file_sha256(data_files[name])
        assert listed["rows"] == pq.ParquetFile(data_files[name]).metadata.num_rows
    assert (path / "reports" / "language.parquet").exists() and (path / "reports" / "quality.parquet").exists()
    assert not (tmp_path / "out" / "data" / ".work").exists() or not any((tmp_path / "out" / "data" / ".work").iterdir())


def test_rerun_publishes_nothing_and_a_change_publishes_a_new_version(tmp_path: Path) -> None:
    first = curate(tmp_path)
    again = curate(tmp_path)
    assert again["status"] == "unchanged" and again["version"] == first["version"]
    changed = curate(tmp_path, "stages.language.allowed=[en,de]")
    assert changed["version"] == "v0002" and changed["kept_rows"] == first["kept_rows"] + 1
    # Both versions load with their own rows (datasets' cache must not mix them up).
    import datasets

    for result in (first, changed):
        assert sum(map(len, datasets.load_dataset(result["path"]).values())) == result["kept_rows"]


def test_disabled_stage_is_reported_off(tmp_path: Path) -> None:
    result = curate(tmp_path, "stages.language.enabled=false", "stages.exact_dedup.enabled=false")
    enabled = {s["stage"]: s["enabled"] for s in result["stages"]}
    assert enabled["language"] is False and enabled["exact_dedup"] is False
    # With exact dedup off, the near-duplicate stage catches the case-only copy.
    near = next(s for s in result["stages"] if s["stage"] == "near_dedup")
    assert result["kept_rows"] == 5 and near["reasons"] == {"near_duplicate": 1}
    result = curate(tmp_path, "stages.language.enabled=false", "stages.exact_dedup.enabled=false", "stages.near_dedup.enabled=false")
    assert result["kept_rows"] == 6


def test_interrupted_run_resumes_from_cached_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.quality import QualityStage

    calls: list[str] = []
    real_ingest = steps.ingest
    monkeypatch.setattr(steps, "ingest", lambda *a: calls.append("ingest") or real_ingest(*a))
    real_apply = QualityStage.apply

    def crash(self, table, state=None):
        raise RuntimeError("killed mid-stage")

    monkeypatch.setattr(QualityStage, "apply", crash)
    with pytest.raises(RuntimeError, match="killed mid-stage"):
        curate(tmp_path)
    assert not (tmp_path / "out" / "data" / "v0001").exists()
    monkeypatch.setattr(QualityStage, "apply", real_apply)
    result = curate(tmp_path)
    assert result["version"] == "v0001"
    assert calls == ["ingest"], "the resumed run must take ingest from the cache"


def test_bad_input_inside_the_flow_is_a_pipeline_error(tmp_path: Path) -> None:
    from flows.curate import curate as curate_flow

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = load_config(None, inputs=[str(empty)], output=str(tmp_path / "out"))
    with pytest.raises(PipelineError):
        curate_flow(config=cfg.model_dump(mode="json"), dataset=cfg.datasets[0].name)
    assert not (tmp_path / "out" / "empty").exists() or not list((tmp_path / "out" / "empty").glob("v*"))


def test_stage_table_and_report_link_are_published_as_prefect_artifacts(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    result = curate(tmp_path)

    def newest(key: str):
        # Earlier tests publish under the same key on the session's server: take the newest.
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
            )
        assert found, f"no {key} artifact"
        return found[0]

    table = newest("data-stages")
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert [r["stage"] for r in rows][:2] == ["normalize", "noise"]
    assert any("exact_duplicate" in r["top_reasons"] for r in rows), rows
    report = (Path(result["path"]) / "report.html").resolve()
    assert report.is_file() and report.as_uri() in newest("data-report").data
    assert report.as_uri() in newest("data-summary").data
