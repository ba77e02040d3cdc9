"""``versions``, ``show``, ``diff`` and ``report``: read published versions back (see ``pipeline.inspect``)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pipeline.cli.common import VERSION_HELP, add_store_argument, cell, print_json, store_root
from pipeline.errors import PipelineError

if TYPE_CHECKING:  # the commands import these lazily, to keep ``--help`` fast
    from rich.table import Table

    from pipeline.inspect import DiffResult, VersionSummary

LIST_IDS = 10
"""Row ids a diff table lists per kind of change; --json lists all."""


def add_parsers(sub: Any) -> None:
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
    for parser in (versions, show, diff, report):
        add_store_argument(parser)


def versions(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.inspect import list_versions

    root = store_root(args.output)
    if root is None:
        raise PipelineError("no store to inspect: pass --output DIR, or run where pipeline.yaml names its output")
    summaries = list_versions(root, args.dataset)
    if args.json:
        print_json([asdict(s) for s in summaries])
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
    from rich.text import Text

    from pipeline.inspect import resolve_version, show_rows

    if args.limit < 0:
        raise PipelineError(f"--limit {args.limit}: expected 0 (all) or more")
    ref = resolve_version(args.version, store_root(args.output))
    result = show_rows(ref, stage=args.stage, reason=args.reason, limit=args.limit)
    if args.json:
        print_json(asdict(result))
        return 0
    console = Console()
    table = Table(title=f"{result.version} ({result.path})", title_justify="left")
    for column in ("row_id", "stage", "reason", "detail", "content"):
        table.add_column(column, no_wrap=column in ("row_id", "stage", "reason"), overflow="fold")
    for row in result.rows:
        detail = "\n".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["detail"].items())
        content = " | ".join(f"{k}: {v}" for k, v in row["fields"].items())
        table.add_row(cell(row["row_id"]), row["stage"], row["reason"], Text(detail), cell(content, 80))
    console.print(table)
    console.print(f"{len(result.rows):,} of {result.total:,} matching rows listed")
    return 0


def diff(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.inspect import diff_versions, resolve_version

    root = store_root(args.output)
    result = diff_versions(resolve_version(args.version_a, root), resolve_version(args.version_b, root))
    if args.json:
        print_json(asdict(result))
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
        table.add_row(kind, f"{len(ids):,}", cell(", ".join(ids[:LIST_IDS]) + more))
    return table


def _config_table(changes: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title="config", title_justify="left")
    for column in ("key", "old", "new"):
        table.add_column(column)
    for c in changes:
        old = cell(c["old"]) if "old" in c else cell("(absent)")
        new = cell(c["new"]) if "new" in c else cell("(absent)")
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

    ref = resolve_version(args.version, store_root(args.output))
    path = ref.path / REPORT
    if args.rebuild or not path.is_file():
        path = build_report(ref.path)
    print(path)
    if args.open:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    return 0
