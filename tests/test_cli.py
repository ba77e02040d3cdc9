"""The CLI end to end: the README's main command on sample_data/, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.conftest import REPO, tmpfs


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )


@pytest.mark.flow
def test_run_curates_sample_data_and_a_rerun_matches(tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "out"
    first = cli("run", "--output", str(out))
    assert first.returncode == 0, first.stderr
    for name in ("classification", "instruction"):
        version = out / name / "v0001"
        assert (out / name / "LATEST").read_text().strip() == "v0001"
        assert f"published {version}" in first.stdout.replace("\n", "")
        manifest = json.loads((version / "manifest.json").read_text())
        removed = pq.read_table(version / "reports" / "removed.parquet")
        splits = datasets.load_dataset(str(version))
        assert set(splits) == {"train", "validation", "test"}
        kept = datasets.concatenate_datasets(list(splits.values()))
        kept = _check_augmented(splits, manifest) if name == "classification" else _check_rehearsal(splits, manifest)
        assert len(kept) + removed.num_rows == manifest["counts"]["input_rows"]
        assert removed.num_rows > 0 and removed.column("reason").null_count == 0
        reasons = set(removed.column("reason").to_pylist())
        assert "exact_duplicate" in reasons and any(r.startswith("language:") for r in reasons)
        _assert_planted_problems_fixed(name, kept, removed)
    assert "exact_dedup" in first.stdout and "rows in" in first.stdout
    summary = first.stdout.replace("\n", " ")
    removed_cls = pq.read_table(out / "classification" / "v0001" / "reports" / "removed.parquet").num_rows
    assert f"{removed_cls:,} removed, " in summary and "augmented rows added" in summary
    assert "near_dedup: " in first.stderr, "the stages' log lines are shown without --quiet"
    second = cli("run", "--output", str(out), "--quiet")
    assert second.returncode == 0, second.stderr
    assert "match v0001" in second.stdout and not (out / "classification" / "v0002").exists()
    assert "INFO" not in second.stderr and "nothing new to publish" not in second.stderr, "--quiet prints only the result"


def _check_augmented(splits, manifest: dict):
    """pipeline.yaml balances the classification sample's classes with augmented train
    rows: they point at a kept train row of the same label. Returns the original rows."""
    train = splits["train"].to_pandas()
    augmented = train[train["origin"] == "augmented"]
    originals = train[train["origin"] == "original"].set_index("row_id")
    assert len(augmented) > 0 and manifest["counts"]["origins"]["augmented"] == len(augmented)
    assert augmented["source_row_id"].isin(originals.index).all()
    assert (originals.loc[augmented["source_row_id"], "label"].to_numpy() == augmented["label"].to_numpy()).all()
    for split in ("validation", "test"):
        assert set(splits[split]["origin"]) == {"original"}
    thin = originals["label"].value_counts().idxmin()
    assert (augmented["label"] == thin).any(), "the thinnest class gets augmented rows"
    import datasets

    original_train = splits["train"].filter(lambda r: r["origin"] == "original")
    return datasets.concatenate_datasets([original_train, splits["validation"], splits["test"]])


def _check_rehearsal(splits, manifest: dict):
    """pipeline.yaml mixes general.jsonl into the instruction sample's train split, one
    row per ten original train rows. Returns the original rows."""
    import datasets

    train = splits["train"].to_pandas()
    rehearsal = train[train["origin"] == "rehearsal"]
    originals = train[train["origin"] == "original"]
    assert manifest["counts"]["origins"]["rehearsal"] == len(rehearsal) == round(0.1 * len(originals))
    assert rehearsal["prompt"].str.startswith("What is the ").all()
    for split in ("validation", "test"):
        assert set(splits[split]["origin"]) == {"original"}
    original_train = splits["train"].filter(lambda r: r["origin"] == "original")
    return datasets.concatenate_datasets([original_train, splits["validation"], splits["test"]])


def _assert_planted_problems_fixed(name: str, kept, removed: pa.Table) -> None:
    """Check the version against sample_data/planted.json, the ground truth."""
    problems = json.loads((REPO / "sample_data" / "planted.json").read_text())["files"][name]["problems"]
    reasons = dict(zip(removed.column("row_id").to_pylist(), removed.column("reason").to_pylist()))
    details = dict(zip(removed.column("row_id").to_pylist(), removed.column("detail").to_pylist()))
    for copy, planted in problems["exact_duplicate"]["details"].items():
        # The first of the pair in file order survives and the other points at it,
        # unless an earlier stage removed both (a one-line pun can read as German).
        pair = {copy, planted["original"]}
        gone = [i for i in pair if reasons.get(i) == "exact_duplicate"]
        if len(gone) == 1:
            assert {json.loads(details[gone[0]])["duplicate_of"], gone[0]} == pair
        else:
            assert not gone and all(i in reasons for i in pair), pair
    near = problems["near_duplicate"]["details"]
    planted_pairs = {frozenset((copy, p["original"])) for copy, p in near.items()}
    caught = [c for c, p in near.items() if "near_duplicate" in (reasons.get(c), reasons.get(p["original"]))]
    assert len(caught) >= 0.9 * len(near), f"{len(caught)} of {len(near)} planted near-duplicates found"
    for row_id, reason in reasons.items():
        if reason == "near_duplicate":  # never a pair that was not planted
            assert frozenset((row_id, json.loads(details[row_id])["duplicate_of"])) in planted_pairs
    other = problems["other_language"]["ids"]
    assert all(reasons.get(i, "").startswith("language:") for i in other)
    texts = "\n".join(t for col in ("text", "prompt", "response") if col in kept.column_names for t in kept[col])
    assert "@example.com" not in texts and "<p>" not in texts and "Ã©" not in texts


def _assert_clean_failure(result: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not list(out.glob("*/v*"))


def test_missing_input_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("run", "--input", str(tmp_path / "nope.jsonl"), "--output", str(out))
    _assert_clean_failure(result, out, "input not found", "nope.jsonl")


def test_unreadable_parquet(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 garbage")
    out = tmp_path / "out"
    _assert_clean_failure(cli("run", "--input", str(bad), "--output", str(out)), out, "bad.parquet", "cannot read it as parquet")


def test_mapped_column_that_does_not_exist(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("run", "--input", str(REPO / "sample_data" / "classification.jsonl"), "--output", str(out), "--set", "datasets.0.columns.label=category")
    _assert_clean_failure(result, out, "columns.label", "'category' not found", "classification.jsonl")


def test_invalid_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("datasets: [{name: a, inputs: [x.jsonl]}]\nstages:\n  quality:\n    min_words: lots\n")
    out = tmp_path / "out"
    _assert_clean_failure(cli("run", "--config", str(cfg), "--output", str(out)), out, "stages.quality.min_words")


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    "table,needle",
    [
        (pa.table({"text": [1, 2, 3]}), "holds int64, expected text"),
        (pa.table({"text": pa.array([], pa.string())}), "hold no rows"),
        (pa.table({"text": pa.array([None, None, None], pa.string())}), "every one of the 3 input rows"),
    ],
    ids=["wrong-type", "empty", "all-removed"],
)
def test_bad_content_fails_in_process(tmp_path: Path, capsys: pytest.CaptureFixture, table: pa.Table, needle: str) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    out = tmp_path / "out"
    assert main(["run", "--input", str(path), "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and str(path) in err[0]
    assert not list(out.glob("*/v*"))


def _timed_cli(
    *args: str, user: list[str] | None = None, cache: Path | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    """``cli(*args)`` and its seconds; ``user``: a command that runs it as another user,
    with numba's cache in ``cache`` (that user cannot write root's ``__pycache__``)."""
    started = time.monotonic()
    if user is None:
        return cli(*args), time.monotonic() - started
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(REPO), NUMBA_CACHE_DIR=str(cache))
    command = [*user, sys.executable, "-m", "pipeline", *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    return result, time.monotonic() - started


def _assert_refused_at_once(result: subprocess.CompletedProcess, seconds: float, *needles: str) -> None:
    """One ``error:`` line and exit 2 before any work: no Prefect server (10-20 s) was started."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --output "), result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert seconds < 8, f"took {seconds:.1f} s: the output folder is to be checked before any work"


