"""``review export`` and ``review import``: a person decides on the worst label issues; the next run applies them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.cli.common import VERSION_HELP, add_store_argument, store_root
from pipeline.errors import PipelineError


def add_parsers(sub: Any) -> None:
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
    for parser in (export, imp):
        add_store_argument(parser)


def review(args: argparse.Namespace) -> int:
    from pipeline.inspect import resolve_version
    from pipeline.review import export_issues, import_decisions

    root = store_root(args.output)
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
