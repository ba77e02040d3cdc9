"""The dataset card (``README.md``) of a version.

Its YAML header declares the Parquet files per split, which is what lets
``datasets.load_dataset(<version folder>)`` open the version as it is; the body tells
a person where the data came from and what each stage removed.
"""

from __future__ import annotations

from typing import Any

import yaml


def format_reasons(reasons: dict[str, int], n: int = 3) -> str:
    """``"language:de (48), language:es (47)"``: the ``n`` most frequent removal reasons,
    ties by name, as the card, the CLI table and the Prefect artifact all show them."""
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{reason} ({count})" for reason, count in top)


def render_card(manifest: dict[str, Any]) -> str:
    splits = manifest["counts"]["splits"]
    header = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": f"data/{split}-{manifest['fingerprint'][:12]}-*.parquet"} for split in splits
                ],
            }
        ],
        "pretty_name": manifest["dataset"],
        "tags": ["curated", manifest["kind"]],
    }
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {manifest['dataset']}",
        "",
        f"A {manifest['kind']} dataset (roles: {', '.join(manifest['roles'])}) curated by the pipeline "
        f"{manifest['packages'].get('pipeline', '')} on {manifest['created']}.",
        "",
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("<this folder>")',
        "```",
        "",
        "## Rows",
        "",
        f"- input rows: {manifest['counts']['input_rows']}",
        f"- kept: {manifest['counts']['kept_rows']}",
        f"- removed: {manifest['counts']['removed_rows']} (each listed with its reason in `reports/removed.parquet`)",
        *(f"- split `{name}`: {rows} rows" for name, rows in splits.items()),
        *(
            f"- {origin} rows: {rows}"
            for origin, rows in manifest["counts"].get("origins", {}).items()
            if origin != "original"
        ),
        "",
        "## Stages",
        "",
        "| stage | rows in | rows out | changed | top removal reasons |",
        "|---|---:|---:|---:|---|",
    ]
    for s in manifest["stages"]:
        if not s["enabled"]:
            lines.append(f"| {s['stage']} | (off) | | | |")
            continue
        top = format_reasons(s["reasons"])
        lines.append(f"| {s['stage']} | {s['rows_in']} | {s['rows_out']} | {s['rows_changed']} | {top} |")
    lines += ["", "## Sources", ""]
    lines += [f"- `{i['path']}` (sha256 `{i['sha256'][:16]}…`)" for i in manifest["inputs"]]
    lines += ["", f"Config hash `{manifest['config_hash'][:16]}…`, fingerprint `{manifest['fingerprint'][:16]}…`.", ""]
    return "\n".join(lines)
