"""``run``: curate the configured datasets into a new version, with progress and a table per dataset."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.cli.common import add_config_arguments


def add_parsers(sub: Any) -> None:
    run = sub.add_parser("run", help="curate datasets into a new version", description="Curate datasets into a new version.")
    add_config_arguments(run)
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


def _executor_overrides(args: argparse.Namespace) -> list[str]:
    """``--executor``, ``--workers`` and ``--address`` as overrides of the config's
    ``executor`` section, so that one validation covers both. ``--workers`` replaces a
    configured address and ``--address`` a worker count; ``--executor local`` drops both,
    and ``--executor dask`` a configured thread count."""
    values: dict[str, Any] = {}
    if args.executor is not None:
        values["kind"] = args.executor
    if args.executor == "local":
        values.update(workers=None, address=None)
    if args.executor == "dask":
        values.update(threads=None)
    if args.workers is not None:
        values.update(workers=args.workers, address=None)
    if args.address is not None:
        values.update(address=args.address, workers=None)
    return [f"executor.{key}={json.dumps(value)}" for key, value in values.items()]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from flows.run import check_inputs
    from pipeline.config import load_config
    from pipeline.store import check_writable

    console = Console()
    # Log records and progress bars share one console, so that records print above the
    # bars; the result tables go to stdout once a dataset's bars are gone.
    status = Console(stderr=True, markup=False)
    overrides = [*args.overrides, *_executor_overrides(args)]
    config = load_config(args.config, inputs=args.input, output=args.output, overrides=overrides)
    # Fail fast on an output folder that cannot be written, missing files, unreadable
    # headers and unmapped columns, before a Prefect server is started.
    check_writable(Path(config.output), "--output" if args.output is not None else "output")
    check_inputs(config)
    if config.finetune.enabled:
        from pipeline.train import require_packages

        require_packages()
    from flows.environment import prefect_api, prepare_prefect, start_temporary_server

    prepare_prefect(config.output, args.verbose)
    if config.executor.kind == "dask":
        # A scaled-out run is a long one, to watch and look back at in a UI; Prefect's
        # temporary server has none and goes away with this process.
        prefect_api("executor dask needs a Prefect server to record the run")
    # It boots while the rest is imported; None with a server of the user's.
    server = start_temporary_server()
    # On a new install, the dedup kernels compile meanwhile (pipeline/warmup.py).
    from pipeline import warmup

    warmup.start()
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

    from flows.environment import hide_input_errors_in_prefect_logs, prefect_logs_on
    from flows.run import run_datasets
    from pipeline import progress

    hide_input_errors_in_prefect_logs()
    quiet = args.quiet or not console.is_terminal
    if server is not None:
        server.wait(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))

    @contextmanager
    def displayed(dataset: str) -> Iterator[None]:
        with progress.display(status, quiet=quiet) as bars, prefect_logs_on(status, bars):
            yield

    run_datasets(config, around=displayed, on_result=lambda result: _print_result(console, result))
    return 0


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
