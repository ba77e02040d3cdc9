"""Memory flat in rows: what each bounded path must still compute exactly.

The scale figures themselves are measured by ``benchmarks/scale.py``; these tests pin
the behaviour the bounded paths must keep: split's compact summaries verify the same
pairs as full shingles, decide steps read mapped summaries without copying them,
row stages give the same output slice by slice, freed pages go back to the system,
a decided stage's summaries leave the work folder, publishing streams the ledger into one
unified schema and writes each split's shard files as before, and the local executor
runs at most ``threads`` shard steps at once.
"""

from __future__ import annotations

import gzip
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import executors, memory, steps
from pipeline.dedup import minhash
from pipeline.dedup.signatures import TextShingles, compact_minhash_columns, shingles_and_signatures, signature_matrix
from pipeline.files import read_arrow, write_arrow, write_table
from pipeline.inputs import DatasetConfig
from pipeline.readers import Reader
from pipeline.schema import DatasetInfo
from pipeline.stages import registry
from pipeline.stages.near_dedup import NearDedupConfig, NearDedupStage
from pipeline.stages.split import SplitConfig, SplitStage
from pipeline.steps import Ingested, Shard, apply_in_slices
from pipeline.store import Store
from pipeline.version import RunRecord, StageReport, publish
from tests.conftest import REPO

MAN = Path("/usr/share/man/man1")
TEXT = DatasetInfo("text", ("text",))


def man_paragraphs(limit: int) -> list[str]:
    """Paragraphs of real English manual pages (troff requests dropped)."""
    pages = sorted(MAN.glob("*.1.gz"))[:200]
    if not pages:
        pytest.skip("no English man pages in /usr/share/man/man1 (package man-db / manpages absent)")
    out: list[str] = []
    for page in pages:
        text = gzip.decompress(page.read_bytes()).decode("utf-8", "replace")
        lines = [line for line in text.splitlines() if not line.startswith((".", "'"))]
        for block in "\n".join(lines).split("\n\n"):
            words = block.split()
            if len(words) >= 12:
                out.append(" ".join(words))
        if len(out) >= limit:
            break
    return out[:limit]


