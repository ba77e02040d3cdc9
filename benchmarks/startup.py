"""The fixed cost of a small run: ``python -m pipeline run`` on 1,000 rows, first run included.

    python benchmarks/startup.py                   # 5 repeats, 1,000 rows
    python benchmarks/startup.py --repeats 9 --wait-idle 20

Each repeat times, from command to exit (the version published), as a user runs it:

* **machine-first**: 1,000 rows into a new output folder, with empty caches, as on a
  new install: numba compiles the kernels (``NUMBA_CACHE_DIR``; in a child process
  started beside the server, ``pipeline/warmup.py``), and the temporary
  server's new database (``<output>/.prefect``) is made from the packaged schema of
  Prefect's last migration (``flows/prefect_database.py``; Prefect's migrations where
  the installed Prefect has none), and the run keeps a copy of it, empty, in its
  cache (``XDG_CACHE_HOME``);
* **first**: the same rows into another new folder: its database is that copy;
* **second**: another 1,000 rows into that folder: the database is there, the run
  publishes a second version.

Both inputs are sentence-shuffled real English text (``benchmarks/scale.py``'s corpus,
with its 5% exact and 5% near copies). ``PREFECT_API_URL`` is removed from the runs'
environment, so they use the temporary server however the shell is set up. It
prints each timing, the cores other processes kept busy meanwhile (a shared machine
makes a slow figure contention, not cost), and the median of each kind. Target (issue
17): under 10 s for the first run on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import CpuMeter, add_wait_idle_argument, wait_for_idle  # noqa: E402
from benchmarks.scale import build_corpus  # noqa: E402


def inputs(rows: int, tmp: Path) -> tuple[Path, Path]:
    """Two inputs of ``rows`` rows each, with no row in common (the first and second half
    of one corpus), so that the second run publishes a version of its own."""
    corpus = tmp / "corpus.jsonl"
    build_corpus(2 * rows, corpus)
    lines = corpus.read_text().splitlines(keepends=True)
    first, second = tmp / "first.jsonl", tmp / "second.jsonl"
    first.write_text("".join(lines[:rows]))
    second.write_text("".join(lines[rows:]))
    return first, second


def timed_run(corpus: Path, output: Path, env: dict[str, str]) -> CpuMeter:
    """One ``python -m pipeline run``, timed, with the CPU of the processes it started
    (so that ``others`` is the rest of the machine's); exits with its output if it fails."""
    cmd = [sys.executable, "-m", "pipeline", "run", "-q", "--input", str(corpus), "--output", str(output)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with CpuMeter() as meter:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        meter.add_cpu(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"the run failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return meter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    add_wait_idle_argument(parser, 0, "before each repeat (three runs)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="startup-", dir=args.tmp))
    walls: dict[str, list[float]] = {"machine-first": [], "first": [], "second": []}
    try:
        first, second = inputs(args.rows, tmp)
        for repeat in range(1, args.repeats + 1):
            if args.wait_idle > 0:
                wait_for_idle(args.wait_idle)
            env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            env["XDG_CACHE_HOME"] = str(tmp / f"cache-{repeat}")
            env["NUMBA_CACHE_DIR"] = str(tmp / f"numba-{repeat}")  # compiled kernels, as on a new install
            runs = (("machine-first", first, "new"), ("first", first, "out"), ("second", second, "out"))
            for kind, corpus, folder in runs:
                meter = timed_run(corpus, tmp / f"{folder}-{repeat}", env)
                walls[kind].append(meter.wall)
                others = "" if meter.others is None else f", other processes {meter.others / meter.wall:.2f} cores"
                print(f"repeat {repeat} {kind:<13} {meter.wall:5.1f} s{others}", flush=True)
            for folder in ("new", "out", "cache", "numba"):
                shutil.rmtree(tmp / f"{folder}-{repeat}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for kind, values in walls.items():
        if values:
            print(f"{kind:<13} run ({args.rows:,} rows): median {statistics.median(values):.1f} s, "
                  f"range {min(values):.1f}-{max(values):.1f} s, {len(values)} runs")


if __name__ == "__main__":
    main()
