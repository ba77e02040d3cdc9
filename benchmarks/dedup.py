"""Near-duplicate detection: accuracy, speed and memory of ``pipeline.dedup.minhash`` against
datasketch, on real documents with injected near-copies.

    python benchmarks/dedup.py                          # 150,000 docs + 10% near-copies
    python benchmarks/dedup.py --docs 200000 --datasketch-docs 5000

Data. The first ``--docs`` documents of the real-text corpus (``benchmarks/corpus.py``)
that have at least 20 words; ``--dup-share`` of them get one injected copy. Most copies
are edited word by word (replace, delete, insert or swap with the next word, each word
hit with a probability drawn per copy from [0, ``MAX_EDIT_RATE``]) so their true
Jaccard spans about 0.5 to 1.0; ``EXACT_SHARE`` of the copies are verbatim. The copies
are shuffled in among the originals, all with ``--seed``. The corpus also holds natural
near-duplicates (licence texts, translated package descriptions, templated man pages);
they count like the injected ones.

Ground truth. Similarity is the exact Jaccard of the documents' 5-word shingle sets,
shingled by ``pipeline.dedup.minhash.shingle`` for every system, so all are judged on the same
sets. The true pairs (J >= ``--threshold``) are every injected pair plus every pair a
separate low-threshold LSH sweep proposes (classic k-permutation MinHash with another
seed, banding tuned for J = 0.5, buckets never truncated), all verified by exact
Jaccard; pairs a system reports that verify at J >= threshold are pooled in too (the
output says how many only pooling found: ideally 0).

Systems, in one process on the same data:

* the project's path end to end (``shingle`` + ``signatures`` + ``find_duplicates``
  with default settings), in 1 process and with ``--processes`` forked workers doing
  the per-shard part (shingle + signatures of one shard each; results pickled back)
  and the parent doing ``find_duplicates``;
* the ``near_dedup`` stage itself (summarize per shard of 50,000 rows, decide, apply),
  for the overhead of the stage contract on top of the engine;
* datasketch's plain path on ``--datasketch-docs`` documents: one ``MinHash(128)`` per
  document fed its word 5-grams as bytes with ``update()`` (the text normalised by the
  pipeline's ``normalise`` so the shingle sets match), ``MinHashLSH(threshold)``
  insert, then a query per document; the pairs the queries return are its reported
  pairs (no verification, as it is typically used);
* the project's path on that same subset, for a like-for-like comparison.

The subset takes random original documents together with their injected copy, so it
holds injected pairs in the same proportion as the full set.

Pairs. datasketch reports pairs. The project removes rows: a true pair counts as found
(recall) when at least one of its two documents is removed, i.e. the pair does not
survive into the output; precision is given for the pairs the stage reports, each
removed member with the survivor kept in its place (``duplicate_of``, keep = first),
and, stricter, for all pairs within a cluster. Verdicts use member -> survivor
precision and that recall.

Memory is peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` before each
timing) minus the RSS before the timing, i.e. above the loaded corpus and data; for
the multi-process run the workers' own peaks above their RSS at fork are added (an
upper bound: their peaks need not coincide). Timings record CPU seconds and how many
cores other processes kept busy meanwhile, as in ``benchmarks/row_stages.py``.
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.corpus import CorpusError, load_corpus  # noqa: E402
from benchmarks.machine import BUSY_CORES, CpuMeter, add_wait_idle_argument, wait_for_idle  # noqa: E402
from pipeline.dedup import minhash  # noqa: E402
from pipeline.schema import CHANGED_BY, ROW_ID, DatasetInfo  # noqa: E402

MIN_WORDS = 20
NGRAM = 5
NUM_PERM = 128
EXACT_SHARE = 0.1
"""Share of the injected copies that are verbatim."""
MAX_EDIT_RATE = 0.05
"""Edited copies hit each word with a probability drawn uniformly from [0, this]
(at least one edit). Each edit changes about 5 of the 5-word shingles, so Jaccard is
about 1 - 10 * rate: 0.5 to 1.0 (lower for short documents, where the one edit they
always get weighs more; with seed 1234 the injected pairs' J is p5 0.47, median 0.74)."""
EDIT_OPS = ("replace", "delete", "insert", "swap")
TRUTH_LSH_THRESHOLD = 0.5
TRUTH_SEED_OFFSET = 7919
"""The truth sweep's MinHash seed is ``--seed`` plus this, unrelated to the engine's."""
SHARD_ROWS = 50_000
WARMUP_DOCS = 300
TARGET_PRECISION = 0.99
TARGET_RECALL = 0.97
TARGET_DOCS_PER_S = 50_000
TARGET_CORES = 2
TARGET_RSS_MB = 1024
"""Above this many cores used by other processes, a timing is flagged as contended."""
INFO = DatasetInfo("text", ("text",))

# Piped output would wrap at 80 columns; the table needs about 170.
console = Console(width=None if sys.stdout.isatty() else 170)


# -------------------------------------------------------------------------- metering


def _status_kb(*keys: str) -> dict[str, int]:
    """Fields of ``/proc/self/status`` in kB (missing ones as 0)."""
    out = dict.fromkeys(keys, 0)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in out:
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def rss_mb() -> float:
    """Current resident set size of this process, MB."""
    return _status_kb("VmRSS")["VmRSS"] / 1024


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``, Arrow's pool), so
    the RSS a timing starts from is live data, not pages an allocator kept after
    earlier work (a run reusing them would not raise the peak: a 0 MB reading)."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak_rss() -> float:
    """Release free memory, reset this process's peak RSS (``VmHWM``) to its current
    RSS; that RSS, MB."""
    release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # old kernel or no permission: the peak then covers the whole run
        pass
    return rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size since the last :func:`reset_peak_rss`, MB."""
    return _status_kb("VmHWM")["VmHWM"] / 1024


def pss_mb(pid: int) -> float:
    """Proportional set size of process ``pid`` (shared pages split among their
    sharers, so the PSS of forked processes adds up without counting the pages they
    share twice), MB; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


class TreeSampler:
    """Peak of the summed PSS of this process and its registered workers, sampled
    every ``interval`` seconds by a thread, above this process's PSS at entry."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.pids: list[int] = []
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def add(self, pid: int) -> None:
        self.pids.append(pid)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            total = pss_mb(os.getpid()) + sum(pss_mb(p) for p in list(self.pids))
            self.peak_mb = max(self.peak_mb, total - self._base)

    def __enter__(self) -> TreeSampler:
        self._base = pss_mb(os.getpid())
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Meter(CpuMeter):
    """A :class:`CpuMeter` that also takes peak RSS above the RSS at entry (``add_rss``
    for workers')."""

    def __enter__(self) -> Meter:
        super().__enter__()
        self.extra_rss = 0.0
        self.worker_rss: list[float] = []
        self._rss0 = reset_peak_rss()
        return self

    def add_rss(self, mb: float) -> None:
        self.extra_rss += mb
        self.worker_rss.append(mb)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.own_peak_mb = max(0.0, peak_rss_mb() - self._rss0)
        self.peak_mb = self.own_peak_mb + self.extra_rss


# ----------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """Originals and injected copies, shuffled together."""

    texts: pa.Array
    doc_ids: pa.Array
    copy_of: np.ndarray
    """Per document: the index of the document it is an injected copy of, or -1."""
    exact: np.ndarray
    """Per document: an injected copy that is verbatim."""
    edit_rate: np.ndarray
    """Per document: the per-word edit probability of an injected copy (0 otherwise)."""
    ops: Counter[str]
    originals: int
    corpus_docs: int
    """Corpus documents read to find ``originals`` with >= MIN_WORDS words."""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def injected_pairs(self) -> np.ndarray:
        """``(m, 2)`` (copy's original, copy) as ``i < j``."""
        copies = np.flatnonzero(self.copy_of >= 0)
        pairs = np.stack([self.copy_of[copies], copies], axis=1)
        return np.sort(pairs, axis=1)


def edit_words(
    words: list[str], rate: float, rng: np.random.Generator, vocab: np.ndarray
) -> tuple[list[str], Counter[str]]:
    """A copy of ``words`` with about ``rate * len(words)`` (at least one) edits at
    distinct random positions: replace with or insert a random vocabulary word, delete,
    or swap with the next word."""
    words = list(words)
    n_edits = int(min(len(words), max(1, rng.binomial(len(words), rate))))
    positions = np.sort(rng.choice(len(words), n_edits, replace=False))[::-1]  # back to front
    ops = rng.integers(0, len(EDIT_OPS), n_edits)
    fills = vocab[rng.integers(0, len(vocab), n_edits)]
    done: Counter[str] = Counter()
    for p, op, fill in zip(positions.tolist(), ops.tolist(), fills.tolist()):
        name = EDIT_OPS[op]
        if name == "swap" and p + 1 >= len(words):
            name = "replace"
        if name == "replace":
            words[p] = fill
        elif name == "delete" and len(words) > 1:
            del words[p]
        elif name == "insert":
            words.insert(p, fill)
        elif name == "swap":
            words[p], words[p + 1] = words[p + 1], words[p]
        else:
            continue
        done[name] += 1
    return words, done


def word_counts(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Whitespace-separated words per text."""
    return np.asarray(pc.list_value_length(pc.utf8_split_whitespace(texts)).to_numpy(zero_copy_only=False))


def make_dataset(corpus: pa.Table, docs: int, dup_share: float, seed: int) -> Dataset:
    """The first ``docs`` corpus documents with >= MIN_WORDS words, ``dup_share`` of
    them with one injected copy (see the module docstring), shuffled with ``seed``."""
    counts = word_counts(corpus.column("text"))
    long_enough = np.flatnonzero(counts >= MIN_WORDS)
    if len(long_enough) < docs:
        raise CorpusError(f"only {len(long_enough):,} corpus documents have >= {MIN_WORDS} words, {docs:,} asked")
    chosen = long_enough[:docs]
    texts = corpus.column("text").take(pa.array(chosen)).combine_chunks()
    ids = corpus.column("doc_id").take(pa.array(chosen)).combine_chunks()

    rng = np.random.default_rng(seed)
    vocab_docs = rng.choice(docs, min(docs, 2_000), replace=False)
    vocab = np.array([w for i in vocab_docs.tolist() for w in texts[i].as_py().split()], dtype=object)
    n_copies = int(round(dup_share * docs))
    sources = np.sort(rng.choice(docs, n_copies, replace=False))
    copy_texts: list[str] = []
    rates = np.zeros(n_copies)
    exact = rng.random(n_copies) < EXACT_SHARE
    ops: Counter[str] = Counter()
    for k, i in enumerate(sources.tolist()):
        text = texts[i].as_py()
        if exact[k]:
            copy_texts.append(text)
            continue
        rates[k] = rng.uniform(0.0, MAX_EDIT_RATE)
        words, done = edit_words(text.split(), rates[k], rng, vocab)
        ops.update(done)
        copy_texts.append(" ".join(words))

    all_texts = pa.concat_arrays([texts, pa.array(copy_texts, texts.type)])
    all_ids = pa.concat_arrays([ids, pa.array([f"{ids[i].as_py()}#copy" for i in sources.tolist()], ids.type)])
    total = docs + n_copies
    copy_of = np.full(total, -1, np.int64)
    copy_of[docs:] = sources
    exact_all = np.zeros(total, bool)
    exact_all[docs:] = exact
    rate_all = np.zeros(total)
    rate_all[docs:] = rates

    order = rng.permutation(total)  # new position p holds old document order[p]
    new_pos = np.empty(total, np.int64)
    new_pos[order] = np.arange(total)
    copy_of = copy_of[order]
    copy_of[copy_of >= 0] = new_pos[copy_of[copy_of >= 0]]
    take = pa.array(order)
    return Dataset(
        texts=all_texts.take(take),
        doc_ids=all_ids.take(take),
        copy_of=copy_of,
        exact=exact_all[order],
        edit_rate=rate_all[order],
        ops=ops,
        originals=docs,
        corpus_docs=int(chosen[-1]) + 1,
    )


def pick_subset(data: Dataset, size: int, seed: int) -> np.ndarray:
    """Sorted indices of about ``size`` documents: random originals, each with its
    injected copy if it has one, so the subset keeps the injected pairs' share."""
    rng = np.random.default_rng(seed + 1)
    copy_at = np.full(len(data), -1, np.int64)
    copies = np.flatnonzero(data.copy_of >= 0)
    copy_at[data.copy_of[copies]] = copies
    picked: list[int] = []
    for i in rng.permutation(np.flatnonzero(data.copy_of < 0)).tolist():
        if len(picked) >= size:
            break
        picked.append(i)
        if copy_at[i] >= 0:
            picked.append(int(copy_at[i]))
    return np.sort(np.array(picked[:size], np.int64))


# ---------------------------------------------------------------------------- pairs


def pair_codes(pairs: np.ndarray, n: int) -> np.ndarray:
    """One ``int64`` per pair (``lo * n + hi``), for set operations."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    return np.minimum(pairs[:, 0], pairs[:, 1]) * np.int64(n) + np.maximum(pairs[:, 0], pairs[:, 1])


def decode(codes: np.ndarray, n: int) -> np.ndarray:
    return np.stack([codes // n, codes % n], axis=1)


def cluster_pairs(labels: np.ndarray) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, of documents with the same label."""
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    sizes = np.diff(np.r_[starts, len(lab)])
    multi = sizes > 1
    starts, sizes = starts[multi], sizes[multi]
    if not len(starts):
        return np.zeros((0, 2), np.int64)
    pos = np.concatenate([np.arange(s, s + k) for s, k in zip(starts.tolist(), sizes.tolist())])
    end = np.repeat(starts + sizes, sizes)
    out = []
    d = 1
    while len(pos):
        ok = pos + d < end
        pos, end = pos[ok], end[ok]
        if len(pos):
            out.append(np.stack([order[pos], order[pos + d]], axis=1))
        d += 1
    pairs = np.concatenate(out)
    return np.sort(pairs, axis=1)


def survivor_pairs(labels: np.ndarray) -> np.ndarray:
    """``(member, survivor)`` for every document that is not the first of its cluster
    (labels are the cluster centre's index, as ``centre_clusters`` gives)."""
    members = np.flatnonzero(labels != np.arange(len(labels)))
    return np.stack([labels[members], members], axis=1)


@dataclass
class Truth:
    """All pairs at J >= threshold (as pair codes over ``n`` documents) and how they were found."""

    n: int
    threshold: float
    codes: np.ndarray
    """Sorted pair codes of the true pairs."""
    jaccard: np.ndarray
    """Exact Jaccard of each true pair, in ``codes`` order."""
    bands: int
    rows: int
    sweep_candidates: int
    from_sweep: int
    from_injected_only: int
    pooled: int = 0
    """True pairs only a system's reported pairs found (added by :meth:`pool`)."""
    injected: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Codes of the injected pairs (any similarity)."""
    injected_jaccard: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def contains(self, codes: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.codes, codes)
        pos = np.minimum(pos, max(len(self.codes) - 1, 0))
        return (self.codes[pos] == codes) if len(self.codes) else np.zeros(len(codes), bool)

    def pool(self, codes: np.ndarray, jaccard: np.ndarray) -> None:
        """Add reported pairs that verify at J >= threshold but the sweep missed."""
        true = jaccard >= self.threshold - 1e-12
        new = ~self.contains(codes) & true
        if not new.any():
            return
        codes, jaccard = codes[new], jaccard[new]
        codes, first = np.unique(codes, return_index=True)
        self.pooled += len(codes)
        all_codes = np.concatenate([self.codes, codes])
        all_j = np.concatenate([self.jaccard, jaccard[first]])
        order = np.argsort(all_codes)
        self.codes, self.jaccard = all_codes[order], all_j[order]

    def view(self, subset: np.ndarray | None = None) -> TruthView:
        """The true pairs, or those inside ``subset`` in its local indices."""
        injected = np.isin(self.codes, self.injected)
        if subset is None:
            return TruthView(self.n, self.codes, self.jaccard, injected)
        local = np.full(self.n, -1, np.int64)
        local[subset] = np.arange(len(subset))
        pairs = decode(self.codes, self.n)
        a, b = local[pairs[:, 0]], local[pairs[:, 1]]
        inside = (a >= 0) & (b >= 0)
        codes = pair_codes(np.stack([a[inside], b[inside]], axis=1), len(subset))
        return TruthView(len(subset), codes, self.jaccard[inside], injected[inside])


@dataclass
class TruthView:
    """True pairs over ``n`` documents (the full set or a subset, local indices)."""

    n: int
    codes: np.ndarray
    jaccard: np.ndarray
    injected: np.ndarray
    """Per true pair: it is an injected (original, copy) pair."""


def ground_truth(sh: minhash.Shingles, injected: np.ndarray, threshold: float, seed: int) -> Truth:
    """True pairs: injected pairs and the pairs of a k-permutation MinHash LSH sweep
    banded for J = TRUTH_LSH_THRESHOLD (no bucket truncation), verified by exact Jaccard."""
    n = len(sh)
    sigs = minhash.signatures(sh, NUM_PERM, seed=seed + TRUTH_SEED_OFFSET, scheme="kperm")
    bands, rows = minhash.optimal_bands(TRUTH_LSH_THRESHOLD, NUM_PERM)
    cand = minhash.candidate_pairs(sigs, bands, rows, max_bucket_pairs=1 << 62)
    del sigs
    sweep = pair_codes(cand, n)
    inj = np.unique(pair_codes(injected, n))
    codes = np.union1d(sweep, inj)
    jac = minhash.exact_jaccard(sh, decode(codes, n))
    true = jac >= threshold - 1e-12
    in_sweep = np.isin(codes, sweep)
    inj_j = minhash.exact_jaccard(sh, decode(inj, n))
    return Truth(
        n=n,
        threshold=threshold,
        codes=codes[true],
        jaccard=jac[true],
        bands=bands,
        rows=rows,
        sweep_candidates=len(sweep),
        from_sweep=int((true & in_sweep).sum()),
        from_injected_only=int((true & ~in_sweep).sum()),
        injected=inj,
        injected_jaccard=inj_j,
    )


@dataclass
class Accuracy:
    reported: int
    precision: float | None
    recall: float | None
    precision_all: float | None = None
    """Project only: precision over all pairs within clusters."""
    cluster_pairs: int = 0
    found: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    """Per true pair: found."""
    truth: TruthView | None = None
    false_jaccard: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Exact Jaccard of the reported pairs below the threshold."""


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


# -------------------------------------------------------------------------- systems


@dataclass
class Run:
    """One timed system run and what it reported."""

    label: str
    docs: int
    seconds: float = 0.0
    cpu: float = 0.0
    others: float | None = None
    peak_mb: float = 0.0
    candidates: int | None = None
    labels: np.ndarray | None = None
    """Project: cluster label per document (indices local to the run's documents)."""
    pairs: np.ndarray | None = None
    """datasketch: reported pairs (local indices)."""
    bands: int | None = None
    rows: int | None = None
    steps: dict[str, float] = field(default_factory=dict)
    note: str = ""
    accuracy: Accuracy | None = None
    error: str | None = None
    repeats: int = 1
    """Timings taken; the fastest is kept."""
    verified: int | None = None
    """Project: verified edges (pairs at J >= threshold found by find_duplicates)."""
    memory: str = ""
    """How the peak RSS splits (parent, workers), when it does."""
    free_cores_seconds: float | None = None
    """Multi-process runs: the wall time free cores would give, from CPU time (the
    workers' CPU seconds spread over the processes, plus the serial part's wall)."""

    @property
    def docs_per_s(self) -> float | None:
        return self.docs / self.seconds if self.seconds > 0 and not self.error else None

    @property
    def docs_per_cpu_s(self) -> float | None:
        return self.docs / self.cpu if self.cpu > 0 and not self.error else None

    @property
    def busy_elsewhere(self) -> float | None:
        return None if self.others is None or self.seconds <= 0 else self.others / self.seconds


def _steps_run(texts: pa.Array, threshold: float) -> tuple[minhash.DedupResult, dict[str, float]]:
    """shingle + signatures + find_duplicates with defaults, each step timed."""
    t0 = time.perf_counter()
    sh = minhash.shingle(texts, n=NGRAM, kind="word")
    t1 = time.perf_counter()
    sigs = minhash.signatures(sh, num_perm=NUM_PERM)
    t2 = time.perf_counter()
    result = minhash.find_duplicates(sh, sigs, threshold=threshold)
    t3 = time.perf_counter()
    return result, {"shingle": t1 - t0, "signatures": t2 - t1, "find_duplicates": t3 - t2}


def run_project(label: str, texts: pa.Array, threshold: float) -> Run:
    """The project's path in this process."""
    with Meter() as meter:
        result, steps = _steps_run(texts, threshold)
    return Run(
        label, len(texts), meter.wall, meter.cpu, meter.others, meter.peak_mb, result.candidates,
        labels=result.cluster, bands=result.bands, rows=result.rows, steps=steps, verified=len(result.pairs),
    )


def _shard_worker(conn: Any, texts: pa.Array) -> None:
    """Shingles and signatures of one shard, sent back with this process's CPU time,
    compute seconds and peak RSS above its RSS at fork."""
    rss0 = reset_peak_rss()
    t0 = time.perf_counter()
    sh = minhash.shingle(texts, n=NGRAM, kind="word")
    sigs = minhash.signatures(sh, num_perm=NUM_PERM)
    wall = time.perf_counter() - t0
    conn.send((sh.values, sh.offsets, sigs, time.process_time(), wall, max(0.0, peak_rss_mb() - rss0)))
    conn.close()


def run_project_parallel(label: str, texts: pa.Array, threshold: float, processes: int) -> Run:
    """The per-shard part (shingle + signatures) in ``processes`` forked workers, one
    contiguous shard each; ``find_duplicates`` in this process."""
    ctx = mp.get_context("fork")  # workers inherit their shard, nothing pickled on the way in
    bounds = np.linspace(0, len(texts), processes + 1).astype(int)
    procs = []
    worker_wall: list[float] = []
    worker_cpu: list[float] = []
    try:
        with Meter() as meter, TreeSampler() as tree:
            t0 = time.perf_counter()
            pipes = []
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_shard_worker, args=(child, texts.slice(lo, hi - lo)), daemon=True)
                proc.start()
                tree.add(proc.pid)
                child.close()
                pipes.append(parent)
                procs.append(proc)
            parts, sig_parts = [], []
            for pipe in pipes:
                values, offsets, sigs, cpu, wall, peak = pipe.recv()
                parts.append(minhash.Shingles(values, offsets))
                sig_parts.append(sigs)
                meter.add_cpu(cpu)
                meter.add_rss(peak)
                worker_wall.append(wall)
                worker_cpu.append(cpu)
            sh = minhash.Shingles.concat(parts)
            sigs = np.concatenate(sig_parts)
            del parts, sig_parts
            t1 = time.perf_counter()
            result = minhash.find_duplicates(sh, sigs, threshold=threshold)
            t2 = time.perf_counter()
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    steps = {
        "workers (shingle+signatures)": max(worker_wall, default=0.0),
        "fork + transfer + concat": (t1 - t0) - max(worker_wall, default=0.0),
        "find_duplicates": t2 - t1,
    }
    # Workers are gone when find_duplicates runs, so the tree's peak is the larger of
    # the sampled total and the parent's own (exact) peak.
    peak = max(tree.peak_mb, meter.own_peak_mb)
    serial = (t1 - t0) - max(worker_wall, default=0.0) + (t2 - t1)
    return Run(
        label, len(texts), meter.wall, meter.cpu, meter.others, peak, result.candidates,
        labels=result.cluster, bands=result.bands, rows=result.rows, steps=steps, verified=len(result.pairs),
        memory=f"process tree (PSS sampled every {tree.interval * 1000:.0f} ms) {tree.peak_mb:,.0f} MB, parent alone "
        f"{meter.own_peak_mb:,.0f} MB, workers' own peaks " + " + ".join(f"{mb:,.0f}" for mb in meter.worker_rss)
        + f" MB (all three added: {meter.peak_mb:,.0f} MB, an upper bound)",
        free_cores_seconds=sum(worker_cpu) / processes + serial,
    )


def run_stage(label: str, data: Dataset, threshold: float) -> Run:
    """The ``near_dedup`` stage with its defaults (but ``threshold``) over shards of
    SHARD_ROWS rows: summarize each, decide, apply each."""
    try:
        from pipeline.stages.near_dedup import NearDedupConfig, NearDedupStage

        stage = NearDedupStage(NearDedupConfig(threshold=threshold), INFO)
    except Exception as exc:  # module mid-rewrite
        return Run(label, len(data), error=f"not available ({type(exc).__name__}: {exc})")
    table = pa.table({ROW_ID: data.doc_ids, "text": data.texts, CHANGED_BY: pa.array([""] * len(data), pa.string())})
    shards = [table.slice(i, SHARD_ROWS) for i in range(0, table.num_rows, SHARD_ROWS)]
    try:
        with Meter() as meter:
            t0 = time.perf_counter()
            summaries = [stage.summarize(s) for s in shards]
            t1 = time.perf_counter()
            state = stage.decide(summaries)
            t2 = time.perf_counter()
            outputs = [stage.apply(s, state) for s in shards]
            t3 = time.perf_counter()
    except Exception as exc:
        return Run(label, len(data), error=f"failed ({type(exc).__name__}: {exc})")
    removed_ids = pa.concat_arrays([o.removed.column(ROW_ID).combine_chunks() for o in outputs])
    removed = np.asarray(pc.is_in(data.doc_ids, value_set=removed_ids), bool)
    # Rebuild labels from the state: every member of a multi-row cluster with its cluster id.
    labels = np.arange(len(data), dtype=np.int64)
    pos = pc.index_in(state.column(ROW_ID), value_set=data.doc_ids).to_numpy(zero_copy_only=False)
    labels[pos] = state.column("cluster_id").to_numpy(zero_copy_only=False)
    stats = {}
    try:
        from pipeline.stages.base import stats_of

        stats = stats_of(state)
    except Exception:
        pass
    run = Run(
        label, len(data), meter.wall, meter.cpu, meter.others, meter.peak_mb, stats.get("candidate_pairs"),
        labels=labels, bands=stats.get("bands"), rows=stats.get("rows"), verified=stats.get("verified_pairs"),
        steps={"summarize": t1 - t0, "decide": t2 - t1, "apply": t3 - t2},
    )
    run.note = f"removed {int(removed.sum()):,} rows"
    return run


def datasketch_shingles(normalised: str) -> list[bytes]:
    """Word 5-grams of a normalised text as UTF-8 bytes (a shorter text: all its words)."""
    words = normalised.split(" ") if normalised else []
    if len(words) < NGRAM:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i : i + NGRAM]).encode() for i in range(len(words) - NGRAM + 1)]


