"""Resume cost: runs killed in their last stage, re-run, against a full run.

    python benchmarks/resume.py                  # 300,000 docs (about 10 minutes)
    python benchmarks/resume.py --docs 100000    # the scale-out benchmark's size
    python benchmarks/resume.py --docs 20000     # a quick check that it works

The first ``--docs`` documents of the real-text corpus (``benchmarks/corpus.py``) are
curated by ``python -m pipeline run``, each run a process of its own as a user starts
it, all against one Prefect server (``PREFECT_API_URL``, else one started here on a
free loopback port): default settings (shards of 50,000 rows) but the fastText
language backend (langdetect runs at about 170 docs/s here and would be all there is
to see).

1. A full run into one store, timed from process start to exit.
2. A run with nothing to do (the full run's inputs again): the floor every run pays,
   resumed or not: process start (Python, Prefect and pipeline imports), the input
   hashes, a flow run on the server.
3. For each kill point, a run into a store of its own, killed with SIGKILL in the
   last enabled stage, then the same command again, timed: it takes the finished
   steps from the cache, does what is left and publishes. The kill points:
   ``begun``, as the stage's work folder appears (every stage before it has
   finished; the last one is redone whole), and ``applying``, as the stage's first
   output shard appears (its global decision is made and cached).

For each kill point it prints the resumed run's time and its ratio to the full run
(target: under 20%), where that time went (start-up until the flow run began, the
steps taken from the cache, the steps run again, publishing, the end), and it checks
that the resumed run published the full run's version (same fingerprint).

Why 300,000 documents by default: a resumed run pays about 10-15 s whatever the size
(start-up, publishing the version and its report, Prefect's bookkeeping of the
cached steps), so at 100,000 short documents, a 40-80 s run here, the ratio measures
that fixed cost rather than what resuming saves. The pipeline is meant for runs on a
schedule over data that outgrows one machine; 300,000 documents is the largest round
size the corpus offers on this machine (335,000 documents). The ``begun`` kill point
cannot meet the target at any size: it redoes the whole last stage (``split``, a
global MinHash stage, about a fifth of a run), so its ratio is at least that share.
Each timing also says how many cores other processes kept busy meanwhile: on a
shared machine a slow figure with a busy machine is contention.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq
import yaml

from benchmarks.corpus import CorpusError, load_corpus
from benchmarks.machine import CpuMeter, add_wait_idle_argument, wait_for_idle

DATASET = "corpus"
TARGET = 0.20
KILL_POINTS = {"begun": "{stage}", "applying": "{stage}/**/kept"}
"""Where a run is killed: globs under the work folder, from the last stage's folder."""
LOG_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) \| INFO +\| (Flow|Task) run '([^']+)' - (.*)$", re.MULTILINE)
"""Prefect's log lines of flow and task runs: time, kind, run name, message."""


