"""The versioned store: numbering, LATEST, atomic publish, the ledger check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import version as version_module
from pipeline.errors import PipelineError
from pipeline.files import write_table
from pipeline.schema import DatasetInfo
from pipeline.steps import Shard
from pipeline.store import Store, check_writable
from pipeline.version import LedgerError, RunRecord, StageReport, publish
from tests.conftest import REPO


def make_record(tmp_path: Path, kept_ids: list[str], removed_ids: list[str], input_rows: int) -> RunRecord:
    kept = tmp_path / "kept.parquet"
    write_table(pa.table({"row_id": kept_ids, "text": ["t"] * len(kept_ids), "changed_by": [""] * len(kept_ids)}), kept)
    removed = tmp_path / "removed.parquet"
    n = len(removed_ids)
    write_table(
        pa.table({"row_id": removed_ids, "text": ["x"] * n, "changed_by": [""] * n, "reason": ["r"] * n, "detail": ["{}"] * n}),
        removed,
    )
    return RunRecord(
        dataset="d",
        info=DatasetInfo("text", ("text",)),
        fingerprint="f" * 64,
        inputs=[{"path": "in.jsonl", "label": "in.jsonl", "sha256": "0" * 64}],
        config={},
        config_hash="c" * 64,
        input_rows=input_rows,
        final=[Shard(str(kept), len(kept_ids))],
        removed={"missing": [str(removed)]} if n else {},
        scores={},
        stages=[StageReport("missing", True, input_rows, len(kept_ids), 0, 0.1, {}, {"r": n})],
    )


def test_versions_are_numbered_and_latest_follows(tmp_path: Path) -> None:
    store = Store(tmp_path / "out", "d")
    record = make_record(tmp_path, ["a", "b"], ["c"], 3)
    v1, p1 = publish(record, store)
    v2, _ = publish(record, store)
    assert (v1, v2) == ("v0001", "v0002")
    assert store.versions() == ["v0001", "v0002"] and store.latest() == "v0002"
    assert store.manifest("v0001")["version"] == "v0001"
    assert store.find_fingerprint("f" * 64) == "v0002" and store.find_fingerprint("0" * 64) is None
    assert sorted(p.name for p in (p1 / "reports").iterdir()) == ["removed.parquet", "stages.parquet"]
    assert [p.name for p in store.dir.iterdir() if p.name.startswith(".staging")] == []


def test_unbalanced_ledger_publishes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "out", "d")
    with pytest.raises(LedgerError, match="4 input rows, 2 kept \\+ 1 removed"):
        publish(make_record(tmp_path, ["a", "b"], ["c"], 4), store)
    with pytest.raises(LedgerError, match="both kept and removed"):
        publish(make_record(tmp_path, ["a", "b"], ["b"], 3), store)
    assert store.versions() == [] and store.latest() is None
    assert list(store.dir.iterdir()) == [] or all(p.name == ".lock" for p in store.dir.iterdir())


def test_failure_mid_publish_leaves_no_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "out", "d")
    publish(make_record(tmp_path, ["a"], [], 1), store)

    def broken_card(manifest: dict) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(version_module, "render_card", broken_card)
    with pytest.raises(OSError, match="disk full"):
        publish(make_record(tmp_path, ["a"], [], 1), store)
    assert store.versions() == ["v0001"] and store.latest() == "v0001"
    assert not [p for p in store.dir.iterdir() if p.name.startswith(".staging")]


def test_written_is_called_between_the_data_and_the_report(tmp_path: Path) -> None:
    """The flow deletes its work folder from ``written``: by then every data and report
    file must be in staging, the report page not yet (it is drawn meanwhile)."""
    store = Store(tmp_path / "out", "d")
    seen: list[list[str]] = []

    def written() -> None:
        (staging,) = [p for p in store.dir.iterdir() if p.name.startswith(".staging") and p.is_dir()]
        seen.append(sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()))

    _, path = publish(make_record(tmp_path, ["a", "b"], ["c"], 3), store, written=written)
    assert len(seen) == 1
    assert "README.md" in seen[0] and "reports/removed.parquet" in seen[0]
    assert any(f.startswith("data/") for f in seen[0]) and "report.html" not in seen[0]
    assert (path / "report.html").exists()


def test_written_is_not_called_when_writing_fails(tmp_path: Path) -> None:
    """A run that fails before its data are written keeps its work folder to resume from."""
    called: list[bool] = []
    with pytest.raises(LedgerError):
        publish(make_record(tmp_path, ["a", "b"], ["c"], 4), Store(tmp_path / "out", "d"), written=lambda: called.append(True))
    assert called == []


def test_failure_in_the_rename_leaves_no_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "out", "d")

    def failing_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr("pipeline.store.os.rename", failing_rename)
    with pytest.raises(OSError):
        publish(make_record(tmp_path, ["a"], [], 1), store)
    assert store.versions() == [] and store.latest() is None


def test_a_killed_runs_staging_folder_is_removed_by_the_next_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A run killed while publishing leaves its staging folder; ``remove_stale`` knows
    it for a dead process's (its lock is free) and removes it, never a live one's."""
    store = Store(tmp_path / "out", "d")
    code = (
        "import sys, time; from pipeline.store import Store; "
        f"s = Store({str(tmp_path / 'out')!r}, 'd').new_staging(); (s / 'half.parquet').write_bytes(b'x'); "
        "print(s.name, flush=True); time.sleep(600)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        dead = child.stdout.readline().strip()
        live = store.new_staging()
        assert store.remove_stale() == [], "the child still holds its folder"
    finally:
        child.kill()
        child.wait()
    older = store.dir / ".staging-0123456789ab"  # written before staging folders had locks
    older.mkdir()
    assert store.remove_stale() == sorted([dead, older.name])
    assert sorted(p.name for p in store.dir.iterdir()) == sorted([live.name, f"{live.name}.lock"])
    store.discard(live)
    assert [p.name for p in store.dir.iterdir() if p.name.startswith(".staging")] == []


def test_publishing_releases_the_staging_lock(tmp_path: Path) -> None:
    store = Store(tmp_path / "out", "d")
    publish(make_record(tmp_path, ["a"], [], 1), store)
    assert [p.name for p in store.dir.iterdir() if p.name.startswith(".staging")] == []


@pytest.mark.parametrize("where", ["itself", "above"])
def test_an_output_folder_that_is_a_file_is_named(tmp_path: Path, where: str) -> None:
    (tmp_path / "taken").write_text("x")
    folder = tmp_path / "taken" if where == "itself" else tmp_path / "taken" / "out"
    with pytest.raises(PipelineError, match=rf"--output {folder}: {tmp_path / 'taken'} is a file, not a folder"):
        check_writable(folder, "--output")
    check_writable(tmp_path / "new" / "out", "--output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"], "the check creates nothing"
