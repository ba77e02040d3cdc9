"""Failures that are no bug, each one ``error:`` line, with nothing published.

A full disk, for real on a 20 MB tmpfs as the output folder (mounted by the test, which
needs root; skipped where mounting is not permitted), with Prefect's temporary server
at home in that folder as a user's run has it; and simulated (a write that fails with
ENOSPC), so that machines without the mount still test the flow's handling: the space
is given back too. And training on an empty version that an older run published.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import steps
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.files import write_table
from pipeline.schema import DatasetInfo
from pipeline.steps import Shard
from pipeline.store import Store
from pipeline.train.manifest import verify_version
from pipeline.version import RunRecord, StageReport, publish
from tests.conftest import REPO, tmpfs
from tests.test_resume import write_corpus

SETTINGS = ("--set", "stages.language.enabled=false", "-q")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs: the disk that fills."""
    with tmpfs(tmp_path / "disk", "size=20m", "a 20 MB tmpfs") as disk:
        yield disk


def run(data: Path, out: Path) -> subprocess.CompletedProcess:
    """``python -m pipeline run`` as a user starts it: Prefect's temporary server, at home in ``out``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(REPO)
    args = [sys.executable, "-m", "pipeline", "run", "--input", str(data), "--output", str(out), *SETTINGS]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


def assert_one_line(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_nothing_left(store: Store) -> None:
    """No version, no staging folder, no work files."""
    assert store.versions() == [] and store.latest() is None
    assert not [p for p in store.dir.glob(".staging-*")]
    work = store.dir / ".work"
    assert not work.exists() or not [p for p in work.iterdir() if p.is_dir()]


@pytest.mark.integration
def test_a_full_disk_is_one_line_and_leaves_room_for_the_next_run(small_disk: Path, tmp_path: Path) -> None:
    big = write_corpus(tmp_path / "big.jsonl", 60_000)  # about 16 MB of JSONL; its work files do not fit in 20 MB
    small = write_corpus(tmp_path / "small.jsonl", 500, seed=1)
    out = small_disk / "out"
    failed = run(big, out)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert_one_line(failed.stderr, "disk full", f"output folder {out}", "work files were deleted")
    assert_nothing_left(Store(out, "big"))
    after = run(small, out)
    assert after.returncode == 0, after.stderr[-3000:]
    assert Store(out, "small").versions() == ["v0001"]


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_a_write_that_finds_the_disk_full_is_one_line_and_deletes_the_work_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    write = steps.write_table

    def full_at_exact_dedup(table: pa.Table, path: Path) -> None:
        if "exact_dedup" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(table, path)

    monkeypatch.setattr(steps, "write_table", full_at_exact_dedup)
    data = write_corpus(tmp_path / "data.jsonl", 600)
    out = tmp_path / "out"
    assert main(["run", "--input", str(data), "--output", str(out), *SETTINGS]) == 2
    assert_one_line(capsys.readouterr().err, "disk full", "No space left on device", "work files were deleted")
    assert_nothing_left(Store(out, "data"))


def test_training_on_an_empty_version_says_it_has_no_rows(tmp_path: Path) -> None:
    """What runs published before empty versions were refused: one data file of no rows."""
    text = pa.array([None, None], pa.string())
    removed = pa.table({"row_id": ["a", "b"], "text": text, "label": ["x", "y"], "changed_by": ["", ""]})
    removed = removed.append_column("reason", pa.array(["missing:text"] * 2))
    removed = removed.append_column("detail", pa.array(["{}"] * 2))
    write_table(removed, tmp_path / "removed.parquet")
    write_table(removed.select(["row_id", "text", "label", "changed_by"]).slice(0, 0), tmp_path / "kept.parquet")
    record = RunRecord(
        dataset="d", info=DatasetInfo("classification", ("text", "label")), fingerprint="f" * 64, inputs=[], config={},
        config_hash="c" * 64, input_rows=2, final=[Shard(str(tmp_path / "kept.parquet"), 0)],
        removed={"missing": [str(tmp_path / "removed.parquet")]}, scores={},
        stages=[StageReport("missing", True, 2, 0, 0, 0.1, {}, {"missing:text": 2})],
    )
    _, path = publish(record, Store(tmp_path / "out", "d"))
    with pytest.raises(PipelineError, match=r"train on .*/v0001: it has no rows \(every input row was removed"):
        verify_version(path)


@pytest.mark.integration
def test_a_disk_without_room_for_prefects_database_is_one_line_at_once(small_disk: Path, tmp_path: Path) -> None:
    """The temporary server's database goes to ``<output>/.prefect``: without room for
    it the server would fail to start, again and again, for 90 s of tracebacks."""
    (small_disk / "filler").write_bytes(b"\0" * (19 * 2**20))
    started = time.monotonic()
    failed = run(write_corpus(tmp_path / "small.jsonl", 100), small_disk / "out")
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert_one_line(failed.stderr, "disk full", "MB free in", "Prefect's temporary server")
    assert time.monotonic() - started < 30
