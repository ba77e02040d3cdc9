"""``python -m pipeline run``: curate the configured datasets into versioned Parquet.

``versions``, ``show`` and ``diff`` read published versions back (see
``pipeline.inspect``): what each version kept, why rows left, what changed between two.

The command runs the Prefect ``curate`` flow in-process with nothing to set up: unless
the user points ``PREFECT_API_URL`` at a server, Prefect starts a temporary one whose
home (database, logs) lives in ``<output>/.prefect``, out of the user's way. Input and
config problems end in one ``error:`` line and exit status 2; nothing is published.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # the commands import these lazily, to keep ``--help`` fast
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from pipeline.inspect import DiffResult, VersionSummary

EXIT_USAGE = 2
VERSION_HELP = "DATASET/vNNNN, DATASET (its latest version), or the path of a version folder"
LIST_IDS = 10
"""Row ids a diff table lists per kind of change; --json lists all."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="curate datasets into a new version", description="Curate datasets into a new version.")
    _add_config_arguments(run)
    run.add_argument("--output", metavar="DIR", help="store root (default: out)")
    run.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    run.add_argument("-v", "--verbose", action="store_true", help="also show Prefect's own logs")
    run.add_argument(
        "--executor", choices=["local", "dask"],
        help="where the per-shard work runs: local (this process; the default) or dask",
    )
    cluster = run.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, metavar="N", help="dask: start a local cluster of N worker processes")
    cluster.add_argument("--address", metavar="tcp://HOST:PORT", help="dask: use the running scheduler at this address")
    cal = sub.add_parser(
        "dedup-calibrate",
        help="measure the near-dedup banding's recall and cost on a sample",
        description="Measure the near-dedup banding's recall and cost on a sample of each dataset.",
    )
    _add_config_arguments(cal)
    cal.add_argument("--sample", type=int, default=50_000, metavar="N", help="rows per dataset (default 50,000)")
    cal.add_argument("--target-recall", type=float, default=0.99, help="recall a recommendation must reach")
    _add_inspect_commands(sub)
    _add_deploy_command(sub)
    _add_train_command(sub)
    return parser


def _add_inspect_commands(sub: Any) -> None:
    versions = sub.add_parser(
        "versions", help="list published versions and what changed in each",
        description="List the published versions of each dataset and what changed from the one before.",
    )
    versions.add_argument("dataset", nargs="?", help="only this dataset")
    show = sub.add_parser(
        "show", help="rows a version removed or rewrote, with stage, reason and detail",
        description="List the rows a version removed (reports/removed.parquet) or rewrote (reason 'changed').",
    )
    show.add_argument("version", metavar="VERSION", help=VERSION_HELP)
    show.add_argument("--stage", help="only rows of this stage")
    show.add_argument("--reason", help="only this reason, or a family of them: language matches language:de")
    show.add_argument("--limit", type=int, default=20, metavar="N", help="rows to list (default 20; 0 lists all)")
    diff = sub.add_parser(
        "diff", help="rows added, removed and changed between two versions; config and stage counts",
        description="Compare two versions: rows added, removed and changed by row_id, config and per-stage counts.",
    )
    diff.add_argument("version_a", metavar="VERSION_A", help=VERSION_HELP)
    diff.add_argument("version_b", metavar="VERSION_B", help=VERSION_HELP)
    for parser in (versions, show, diff):
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    report = sub.add_parser(
        "report", help="a version's report.html: print its path, or open it",
        description="Print the path of a version's report.html (building it for versions published without one); "
        "--open shows it in the browser.",
    )
    report.add_argument("version", metavar="VERSION", help=VERSION_HELP)
    report.add_argument("--open", action="store_true", help="open the report in the default browser")
    report.add_argument("--rebuild", action="store_true", help="build the report again from the version's files")
    review = sub.add_parser(
        "review", help="hand the worst label issues to a person and apply their decisions",
        description="Export the worst label issues of a version for a person to decide; import the decisions "
        "so that the next run applies them.",
    )
    steps = review.add_subparsers(dest="review_command", required=True)
    export = steps.add_parser(
        "export", help="write the top label issues to a CSV or JSONL to edit",
        description="Write the worst label issues of VERSION to a file. Fill in the decision column with keep, "
        "drop or relabel (relabel uses the label column), then run `review import`.",
    )
    export.add_argument("version", metavar="VERSION", help=VERSION_HELP)
    export.add_argument("--top", type=int, default=100, metavar="N", help="rows to export (default 100; 0: all)")
    export.add_argument("--all", action="store_true", help="rank every row, not only those flagged as issues")
    export.add_argument("--out", metavar="FILE", help="a .csv or .jsonl (default: review-DATASET-VERSION.csv)")
    imp = steps.add_parser(
        "import", help="apply an edited review file at the next run",
        description="Check an edited review file and merge its decisions into the store; the next run applies them.",
    )
    imp.add_argument("file", metavar="FILE", help="the edited .csv or .jsonl")
    for parser in (versions, show, diff, report, export, imp):
        parser.add_argument("--output", metavar="DIR", help="store root (default: the output of ./pipeline.yaml)")