def run_datasketch(label: str, texts: pa.Array, threshold: float) -> Run:
    """datasketch's plain path: MinHash.update per shingle, MinHashLSH insert + query."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError as exc:
        return Run(label, len(texts), error=f"not installed ({exc})")
    with Meter() as meter:
        t0 = time.perf_counter()
        normalised = minhash.normalise(texts).to_pylist()
        lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        sketches = []
        for i, text in enumerate(normalised):
            m = MinHash(num_perm=NUM_PERM)
            for gram in datasketch_shingles(text or ""):
                m.update(gram)
            lsh.insert(i, m)
            sketches.append(m)
        t1 = time.perf_counter()
        found: set[tuple[int, int]] = set()
        for i, m in enumerate(sketches):
            for j in lsh.query(m):
                if j != i:
                    found.add((i, j) if i < j else (j, i))
        t2 = time.perf_counter()
    pairs = np.array(sorted(found), np.int64).reshape(-1, 2)
    return Run(
        label, len(texts), meter.wall, meter.cpu, meter.others, meter.peak_mb, len(pairs), pairs=pairs,
        bands=lsh.b, rows=lsh.r, steps={"MinHash + insert": t1 - t0, "query": t2 - t1},
    )


def warm_up(texts: pa.Array, threshold: float) -> None:
    """Run the project's path once on a few documents, untimed (imports, caches)."""
    _steps_run(texts.slice(0, WARMUP_DOCS), threshold)


