"""What several commands share: config arguments, the store root, JSON and table cells."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily, to keep ``--help`` fast
    from rich.text import Text

VERSION_HELP = "DATASET/vNNNN, DATASET (its latest version), or the path of a version folder"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--input`` and ``--set``, as ``load_config`` takes them."""
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: ./pipeline.yaml when present)")
    parser.add_argument("--input", metavar="PATH", nargs="+", action="extend", help="input files, folders or globs")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
        help="override a config key, e.g. stages.language.allowed=[en,de] or stages.quality.enabled=false",
    )


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """``--output`` of a command that reads a store (see :func:`store_root`)."""
    parser.add_argument("--output", metavar="DIR", help="store root (default: the output of ./pipeline.yaml)")


def store_root(output: str | None) -> Path | None:
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


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def cell(value: Any, width: int = 0) -> Text:
    """A table cell as plain text: row content may hold ``[...]`` that rich would read as markup."""
    from rich.text import Text

    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = " ".join(text.split())
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    return Text(text)
