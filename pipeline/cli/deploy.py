"""``deploy``: serve the ``curate-datasets`` flow on a schedule from this process (single box)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.cli.common import add_config_arguments


def add_parsers(sub: Any) -> None:
    deploy = sub.add_parser(
        "deploy", help="serve the curate flow on a schedule from this process (single box)",
        description="Serve the curate-datasets flow on a schedule until Ctrl-C: the single-box alternative to "
        "prefect.yaml and a work pool. Needs a Prefect server (PREFECT_API_URL); runs start from this folder.",
    )
    add_config_arguments(deploy)
    deploy.add_argument("--output", metavar="DIR", help="store root (default: the config's output)")
    when = deploy.add_mutually_exclusive_group()
    when.add_argument("--cron", metavar="EXPR", help="cron schedule, e.g. '0 3 * * *' (03:00 every day)")
    when.add_argument("--interval", type=float, metavar="SECONDS", help="a run every SECONDS")
    deploy.add_argument(
        "--timezone", default="UTC", metavar="TZ",
        help="time zone of the schedule, an IANA name such as Europe/Berlin (default: UTC)",
    )
    deploy.add_argument("--name", default="local", help="deployment name (default: local)")


def deploy(args: argparse.Namespace) -> int:
    """Serve ``curate-datasets`` from this process until Ctrl-C.

    The config is checked now, so that a typo fails here rather than at the first
    scheduled run; the inputs are not, as a scheduled job's data may arrive later.
    Paths go to the deployment absolute, and each run reads the config file afresh.
    """
    from flows.environment import prefect_api, prepare_prefect_for_serving, schedule
    from pipeline.config import DEFAULT_CONFIG_FILE, load_config

    config_file = args.config
    if config_file is None and Path(DEFAULT_CONFIG_FILE).is_file() and not args.input:
        config_file = DEFAULT_CONFIG_FILE  # what load_config reads by default
    load_config(config_file, inputs=args.input, output=args.output, overrides=args.overrides)
    prepare_prefect_for_serving()  # before Prefect is imported
    when_to_run = schedule(args.cron, args.interval, args.timezone)
    # A served schedule lives on a server; Prefect's temporary one would go away with this process.
    api = prefect_api("deploy needs a Prefect server to hold the schedule")
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
    curate_datasets.serve(name=args.name, schedule=when_to_run, parameters=parameters)  # returns on Ctrl-C
    print(f"stopped: curate-datasets/{args.name} is paused until deploy runs again", file=sys.stderr)
    return 0
