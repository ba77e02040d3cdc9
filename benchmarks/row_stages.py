"""Throughput of the stages, one by one and chained, on the real-text corpus.

    python benchmarks/row_stages.py                      # 100,000 docs, shards of 50,000
    python benchmarks/row_stages.py --docs 200000 --skip-langdetect

The corpus (``benchmarks/corpus.py``) becomes the canonical table of a plain text
dataset (``row_id`` = ``doc_id``, ``text``, ``changed_by`` = ""), cut into shards of
``--shard-rows``. Then:

1. Each stage of the registry (``stage_names()``) but ``near_dedup`` (it has its own benchmark,
   ``benchmarks/dedup.py``) is timed on its own, in this process, over all
   shards, each stage fed the previous stage's kept rows as in the real chain. Global
   stages (``missing``, ``exact_dedup``) count ``summarize`` over all shards +
   ``decide`` + ``apply`` over all shards. Each stage first runs once on a few hundred
   rows, untimed, so one-off loads (ftfy tables, language models) are not counted.
2. Language ID is timed per backend on the rows the ``language`` stage would see, but
   not applied to what follows (the throughput target excludes it). ``langdetect`` is
   slow, so it is timed on ``--langdetect-docs`` rows and its docs/s extrapolated.
3. The whole chain without language ID is timed end to end, in one process and in
   ``--processes`` worker processes (default 2, one per core) that each own a share of
   the shards, as the pipeline runs shards in parallel. Global stages are barriers:
   workers return their summaries, the parent decides, workers apply. Shards stay in
   memory: the Parquet writes between stages and the orchestrator's task overhead of
   the real flow are not counted. Each chain is timed ``--repeat`` times (fastest
   kept), each time after waiting up to ``--wait-idle`` seconds for a quiet machine.

Every timing also records its CPU seconds and how many cores *other* processes kept
busy meanwhile (``/proc/stat``): on a shared machine a low docs/s with a high "busy
elsewhere" is contention, not the pipeline, and the final line then also gives the
rate that the CPU time implies for free cores (an estimate, marked as such).

A stage whose module is missing is reported as such and left out of the chain.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.corpus import CorpusError, load_corpus  # noqa: E402
from benchmarks.machine import BUSY_CORES, add_wait_idle_argument, wait_for_idle  # noqa: E402
from benchmarks.machine import CpuMeter as Meter  # noqa: E402
from pipeline.schema import CHANGED_BY, ROW_ID, DatasetInfo  # noqa: E402
from pipeline.stages.base import Stage, StageOutput  # noqa: E402
from pipeline.stages.registry import stage_class, stage_names  # noqa: E402

BENCHMARKED = tuple(name for name in stage_names() if name != "near_dedup")

INFO = DatasetInfo("text", ("text",))
TARGET_DOCS_PER_S = 10_000
FASTTEXT_TARGET_DOCS_PER_S = 20_000
WARMUP_ROWS = 300
"""Above this many cores used by other processes, a timing is flagged as contended."""
LANGUAGE = "language"

# Piped output would wrap at 80 columns; the table needs about 170.
console = Console(width=None if sys.stdout.isatty() else 170)


@dataclass
class Row:
    """One line of the results table."""

    label: str
    kind: str
    rows_in: int = 0
    rows_out: int = 0
    changed: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    """CPU seconds of this benchmark's processes (parent and workers)."""
    others: float | None = None
    """CPU seconds other processes on the machine used meanwhile (None: unknown)."""
    note: str = ""
    reasons: Counter[str] = field(default_factory=Counter)
    skipped: bool = False

    @property
    def docs_per_s(self) -> float | None:
        if self.skipped or self.seconds <= 0:
            return None
        return self.rows_in / self.seconds

    @property
    def docs_per_cpu_s(self) -> float | None:
        if self.skipped or self.cpu <= 0:
            return None
        return self.rows_in / self.cpu

    @property
    def busy_elsewhere(self) -> float | None:
        """Cores other processes kept busy on average while this row was timed."""
        if self.others is None or self.seconds <= 0:
            return None
        return self.others / self.seconds