# ------------------------------------------------------------------------- scoring


def score_project(
    run: Run, sh: minhash.Shingles, truth: TruthView, index: np.ndarray | None, threshold: float
) -> Accuracy:
    """Precision of member -> survivor pairs and of all within-cluster pairs; recall:
    the share of true pairs with at least one document removed (no near-duplicate
    pair left in the output). ``index`` maps the run's local document indices to the
    full dataset's (None: identical)."""
    labels = run.labels
    assert labels is not None
    n_local = len(labels)
    to_global = index if index is not None else np.arange(n_local)
    surv = survivor_pairs(labels)
    allp = cluster_pairs(labels)
    j_surv = minhash.exact_jaccard(sh, to_global[surv]) if len(surv) else np.zeros(0)
    j_all = minhash.exact_jaccard(sh, to_global[allp]) if len(allp) else np.zeros(0)
    tp = decode(truth.codes, n_local)
    removed = labels != np.arange(n_local)
    found = removed[tp[:, 0]] | removed[tp[:, 1]]
    ok_s = j_surv >= threshold - 1e-12
    ok_a = j_all >= threshold - 1e-12
    return Accuracy(
        reported=len(surv),
        precision=_ratio(int(ok_s.sum()), len(surv)),
        recall=_ratio(int(found.sum()), len(found)),
        precision_all=_ratio(int(ok_a.sum()), len(allp)),
        cluster_pairs=len(allp),
        found=found,
        truth=truth,
        false_jaccard=j_all[~ok_a],
    )