SAMPLE = str(REPO / "sample_data" / "classification.jsonl")


def test_output_that_is_a_file(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    _assert_refused_at_once(*_timed_cli("run", "--input", SAMPLE, "--output", str(taken)), "is a file, not a folder")
    _assert_refused_at_once(
        *_timed_cli("run", "--input", SAMPLE, "--output", str(taken / "out")), f"{taken} is a file, not a folder"
    )


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system."""
    with tmpfs(tmp_path / "ro", "ro,size=1m", "a read-only tmpfs") as folder:
        yield folder


def test_output_on_a_read_only_file_system(read_only_folder: Path) -> None:
    result = _timed_cli("run", "--input", SAMPLE, "--output", str(read_only_folder / "out"))
    _assert_refused_at_once(*result, "cannot write there: Read-only file system")


def test_output_in_a_folder_without_write_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    user = None
    if os.geteuid() == 0:  # root may write anywhere: run the command as nobody
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and no setpriv to run the command as another user")
        user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        for folder in (tmp_path, *tmp_path.parents):  # pytest's folders are private to their user: let nobody in
            if folder.stat().st_mode & 0o001:
                break
            folder.chmod(folder.stat().st_mode | 0o001)
    cache = tmp_path / "numba"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    result = _timed_cli("run", "--input", SAMPLE, "--output", str(locked / "out"), user=user, cache=cache)
    _assert_refused_at_once(*result, "cannot write there: Permission denied")
