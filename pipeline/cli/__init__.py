"""``python -m pipeline run``: curate the configured datasets into versioned Parquet.

``versions``, ``show`` and ``diff`` read published versions back (see
``pipeline.inspect``): what each version kept, why rows left, what changed between two.

The command runs the Prefect ``curate`` flow in-process with nothing to set up: unless
the user points ``PREFECT_API_URL`` at a server, it starts a temporary one whose
home (database, logs) lives in ``<output>/.prefect``, out of the user's way. Input and
config problems end in one ``error:`` line and exit status 2; nothing is published.

One module per command family, each with its sub-parser and its command: ``run``,
``calibrate`` (dedup-calibrate), ``inspect`` (versions, show, diff, report), ``export``,
``review``, ``deploy`` and ``train``; ``common`` holds what several share. Prefect's settings,
logging and server checks are ``flows.environment``'s. The modules import anything
heavy (prefect, rich, pandas, the pipeline's own modules) inside the commands, to
keep ``--help`` fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.cli import calibrate, deploy, export, inspect, review, run, train
from pipeline.errors import PipelineError

EXIT_USAGE = 2

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run.run, "dedup-calibrate": calibrate.dedup_calibrate, "versions": inspect.versions, "show": inspect.show,
    "diff": inspect.diff, "report": inspect.report, "export": export.export, "review": review.review,
    "deploy": deploy.deploy, "train": train.train,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for family in (run, calibrate, inspect, export, review, deploy, train):  # the order of --help
        family.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a full disk outside a run's flow (which says it itself): one line too
        from pipeline.files import disk_full  # pyarrow: not imported for --help

        if not disk_full(exc):
            raise
        print(f"error: disk full: {exc}; free some space, then run again", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: nothing was published; re-run to resume", file=sys.stderr)
        return 130
