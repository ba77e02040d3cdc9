"""``export``: write a published version as Alpaca, ShareGPT or OpenAI JSON Lines (see ``pipeline.export``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipeline.cli.common import VERSION_HELP, add_store_argument, store_root

FORMATS = ("alpaca", "sharegpt", "openai")
"""``pipeline.export.EXPORT_FORMATS``, named here so that ``--help`` imports nothing heavy."""


def add_parsers(sub: Any) -> None:
    export = sub.add_parser(
        "export", help="write a version as Alpaca, ShareGPT or OpenAI JSON Lines for a trainer",
        description="Write a published version's rows (every split, or --split) as the JSON Lines a trainer reads, "
        "and print the LLaMA-Factory dataset_info.json entry and the axolotl datasets: block that load the file.",
    )
    export.add_argument("version", metavar="VERSION", help=VERSION_HELP)
    export.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="the layout of the rows")
    export.add_argument("--out", required=True, metavar="FILE.jsonl", help="the file to write (replaced if it exists)")
    export.add_argument("--split", metavar="NAME", help="only this split (train, validation, test)")
    add_store_argument(export)


def export(args: argparse.Namespace) -> int:
    from pipeline.export import export_version
    from pipeline.inspect import resolve_version

    ref = resolve_version(args.version, store_root(args.output))
    result = export_version(ref, args.fmt, Path(args.out), args.split)
    splits = ", ".join(f"{split} {n:,}" for split, n in result.rows.items()) or "no rows"
    print(f"wrote {sum(result.rows.values()):,} rows of {ref.label} ({splits}) to {args.out} as {args.fmt}")
    name = f"{ref.dataset}_{ref.version}" + (f"_{args.split}" if args.split else "")
    print("\nLLaMA-Factory, an entry of data/dataset_info.json:")
    print(json.dumps(result.dataset_info(name), indent=2, ensure_ascii=False))
    print("\naxolotl, in the config:")
    print(result.axolotl())
    for note in result.loader_notes():
        print(f"note: {note}")
    return 0