def write_config(folder: Path, docs: int, shard_rows: int) -> Path:
    """The corpus as Parquet and a config curating it into ``folder/out``."""
    corpus = load_corpus(min_docs=docs).slice(0, docs)
    pq.write_table(corpus.select(["doc_id", "text"]), folder / "corpus.parquet")
    config = {
        "datasets": [{"name": DATASET, "inputs": ["corpus.parquet"], "columns": {"id": "doc_id", "text": "text"}}],
        "shard_rows": shard_rows,
        "stages": {"language": {"backend": "fasttext"}},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def last_stage(config: Path) -> str:
    """``<index>-<name>`` of the last enabled stage, as its work folder is named."""
    from pipeline.config import load_config
    from pipeline.stages.registry import stage_names

    cfg = load_config(config)
    stages = cfg.stages_for(cfg.datasets[0])
    index = max(i for i, name in enumerate(stage_names()) if getattr(stages, name).enabled)
    return f"{index}-{stage_names()[index]}"


def start(config: Path, out: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m pipeline run`` into ``out``, logging (with Prefect's task runs) to
    ``out.log``, after a first line with the time of day it started (as Prefect's lines
    give it), for :func:`phases`."""
    args = [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--output", str(out), "-q", "-v"]
    with open(out.parent / f"{out.name}.log", "wb") as log:
        log.write(f"started {datetime.now():%H:%M:%S.%f}\n".encode())
        log.flush()
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def run_to_end(config: Path, out: Path, env: dict[str, str]) -> None:
    process = start(config, out, env)
    if process.wait() != 0:
        log = (out.parent / f"{out.name}.log").read_text(errors="replace")
        sys.exit(f"the run into {out} failed:\n{log[-3000:]}")


def run_and_kill(config: Path, out: Path, env: dict[str, str], pattern: str) -> None:
    """Start a run and SIGKILL it once a path matches ``pattern`` in its work folder."""
    process = start(config, out, env)
    while not any(out.glob(f"{DATASET}/.work/*/{pattern}")):
        if process.poll() is not None:
            sys.exit(f"the run ended before {pattern} appeared: nothing to resume")
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _seconds_of_day(clock: str) -> float:
    h, m, sec = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


def phases(log: Path, ended: float) -> dict[str, str]:
    """Where a run's time went, from its log and the seconds from its start to its
    exit (``ended``): start-up until the flow run began, the steps taken from the cache
    (count, seconds from the first to the last), the steps run (count, by stage),
    publishing, and the end (artifacts, the flow run's end, exit)."""
    text = log.read_text(errors="replace")
    t0 = _seconds_of_day(text.split("\n", 1)[0].removeprefix("started "))
    events = [
        ((_seconds_of_day(f"{h}:{m}:{s}") - t0) % 86400, kind, name, message)
        for h, m, s, kind, name, message in LOG_LINE.findall(text)
    ]
    began = next(t for t, kind, _, message in events if kind == "Flow" and message.startswith("Beginning"))
    finished = [(t, name, message) for t, kind, name, message in events if kind == "Task" and "Finished" in message]
    published = next(t for t, name, _ in finished if name.startswith("publish"))
    steps = [(t, name, message) for t, name, message in finished if not name.startswith("publish")]
    cached = [t for t, _, message in steps if "Cached" in message]
    run: dict[str, int] = {}
    for _, name, message in steps:
        if "Cached" not in message:
            run[name.split("-")[0]] = run.get(name.split("-")[0], 0) + 1
    last_step = max((t for t, _, _ in steps), default=began)
    cached_span = max(cached) - min(cached) if cached else 0.0
    return {
        "start-up": f"{began:.1f} s",
        "cached steps": f"{len(cached)} in {cached_span:.1f} s",
        "steps run": ", ".join(f"{stage} {n}" for stage, n in run.items()) or "none",
        "steps in all": f"{last_step - began:.1f} s",
        "publish": f"{published - last_step:.1f} s",
        "end": f"{ended - published:.1f} s",
    }


def fingerprint(out: Path) -> str:
    from pipeline.store import Store

    store = Store(out, DATASET)
    return store.manifest(store.latest())["fingerprint"]


def children_cpu() -> float:
    """CPU seconds of this process's finished children (the runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(run: Callable[..., None], *args: Any) -> CpuMeter:
    """Time ``run(*args)``, counting the CPU of the processes it waits for as its own."""
    before = children_cpu()
    with CpuMeter() as meter:
        run(*args)
        meter.add_cpu(children_cpu() - before)
    return meter


def described(meter: CpuMeter) -> str:
    others = "" if meter.others is None else f", other processes kept {meter.others / meter.wall:.1f} cores busy"
    return f"{meter.wall:7.1f} s (CPU {meter.cpu:.1f} s{others})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300_000, help="documents to curate (default 300,000)")
    parser.add_argument("--shard-rows", type=int, default=50_000, help="rows per shard (default 50,000)")
    add_wait_idle_argument(parser, 60, "before each timing")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="resume-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        try:
            config = write_config(work, args.docs, args.shard_rows)
        except CorpusError as exc:
            sys.exit(str(exc))
        env = {
            **os.environ, "PREFECT_HOME": str(work / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "INFO",  # the task runs' states, for phases()
        }
        if not env.get("PREFECT_API_URL"):
            from tests.servers import prefect_server

            print("starting a Prefect server ...")
            env["PREFECT_API_URL"] = stack.enter_context(prefect_server(work / "prefect-server"))
        stage_dir = last_stage(config)
        print(f"{args.docs:,} documents, shards of {args.shard_rows:,}; runs are killed in {stage_dir}")

        wait_for_idle(args.wait_idle)
        full = timed(run_to_end, config, work / "full", env)
        print(f"full run:              {described(full)}")
        print("  " + "; ".join(f"{k} {v}" for k, v in phases(work / "full.log", full.wall).items()))
        wait_for_idle(args.wait_idle)
        idle = timed(run_to_end, config, work / "full", env)
        print(f"nothing to do:         {described(idle)}, {idle.wall / full.wall:.1%} of the full run")
        for point, pattern in KILL_POINTS.items():
            out = work / point
            killed = timed(run_and_kill, config, out, env, pattern.format(stage=stage_dir))
            wait_for_idle(args.wait_idle)
            resumed = timed(run_to_end, config, out, env)
            ratio = resumed.wall / full.wall
            verdict = "met" if ratio < TARGET else "NOT met"
            print(f"killed {point + ':':9s}      after {killed.wall:.1f} s")
            print(f"  resumed:             {described(resumed)}")
            print(f"  resumed / full:      {ratio:.1%} (target under {TARGET:.0%}: {verdict})")
            print("  " + "; ".join(f"{k} {v}" for k, v in phases(out.parent / f"{out.name}.log", resumed.wall).items()))
            if fingerprint(out) != fingerprint(work / "full"):
                sys.exit("the resumed run published another version than the full run")
        print("every resumed run published the full run's version (same fingerprint)")


if __name__ == "__main__":
    main()