# ------------------------------------------------------------------------- helpers


def canonical_table(corpus: pa.Table, docs: int) -> pa.Table:
    corpus = corpus.slice(0, docs)
    return pa.table(
        {
            ROW_ID: corpus.column("doc_id"),
            "text": corpus.column("text"),
            CHANGED_BY: pa.array([""] * corpus.num_rows, pa.string()),
        }
    )


def make_shards(table: pa.Table, shard_rows: int) -> list[pa.Table]:
    return [table.slice(i, shard_rows).combine_chunks() for i in range(0, table.num_rows, shard_rows)]


def make_stage(name: str, **overrides: Any) -> Stage | str:
    """The stage with its default config (plus ``overrides``), or why there is none."""
    try:
        cls = stage_class(name)
        stage = cls(cls.config_model.model_validate(overrides), INFO)
    except Exception as exc:  # module not written yet, class renamed, config changed...
        return f"not available ({type(exc).__name__}: {exc})"
    if not stage.applies():
        return "does not apply to text datasets"
    return stage


def run_stage(stage: Stage, shards: list[pa.Table]) -> tuple[list[StageOutput], Meter]:
    """Run one stage over all shards as the flow does, timed."""
    with Meter() as meter:
        if stage.is_global:
            summaries = [stage.summarize(s) for s in shards]
            state = stage.decide(summaries)
            outputs = [stage.apply(s, state) for s in shards]
        else:
            outputs = [stage.apply(s) for s in shards]
    return outputs, meter


def warm_up(stage: Stage, shards: list[pa.Table]) -> None:
    sample = [s.slice(0, WARMUP_ROWS) for s in shards[:1] if s.num_rows]
    if sample:
        run_stage(stage, sample)


def removal_reasons(outputs: list[StageOutput]) -> Counter[str]:
    reasons: Counter[str] = Counter()
    for out in outputs:
        if out.removed.num_rows:
            for item in pc.value_counts(out.removed.column("reason")).to_pylist():
                reasons[item["values"]] += item["counts"]
    return reasons


def stage_row(name: str, stage: Stage, shards: list[pa.Table], note: str = "") -> tuple[Row, list[pa.Table]]:
    warm_up(stage, shards)
    outputs, meter = run_stage(stage, shards)
    kept = [o.kept for o in outputs]
    row = Row(
        label=name,
        kind="global" if stage.is_global else "row-local",
        rows_in=sum(s.num_rows for s in shards),
        rows_out=sum(t.num_rows for t in kept),
        changed=sum(o.changed for o in outputs),
        seconds=meter.wall,
        cpu=meter.cpu,
        others=meter.others,
        note=note,
        reasons=removal_reasons(outputs),
    )
    return row, kept


# --------------------------------------------------------------------------- chain
# A chain is cut into segments at global stages: a segment applies the previous
# global stage (with its decided state), runs the row-local stages that follow, and
# ends with the next global stage's summarize. Between segments the parent decides.

Step = tuple[str, int]  # ("apply" | "summarize", index into the chain's stages)


def segments_of(stages: list[Stage]) -> list[list[Step]]:
    segments: list[list[Step]] = [[]]
    for i, stage in enumerate(stages):
        if stage.is_global:
            segments[-1].append(("summarize", i))
            segments.append([("apply", i)])
        else:
            segments[-1].append(("apply", i))
    return segments


def run_segment(
    stages: list[Stage], segment: list[Step], table: pa.Table, states: dict[int, pa.Table]
) -> tuple[pa.Table, pa.Table | None]:
    summary = None
    for op, i in segment:
        if op == "summarize":
            summary = stages[i].summarize(table)
        else:
            table = stages[i].apply(table, states.get(i)).kept
    return table, summary


