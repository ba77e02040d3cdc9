"""``train``: fine-tune a model on a published version (see ``pipeline.train``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.cli.common import VERSION_HELP, add_store_argument, store_root


def add_parsers(sub: Any) -> None:
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
    add_store_argument(train)
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
    path = find_version(args.version, store_root(args.output))
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