def score_pairs(run: Run, sh: minhash.Shingles, truth: TruthView, index: np.ndarray, threshold: float) -> Accuracy:
    """Precision and recall of a system's reported pairs (local indices)."""
    pairs = run.pairs
    assert pairs is not None
    n_local = len(index)
    j = minhash.exact_jaccard(sh, index[pairs]) if len(pairs) else np.zeros(0)
    ok = j >= threshold - 1e-12
    found = np.isin(truth.codes, pair_codes(pairs, n_local))
    return Accuracy(
        reported=len(pairs),
        precision=_ratio(int(ok.sum()), len(pairs)),
        recall=_ratio(int(found.sum()), len(found)),
        found=found,
        truth=truth,
        false_jaccard=j[~ok],
    )


def reported_global(run: Run, index: np.ndarray | None) -> np.ndarray:
    """A run's reported pairs (within-cluster pairs for the project) in full-dataset indices."""
    pairs = cluster_pairs(run.labels) if run.labels is not None else run.pairs
    if pairs is None or not len(pairs):
        return np.zeros((0, 2), np.int64)
    return pairs if index is None else index[pairs]


# --------------------------------------------------------------------------- output


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render(runs: list[Run], title: str) -> tuple[Table, list[str]]:
    """The results table and its numbered notes."""
    table = Table(title=title)
    for name, justify in [
        ("system", "left"), ("docs", "right"), ("wall s", "right"), ("docs/s", "right"), ("CPU s", "right"),
        ("busy\nelsewhere", "right"), ("peak RSS\nMB above", "right"), ("bands x\nrows", "right"),
        ("candidate\npairs", "right"), ("reported\npairs", "right"), ("precision\n(reported)", "right"),
        ("precision\n(all in cluster)", "right"), ("recall", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    notes: list[str] = []
    for run in runs:
        if run.label == "---":
            table.add_section()
            continue
        label = run.label
        note = run.note + (f" (best of {run.repeats} runs)" if run.repeats > 1 else "")
        if note:
            notes.append(note)
            label += f" [{len(notes)}]"
        if run.error:
            notes.append(run.error)
            table.add_row(f"{run.label} [{len(notes)}]", f"{run.docs:,}", *["-"] * 11, style="dim")
            continue
        acc = run.accuracy
        busy = run.busy_elsewhere
        table.add_row(
            label,
            f"{run.docs:,}",
            f"{run.seconds:.2f}",
            fmt(run.docs_per_s, ",.0f"),
            f"{run.cpu:.2f}",
            fmt(busy, ".1f") if busy is not None else "?",
            f"{run.peak_mb:,.0f}",
            f"{run.bands}x{run.rows}" if run.bands else "-",
            fmt(run.candidates, ","),
            fmt(acc.reported if acc else None, ","),
            fmt(acc.precision if acc else None, ".4f"),
            fmt(acc.precision_all if acc else None, ".4f"),
            fmt(acc.recall if acc else None, ".4f"),
        )
    return table, notes


JACCARD_BANDS = ((0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.0), (1.0, 1.01))


def recall_table(runs: list[Run], threshold: float) -> Table:
    """Recall by true Jaccard band, and false positives by Jaccard band."""
    edges = [b for b in JACCARD_BANDS if b[0] >= threshold - 1e-9] or [(threshold, 1.01)]
    table = Table(
        title=f"Recall by true Jaccard (true pairs missed in brackets), and reported pairs below {threshold} "
        "(project: all pairs within clusters)"
    )
    table.add_column("system", no_wrap=True)
    for lo, hi in edges:
        table.add_column("J = 1" if lo >= 1.0 else f"J {lo:.2f}-{hi:.2f}", justify="right")
    table.add_column("injected", justify="right")
    table.add_column("natural", justify="right")
    table.add_column("false:\nJ < 0.5", justify="right")
    table.add_column(f"false: J\n0.5-{threshold - 0.1:.1f}", justify="right")
    table.add_column(f"false: J\n{threshold - 0.1:.1f}-{threshold}", justify="right")
    for run in runs:
        acc = run.accuracy
        if acc is None or acc.truth is None:
            continue
        cells = []
        tj = acc.truth.jaccard
        masks = [(tj >= lo) & (tj < hi) for lo, hi in edges] + [acc.truth.injected, ~acc.truth.injected]
        for mask in masks:
            total, found = int(mask.sum()), int((acc.found & mask).sum())
            cells.append(f"{found / total:.4f} ({total - found:,})" if total else "-")
        fj = acc.false_jaccard
        cells += [
            f"{int((fj < 0.5).sum()):,}",
            f"{int(((fj >= 0.5) & (fj < threshold - 0.1)).sum()):,}",
            f"{int((fj >= threshold - 0.1).sum()):,}",
        ]
        table.add_row(run.label, *cells)
    return table


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def say(line: str, ok: bool | None) -> None:
    style = "bold" if ok is None else ("bold green" if ok else "bold red")
    console.print(line, style=style, highlight=False)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Near-dedup accuracy, speed and memory vs datasketch.")
    parser.add_argument("--docs", type=int, default=150_000, help="original documents (default 150,000)")
    parser.add_argument(
        "--dup-share", type=float, default=0.10, help="share of documents given an injected copy (default 0.10)"
    )
    parser.add_argument(
        "--datasketch-docs", type=int, default=10_000, help="subset size for datasketch (default 10,000)"
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes for the parallel run (default 2)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the copies, edits and subset (default 1234)")
    parser.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold (default 0.8)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs of each full-size timing, the fastest kept (default 2)"
    )
    add_wait_idle_argument(parser, 20, "before each timing")
    parser.add_argument("--skip-stage", action="store_true", help="do not time the near_dedup stage")
    args = parser.parse_args(argv)
    threshold = args.threshold

    t0 = time.perf_counter()
    try:
        corpus = load_corpus(min_docs=args.docs)
        data = make_dataset(corpus, args.docs, args.dup_share, args.seed)
    except CorpusError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    sources = Counter(corpus.column("source").slice(0, data.corpus_docs).to_pylist())
    del corpus
    n = len(data)
    injected = data.injected_pairs
    words = word_counts(data.texts)
    console.print(
        f"data: {data.originals:,} corpus documents with >= {MIN_WORDS} words (of the first {data.corpus_docs:,}; "
        f"words median {int(np.median(words))}, p95 {int(np.percentile(words, 95))}) "
        f"+ {len(injected):,} injected copies "
        f"({int(data.exact.sum()):,} verbatim; edits {', '.join(f'{k} {v:,}' for k, v in data.ops.most_common())}) "
        f"= {n:,} docs, {data.texts.nbytes / 1e6:.0f} MB of text, built in {time.perf_counter() - t0:.1f}s; "
        + ", ".join(f"{s} {c:,}" for s, c in sources.most_common(5)),
        highlight=False,
    )
    console.print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, pyarrow {pa.__version__}; RSS with corpus and data loaded: {rss_mb():,.0f} MB",
        highlight=False,
    )

    def timed(label: str, fn: Callable[[], Run], repeat: int) -> Run:
        """Run ``fn`` ``repeat`` times, each after waiting for a quiet machine; the fastest run."""
        best: Run | None = None
        for attempt in range(repeat):
            console.print(f"timing {label}" + (f" ({attempt + 1}/{repeat})" if repeat > 1 else "") + " ...")
            if args.wait_idle > 0:
                wait_for_idle(args.wait_idle, console.print)
            run = fn()
            if run.error:
                return run
            if best is None or run.seconds < best.seconds:
                best = run
        assert best is not None
        best.repeats = repeat
        return best

    warm_up(data.texts, threshold)
    full = timed("project, 1 process", lambda: run_project("project, 1 process", data.texts, threshold), args.repeat)
    full.note = "shingle + signatures + find_duplicates (defaults)"
    runs = [full]
    parallel: Run | None = None
    if args.processes > 1:
        label = f"project, {args.processes} processes"
        parallel = timed(label, lambda: run_project_parallel(label, data.texts, threshold, args.processes), args.repeat)
        parallel.note = (
            f"shingle + signatures in {args.processes} forked workers (one contiguous shard each, results pickled "
            "back), find_duplicates in the parent; peak memory is the process tree's (see below)"
        )
        runs.append(parallel)
    stage_run: Run | None = None
    if not args.skip_stage:
        label = "near_dedup stage, 1 process"
        stage_run = timed(label, lambda: run_stage(label, data, threshold), 1)
        if not stage_run.error:
            stage_run.note = (
                f"summarize per shard of {SHARD_ROWS:,} rows + decide + apply, stage defaults; {stage_run.note}"
            )
        runs.append(stage_run)

    subset = pick_subset(data, args.datasketch_docs, args.seed)
    sub_texts = data.texts.take(pa.array(subset))
    sub_project = timed(
        "project, subset", lambda: run_project("project, subset, 1 process", sub_texts, threshold), 1
    )
    ds = timed("datasketch, subset", lambda: run_datasketch("datasketch, subset, 1 process", sub_texts, threshold), 1)

    console.print("ground truth: shingling, 0.5-threshold LSH sweep, exact Jaccard ...")
    t_truth = time.perf_counter()
    sh = minhash.shingle(data.texts, n=NGRAM, kind="word")
    truth = ground_truth(sh, injected, threshold, args.seed)
    for run, index in [(full, None), (parallel, None), (stage_run, None), (sub_project, subset), (ds, subset)]:
        if run is not None and not run.error:
            rep = reported_global(run, index)
            truth.pool(pair_codes(rep, n), minhash.exact_jaccard(sh, rep))
    whole, inside = truth.view(), truth.view(subset)
    for run in (full, parallel, stage_run):
        if run is not None and not run.error:
            run.accuracy = score_project(run, sh, whole, None, threshold)
    sub_project.accuracy = score_project(sub_project, sh, inside, subset, threshold)
    if not ds.error:
        ds.accuracy = score_pairs(ds, sh, inside, subset, threshold)
        ds.note = (
            f"MinHash(num_perm={NUM_PERM}).update per word 5-gram (text through minhash.normalise) + "
            f"MinHashLSH(threshold={threshold}) insert + query; reported = the query pairs, unverified; "
            f"at this rate the full {n:,} docs would take {n / (ds.docs_per_s or 1):,.0f} s"
        )
    sub_project.note = "the project's path on the same subset as datasketch"
    truth_seconds = time.perf_counter() - t_truth
    runs += [Run("---", 0), sub_project, ds]

    title = (
        f"Near-duplicate detection at J >= {threshold} on {n:,} documents "
        f"({data.originals:,} real + {len(injected):,} injected copies), subset {len(subset):,}"
    )
    table, notes = render(runs, title)
    console.print(table)
    console.print(
        f"Truth: all pairs with J >= {threshold} found by a {TRUTH_LSH_THRESHOLD}-threshold LSH sweep + exact Jaccard "
        f"(k-permutation MinHash, seed {args.seed + TRUTH_SEED_OFFSET}, {truth.bands} bands x {truth.rows} rows, "
        f"buckets untruncated: {truth.sweep_candidates:,} candidates; a pair at J = {threshold} escapes it with "
        f"probability {(1 - threshold**truth.rows) ** truth.bands:.1e}) plus the injected pairs: {len(truth.codes):,} "
        f"true pairs ({truth.from_injected_only:,} only from the injected list, {truth.pooled:,} only from systems' "
        f"reports), {len(inside.codes):,} of them inside the subset; computed in {truth_seconds:.1f}s.",
        highlight=False,
    )
    inj_j = truth.injected_jaccard
    q = np.percentile(inj_j, [5, 25, 50, 75, 95]) if len(inj_j) else np.zeros(5)
    console.print(
        f"Injected pairs: true Jaccard p5 {q[0]:.2f}, p25 {q[1]:.2f}, median {q[2]:.2f}, p75 {q[3]:.2f}, "
        f"p95 {q[4]:.2f}; "
        f"{int((inj_j >= threshold).sum()):,} of {len(inj_j):,} at J >= {threshold}, "
        f"{int(((inj_j >= threshold - 0.05) & (inj_j < threshold + 0.05)).sum()):,} within 0.05 of it.",
        highlight=False,
    )
    console.print(
        "Columns: reported pairs are, for the project, each removed document with its cluster's survivor "
        "(keep = first, what duplicate_of lists) and, for datasketch, the pairs its LSH queries return; "
        "precision (all in cluster) counts every pair inside a cluster (chains included); recall counts a true "
        "pair as found when one of its documents is removed (project) or the pair was returned (datasketch). "
        "Peak RSS is above the RSS before the timing (corpus and data loaded); for the multi-process run, the "
        "peak of the process tree's summed PSS (sampled) or the parent's own peak, whichever is larger. Busy "
        "elsewhere: cores other processes kept busy on average meanwhile.",
        highlight=False,
    )
    for i, note in enumerate(notes, 1):
        console.print(f"[{i}] {note}", highlight=False, markup=False)
    for run in runs:
        if run.steps and not run.error:
            parts = [f"{k} {v:.2f}s" for k, v in run.steps.items()]
            if run.verified is not None:
                parts.append(f"{run.verified:,} verified edges")
            if run.labels is not None:
                sizes = np.bincount(run.labels)
                parts.append(f"{int((sizes > 1).sum()):,} clusters, largest {int(sizes.max()):,} docs")
            if run.memory:
                parts.append(f"peak RSS {run.memory}")
            console.print(f"  {run.label}: " + ", ".join(parts), highlight=False)
    console.print(recall_table([r for r in runs if r.accuracy is not None], threshold))

    # Verdicts.
    acc = full.accuracy
    assert acc is not None
    ok = (acc.precision or 0) >= TARGET_PRECISION and (acc.recall or 0) >= TARGET_RECALL
    say(
        f"Accuracy target (precision >= {TARGET_PRECISION} and recall >= {TARGET_RECALL} at J >= {threshold}, "
        f"defaults, {n:,} docs): {verdict(ok)} - precision {fmt(acc.precision, '.4f')} (member -> survivor; "
        f"{fmt(acc.precision_all, '.4f')} over all pairs within clusters), recall {fmt(acc.recall, '.4f')} "
        f"(bands x rows {full.bands}x{full.rows})",
        ok,
    )
    speed = parallel or full
    rate = speed.docs_per_s or 0.0
    ok = rate >= TARGET_DOCS_PER_S
    line = (
        f"Speed target (>= {TARGET_DOCS_PER_S:,} docs/s on {TARGET_CORES} cores): {verdict(ok)} - {rate:,.0f} docs/s "
        f"with {args.processes} processes ({full.docs_per_s or 0:,.0f} docs/s in 1 process)"
    )
    busy = speed.busy_elsewhere
    if busy is not None and busy > BUSY_CORES and speed.free_cores_seconds:
        line += (
            f". The machine was shared (other processes kept {busy:.1f} cores busy meanwhile); from CPU time, "
            f"{args.processes} free cores would give about {speed.docs / speed.free_cores_seconds:,.0f} docs/s "
            "(an estimate: the workers' CPU seconds spread over the processes, plus the serial part)"
        )
    say(line, ok)
    mem_runs = [r for r in (full, parallel) if r is not None]
    ok = all(r.peak_mb <= TARGET_RSS_MB for r in mem_runs)
    say(
        f"Memory target (peak RSS <= {TARGET_RSS_MB:,} MB above the loaded corpus): {verdict(ok)} - "
        + ", ".join(f"{r.label} {r.peak_mb:,.0f} MB" for r in mem_runs),
        ok,
    )
    if not ds.error and ds.docs_per_s and sub_project.docs_per_s:
        say(
            f"Speed ratio project/datasketch (1 process, same {len(subset):,}-doc subset, this run): "
            f"{sub_project.docs_per_s / ds.docs_per_s:,.0f}x "
            f"({sub_project.docs_per_s:,.0f} vs {ds.docs_per_s:,.0f} docs/s); "
            f"full-size 1-process project vs datasketch: {(full.docs_per_s or 0) / ds.docs_per_s:,.0f}x",
            None,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