def _chain_worker(conn: Any, rank: int, processes: int, stages: list[Stage], shards: list[pa.Table]) -> None:
    """Owns shards ``rank, rank + processes, ...``; runs the segments it is sent."""
    segments = segments_of(stages)
    mine = {i: shards[i] for i in range(rank, len(shards), processes)}
    while True:
        message = conn.recv()
        if message is None:  # done: rows left and the CPU time this process used
            conn.send((sum(t.num_rows for t in mine.values()), time.process_time()))
            conn.close()
            return
        number, states = message
        summaries = {}
        for i, table in mine.items():
            mine[i], summaries[i] = run_segment(stages, segments[number], table, states)
        conn.send(summaries)


def run_chain(stages: list[Stage], shards: list[pa.Table], processes: int) -> tuple[int, Meter]:
    """Rows out of the whole chain over all shards, and its timing."""
    segments = segments_of(stages)
    states: dict[int, pa.Table] = {}
    if processes == 1:
        with Meter() as meter:
            tables = list(shards)
            for segment in segments:
                summaries = []
                for i, table in enumerate(tables):
                    tables[i], summary = run_segment(stages, segment, table, states)
                    summaries.append(summary)
                if segment[-1][0] == "summarize":
                    g = segment[-1][1]
                    states = {g: stages[g].decide(summaries)}
        return sum(t.num_rows for t in tables), meter

    ctx = mp.get_context("fork")  # workers inherit the shards and stages, nothing pickled
    pipes, procs = [], []
    rows_out = 0
    try:
        with Meter() as meter:
            for rank in range(processes):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_chain_worker, args=(child, rank, processes, stages, shards), daemon=True)
                proc.start()
                child.close()
                pipes.append(parent)
                procs.append(proc)
            for number, segment in enumerate(segments):
                for pipe in pipes:
                    pipe.send((number, states))
                summaries: dict[int, pa.Table] = {}
                for pipe in pipes:
                    summaries.update(pipe.recv())
                if segment[-1][0] == "summarize":
                    g = segment[-1][1]
                    states = {g: stages[g].decide([summaries[i] for i in sorted(summaries)])}
            for pipe in pipes:
                pipe.send(None)
                rows, cpu = pipe.recv()
                rows_out += rows
                meter.add_cpu(cpu)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    return rows_out, meter


# ---------------------------------------------------------------------------- main


def fmt_int(n: int) -> str:
    return f"{n:,}"