def _add_deploy_command(sub: Any) -> None:
    deploy = sub.add_parser(
        "deploy", help="serve the curate flow on a schedule from this process (single box)",
        description="Serve the curate-datasets flow on a schedule until Ctrl-C: the single-box alternative to "
        "prefect.yaml and a work pool. Needs a Prefect server (PREFECT_API_URL); runs start from this folder.",
    )
    _add_config_arguments(deploy)
    deploy.add_argument("--output", metavar="DIR", help="store root (default: the config's output)")
    when = deploy.add_mutually_exclusive_group()
    when.add_argument("--cron", metavar="EXPR", help="cron schedule, e.g. '0 3 * * *' (03:00 every day)")
    when.add_argument("--interval", type=float, metavar="SECONDS", help="a run every SECONDS")
    deploy.add_argument(
        "--timezone", default="UTC", metavar="TZ",
        help="time zone of the schedule, an IANA name such as Europe/Berlin (default: UTC)",
    )
    deploy.add_argument("--name", default="local", help="deployment name (default: local)")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: ./pipeline.yaml when present)")
    parser.add_argument("--input", metavar="PATH", nargs="+", action="extend", help="input files, folders or globs")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
        help="override a config key, e.g. stages.language.allowed=[en,de] or stages.quality.enabled=false",
    )


def _prepare_prefect(output: str, verbose: bool) -> None:
    """Hermetic Prefect defaults; must run before ``prefect`` is imported."""
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(Path(output).resolve() / ".prefect"))
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes no parents
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