def corpus_with_copies() -> list[str]:
    """Real paragraphs, then near copies of every fifth (a few words replaced)."""
    base = man_paragraphs(600)
    copies = []
    for i, text in enumerate(base[::5]):
        words = text.split()
        words[len(words) // 2] = "replaced"
        copies.append(" ".join(words) + (" again" if i % 2 else ""))
    return base + copies


def test_shingles_computed_on_demand_verify_the_same_pairs_as_stored_ones() -> None:
    texts = pa.array(corpus_with_copies())
    parts = [texts.slice(lo, 250) for lo in range(0, len(texts), 250)]
    stored = [minhash.shingle(p, n=5, kind="char") for p in parts]
    sigs = [minhash.signatures(s, 128, seed=1) for s in stored]
    compact = [pa.table(compact_minhash_columns(p, "char", 5, 128, seed=1, scheme="oph")) for p in parts]
    lazy = [TextShingles(t, "char", 5) for t in compact]

    eager = minhash.find_duplicates(stored, sigs, threshold=0.5, verify="exact")
    on_demand = minhash.find_duplicates(lazy, [signature_matrix(t, 128) for t in compact], threshold=0.5, verify="exact")

    assert len(eager.pairs) >= 100  # the copies were found, across parts too
    assert len({(a // 250, b // 250) for a, b in eager.pairs}) > 1
    np.testing.assert_array_equal(on_demand.pairs, eager.pairs)
    np.testing.assert_array_equal(on_demand.similarity, eager.similarity)
    assert [int(s.sizes.sum()) for s in stored] == [int(t.column("shingle_count").to_numpy().sum()) for t in compact]
    for sig, table in zip(sigs, compact):
        np.testing.assert_array_equal(signature_matrix(table, 128), sig)


def test_split_summaries_hold_text_not_shingles() -> None:
    texts = man_paragraphs(300)
    table = pa.table({"row_id": [f"r{i}" for i in range(len(texts))], "text": texts, "changed_by": [None] * len(texts)})
    summary = SplitStage(SplitConfig(), TEXT).summarize(table)
    assert "shingles" not in summary.column_names
    assert summary.column("key_text").to_pylist() == texts
    # 8 bytes per character 5-gram would be ~8x the text; the compact layout is under 2x.
    text_bytes = sum(len(t.encode()) for t in texts)
    assert summary.nbytes < 2 * text_bytes + 4 * 128 * len(texts) + 64 * len(texts)


def test_decide_reads_mapped_summaries_in_place(tmp_path: Path) -> None:
    """near_dedup's shingles and signatures and split's texts and signatures are views
    of the memory-mapped summary file, not copies: copied, they are resident memory
    that grows with the rows (0.7 GB at 200,000 rows)."""
    texts = man_paragraphs(300)
    table = pa.table({"row_id": [f"r{i}" for i in range(len(texts))], "text": texts, "changed_by": [None] * len(texts)})
    for stage in (NearDedupStage(NearDedupConfig(), TEXT), SplitStage(SplitConfig(), TEXT)):
        write_arrow(stage.summarize(table), tmp_path / f"{stage.name}.arrow")
    mapped = read_arrow(tmp_path / "near_dedup.arrow")
    sh, sigs = shingles_and_signatures(mapped, 128)
    assert sh.values.ctypes.data == mapped.column("shingles").chunk(0).values.buffers()[1].address
    assert sigs.ctypes.data == mapped.column("signature").chunk(0).values.buffers()[1].address
    mapped = read_arrow(tmp_path / "split.arrow")
    key_text = mapped.column("key_text").chunk(0)
    assert TextShingles(mapped, "char", 5).texts.buffers()[2].address == key_text.buffers()[2].address
    assert signature_matrix(mapped, 128).ctypes.data == mapped.column("signature").chunk(0).values.buffers()[1].address


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


needs_proc = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="resident pages per mapping are read from Linux's /proc")


@needs_proc
def test_mapped_pages_are_dropped_and_read_back_and_other_memory_is_left_alone(tmp_path: Path) -> None:
    values = np.arange(8_000_000, dtype=np.int64) * 7919
    write_arrow(pa.table({"v": values}), tmp_path / "mapped.arrow")
    column = read_arrow(tmp_path / "mapped.arrow").column("v").chunk(0).to_numpy()
    total = int(column.sum())
    assert _resident_kb(tmp_path / "mapped.arrow") > 60_000  # 64 MB read
    pages = memory.MappedPages([[column]])
    assert pages.mapped_bytes >= column.nbytes
    pages.release(0)
    assert _resident_kb(tmp_path / "mapped.arrow") < 1_000
    assert int(column.sum()) == total  # read back from the file

    anonymous = values.copy()
    writable = np.memmap(tmp_path / "writable.bin", dtype=np.int64, mode="w+", shape=(1_000_000,))
    writable[:] = 5  # written pages of a shared mapping: dropping them would be safe, but is not ours to do
    private = np.memmap(tmp_path / "writable.bin", dtype=np.int64, mode="c", shape=(1_000_000,))
    private[:10] = 6  # copy-on-write: dropped, these values would be lost
    others = memory.MappedPages([[anonymous], [writable], [private]])
    assert others.mapped_bytes == 0
    for part in range(3):
        others.release(part)
    np.testing.assert_array_equal(anonymous, values)
    assert int(writable.sum()) == 5_000_000 and private[:10].tolist() == [6] * 10


@needs_proc
def test_decide_leaves_no_summary_pages_resident_and_finds_what_in_memory_parts_find(tmp_path: Path) -> None:
    """split's engine over memory-mapped summaries: banding, the byte prefilter and
    verification each drop the pages they read (at two million rows these pages were
    most of the decide steps' 3.8-3.9 GiB), and the pairs are those of the same
    summaries held in memory."""
    texts = pa.array(corpus_with_copies())
    parts = [texts.slice(lo, 180) for lo in range(0, len(texts), 180)]
    for i, part in enumerate(parts):
        write_arrow(pa.table(compact_minhash_columns(part, "char", 5, 128, seed=1, scheme="oph")), tmp_path / f"{i}.arrow")
    in_memory = [pa.table(compact_minhash_columns(p, "char", 5, 128, seed=1, scheme="oph")) for p in parts]
    mapped = [read_arrow(tmp_path / f"{i}.arrow") for i in range(len(parts))]

    def found(summaries: list[pa.Table]) -> minhash.DedupResult:
        return minhash.find_duplicates(
            [TextShingles(s, "char", 5) for s in summaries], [signature_matrix(s, 128) for s in summaries],
            threshold=0.5, verify="exact", min_estimate=0.35,
        )

    want, got = found(in_memory), found(mapped)
    assert len(want.pairs) >= 100
    np.testing.assert_array_equal(got.pairs, want.pairs)
    np.testing.assert_array_equal(got.similarity, want.similarity)
    summary_kb = sum((tmp_path / f"{i}.arrow").stat().st_size for i in range(len(parts))) // 1024
    resident = [_resident_kb(tmp_path / f"{i}.arrow") for i in range(len(parts))]
    # what stays is the files' headers and footers, read as they were opened, with the
    # kernel's fault-around (up to 16 pages a fault): not the columns
    assert max(resident) <= 80 and summary_kb > 5 * sum(resident), (resident, summary_kb)


def test_candidates_made_in_small_batches_are_the_same_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A band's pairs are made and filtered a batch at a time (at five million rows a
    band of split's banding holds some 50 million raw pairs); the batch size changes
    nothing found."""
    sh = minhash.shingle(pa.array(corpus_with_copies()), n=5, kind="char")
    sigs = minhash.signatures(sh, 128, seed=1)
    keep = minhash.estimate_prefilter(sigs, 0.2)
    seen: list[int] = []

    def counted(pairs: np.ndarray) -> np.ndarray:
        seen.append(len(pairs))
        return keep(pairs)

    whole = minhash.candidate_pairs(sigs, 32, 4, keep=keep)
    unfiltered = minhash.candidate_pairs(sigs, 32, 4)
    monkeypatch.setattr(minhash, "BATCH_PAIRS", 40)
    assert len(unfiltered) > len(whole) >= 100
    np.testing.assert_array_equal(minhash.candidate_pairs(sigs, 32, 4, keep=counted), whole)
    np.testing.assert_array_equal(minhash.candidate_pairs(sigs, 32, 4), unfiltered)
    # many batches a band, most within the size (a bucket of 21 near copies is one batch of 210 pairs)
    assert len(seen) > 32 and np.median(seen) <= 40


@pytest.mark.parametrize("sample", ["classification.jsonl", "instruction.jsonl", "chat.jsonl"])
def test_row_stages_in_slices_give_what_the_whole_shard_gives(sample: str) -> None:
    """Every row-local stage, on the sample files' planted noise, mojibake, markup,
    empty and broken rows: 7 rows at a time, the same kept and removed rows, changes,
    counters and scores as the whole file at once."""
    reader = Reader(DatasetConfig(name="s", inputs=[str(REPO / "sample_data" / sample)]), shard_rows=100_000)
    table = next(reader.shards())
    stages = [registry.stage_class(name) for name in registry.stage_names()]
    checked = 0
    for cls in (c for c in stages if not c.is_global):
        stage = cls(cls.config_model(), reader.info)
        if not stage.applies():
            continue
        whole, sliced = stage.apply(table), apply_in_slices(stage, table, rows=7)
        assert sliced.kept.equals(whole.kept) and sliced.removed.equals(whole.removed), cls.name
        assert (sliced.changed, sliced.counters) == (whole.changed, whole.counters), cls.name
        assert (sliced.scores is None) == (whole.scores is None), cls.name
        assert sliced.scores is None or sliced.scores.equals(whole.scores), cls.name
        table, checked = whole.kept, checked + 1
    assert checked >= 3


@pytest.mark.skipif(memory._libc() is None, reason="malloc_trim and mallopt are glibc's")
def test_pages_a_step_thread_freed_go_back_to_the_system() -> None:
    """A thread that allocated ~400 MB in 4 KB blocks and kept every fiftieth: glibc
    keeps the freed blocks in the thread's arena until ``release_unused``."""
    import psutil

    process, kept = psutil.Process(), []

    def step() -> None:
        blocks = [bytes(4000) + bytes([i % 256]) for i in range(100_000)]
        kept.extend(blocks[::50])

    thread = threading.Thread(target=step)
    thread.start()
    thread.join()
    retained = process.memory_info().rss
    memory.release_unused()
    assert process.memory_info().rss < retained - 250 * 2**20
    assert memory.limit_arenas(2)


def test_summaries_are_deleted_once_decided_and_the_decision_is_found_again(tmp_path: Path) -> None:
    """near_dedup's summaries (1.5 times the input at a million rows) leave the work
    folder as soon as its state is written; a later run finds the decision, figures
    included, without them."""
    texts = corpus_with_copies()
    ingested = Ingested(shards=[], kind="text", roles=("text",))
    shards = []
    for i, part in enumerate((texts[: len(texts) // 2], texts[len(texts) // 2 :])):
        path = tmp_path / "in" / f"shard-{i}.parquet"
        ids = [f"s{i}-{j}" for j in range(len(part))]
        write_table(pa.table({"row_id": ids, "text": part, "changed_by": [None] * len(part)}), path)
        shards.append(Shard(str(path), len(part)))
    out = str(tmp_path / "near_dedup")
    assert steps.decided(out) is None
    paths = [steps.summarize("near_dedup", {}, ingested, shard, out) for shard in shards]
    assert all(Path(p).exists() for p in paths)
    decision = steps.decide("near_dedup", {}, ingested, paths, out)
    assert not (tmp_path / "near_dedup" / "summaries").exists()
    assert decision.stats["clusters"] > 0
    assert steps.decided(out) == decision


def _removed(path: Path, ids: list[str], extra: dict[str, list] | None = None) -> str:
    n = len(ids)
    columns = {"row_id": ids, "text": [f"text of {i}" for i in ids], "changed_by": [None] * n}
    columns |= extra or {}
    columns |= {"reason": ["r:x"] * n, "detail": ["{}"] * n}
    write_table(pa.table(columns), path)
    return str(path)


def test_the_ledger_is_streamed_into_one_schema_in_stage_and_shard_order(tmp_path: Path) -> None:
    kept = [tmp_path / f"kept-{i}.parquet" for i in range(2)]
    write_table(pa.table({"row_id": ["k0", "k1"], "text": ["a", "b"], "changed_by": [None, None], "split": ["train", "test"]}), kept[0])
    write_table(pa.table({"row_id": ["k2"], "text": ["c"], "changed_by": [None], "split": ["train"]}), kept[1])
    removed = {
        "quality": [_removed(tmp_path / "q0.parquet", ["q0"]), _removed(tmp_path / "q1.parquet", ["q1", "q2"])],
        # a later stage's removals carry a column the earlier ones lack
        "augment": [_removed(tmp_path / "a0.parquet", ["a0"], {"split": ["train"]})],
    }
    record = RunRecord(
        dataset="d", info=TEXT, fingerprint="f" * 64, inputs=[], config={}, config_hash="c" * 64, input_rows=7,
        final=[Shard(str(kept[0]), 2), Shard(str(kept[1]), 1)], removed=removed, scores={},
        stages=[StageReport("quality", True, 7, 4, reasons={"r:x": 3}), StageReport("augment", True, 4, 3, reasons={"r:x": 1})],
    )
    _, path = publish(record, Store(tmp_path / "out", "d"))
    ledger = pq.read_table(path / "reports" / "removed.parquet")
    assert ledger.column_names == ["row_id", "stage", "reason", "detail", "text", "changed_by", "split"]
    assert ledger.column("row_id").to_pylist() == ["q0", "q1", "q2", "a0"]
    assert ledger.column("stage").to_pylist() == ["quality"] * 3 + ["augment"]
    assert ledger.column("split").to_pylist() == [None, None, None, "train"]
    assert ledger.column("text").to_pylist()[3] == "text of a0"
    data = sorted(p.name for p in (path / "data").iterdir())
    assert data == [
        "test-ffffffffffff-00000-of-00001.parquet",
        "train-ffffffffffff-00000-of-00002.parquet",
        "train-ffffffffffff-00001-of-00002.parquet",
    ]
    assert pq.read_table(path / "data" / data[2]).column("row_id").to_pylist() == ["k2"]


def test_the_local_executor_runs_at_most_threads_steps_at_once() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def step(_: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    with executors.executor(executors.ExecutorConfig(threads=2)):
        # Prefect copies the context into its task threads; so does this.
        import contextvars

        threads = [threading.Thread(target=contextvars.copy_context().run, args=(executors.run, step, i)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert peak == 2


def test_threads_is_for_the_local_executor_only() -> None:
    with pytest.raises(ValueError, match="threads applies to kind local only"):
        executors.ExecutorConfig(kind="dask", threads=2)


def _ingest_peak(path: Path, work: Path, shard_rows: int) -> tuple[int, int]:
    """(Arrow's peak allocation, rows) of ``steps.ingest`` over ``path``, in a process
    of its own (the peak is per process)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys, pyarrow as pa; from pipeline import steps; "
        f"r = steps.ingest({{'name': 'd', 'inputs': [{str(path)!r}]}}, {shard_rows}, {str(work)!r}); "
        "print(json.dumps([pa.default_memory_pool().max_memory(), sum(s.rows for s in r.shards)]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    peak, rows = json.loads(done.stdout.strip().splitlines()[-1])
    return peak, rows


def test_reading_json_lines_holds_a_batch_not_the_file(tmp_path: Path) -> None:
    """A JSON file's batches wait on disk until the file is read and given one schema:
    held in memory they were the whole file (1.4 GB at a million rows). Ten times the
    rows leave ingest's peak Arrow allocation where it was, and the spilled batches
    are gone afterwards."""
    from benchmarks.scale import build_corpus

    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    build_corpus(3_000, small)
    build_corpus(30_000, large)
    small_peak, small_rows = _ingest_peak(small, tmp_path / "work-small", 1_000)
    large_peak, large_rows = _ingest_peak(large, tmp_path / "work-large", 1_000)
    assert (small_rows, large_rows) == (3_000, 30_000)
    assert large_peak < 2 * small_peak, (small_peak, large_peak)
    assert large.stat().st_size > 5 * large_peak
    assert not list((tmp_path / "work-large" / "ingest").glob(".json-batches-*"))
