"""``python -m pipeline run``: curate the configured datasets into versioned Parquet.

The command runs the Prefect ``curate`` flow in-process with nothing to set up: unless
the user points ``PREFECT_API_URL`` at a server, Prefect starts a temporary one whose
home (database, logs) lives in ``<output>/.prefect``, out of the user's way. Input and
config problems end in one ``error:`` line and exit status 2; nothing is published.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="curate datasets into a new version", description="Curate datasets into a new version.")
    _add_config_arguments(run)
    run.add_argument("--output", metavar="DIR", help="store root (default: out)")
    run.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    run.add_argument("-v", "--verbose", action="store_true", help="also show Prefect's own logs")
    cal = sub.add_parser(
        "dedup-calibrate",
        help="measure the near-dedup banding's recall and cost on a sample",
        description="Measure the near-dedup banding's recall and cost on a sample of each dataset.",
    )
    _add_config_arguments(cal)
    cal.add_argument("--sample", type=int, default=50_000, metavar="N", help="rows per dataset (default 50,000)")
    cal.add_argument("--target-recall", type=float, default=0.99, help="recall a recommendation must reach")
    return parser


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
    removed = result["input_rows"] - result["kept_rows"]
    console.print(
        f"published [bold]{result['path']}[/]: {result['kept_rows']:,} rows kept, {removed:,} removed "
        f"(reasons in reports/removed.parquet)"
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.config import load_config
    from pipeline.readers import Reader

    console = Console()
    config = load_config(args.config, inputs=args.input, output=args.output, overrides=args.overrides)
    for dataset in config.datasets:
        # Fail fast on missing files, unreadable headers and unmapped columns,
        # before a Prefect server is started.
        Reader(dataset, config.shard_rows)
    _prepare_prefect(config.output, args.verbose)
    logger = logging.getLogger("pipeline")
    logger.setLevel(logging.INFO)
    if not args.quiet:
        from rich.logging import RichHandler

        logger.addHandler(RichHandler(console=Console(stderr=True), show_path=False, show_time=False))
        logger.propagate = False

    from flows.curate import curate

    _hide_input_errors_in_prefect_logs()
    payload = config.model_dump(mode="json")
    for dataset in config.datasets:
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


COMMANDS = {"run": run, "dedup-calibrate": dedup_calibrate}


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