class _HideInputErrors(logging.Filter):
    """Drop Prefect's log records about a ``PipelineError``.

    Such an error is the user's input or config, and the CLI reports it in one line;
    Prefect would also log it, with a traceback, once per task and once per flow.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, PipelineError) and "PipelineError" not in record.getMessage()


def _hide_input_errors_in_prefect_logs() -> None:
    names = [n for n in logging.root.manager.loggerDict if n.startswith("prefect")]
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in names)]:
        for handler in logger.handlers:
            if not any(isinstance(f, _HideInputErrors) for f in handler.filters):
                handler.addFilter(_HideInputErrors())


@contextmanager
def _prefect_logs_on(console: Console, enabled: bool) -> Iterator[None]:
    """Print Prefect's console log records through ``console`` for the duration.

    Prefect's handler has a console of its own on the real stderr; while progress
    bars are shown, its lines would land in the middle of them (``rich`` keeps a live
    display intact only for what prints through the display's console). ``console``
    must not read markup, as Prefect's does not.
    """
    if not enabled:
        yield
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    names = [n for n in logging.root.manager.loggerDict if n.startswith("prefect")]
    own = {
        handler: handler.console
        for logger in [logging.getLogger(), *(logging.getLogger(n) for n in names)]
        for handler in logger.handlers
        if isinstance(handler, PrefectConsoleHandler)
    }
    for handler in own:
        handler.console = console
    try:
        yield
    finally:
        for handler, previous in own.items():
            handler.console = previous


def _print_result(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    from pipeline.card import format_reasons

    if result["status"] == "unchanged":
        console.print(
            f"[bold]{result['dataset']}[/]: inputs and config match [bold]{result['version']}[/]; "
            f"nothing new published ({result['path']})"
        )
        return
    table = Table(title=f"{result['dataset']} {result['version']}", title_justify="left")
    for column in ("stage", "rows in", "rows out", "changed", "top reasons"):
        table.add_column(column, justify="right" if column.startswith(("rows", "changed")) else "left")
    for s in result["stages"]:
        if not s["enabled"]:
            table.add_row(s["stage"], "off", "", "", "")
            continue
        reasons = format_reasons(s["reasons"])
        table.add_row(s["stage"], f"{s['rows_in']:,}", f"{s['rows_out']:,}", f"{s['rows_changed']:,}", reasons)
    console.print(table)
    added = "".join(f", {n:,} {origin} rows added" for origin, n in result.get("added_rows", {}).items())
    console.print(
        f"published [bold]{result['path']}[/]: {result['kept_rows']:,} rows kept, {result['removed_rows']:,} removed"
        f"{added} (reasons in reports/removed.parquet)"
    )
    if "finetune" in result:
        trained = result["finetune"]
        test = ", ".join(f"{k} {v:.4f}" for k, v in trained["test"].items())
        console.print(f"trained on it ([bold]finetune[/] in the config): test {test}; run folder {trained['path']}")


def _executor_overrides(args: argparse.Namespace) -> list[str]:
    """``--executor``, ``--workers`` and ``--address`` as overrides of the config's
    ``executor`` section, so that one validation covers both. ``--workers`` replaces a
    configured address and ``--address`` a worker count; ``--executor local`` drops both."""
    values: dict[str, Any] = {}
    if args.executor is not None:
        values["kind"] = args.executor
    if args.executor == "local":
        values.update(workers=None, address=None)
    if args.workers is not None:
        values.update(workers=args.workers, address=None)
    if args.address is not None:
        values.update(address=args.address, workers=None)
    return [f"executor.{key}={json.dumps(value)}" for key, value in values.items()]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.config import load_config
    from pipeline.readers import Reader

    console = Console()
    # Log records and progress bars share one console, so that records print above the
    # bars; the result tables go to stdout once a dataset's bars are gone.
    status = Console(stderr=True, markup=False)
    overrides = [*args.overrides, *_executor_overrides(args)]
    config = load_config(args.config, inputs=args.input, output=args.output, overrides=overrides)
    for dataset in config.datasets:
        # Fail fast on missing files, unreadable headers and unmapped columns,
        # before a Prefect server is started.
        Reader(dataset, config.shard_rows)
    if config.finetune.enabled:
        from pipeline.train import require_packages

        require_packages()
    _prepare_prefect(config.output, args.verbose)
    if not args.verbose:  # a local Dask cluster logs every connection at INFO; read before dask is imported
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logger = logging.getLogger("pipeline")
    logger.setLevel(logging.INFO)
    # Not up to the root logger, whose Prefect console handler would print the lines
    # even with --quiet; Prefect adds its API handler to this logger itself (an extra
    # logger), so the lines still reach the run's logs in a UI.
    logger.propagate = False
    from rich.logging import RichHandler

    shown = RichHandler(console=status, show_path=False, show_time=False)
    shown.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logger.addHandler(shown)

    if config.executor.kind == "dask":
        # A scaled-out run is a long one, to watch and look back at in a UI; Prefect's
        # temporary server has none and goes away with this process.
        _prefect_api("executor dask needs a Prefect server to record the run")

    from flows.curate import curate
    from pipeline import executors, progress

    _hide_input_errors_in_prefect_logs()
    payload = config.model_dump(mode="json")
    quiet = args.quiet or not console.is_terminal
    with executors.executor(config.executor):
        for dataset in config.datasets:
            with progress.display(status, quiet=quiet) as shown, _prefect_logs_on(status, shown):
                result = curate(config=payload, dataset=dataset.name)
            _print_result(console, result)
    return 0


def dedup_calibrate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.calibrate import calibrate
    from pipeline.config import load_config

    config = load_config(args.config, inputs=args.input, overrides=args.overrides)
    console = Console()
    for cal in calibrate(config, sample_rows=args.sample, target_recall=args.target_recall):
        table = Table(
            title=f"{cal.dataset}: {cal.rows:,} rows, {cal.reference_pairs:,} pairs at Jaccard >= {cal.threshold}",
            title_justify="left",
        )
        for column in ("banding", "bands x rows", "candidates", "recall", "precision", "seconds"):
            table.add_column(column, justify="left" if column == "banding" else "right")
        for score in [cal.current, *cal.options]:
            mark = " (recommended)" if score is cal.recommended else ""
            table.add_row(
                score.label + mark, f"{score.bands} x {score.rows}", f"{score.candidates:,}",
                f"{score.recall(cal.reference_pairs):.4f}", f"{score.precision:.4f}", f"{score.seconds:.2f}",
            )
        console.print(table)
        if cal.recommended is None:
            console.print(f"no banding reached recall {args.target_recall}; lower stages.near_dedup.lsh_threshold")
        else:
            r = cal.recommended
            console.print(
                f"recommended: --set stages.near_dedup.bands={r.bands} --set stages.near_dedup.rows={r.rows} "
                f"(recall {r.recall(cal.reference_pairs):.4f}, {r.candidates:,} candidates)"
            )
    return 0


def _store_root(output: str | None) -> Path | None:
    """``--output``, else the output ``run`` would write to from ./pipeline.yaml, else None.

    Without a config file there is no default: guessing ``out`` would inspect whatever
    folder of that name the user happens to stand in.
    """
    if output is not None:
        return Path(output)
    from pipeline.config import DEFAULT_CONFIG_FILE, load_config

    if not Path(DEFAULT_CONFIG_FILE).is_file():
        return None
    return Path(load_config().output)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _cell(value: Any, width: int = 0) -> Text:
    """A table cell as plain text: row content may hold ``[...]`` that rich would read as markup."""
    from rich.text import Text

    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = " ".join(text.split())
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    return Text(text)


def versions(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.inspect import list_versions

    root = _store_root(args.output)
    if root is None:
        raise PipelineError("no store to inspect: pass --output DIR, or run where pipeline.yaml names its output")
    summaries = list_versions(root, args.dataset)
    if args.json:
        _print_json([asdict(s) for s in summaries])
        return 0
    console = Console()
    if not summaries:
        console.print(f"no published versions under {root}")
        return 0
    table = Table(title=f"versions in {root}", title_justify="left", caption="* latest")
    for column in ("dataset", "version", "created", "rows", "config", "from previous"):
        table.add_column(column, no_wrap=column in ("dataset", "version", "config"))
    for s in summaries:
        rows = ", ".join(f"{split} {n:,}" for split, n in s.splits.items())
        version = s.version + ("*" if s.latest else "")
        created = s.created.replace("T", " ")[:16]
        table.add_row(s.dataset, version, created, rows, s.config_hash[:8], _change_from_previous(s))
    console.print(table)
    return 0


def _change_from_previous(summary: VersionSummary) -> str:
    if summary.rows_added is None:
        return "first version"
    config = "config changed" if summary.config_changed else "same config"
    return f"+{summary.rows_added:,} -{summary.rows_removed:,} rows, {config}"


def show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.inspect import resolve_version, show_rows

    from rich.text import Text

    if args.limit < 0:
        raise PipelineError(f"--limit {args.limit}: expected 0 (all) or more")
    ref = resolve_version(args.version, _store_root(args.output))
    result = show_rows(ref, stage=args.stage, reason=args.reason, limit=args.limit)
    if args.json:
        _print_json(asdict(result))
        return 0
    console = Console()
    table = Table(title=f"{result.version} ({result.path})", title_justify="left")
    for column in ("row_id", "stage", "reason", "detail", "content"):
        table.add_column(column, no_wrap=column in ("row_id", "stage", "reason"), overflow="fold")
    for row in result.rows:
        detail = "\n".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["detail"].items())
        content = " | ".join(f"{k}: {v}" for k, v in row["fields"].items())
        table.add_row(_cell(row["row_id"]), row["stage"], row["reason"], Text(detail), _cell(content, 80))
    console.print(table)
    console.print(f"{len(result.rows):,} of {result.total:,} matching rows listed")
    return 0


def diff(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.inspect import diff_versions, resolve_version

    root = _store_root(args.output)
    result = diff_versions(resolve_version(args.version_a, root), resolve_version(args.version_b, root))
    if args.json:
        _print_json(asdict(result))
        return 0
    console = Console()
    before, after = result.kept_rows
    console.print(f"[bold]{result.a}[/] -> [bold]{result.b}[/]: {before:,} -> {after:,} rows kept")
    console.print(_rows_table(result))
    console.print(_config_table(result.config) if result.config else "config: identical")
    console.print(_stages_table(result))
    return 0


def _rows_table(result: DiffResult) -> Table:
    """Counts of added, removed and changed rows, with the first few ids of each."""
    from rich.table import Table

    table = Table(title="rows (by row_id)", title_justify="left")
    table.add_column("")
    table.add_column("rows", justify="right")
    table.add_column(f"first {LIST_IDS} row ids (why the other version lacks them; columns changed)")
    kinds = {
        "added": [m.row_id + (f" ({m.reason})" if m.reason else "") for m in result.added],
        "removed": [m.row_id + (f" ({m.reason})" if m.reason else "") for m in result.removed],
        "changed": [f"{c['row_id']} ({', '.join(c['columns'])})" for c in result.changed],
    }
    for kind, ids in kinds.items():
        more = ", …" if len(ids) > LIST_IDS else ""
        table.add_row(kind, f"{len(ids):,}", _cell(", ".join(ids[:LIST_IDS]) + more))
    return table


def _config_table(changes: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title="config", title_justify="left")
    for column in ("key", "old", "new"):
        table.add_column(column)
    for c in changes:
        old = _cell(c["old"]) if "old" in c else _cell("(absent)")
        new = _cell(c["new"]) if "new" in c else _cell("(absent)")
        table.add_row(c["key"], old, new)
    return table


def _stages_table(result: DiffResult) -> Table:
    from rich.table import Table

    table = Table(title="rows removed per stage", title_justify="left")
    table.add_column("stage")
    for column in (result.a, result.b, "change"):
        table.add_column(column, justify="right")
    for s in result.stages:
        a, b = s["a"], s["b"]
        change = f"{b - a:+,}" if a is not None and b is not None else ""
        table.add_row(s["stage"], "" if a is None else f"{a:,}", "" if b is None else f"{b:,}", change)
    return table


def report(args: argparse.Namespace) -> int:
    from pipeline.inspect import resolve_version
    from pipeline.report import REPORT, build_report

    ref = resolve_version(args.version, _store_root(args.output))
    path = ref.path / REPORT
    if args.rebuild or not path.is_file():
        path = build_report(ref.path)
    print(path)
    if args.open:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    return 0


def review(args: argparse.Namespace) -> int:
    from pipeline.inspect import resolve_version
    from pipeline.review import export_issues, import_decisions

    root = _store_root(args.output)
    if args.review_command == "export":
        if args.top < 0:
            raise PipelineError(f"--top {args.top}: expected 0 (all) or more")
        ref = resolve_version(args.version, root)
        out = Path(args.out or f"review-{ref.dataset}-{ref.version}.csv")
        n = export_issues(ref, out, args.top, everything=args.all)
        print(f"wrote {n} rows of {ref.label} to {out}: fill in 'decision' (keep, drop or relabel; relabel "
              f"takes 'label'), then run: python -m pipeline review import {out}")
        return 0
    if root is None:
        raise PipelineError("pass --output DIR (the store the export came from), or run where pipeline.yaml is")
    done = import_decisions(Path(args.file), root)
    made = ", ".join(f"{n} {d}" for d, n in done.counts.items() if n) or "none"
    print(f"imported decisions: {made} ({done.blank} rows left blank); {done.total} decisions in {done.path}; "
          "the next `python -m pipeline run` applies them")
    return 0


def _schedule(args: argparse.Namespace) -> Any:
    """The Prefect schedule ``--cron``/``--interval``/``--timezone`` ask for, or None."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.schedules import Cron, Interval

    try:
        ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise PipelineError(
            f"--timezone {args.timezone!r}: unknown time zone; use an IANA name such as Europe/Berlin or UTC"
        ) from None
    if args.cron is not None:
        try:
            return Cron(args.cron, timezone=args.timezone)
        except ValueError:
            raise PipelineError(
                f"--cron {args.cron!r}: not a cron expression (minute hour day month weekday)"
            ) from None
    if args.interval is not None:
        if args.interval <= 0:
            raise PipelineError(f"--interval {args.interval:g}: expected a number of seconds above 0")
        return Interval(args.interval, timezone=args.timezone)
    return None


def _prefect_api(needs: str) -> str:
    """The configured Prefect API URL, once it answers; else an error that starts with
    ``needs`` (what needs a server, and why) and says how to start one."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise PipelineError(
            f"{needs}: start one with `prefect server start`, then export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    try:
        httpx.get(f"{api.rstrip('/')}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise PipelineError(
            f"no Prefect server answers at PREFECT_API_URL={api} ({exc}): start one with `prefect server start`"
        ) from None
    return api


def deploy(args: argparse.Namespace) -> int:
    """Serve ``curate-datasets`` from this process until Ctrl-C.

    The config is checked now, so that a typo fails here rather than at the first
    scheduled run; the inputs are not, as a scheduled job's data may arrive later.
    Paths go to the deployment absolute, and each run reads the config file afresh.
    """
    from pipeline.config import DEFAULT_CONFIG_FILE, load_config

    config_file = args.config
    if config_file is None and Path(DEFAULT_CONFIG_FILE).is_file() and not args.input:
        config_file = DEFAULT_CONFIG_FILE  # what load_config reads by default
    load_config(config_file, inputs=args.input, output=args.output, overrides=args.overrides)
    # Before Prefect is imported; the runs, child processes, inherit them.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    schedule = _schedule(args)
    # A served schedule lives on a server; Prefect's temporary one would go away with this process.
    api = _prefect_api("deploy needs a Prefect server to hold the schedule")
    from flows.scheduled import curate_datasets

    parameters = {
        "config": os.path.abspath(config_file) if config_file else None,
        "inputs": [os.path.abspath(p) for p in args.input] if args.input else None,
        "output": os.path.abspath(args.output) if args.output else None,
        "overrides": args.overrides,
    }
    if args.cron is not None:
        when = f"cron {args.cron!r} ({args.timezone})"
    elif args.interval is not None:
        when = f"every {args.interval:g} s"
    else:
        when = "no schedule, runs start when triggered"
    print(f"serving curate-datasets/{args.name} on {api}: {when}; Ctrl-C stops it", file=sys.stderr)
    curate_datasets.serve(name=args.name, schedule=schedule, parameters=parameters)  # returns on Ctrl-C
    print(f"stopped: curate-datasets/{args.name} is paused until deploy runs again", file=sys.stderr)
    return 0


def _add_train_command(sub: Any) -> None:
    train = sub.add_parser(
        "train", help="fine-tune a model on a published version (LoRA by default)",
        description="Fine-tune a model on a published version, by its kind: classification (an encoder and a head) or "
        "instruction tuning (a causal LM, loss on the replies only). Writes a run folder with the adapter, tokenizer, "
        "metrics.json, the resolved config and the version trained on.",
    )
    train.add_argument(
        "version", nargs="?", metavar="VERSION",
        help=f"{VERSION_HELP} (default: the latest version of the store's classification dataset, else of another "
        "trainable one)",
    )
    train.add_argument("--output", metavar="DIR", help="store root (default: the output of ./pipeline.yaml)")
    train.add_argument("--runs", metavar="DIR", help="where run folders go (default: runs/ in the store root)")
    train.add_argument("--model", help="a local model folder, a .gguf file or a hub id (default: the task's offline model)")
    train.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    train.add_argument("--epochs", type=int, metavar="N", help="at most N epochs; early stopping may end sooner (default 3)")
    train.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
        help="override a training key, e.g. learning_rate=5e-4, batch_size=32, target_modules=query,value or "
        "class_weights=true (all keys: README, Fine-tuning)",
    )
    train.add_argument(
        "--dry-run", action="store_true",
        help="verify the version, load the model, print parameter counts, tokens per epoch and a memory estimate; "
        "train nothing",
    )
    train.add_argument("-q", "--quiet", action="store_true", help="print only the result")


def train(args: argparse.Namespace) -> int:
    from pipeline.train import require_packages

    require_packages()
    from pipeline.train import Progress, TrainConfig, find_version, format_plan, format_summary, plan, prepare
    from pipeline.train import train as train_version
    from pipeline.train.models import quiet_libraries

    quiet_libraries()
    path = find_version(args.version, _store_root(args.output))
    flags = [f"model={args.model}"] if args.model else []
    flags += ["method=full"] if args.full else []
    flags += [f"epochs={args.epochs}"] if args.epochs is not None else []
    config = TrainConfig().with_overrides([*args.overrides, *flags])
    progress = Progress.for_terminal(quiet=args.quiet)
    if args.dry_run:
        print(format_plan(plan(prepare(path, config, progress))))
        return 0
    result = train_version(path, config, runs_dir=Path(args.runs) if args.runs else None, progress=progress)
    print(format_summary(result))
    return 0


COMMANDS = {
    "run": run, "dedup-calibrate": dedup_calibrate, "versions": versions, "show": show, "diff": diff, "report": report,
    "review": review, "deploy": deploy, "train": train,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: nothing was published; re-run to resume", file=sys.stderr)
        return 130
