"""pipeline.checkpoint: a run resumes from a checkpoint only when every file it names
is there and this code wrote it; superseded row copies go, rows still passed on stay."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import pipeline
from pipeline import checkpoint
from pipeline.steps import Ingested, Shard
from pipeline.version import StageReport


def shard(path: Path, rows: int = 3) -> Shard:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"row_id": [f"r{i}" for i in range(rows)]}), path)
    return Shard(str(path), rows)


def saved(work: Path) -> checkpoint.Checkpoint:
    ingested = Ingested([shard(work / "ingest" / "shard-00000.parquet")], "text", ("text",))
    kept = [shard(work / "1-noise" / "k" / "kept" / "shard-00000.parquet", 2)]
    removed = {"noise": [str(shard(work / "1-noise" / "k" / "removed" / "shard-00000.parquet", 1).path)]}
    point = checkpoint.Checkpoint(1, "key", ingested, kept, [StageReport("noise", True, 3, 2)], removed)
    point.save(work)
    return point


def test_a_checkpoint_loads_back_whole(tmp_path: Path) -> None:
    point = saved(tmp_path)
    loaded = checkpoint.load(tmp_path)
    assert loaded == point


def test_a_checkpoint_naming_a_file_that_is_gone_is_not_used(tmp_path: Path) -> None:
    point = saved(tmp_path)
    Path(point.removed["noise"][0]).unlink()
    assert checkpoint.load(tmp_path) is None


def test_a_checkpoint_of_other_code_or_unreadable_is_not_used(tmp_path: Path, monkeypatch) -> None:
    saved(tmp_path)
    monkeypatch.setattr(pipeline, "__version__", "0.0.0-other")
    assert checkpoint.load(tmp_path) is None
    (tmp_path / checkpoint.FILE).write_bytes(b"not a pickle")
    assert checkpoint.load(tmp_path) is None


def test_superseded_copies_go_and_shards_passed_on_stay(tmp_path: Path) -> None:
    work = tmp_path / "work"
    a, b, c = (shard(work / "ingest" / f"shard-{i:05d}.parquet") for i in range(3))
    outside = shard(tmp_path / "elsewhere.parquet")
    copy_of_a = shard(work / "0-normalize" / "k" / "kept" / "shard-00000.parquet")
    checkpoint.drop_superseded([a, b, c, outside], [copy_of_a, b, c], work)
    assert not Path(a.path).exists()
    assert all(Path(s.path).exists() for s in (b, c, copy_of_a, outside))
