"""Scale-out: the curate flow in-process against a local Dask cluster, on 100k+ real documents.

    python benchmarks/scaleout.py                    # 100,000 docs, shards of 50,000, 2 workers
    python benchmarks/scaleout.py --docs 20000       # a quick check that it works

The first ``--docs`` documents of the real-text corpus (``benchmarks/corpus.py``) are
written as one Parquet file and curated by the real ``curate`` flow as a ``text``
dataset: normalize, noise, missing, language, quality, exact_dedup, near_dedup and
split, with default settings except the fastText language backend (langdetect runs at
about 170 docs/s here and would be all there is to see).

Three ways to run the per-shard steps, all against one Prefect server (the one
``PREFECT_API_URL`` names, else one started here on a free loopback port):

* ``1 thread``: in-process with Prefect's thread pool cut to one thread, shards one
  after the other: the serial baseline;
* ``threads``: in-process as ``python -m pipeline run`` does it, Prefect's thread pool
  running every shard at once. Much of the stages' work is in pyarrow's compute
  kernels, numba and fastText, which release the GIL, so threads already use more
  than one core;
* ``dask``: ``--executor dask --workers N``, a local cluster of single-threaded
  processes (its start timed on its own).

For each: a run on ``FIXED_DOCS`` documents, untimed, to warm the processes (imports,
the compiled MinHash kernels, the fastText model), as a long-lived worker would be;
the same again, timed: Prefect's fixed overhead per run (the flow and its ~30 task
runs' bookkeeping, publishing a version of almost nothing); then the full run, after
waiting up to ``--wait-idle`` seconds for a quiet machine. The flow tells
``pipeline.progress`` when each step starts and ends, so each stage's time is that of
its fanned-out steps (``summarize`` and ``apply``: one task per shard, the CPU-bound
work that scale-out spreads); the ``decide`` steps (once, in the flow's process) and
ingest and publish are shown apart.

The speed-up that counts is dask's over the fanned-out steps (target: 1.6x with 2
workers on 2 cores), against the default (``threads``) and against the serial
baseline. All full runs must publish the same version (fingerprint, rows per stage);
the script says so, or fails. Every timing also records the CPU seconds of this
benchmark's processes (the flow's and the workers') and how many cores other
processes (the Prefect server among them) kept busy meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from benchmarks.corpus import CorpusError, load_corpus
from benchmarks.machine import CpuMeter, add_wait_idle_argument, wait_for_idle

console = Console(highlight=False, width=110)

FIXED_DOCS = 100
TARGET_SPEEDUP = 1.6
FANNED_OUT = ("summarize", "apply")
DATASET = "corpus"


def hermetic_prefect(home: Path) -> None:
    """Prefect settings of this process and its workers; before ``prefect`` is imported."""
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


def write_input(folder: Path, docs: int) -> Path:
    corpus = load_corpus(min_docs=docs).slice(0, docs)
    path = folder / f"corpus-{docs}.parquet"
    pq.write_table(corpus.select(["doc_id", "text"]), path)
    return path


def pipeline_config(input_path: Path, output: Path, shard_rows: int) -> dict[str, Any]:
    from pipeline.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "datasets": [{"name": DATASET, "inputs": [str(input_path)], "columns": {"id": "doc_id", "text": "text"}}],
            "output": str(output),
            "shard_rows": shard_rows,
            "stages": {"language": {"backend": "fasttext"}},
        }
    ).model_dump(mode="json")


class StepClock:
    """A ``pipeline.progress`` reporter that records each step's wall time."""

    def __init__(self) -> None:
        self._started: dict[Any, float] = {}
        self.seconds: dict[tuple[str, str], float] = {}

    def started(self, step: Any, total: int | None) -> None:
        self._started[step] = time.perf_counter()

    def advanced(self, step: Any, rows: int) -> None:
        pass

    def finished(self, step: Any) -> None:
        key = (step.stage, step.phase)
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - self._started.pop(step)


@dataclass
class Run:
    wall: float
    cpu: float
    others: float | None
    result: dict[str, Any]
    steps: dict[tuple[str, str], float] = field(default_factory=dict)

    def stage_seconds(self, stage: str, phases: tuple[str, ...]) -> float:
        return sum(s for (name, phase), s in self.steps.items() if name == stage and phase in phases)

    @property
    def fanned_out(self) -> float:
        return sum(s for (_, phase), s in self.steps.items() if phase in FANNED_OUT)

    @property
    def busy_elsewhere(self) -> float | None:
        return None if self.others is None else self.others / self.wall


def worker_cpu(client: Any) -> float:
    """CPU seconds the Dask workers of ``client`` have used so far (0 with none)."""
    return 0.0 if client is None else sum(client.run(time.process_time).values())


def timed_run(flow: Any, config: dict[str, Any], client: Any) -> Run:
    from pipeline import progress

    clock = StepClock()
    cpu_before = worker_cpu(client)
    with CpuMeter() as meter, progress.install(clock):
        result = flow(config=config, dataset=DATASET)
        meter.add_cpu(worker_cpu(client) - cpu_before)
    if result["status"] != "published":
        raise RuntimeError(f"expected a new version, got {result}")
    return Run(meter.wall, meter.cpu, meter.others, result, clock.seconds)


@dataclass
class Measured:
    label: str
    fixed: Run
    """The warm run on ``FIXED_DOCS`` documents."""
    full: Run
    startup: float
    """Seconds the executor took to start (a local cluster's processes)."""


