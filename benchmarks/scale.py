"""Scale: the whole default chain on 100k, 1M and 5M rows of real English text.

    nice -n 10 python benchmarks/scale.py --rows 100000
    nice -n 10 python benchmarks/scale.py --rows 1000000 --keep-corpus /tmp/scale-1m.jsonl

Each size builds a JSON Lines file of ``--rows`` documents by sentence-shuffling real
English text of this machine (``/usr/share/common-licenses``, ``/usr/share/doc/*/copyright``
and changelogs, English man pages), with 5% exact copies of earlier documents and 5% near
copies (a few words replaced), then times, in the same run:

* a baseline: pyarrow reads the JSONL and writes one Parquet file (the least any pipeline
  over this file must do);
* ``python -m pipeline run --input FILE --output DIR`` with default settings (no config),
  as a subprocess, the way a user runs it: start-up, Prefect, every stage and publishing.

It prints docs/s (wall), CPU seconds (of every process the run started: the flow, Prefect's
temporary server, workers), peak RSS, the largest size of the work folder, and seconds
per stage from the version's ``reports/stages.parquet``. Peak RSS is measured two ways:
``tree`` samples the summed RSS of the run's process tree every 0.1 s (what the machine
must hold); ``max process`` is the ``ru_maxrss`` that ``wait4`` gives for the run, the
peak of its largest single process (the flow's own process here), exact but per
process. The baseline runs in a process of its own, before: a child's ``ru_maxrss``
starts at its parent's peak (it counts what the two shared until ``exec``). The
peak RSS of the flow process is also shown per stage (its log lines mark where each stage
ends), which is where to look first when memory grows.

Targets (issue 17): peak RSS <= 3 GiB at 1M and 5M rows, work folder <= about 2x the
input, >= 5,000 docs/s wall at 1M rows including start-up and publishing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

SEED = 17
EXACT_SHARE = 0.05
NEAR_SHARE = 0.05
RECENT = 100_000
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
TROFF = re.compile(r"\\f[BIRP]|\\f\(..|\\\*\(..|\\[-&e]|\\\(..|\\s[-+]?\d")


def _text_files() -> list[tuple[Path, bool]]:
    """(path, is troff) of the sources, sorted so the corpus is the same on every run."""
    files = [(p, False) for p in sorted(Path("/usr/share/common-licenses").glob("*")) if p.is_file()]
    doc = Path("/usr/share/doc")
    files += [(p, False) for p in sorted(doc.glob("*/copyright"))]
    files += [(p, False) for p in sorted(doc.glob("*/changelog*"))[:400]]
    files += [(p, True) for p in sorted(Path("/usr/share/man/man1").glob("*.1.gz"))[:3000]]
    return files


def _read(path: Path) -> str:
    raw = path.read_bytes()[:400_000]
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            return ""
    return raw.decode("utf-8", "replace")


def _sentences(text: str, troff: bool) -> list[str]:
    if troff:
        lines = [TROFF.sub("", line) for line in text.splitlines() if not line.startswith((".", "'"))]
        text = "\n".join(lines)
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in SENTENCE.split(text):
        s = s.strip()
        words = s.split()
        if 6 <= len(words) <= 60 and sum(c.isalpha() for c in s) > 0.7 * len(s):
            out.append(s)
    return out


def sentence_pool() -> list[str]:
    pool: set[str] = set()
    for path, troff in _text_files():
        try:
            pool.update(_sentences(_read(path), troff))
        except OSError:
            continue
    return sorted(pool)


def build_corpus(rows: int, path: Path) -> dict[str, int]:
    """Write ``rows`` JSONL records {"id", "text"}: sentence-shuffled originals, exact
    copies and near copies of earlier records (5% each), in a fixed random order."""
    pool = sentence_pool()
    rng = np.random.default_rng(SEED)
    kinds = rng.choice(3, size=rows, p=[1 - EXACT_SHARE - NEAR_SHARE, EXACT_SHARE, NEAR_SHARE])
    kinds[0] = 0
    # 4 to 10 sentences: two documents that share one sentence (each sentence is drawn
    # about 100 times at 5M rows) stay far below split's grouping threshold (0.5), as
    # unrelated documents of real data do; 2-sentence documents sharing one would
    # make every row a near-copy candidate.
    lengths = rng.integers(4, 11, size=rows)
    picks = rng.integers(0, len(pool), size=int(lengths.sum()))
    vocabulary = sorted({w for s in pool[:5000] for w in s.split() if w.isalpha()})
    recent: list[str] = []  # the last RECENT originals, a ring copies are drawn from
    at = 0
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            n, kind = int(lengths[i]), int(kinds[i])
            if kind == 0 or not recent:
                text = " ".join(pool[j] for j in picks[at:at + n])
                if len(recent) < RECENT:
                    recent.append(text)
                else:
                    recent[i % RECENT] = text
            else:
                text = recent[int(rng.integers(len(recent)))]
                if kind == 2:
                    words = text.split()
                    for k in rng.integers(0, len(words), size=max(1, len(words) // 40)):
                        words[int(k)] = vocabulary[int(rng.integers(len(vocabulary)))]
                    text = " ".join(words)
            at += n
            out.write(json.dumps({"id": f"doc-{i}", "text": text}, ensure_ascii=False) + "\n")
    return {"rows": rows, "sentences": len(pool), "exact": int((kinds == 1).sum()), "near": int((kinds == 2).sum())}


_BASELINE = """
import sys, time
import pyarrow.json as pj, pyarrow.parquet as pq
started = time.perf_counter()
table = pj.read_json(sys.argv[1], read_options=pj.ReadOptions(block_size=1 << 24))
pq.write_table(table, sys.argv[2])
print(time.perf_counter() - started)
"""


def baseline(corpus: Path, out: Path) -> tuple[float, int]:
    """(seconds, peak RSS) of pyarrow reading the JSONL and writing Parquet, in a
    process of its own: run in this one, its peak (4.7 GiB at 2M rows) stayed this
    process's, and Linux hands a process's peak to each child it starts (the child's
    ``ru_maxrss`` counts the memory it shared until ``exec``), so the pipeline's
    figure was the baseline's."""
    proc = subprocess.Popen([sys.executable, "-c", _BASELINE, str(corpus), str(out)], stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"the baseline failed (exit {proc.returncode})")
    return float(stdout.strip()), usage.ru_maxrss * 1024


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def run_pipeline(corpus: Path, output: Path, env: dict[str, str]) -> dict:
    """``python -m pipeline run`` as a user runs it, sampled every 0.1 s."""
    cmd = [sys.executable, "-m", "pipeline", "run", "--input", str(corpus), "--output", str(output)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    root = psutil.Process(proc.pid)
    lines: list[tuple[float, str]] = []
    samples: list[tuple[float, int, int]] = []  # time, tree RSS, flow RSS
    cpu: dict[int, float] = {}
    work_peak = 0

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append((time.perf_counter() - started, line.rstrip()))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    ticks = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        tree_rss = 0
        for p in _tree(root):
            try:
                tree_rss += p.memory_info().rss
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        try:
            flow_rss = root.memory_info().rss
        except psutil.Error:
            flow_rss = 0
        samples.append((time.perf_counter() - started, tree_rss, flow_rss))
        ticks += 1
        if ticks % 10 == 0 and output.exists():
            work_peak = max(work_peak, sum(_du(w) for w in output.glob("*/.work")))
        time.sleep(0.1)
    stdout = proc.stdout.read()
    reader.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit("the run failed:\n" + stdout + "\n".join(line for _, line in lines[-40:]))
    cpu_seconds = usage.ru_utime + usage.ru_stime  # the run's process and every process it waited for
    # Per stage: the flow's peak RSS between the log line of the stage before and its own.
    stage_end = [(t, m.group(1)) for t, line in lines if (m := re.match(r"\s*(?:INFO\s+)?(\w+): \d+ -> \d+ rows", line))]
    per_stage, since = {}, 0.0
    for t, name in stage_end + [(wall, "publish")]:
        per_stage[name] = max((flow for at, _, flow in samples if since <= at <= t), default=0)
        since = t
    return {
        "wall": wall,
        "cpu": cpu_seconds,
        "cpu_sampled": sum(cpu.values()),
        "tree_peak": max((tree for _, tree, _ in samples), default=0),
        "max_child": usage.ru_maxrss * 1024,
        "work_peak": work_peak,
        "stage_rss": per_stage,
        "version": next(output.glob("*/v*")),
    }


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def measure(rows: int, tmp: Path, keep: Path | None) -> None:
    corpus = keep if keep and keep.exists() else (keep or tmp / f"corpus-{rows}.jsonl")
    if not corpus.exists():
        started = time.perf_counter()
        built = build_corpus(rows, corpus)
        print(f"corpus: {built['rows']:,} rows ({built['exact']:,} exact, {built['near']:,} near copies) "
              f"from {built['sentences']:,} sentences, {time.perf_counter() - started:.0f} s")
    size = corpus.stat().st_size
    base, base_rss = baseline(corpus, tmp / "baseline.parquet")
    (tmp / "baseline.parquet").unlink()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    output = tmp / f"out-{rows}"
    shutil.rmtree(output, ignore_errors=True)
    r = run_pipeline(corpus, output, env)
    stages = pq.read_table(r["version"] / "reports" / "stages.parquet").to_pylist()
    print(f"\n{rows:,} rows, input {size / 2**20:,.0f} MiB ({corpus})")
    print(f"  baseline (pyarrow read JSONL + write Parquet): {base:.1f} s, {rows / base:,.0f} docs/s, peak RSS {gib(base_rss)}")
    print(f"  pipeline run: {r['wall']:.1f} s wall, {rows / r['wall']:,.0f} docs/s, "
          f"{r['wall'] / base:.1f}x the baseline")
    print(f"  CPU: {r['cpu']:.0f} s (wait4 of the run; sampled tree {r['cpu_sampled']:.0f} s)")
    print(f"  peak RSS: tree {gib(r['tree_peak'])} (sampled sum of the process tree), "
          f"max process {gib(r['max_child'])} (ru_maxrss of the run: its largest single process)")
    print(f"  work folder peak: {r['work_peak'] / 2**20:,.0f} MiB = {r['work_peak'] / size:.2f}x the input (sampled every 1 s)")
    print("  stage              seconds   flow peak RSS until its end")
    for s in stages:
        rss = r["stage_rss"].get(s["stage"])
        shown = gib(rss) if rss else ""
        print(f"  {s['stage']:<18} {s['seconds']:>7.1f}   {shown if s['enabled'] else 'off'}")
    print(f"  {'publish':<18} {'':>7}   {gib(r['stage_rss']['publish'])}")
    shutil.rmtree(output, ignore_errors=True)
    if keep is None:
        corpus.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--keep-corpus", type=Path, help="build the corpus here once and reuse it (one --rows)")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scale-", dir=args.tmp))
    try:
        for rows in args.rows:
            measure(rows, tmp, args.keep_corpus)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
