"""``report.html``: one self-contained page that explains a version to a person.

The Parquet reports of a version answer any question, but only to someone who
writes a query. The page answers the usual ones at a glance (where did the rows go,
why, what do the removed rows look like, did the label balance change) and opens
from disk anywhere: plots are inline SVG, the stylesheet is inline, there is no
script and no external URL, so it works offline and in a sandboxed viewer.

It is built from the version folder alone (never the raw inputs), so it can be
built in the staging folder before publishing, or again later for an old version.
A million-row version must still give a small page: every table is capped, example
rows are picked by id and only those rows' text is read, and the large files are
read column by column in batches. Sections whose report is missing (a stage that was
off, or a report an older version does not have) are left out.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from pipeline import report_plots as plots
from pipeline.errors import PipelineError
from pipeline.files import write_text
from pipeline.schema import AUGMENT_OPS, ORIGIN, ORIGINAL, ROW_ID, SOURCE_ROW_ID, DatasetInfo, joined_text
from pipeline.store import MANIFEST

REPORT = "report.html"
EXAMPLES_PER_REASON = 3
REASONS_WITH_EXAMPLES = 8
BARS_SHOWN = 15
"""Bars in a category chart (reasons, languages, labels); the rest are summed as one."""
LABEL_ISSUES_SHOWN = 20
CLUSTERS_SHOWN = 3
MEMBERS_SHOWN = 6
TABLE_ROWS = 20
CLIP = 300
"""Characters of a text shown in a table cell."""
BATCH_ROWS = 65_536
SECTION_THREADS = 4
"""Sections computed at once; more than the cores, since charts wait on one lock."""
CONTENT_COLUMNS = ("text", "prompt", "response", "messages")
_SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}

_TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True)
class _Version:
    """The folder being reported on and what its manifest says."""

    path: Path
    manifest: dict[str, Any]

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.manifest["kind"], tuple(self.manifest["roles"]))

    def report(self, name: str) -> Path | None:
        path = self.path / "reports" / f"{name}.parquet"
        return path if path.is_file() else None

    @property
    def data_files(self) -> list[Path]:
        return sorted((self.path / "data").glob("*.parquet"))


def build_report(version_dir: Path, manifest: dict[str, Any] | None = None) -> Path:
    """Write ``version_dir/report.html`` and return its path.

    ``manifest`` stands in for ``manifest.json``, which publishing writes last: pass
    it to build the page in a staging folder. Without a ``version`` key the page
    says the version is not published yet.
    """
    version_dir = Path(version_dir)
    version = _Version(version_dir, manifest if manifest is not None else _read_manifest(version_dir))
    for required in ("stages", "removed"):
        if version.report(required) is None:
            raise PipelineError(f"{version_dir} is not a version folder (no reports/{required}.parquet)")
    if not version.data_files:
        raise PipelineError(f"{version_dir} is not a version folder (no data/*.parquet)")
    html = _render(version)
    target = version_dir / REPORT
    write_text(target, html)
    return target


def _read_manifest(version_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((version_dir / MANIFEST).read_text())
    except FileNotFoundError:
        raise PipelineError(
            f"{version_dir} has no {MANIFEST}; pass the manifest to build a report of a staging folder"
        ) from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{version_dir / MANIFEST} cannot be read: {exc}") from exc


def _render(version: _Version) -> str:
    """The page's HTML; every section is computed here, the template only lays it out."""
    env = Environment(
        loader=FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    stages = _stages(version)
    sections: dict[str, Callable[[], Any]] = {
        "funnel": partial(_funnel, version, stages),
        "reasons": partial(_reasons, version),
        "lengths": partial(_lengths, version),
        "languages": partial(_languages, version, stages),
        "labels": partial(_labels, version),
        "duplicates": partial(_duplicates, version, stages),
        "label_issues": partial(_label_issues, version),
        "fills": partial(_fills, version, stages),
        "splits": partial(_splits, version),
        "augmented": partial(_augmented, version),
    }
    # Sections are independent: those reading Parquet (which releases the GIL) run
    # while others draw their charts, one at a time (plots holds a lock).
    with ThreadPoolExecutor(SECTION_THREADS, thread_name_prefix="report") as pool:
        futures = {name: pool.submit(compute) for name, compute in sections.items()}
        context = {name: future.result() for name, future in futures.items()}
    context |= {"header": _header(version), "stages": stages, "clip": CLIP}
    return env.get_template("report.html.j2").render(**context)


# ---- reading -----------------------------------------------------------------------


def _batches(paths: Iterable[Path], columns: Iterable[str]) -> Iterator[tuple[Path, pa.Table]]:
    """The given columns of each file (those it has), a bounded batch at a time."""
    wanted = list(columns)
    for path in paths:
        handle = pq.ParquetFile(path)
        present = [c for c in wanted if c in handle.schema_arrow.names]
        for batch in handle.iter_batches(batch_size=BATCH_ROWS, columns=present):
            yield path, pa.Table.from_batches([batch])


def _columns(path: Path) -> list[str]:
    return pq.ParquetFile(path).schema_arrow.names


def _rows_by_id(paths: Iterable[Path], ids: set[str], columns: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The rows of ``ids`` (with the given columns) found in ``paths``.

    Rows are filtered batch by batch while scanning, so showing five examples never
    holds every text of a large version in memory at once.
    """
    found: dict[str, dict[str, Any]] = {}
    if not ids:
        return found
    wanted = pa.array(sorted(ids), pa.string())
    for _, table in _batches(paths, dict.fromkeys([ROW_ID, *columns])):
        hits = table.filter(pc.is_in(table.column(ROW_ID), value_set=wanted))
        for row in hits.to_pylist():
            found.setdefault(row[ROW_ID], row)
    return found


def _value_counts(column: pa.ChunkedArray) -> Counter[str]:
    """Counts of the values of one column, values as display strings."""
    counts: Counter[str] = Counter()
    for item in pc.value_counts(column.combine_chunks()).to_pylist():
        counts[_label(item["values"])] += item["counts"]
    return counts


def _counts(paths: Iterable[Path], column: str) -> Counter[str]:
    """Value counts of one column over files, values as display strings."""
    total: Counter[str] = Counter()
    for _, table in _batches(paths, [column]):
        if column in table.column_names:
            total.update(_value_counts(table.column(column)))
    return total


def _label(value: Any) -> str:
    """A category as shown: nulls and empty strings get a visible name."""
    if value is None:
        return "(null)"
    return str(value) or "(empty)"


def _clip(value: Any, limit: int = CLIP) -> str:
    """A cell's text: chat messages one per line, null and blank marked, long text cut at ``limit``."""
    if value is None:
        return "(null)"
    if isinstance(value, list):
        value = "\n".join(
            f"{m.get('role')}: {m.get('content')}" if isinstance(m, dict) else str(m) for m in value
        )
    elif isinstance(value, float):
        value = f"{value:.4g}"
    text = str(value)
    if not text.strip():
        return "(blank)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _content(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The row's text fields, clipped, as (field, text) pairs."""
    return [(c, _clip(row[c])) for c in CONTENT_COLUMNS if c in row]


def _ranked(counts: Counter[str]) -> list[tuple[str, int]]:
    """Values by count, most common first, ties by name (so the page is stable)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _top(counts: Counter[str], limit: int = BARS_SHOWN) -> list[tuple[str, int]]:
    """The ``limit`` most common values, the rest summed into one ``other`` entry."""
    ranked = _ranked(counts)
    rest = ranked[limit:]
    other = [(f"other ({len(rest)} values)", sum(v for _, v in rest))] if rest else []
    return ranked[:limit] + other


# ---- sections ----------------------------------------------------------------------


def _header(version: _Version) -> dict[str, Any]:
    m = version.manifest
    counts = m["counts"]
    return {
        "dataset": m["dataset"],
        "version": m.get("version", "unpublished (staging)"),
        "created": m.get("created", ""),
        "kind": m["kind"],
        "roles": ", ".join(m["roles"]),
        "input_rows": counts["input_rows"],
        "kept_rows": counts["kept_rows"],
        "removed_rows": counts["removed_rows"],
        "config_hash": m.get("config_hash", ""),
        "fingerprint": m.get("fingerprint", ""),
        "inputs": m.get("inputs", []),
        "packages": sorted(m.get("packages", {}).items()),
        "config": json.dumps(m.get("config", {}), indent=2, sort_keys=True),
    }


def _stages(version: _Version) -> list[dict[str, Any]]:
    """``reports/stages.parquet`` with its JSON columns parsed, in run order."""
    rows = pq.read_table(version.report("stages")).to_pylist()
    for row in rows:
        for key in ("reasons", "counters", "decision"):
            row[key] = json.loads(row[key] or "{}")
        row["top_reasons"] = ", ".join(f"{k} {v:,}" for k, v in _top(Counter(row["reasons"]), 3))
    return rows


def _funnel(version: _Version, stages: list[dict[str, Any]]) -> Markup:
    enabled = [s for s in stages if s["enabled"]]
    steps = ["input", *(s["stage"] for s in enabled)]
    rows = [version.manifest["counts"]["input_rows"], *(s["rows_out"] for s in enabled)]
    return Markup(plots.funnel("funnel", steps, rows))


def _reasons(version: _Version) -> dict[str, Any] | None:
    """Removal reasons by rows, and the first few removed rows of the top reasons."""
    path = version.report("removed")
    counts = _counts([path], "reason")
    if not counts:
        return None
    top = _top(counts)
    picked: dict[str, list[str]] = {reason: [] for reason, _ in _ranked(counts)[:REASONS_WITH_EXAMPLES]}
    for _, table in _batches([path], [ROW_ID, "reason"]):
        for row_id, reason in zip(table.column(ROW_ID).to_pylist(), table.column("reason").to_pylist()):
            ids = picked.get(reason)
            if ids is not None and len(ids) < EXAMPLES_PER_REASON:
                ids.append(row_id)
        if all(len(ids) == min(EXAMPLES_PER_REASON, counts[r]) for r, ids in picked.items()):
            break
    wanted = {i for ids in picked.values() for i in ids}
    rows = _rows_by_id([path], wanted, ["stage", "detail", "label", *CONTENT_COLUMNS])
    examples = [
        {
            "reason": reason,
            "rows": counts[reason],
            "examples": [
                {
                    "row_id": row_id,
                    "stage": rows[row_id]["stage"],
                    "detail": _clip(rows[row_id]["detail"], 160),
                    "label": _clip(rows[row_id].get("label")),
                    "content": _content(rows[row_id]),
                }
                for row_id in ids
            ],
        }
        for reason, ids in picked.items()
    ]
    chart = plots.hbar("reasons", [r for r, _ in top], [n for _, n in top], "rows removed")
    return {
        "chart": Markup(chart),
        "total": sum(counts.values()),
        "distinct": len(counts),
        "examples": examples,
        "has_label": "label" in _columns(path),
    }


def _text_lengths(paths: Iterable[Path], info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """Characters of each row's text fields together (``joined_text``), and whether the
    row is an original one (not added by a stage), read batch by batch."""
    lengths, original = [], []
    for _, table in _batches(paths, [*info.text_fields, ORIGIN]):
        fields = tuple(f for f in info.text_fields if f in table.column_names)
        if not fields or not table.num_rows:
            continue
        joined = joined_text(table, DatasetInfo(info.kind, fields))
        lengths.append(pc.utf8_length(joined).to_numpy(zero_copy_only=False))
        if ORIGIN in table.column_names:
            mask = pc.fill_null(pc.equal(table.column(ORIGIN), ORIGINAL), False)
            original.append(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))
        else:
            original.append(np.ones(table.num_rows, dtype=bool))
    if not lengths:
        return np.array([], dtype=np.int64), np.array([], dtype=bool)
    return np.concatenate(lengths), np.concatenate(original)


def _lengths(version: _Version) -> Markup:
    """Text length of the input rows (kept originals and removed rows) and of the kept rows."""
    kept, original = _text_lengths(version.data_files, version.info)
    removed, _ = _text_lengths([version.report("removed")], version.info)
    series = {"input (kept + removed)": np.concatenate([kept[original], removed]), "kept": kept}
    return Markup(plots.histograms("lengths", series, "characters of text per row"))


def _languages(version: _Version, stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Rows per detected language, the kept ones highlighted: the stage's decision says
    which (the languages may be chosen from the data), the config in versions that
    predate it."""
    path = version.report("language")
    if path is None:
        return None
    counts = _counts([path], "language")
    decision = next((s["decision"] for s in stages if s["stage"] == "language"), {})
    if "kept" in decision:
        allowed = decision["kept"]  # None: every language kept
    else:
        allowed = version.manifest.get("config", {}).get("stages", {}).get("language", {}).get("allowed")
    top = _top(counts)
    highlight = [not allowed or name in allowed for name, _ in top]
    chart = plots.hbar("languages", [n for n, _ in top], [v for _, v in top], "rows", highlight=highlight)
    note = ", ".join(allowed or [])
    if note and decision.get("chosen_by") == "data":
        share = f"{decision['min_share'] * 100:g}%"
        note += f" (chosen from the data: each at least {share} of the rows, or the most frequent)"
    return {"chart": Markup(chart), "allowed": note, "distinct": len(counts)}


def _relabelled(version: _Version) -> dict[str, Any]:
    """Row id -> label before the label stage changed it, for kept rows it relabelled."""
    path = version.report("label_issues")
    if path is None or not {"given_label", "new_label"} <= set(_columns(path)):
        return {}
    table = pq.read_table(path, columns=[ROW_ID, "given_label", "new_label"], filters=pc.field("new_label").is_valid())
    return dict(zip(table.column(ROW_ID).to_pylist(), table.column("given_label").to_pylist()))


def _labels(version: _Version) -> dict[str, Any] | None:
    """Label counts of the input rows, the kept original rows and (if any) all kept rows."""
    if "label" not in version.manifest["roles"]:
        return None
    before_relabel = _relabelled(version)
    relabelled_ids = pa.array(sorted(before_relabel), pa.string())
    before: Counter[str] = _counts([version.report("removed")], "label")
    after: Counter[str] = Counter()
    augmented: Counter[str] = Counter()
    for _, table in _batches(version.data_files, [ROW_ID, "label", ORIGIN]):
        augmented.update(_value_counts(table.column("label")))
        if ORIGIN in table.column_names:
            table = table.filter(pc.equal(table.column(ORIGIN), ORIGINAL))
        after.update(_value_counts(table.column("label")))
        changed = pc.is_in(table.column(ROW_ID), value_set=relabelled_ids)
        before.update(_value_counts(table.filter(pc.invert(changed)).column("label")))
        before.update(_label(before_relabel[i]) for i in table.filter(changed).column(ROW_ID).to_pylist())
    groups = {"input": before, "kept": after}
    if augmented != after:
        groups["kept, with added rows"] = augmented
    ranked = _ranked(before + augmented)
    names = [name for name, _ in ranked[:BARS_SHOWN]]
    categories = names + (["other"] if len(ranked) > BARS_SHOWN else [])

    def values(counts: Counter[str]) -> list[int]:
        head = [counts.get(name, 0) for name in names]
        return head + [sum(counts.values()) - sum(head)] if len(categories) > len(names) else head

    bars = {group: values(counts) for group, counts in groups.items()}
    table = [{"label": c, "counts": [bars[g][i] for g in groups]} for i, c in enumerate(categories)]
    chart = plots.grouped_bars("labels", categories, bars, "rows")
    return {"chart": Markup(chart), "groups": list(groups), "table": table, "relabelled": len(before_relabel)}


def _cluster_sizes(version: _Version, stages: list[dict[str, Any]], duplicates: pa.Table | None) -> dict[int, int]:
    """Clusters per size: the near-dedup stage's own figures, else counted from its report."""
    near = next((s for s in stages if s["stage"] == "near_dedup" and s["enabled"]), None)
    if near is not None and near["decision"].get("cluster_sizes"):
        return {int(k): int(v) for k, v in near["decision"]["cluster_sizes"].items()}
    if duplicates is None or not duplicates.num_rows:
        return {}
    sizes = pc.value_counts(duplicates.column("cluster_id")).field("counts").to_pylist()
    return dict(sorted(Counter(sizes).items()))


def _duplicates(version: _Version, stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Cluster sizes of the near-duplicates, and the largest clusters' texts side by side."""
    path = version.report("duplicates")
    table = pq.read_table(path, columns=[ROW_ID, "cluster_id", "duplicate_of", "similarity"]) if path else None
    sizes = _cluster_sizes(version, stages, table)
    if not sizes:
        return None
    chart = plots.bars("clusters", [str(k) for k in sizes], list(sizes.values()), "rows in cluster", "clusters")
    clusters: list[list[dict[str, Any]]] = []
    if table is not None and table.num_rows:
        # The largest clusters; among equals the loosest first, where a reader most
        # wants to check that the members really are duplicates.
        per_cluster = table.group_by("cluster_id").aggregate([(ROW_ID, "count"), ("similarity", "min")]).to_pylist()
        biggest = sorted(per_cluster, key=lambda c: (-c[f"{ROW_ID}_count"], c["similarity_min"], c["cluster_id"]))
        biggest = biggest[:CLUSTERS_SHOWN]
        members: dict[int, list[dict[str, Any]]] = defaultdict(list)
        chosen = {c["cluster_id"] for c in biggest}
        for row in table.filter(pc.is_in(table.column("cluster_id"), pa.array(sorted(chosen)))).to_pylist():
            members[row["cluster_id"]].append(row)
        for c in biggest:  # the kept row first, then the closest members
            rows = members[c["cluster_id"]]
            rows.sort(key=lambda r: (r["duplicate_of"] is not None, -r["similarity"], r[ROW_ID]))
            clusters.append(rows[:MEMBERS_SHOWN])
        ids = {r[ROW_ID] for rows in clusters for r in rows}
        texts = _rows_by_id([*version.data_files, version.report("removed")], ids, CONTENT_COLUMNS)
        for rows in clusters:
            for r in rows:
                r["kept"] = r["duplicate_of"] is None
                r["content"] = _content(texts.get(r[ROW_ID], {}))
    total = sum(sizes.values())
    return {"chart": Markup(chart), "clusters": clusters, "total": total, "members_shown": MEMBERS_SHOWN}


def _label_issues(version: _Version) -> dict[str, Any] | None:
    """The worst label issues (the report is sorted worst first) and counts per action."""
    path = version.report("label_issues")
    if path is None:
        return None
    columns = ["row_id", "given_label", "suggested_label", "label_quality", "suggested_probability",
               "is_issue", "action", "decided_by", "new_label", "text"]
    handle = pq.ParquetFile(path)
    present = [c for c in columns if c in handle.schema_arrow.names]
    first = next(handle.iter_batches(batch_size=LABEL_ISSUES_SHOWN, columns=present), None)
    rows = pa.Table.from_batches([first]).to_pylist() if first is not None else []
    for row in rows:
        for key, value in row.items():
            row[key] = _clip(value, 200)
    actions = _counts([path], "action") if "action" in present else Counter()
    issues = _counts([path], "is_issue").get("True", 0) if "is_issue" in present else None
    return {
        "columns": present,
        "rows": rows,
        "scored": handle.metadata.num_rows,
        "issues": issues,
        "actions": sorted(actions.items()),
    }


def _fills(version: _Version, stages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Values the ``missing`` stage filled in, per column (from its counters and report)."""
    stage = next((s for s in stages if s["stage"] == "missing" and s["enabled"]), None)
    if stage is None:
        return None
    filled = {k.split(":", 1)[1]: v for k, v in stage["counters"].items() if k.startswith("filled:")}
    unfillable = {k.split(":", 1)[1]: v for k, v in stage["counters"].items() if k.startswith("unfillable:")}
    if not filled and not unfillable:
        return None
    how: dict[str, tuple[str, str]] = {}
    path = version.report("missing")
    if path is not None and {"column", "strategy", "value"} <= set(_columns(path)):
        for _, table in _batches([path], ["column", "strategy", "value"]):
            for row in table.group_by(["column", "strategy", "value"]).aggregate([]).to_pylist():
                how.setdefault(row["column"], (row["strategy"], row["value"]))
    return [
        {
            "column": column,
            "filled": filled.get(column, 0),
            "unfillable": unfillable.get(column, 0),
            "strategy": how.get(column, ("", ""))[0],
            "value": _clip(how.get(column, ("", ""))[1], 80),
        }
        for column in sorted(set(filled) | set(unfillable))
    ]


def _split_of(path: Path) -> str:
    """The split a data file holds, from its name (``train-<fp>-00000-of-00001.parquet``)."""
    return path.name.split("-", 1)[0]


def _splits(version: _Version) -> dict[str, Any] | None:
    """Rows per split, by origin when rows were added; only when there is more than one split."""
    splits = version.manifest["counts"].get("splits", {})
    if len(splits) < 2:
        return None
    origins: dict[str, Counter[str]] = defaultdict(Counter)
    for path, table in _batches(version.data_files, [ORIGIN]):
        if ORIGIN in table.column_names:
            origins[_split_of(path)].update(_value_counts(table.column(ORIGIN)))
    kinds = sorted({o for c in origins.values() for o in c}, key=lambda o: (o != ORIGINAL, o))
    total = sum(splits.values())
    ordered = sorted(splits.items(), key=lambda kv: (_SPLIT_ORDER.get(kv[0], len(_SPLIT_ORDER)), kv[0]))
    rows = [
        {"split": name, "rows": n, "share": n / total if total else 0.0, "origins": [origins[name][o] for o in kinds]}
        for name, n in ordered
    ]
    groups = version.report("split_groups")
    grouped = None
    if groups is not None and "group_id" in _columns(groups):
        ids = pq.read_table(groups, columns=["group_id"]).column("group_id")
        grouped = {"rows": len(ids), "groups": pc.count_distinct(ids).as_py()} if len(ids) else None
    return {"rows": rows, "origins": kinds, "grouped": grouped}


def _augmented(version: _Version) -> dict[str, Any] | None:
    """Rows the ``augment`` stage added: how many, by operation, and the first few
    next to the row each was made from."""
    path = version.report("augmented")
    if path is None:
        return None
    handle = pq.ParquetFile(path)
    names = handle.schema_arrow.names
    ops: Counter[str] = Counter()
    if AUGMENT_OPS in names:
        for _, table in _batches([path], [AUGMENT_OPS]):
            for value in table.column(AUGMENT_OPS).to_pylist():
                ops.update(op.strip() for op in (value or "").split(",") if op.strip())
    first = next(handle.iter_batches(batch_size=TABLE_ROWS), None)
    rows = pa.Table.from_batches([first]).to_pylist() if first is not None else []
    sources = _rows_by_id(version.data_files, {r[SOURCE_ROW_ID] for r in rows if r.get(SOURCE_ROW_ID)}, CONTENT_COLUMNS)
    examples = [
        {
            "row_id": row.get(ROW_ID),
            "source_row_id": row.get(SOURCE_ROW_ID),
            "ops": row.get(AUGMENT_OPS) or "",
            "label": _clip(row["label"]) if "label" in row else None,
            "source": _content(sources.get(row.get(SOURCE_ROW_ID), {})),
            "content": _content(row),
        }
        for row in rows
    ]
    return {"rows": handle.metadata.num_rows, "ops": _top(ops), "examples": examples, "has_label": "label" in names}