def measure(
    label: str, executor: Any, threads: int | None, inputs: tuple[Path, Path], work: Path, args: argparse.Namespace
) -> Measured:
    """The fixed-overhead run and the full run on ``executor``, with Prefect's thread
    pool cut to ``threads`` (None: its default)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.curate import curate
    from pipeline import executors

    flow = curate.with_options(task_runner=ThreadPoolTaskRunner(max_workers=threads)) if threads else curate
    out = work / label.replace(" ", "-")
    tiny, full = inputs
    started = time.perf_counter()
    with executors.executor(executor) as client:
        startup = time.perf_counter() - started
        console.print(f"{label}: warming up on {FIXED_DOCS} docs ...")
        timed_run(flow, pipeline_config(tiny, out / "warm-up", args.shard_rows), client)
        fixed = timed_run(flow, pipeline_config(tiny, out / "fixed", args.shard_rows), client)
        if args.wait_idle > 0:
            wait_for_idle(args.wait_idle, console.print)
        console.print(f"{label}: curating {args.docs:,} docs ...")
        run = timed_run(flow, pipeline_config(full, out / "full", args.shard_rows), client)
    return Measured(label, fixed, run, startup)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def report(serial: Run, threads: Run, dask: Run, workers: int) -> Table:
    runs = (serial, threads, dask)
    table = Table(title="curate flow, wall seconds", title_justify="left")
    for column in ("", "1 thread", "threads", f"dask, {workers} workers", "dask vs threads", "dask vs 1 thread"):
        table.add_column(column, justify="right" if column else "left")

    def row(label: str, seconds: list[float], **style: Any) -> None:
        cells = [f"{x:.2f}" for x in seconds] + [ratio(seconds[1], seconds[2]), ratio(seconds[0], seconds[2])]
        table.add_row(label, *cells, **style)

    for stage in dict.fromkeys(name for name, _ in serial.steps):
        row(stage, [r.stage_seconds(stage, FANNED_OUT) for r in runs])
    row("fanned-out steps", [r.fanned_out for r in runs], style="bold")
    row("decide steps", [sum(s for (_, p), s in r.steps.items() if p == "decide") for r in runs])
    row("ingest + publish", [r.wall - sum(r.steps.values()) for r in runs])
    row("whole run", [r.wall for r in runs], style="bold")
    return table


def published(run: Run) -> dict[str, Any]:
    """What a run's version must share with the other executor's: fingerprint, counts,
    rows out of every stage."""
    from pipeline.store import Store

    manifest = Store(Path(run.result["path"]).parents[1], DATASET).manifest(run.result["version"])
    stages = [(s["stage"], s["rows_out"]) for s in manifest["stages"]]
    return {"fingerprint": manifest["fingerprint"], "counts": manifest["counts"], "stages": stages}


def describe(label: str, run: Run) -> str:
    busy = run.busy_elsewhere
    return f"{label}: {run.wall:.1f} s wall, {run.cpu:.1f} CPU-s" + (
        f", other processes kept {busy:.1f} cores busy" if busy is not None else ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The curate flow in-process vs on a local Dask cluster.")
    parser.add_argument("--docs", type=int, default=100_000, help="documents to curate (default 100,000)")
    parser.add_argument(
        "--shard-rows", type=int, default=50_000, help="rows per shard (default 50,000, the pipeline's default)"
    )
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    add_wait_idle_argument(parser, 30, "before each full run")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="scaleout-"))
    try:
        inputs = (write_input(work, FIXED_DOCS), write_input(work, args.docs))
    except CorpusError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    console.print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.docs:,} docs in shards of "
        f"{args.shard_rows:,} rows; work folder {work}"
    )
    hermetic_prefect(work / "prefect-home")
    with ExitStack() as stack:
        if not os.environ.get("PREFECT_API_URL"):
            from tests.servers import prefect_server

            console.print("starting a Prefect server ...")
            os.environ["PREFECT_API_URL"] = stack.enter_context(prefect_server(work / "prefect-server"))
        from pipeline.executors import ExecutorConfig

        serial = measure("1 thread", ExecutorConfig(), 1, inputs, work, args)
        threads = measure("threads", ExecutorConfig(), None, inputs, work, args)
        dask = measure("dask", ExecutorConfig(kind="dask", workers=args.workers), None, inputs, work, args)

    console.print(report(serial.full, threads.full, dask.full, args.workers))
    for m in (serial, threads, dask):
        console.print(describe(m.label, m.full))
    console.print(
        f"Prefect's fixed overhead per run (the flow on {FIXED_DOCS} docs, warm): "
        + ", ".join(f"{m.label} {m.fixed.wall:.1f} s" for m in (serial, threads, dask))
        + f"; starting the local Dask cluster: {dask.startup:.1f} s"
    )
    version = published(serial.full)
    if any(published(m.full) != version for m in (threads, dask)):
        console.print("[red]the runs published different versions[/]")
        return 1
    console.print(
        f"all runs published the same version: fingerprint {version['fingerprint'][:12]}, "
        f"{version['counts']['kept_rows']:,} rows kept of {version['counts']['input_rows']:,}"
    )
    speedup = threads.full.fanned_out / dask.full.fanned_out
    verdict = "MET" if speedup >= TARGET_SPEEDUP else "NOT MET"
    console.print(
        f"dask speed-up over the fanned-out (CPU-bound) steps: {speedup:.2f}x against the default thread pool "
        f"(target {TARGET_SPEEDUP}x: {verdict}), {ratio(serial.full.fanned_out, dask.full.fanned_out)} against one "
        f"thread; whole run {ratio(threads.full.wall, dask.full.wall)} and "
        f"{ratio(serial.full.wall, dask.full.wall)}",
        style="bold green" if verdict == "MET" else "bold red",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