def render(rows: list[Row], title: str) -> tuple[Table, list[str]]:
    """The results table and its numbered notes."""
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("kind")
    table.add_column("rows in", justify="right")
    table.add_column("rows out", justify="right")
    table.add_column("changed", justify="right")
    table.add_column("wall s", justify="right")
    table.add_column("docs/s", justify="right")
    table.add_column("CPU s", justify="right")
    table.add_column("docs/CPU-s", justify="right")
    table.add_column("busy\nelsewhere", justify="right")
    table.add_column("top removal reasons", overflow="fold", max_width=44)
    notes: list[str] = []

    def label(row: Row) -> str:
        if not row.note:
            return row.label
        notes.append(row.note)
        return f"{row.label} [{len(notes)}]"

    for row in rows:
        if row.label == "---":
            table.add_section()
            continue
        if row.skipped:
            table.add_row(label(row), row.kind, "", "", "", "", "-", "", "", "", "", style="dim")
            continue
        rate, per_cpu, busy = row.docs_per_s, row.docs_per_cpu_s, row.busy_elsewhere
        top = ", ".join(f"{r.split(':', 1)[-1]} {n:,}" for r, n in row.reasons.most_common(3))
        table.add_row(
            label(row),
            row.kind,
            fmt_int(row.rows_in),
            fmt_int(row.rows_out),
            fmt_int(row.changed) if row.changed else "",
            f"{row.seconds:.2f}",
            f"{rate:,.0f}" if rate is not None else "-",
            f"{row.cpu:.2f}",
            f"{per_cpu:,.0f}" if per_cpu is not None else "-",
            f"{busy:.1f}" if busy is not None else "?",
            top,
        )
    return table, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Docs/s of each stage and of the chain on the real-text corpus.")
    parser.add_argument("--docs", type=int, default=100_000, help="documents to run (default 100,000)")
    parser.add_argument("--shard-rows", type=int, default=50_000, help="rows per shard (default 50,000)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for the parallel chain (default 2)")
    parser.add_argument("--langdetect-docs", type=int, default=5_000, help="docs to time langdetect on (default 5,000)")
    parser.add_argument("--skip-langdetect", action="store_true", help="do not time the langdetect backend")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each chain timing, the fastest kept (default 2)")
    add_wait_idle_argument(parser, 60, "before each chain timing")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    try:
        corpus = load_corpus(min_docs=args.docs)
    except CorpusError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    sources = Counter(corpus.column("source").slice(0, args.docs).to_pylist())
    table = canonical_table(corpus, args.docs)
    del corpus
    shards = make_shards(table, args.shard_rows)
    mb = table.column("text").nbytes / 1e6
    console.print(
        f"corpus: {table.num_rows:,} docs ({mb:.0f} MB of text) in {len(shards)} shards of <= {args.shard_rows:,} "
        f"rows, loaded in {time.perf_counter() - t0:.1f}s; "
        + ", ".join(f"{s} {n:,}" for s, n in sources.most_common(6))
        + (f", {len(sources) - 6} more sources" if len(sources) > 6 else "")
    )
    console.print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
        f"pyarrow {pa.__version__} ({pa.cpu_count()} threads)",
        highlight=False,
    )

    rows: list[Row] = []
    chain: list[Stage] = []
    unavailable: list[str] = []
    current = shards
    fasttext_stage: Stage | None = None
    language_at = 0
    for name in BENCHMARKED:
        if name == LANGUAGE:
            language_at = len(chain)
            for backend in ("fasttext", "langdetect"):
                label = f"language ({backend})"
                stage = make_stage(LANGUAGE, backend=backend)
                if isinstance(stage, str):
                    rows.append(Row(label, "-", note=f"skipped: {stage}", skipped=True))
                    unavailable.append(LANGUAGE)
                    continue
                if backend == "langdetect" and args.skip_langdetect:
                    rows.append(Row(label, "row-local", note="skipped (--skip-langdetect)", skipped=True))
                    continue
                subset, note = current, "not applied in the chain"
                if backend == "langdetect":
                    merged = pa.concat_tables(current).combine_chunks()
                    subset = [merged.slice(0, min(args.langdetect_docs, merged.num_rows))]
                    note = f"timed on the first {subset[0].num_rows:,} docs, docs/s extrapolated; " + note
                console.print(f"timing {label} ...")
                try:
                    row, _ = stage_row(label, stage, subset, note)
                except Exception as exc:  # e.g. the fasttext model is not installed
                    rows.append(Row(label, "row-local", note=f"failed: {exc}", skipped=True))
                    continue
                rows.append(row)
                if backend == "fasttext":
                    fasttext_stage = stage
            continue
        stage = make_stage(name)
        if isinstance(stage, str):
            rows.append(Row(name, "-", note=f"skipped: {stage}", skipped=True))
            unavailable.append(name)
            continue
        console.print(f"timing {name} ...")
        try:
            row, current = stage_row(name, stage, current)
        except Exception as exc:  # a stage mid-rewrite: report it, chain the others
            rows.append(Row(name, "-", note=f"failed: {type(exc).__name__}: {exc}", skipped=True))
            unavailable.append(name)
            continue
        rows.append(row)
        chain.append(stage)

    rows.append(Row("---", ""))
    names = " > ".join(s.name for s in chain)
    total = table.num_rows

    def chain_row(label: str, kind: str, stages: list[Stage], processes: int, note: str) -> Row:
        best: Row | None = None
        for attempt in range(args.repeat):
            console.print(f"timing {label}" + (f" ({attempt + 1}/{args.repeat})" if args.repeat > 1 else "") + " ...")
            if args.wait_idle > 0:
                wait_for_idle(args.wait_idle, console.print)
            out, meter = run_chain(stages, shards, processes)
            row = Row(label, kind, total, out, seconds=meter.wall, cpu=meter.cpu, others=meter.others, note=note)
            if best is None or row.seconds < best.seconds:
                best = row
        assert best is not None
        if args.repeat > 1:
            best.note += f" (best of {args.repeat} runs)"
        return best

    single = chain_row("chain, 1 process", "no lang ID", chain, 1, names)
    rows.append(single)
    parallel: Row | None = None
    if args.processes > 1:
        parallel = chain_row(
            f"chain, {args.processes} processes",
            "no lang ID",
            chain,
            args.processes,
            f"the same stages in {args.processes} forked worker processes, each owning a share of the "
            "shards; global stages are barriers (summaries go to the parent, the state comes back)",
        )
        rows.append(parallel)
    fasttext_parallel: Row | None = None
    if fasttext_stage is not None:
        procs = max(args.processes, 1)
        fasttext_parallel = chain_row(
            f"language (fasttext), {procs} proc",
            "lang ID only",
            [fasttext_stage],
            procs,
            f"the language stage alone (fasttext, max_chars {fasttext_stage.config.max_chars}) on the raw "
            f"corpus in {procs} worker processes",
        )
        rows.append(fasttext_parallel)
        rows.append(
            chain_row(
                f"chain + language (fasttext), {procs} proc",
                "with lang ID",
                chain[:language_at] + [fasttext_stage] + chain[language_at:],
                procs,
                f"{names}, with language (fasttext, default config: the languages of the data kept) "
                + (f"after {chain[language_at - 1].name}" if language_at else "first"),
            )
        )

    result, notes = render(rows, f"Stage throughput on {total:,} real documents")
    console.print(result)
    console.print(
        "Stages above the line run one at a time in one process, each on the previous stage's kept rows; "
        "global stages count summarize + decide + apply over all shards; each stage first runs untimed on "
        f"{WARMUP_ROWS} rows. Chains keep shards in memory (no Parquet I/O between stages, no orchestrator). "
        "docs/CPU-s: docs per CPU second of this benchmark's processes; busy elsewhere: cores other "
        "processes kept busy on average meanwhile (from /proc/stat), non-zero means the timing was contended.",
        highlight=False,
    )
    for i, note in enumerate(notes, 1):
        console.print(f"[{i}] {note}", highlight=False, markup=False)

    best = parallel or single
    rate = best.docs_per_s or 0.0
    verdict = "MET" if rate >= TARGET_DOCS_PER_S else "NOT MET"
    if any(name != LANGUAGE for name in unavailable):
        verdict += " (for an incomplete chain)"
    line = (
        f"Chain target (>= {TARGET_DOCS_PER_S:,} docs/s without language ID, {args.processes} processes): "
        f"{verdict} - {rate:,.0f} docs/s ({single.docs_per_s or 0:,.0f} docs/s in 1 process)"
    )
    if unavailable:
        line += f"; not in the chain (missing or failing): {', '.join(dict.fromkeys(unavailable))}"
    busy = best.busy_elsewhere
    if busy is not None and busy > BUSY_CORES and best.docs_per_cpu_s:
        line += (
            f". The machine was shared (other processes kept {busy:.1f} cores busy meanwhile); from CPU "
            f"time, {args.processes} free cores would give about "
            f"{best.docs_per_cpu_s * min(args.processes, os.cpu_count() or 1):,.0f} docs/s (an estimate)"
        )
    console.print(line, style="bold green" if verdict.startswith("MET") else "bold red", highlight=False)
    if fasttext_parallel is not None:
        ft_rate = fasttext_parallel.docs_per_s or 0.0
        ft_verdict = "MET" if ft_rate >= FASTTEXT_TARGET_DOCS_PER_S else "NOT MET"
        console.print(
            f"fastText target (>= {FASTTEXT_TARGET_DOCS_PER_S:,} docs/s, {args.processes} processes): "
            f"{ft_verdict} - {ft_rate:,.0f} docs/s",
            style="bold green" if ft_verdict == "MET" else "bold red",
            highlight=False,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
