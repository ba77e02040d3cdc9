"""``dedup-calibrate``: the near-dedup banding's recall and cost on a sample of each dataset."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.common import add_config_arguments
from pipeline.errors import PipelineError


def add_parsers(sub: Any) -> None:
    cal = sub.add_parser(
        "dedup-calibrate",
        help="measure the near-dedup banding's recall and cost on a sample",
        description="Measure the near-dedup banding's recall and cost on a sample of each dataset.",
    )
    add_config_arguments(cal)
    cal.add_argument("--sample", type=int, default=50_000, metavar="N", help="rows per dataset (default 50,000)")
    cal.add_argument("--target-recall", type=float, default=0.99, help="recall a recommendation must reach")


def dedup_calibrate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.calibrate import calibrate
    from pipeline.config import load_config

    if args.sample < 1:
        raise PipelineError(f"--sample {args.sample}: expected a number of rows, 1 or more")
    if not 0 < args.target_recall <= 1:
        raise PipelineError(f"--target-recall {args.target_recall:g}: expected a share above 0, at most 1 (e.g. 0.99)")
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
