"""Stage ``missing``: drop rows that lack a required role, fill optional columns.

A row without its text (or, for classification, its label; for instruction data, its
prompt or response) cannot train anything, so it leaves with reason
``missing:<role>``. Other columns are filled instead of losing the row: text gets a
placeholder, numbers the median, anything else the most common value, unless the
config says otherwise per column. Medians and modes are global (the same fill whatever
the sharding), so this is a global stage: each shard counts its values, one step
merges the counts, and every shard is then filled with the same values.

Blank strings (empty or whitespace only) count as missing: after the noise stage an
HTML-only text is as empty as a null.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import CHANGED_BY, ROW_ID, TEXT_ROLES, TOOLS
from pipeline.settings import StrictModel
from pipeline.stages.base import Stage, StageConfig, StageOutput, mark_changed, split_rows


class FillRule(StrictModel):
    strategy: Literal["constant", "unk", "median", "mode"]
    value: Any = None
    """The constant, for ``strategy: constant``."""


class MissingConfig(StageConfig):
    required: list[Literal["text", "label", "prompt", "response", "messages"]] | None = None
    """Roles a row must have; default: those the dataset kind needs."""
    blank_is_missing: bool = True
    fill_optional: bool = True
    """Fill nulls in the other columns; when false they stay null."""
    unk_token: str = "[UNK]"
    fill: dict[str, FillRule] = {}
    """Per-column rule overriding the default (``unk`` for text roles, ``median`` for
    numbers, ``mode`` for everything else)."""


def _is_missing(column: pa.ChunkedArray | pa.Array, blank_is_missing: bool) -> np.ndarray:
    """Per-row flag: null, or (for strings and messages) blank."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    missing = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if not blank_is_missing:
        return missing
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        blank = pc.equal(pc.utf8_trim_whitespace(column), "")
        missing |= np.asarray(pc.fill_null(blank, True).to_numpy(zero_copy_only=False), dtype=bool)
    elif pa.types.is_list(column.type):
        contents = pc.struct_field(column.values, "content") if pa.types.is_struct(column.type.value_type) else column.values
        filled = pc.invert(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(contents), ""), True))
        per_row = np.bincount(
            np.asarray(pc.list_parent_indices(column)),
            weights=np.asarray(filled.to_numpy(zero_copy_only=False), dtype=float),
            minlength=len(column),
        )
        missing |= per_row == 0
    return missing


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The median of ``values`` each repeated ``weights`` times (mean of the middle two)."""
    order = np.argsort(values)
    values, cum = values[order], np.cumsum(weights[order])
    total = int(cum[-1])
    lower = values[np.searchsorted(cum, (total + 1) // 2)]
    upper = values[np.searchsorted(cum, total // 2 + 1)]
    return float((lower + upper) / 2)


class MissingStage(Stage):
    name = "missing"
    config_model = MissingConfig
    config: MissingConfig
    is_global = True

    def _required(self) -> list[str]:
        required = self.config.required if self.config.required is not None else list(self.info.required)
        return [r for r in required if r in self.info.roles]

    def _fill_columns(self, schema: pa.Schema) -> dict[str, FillRule]:
        """The columns to fill and how, in schema order."""
        if not self.config.fill_optional:
            return {}
        required = set(self._required())
        rules: dict[str, FillRule] = {}
        for field in schema:
            if field.name in required or field.name in (ROW_ID, CHANGED_BY, TOOLS) or field.name == "messages":
                continue
            if field.name in self.config.fill:
                rules[field.name] = self.config.fill[field.name]
            elif field.name in TEXT_ROLES:
                rules[field.name] = FillRule(strategy="unk")
            elif pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
                rules[field.name] = FillRule(strategy="median")
            else:
                rules[field.name] = FillRule(strategy="mode")
        return rules

    def summarize(self, table: pa.Table) -> pa.Table:
        """Value counts of the columns filled by median or mode, values as JSON."""
        columns, values, counts = [], [], []
        for name, rule in self._fill_columns(table.schema).items():
            if rule.strategy not in ("median", "mode"):
                continue
            present = table.column(name).drop_null()
            if len(present) == 0:
                continue
            vc = pc.value_counts(present.combine_chunks())
            for item in vc.to_pylist():
                columns.append(name)
                values.append(json.dumps(item["values"], default=str))
                counts.append(item["counts"])
        return pa.table(
            {"column": pa.array(columns, pa.string()), "value": pa.array(values, pa.string()), "count": pa.array(counts, pa.int64())}
        )

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        """One fill value per column (JSON), from the merged value counts."""
        import pandas as pd  # here, not at the top: a run that resumes past this stage saves 0.4 s

        frame = pa.concat_tables(summaries).to_pandas() if summaries else pd.DataFrame(columns=["column", "value", "count"])
        rows: list[dict[str, str]] = []
        for (column,), group in frame.groupby(["column"], sort=True):
            merged = group.groupby("value", sort=True)["count"].sum()
            parsed = [json.loads(v) for v in merged.index]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in parsed)
            rule = self.config.fill.get(column)
            if (rule.strategy == "median") if rule else numeric:
                if not numeric:
                    raise ValueError(f"stages.missing.fill.{column}: median needs a numeric column")
                value = json.dumps(_weighted_median(np.array(parsed, dtype=float), merged.to_numpy()))
            else:
                # Most frequent; ties broken by the value's JSON text, so the fill is stable.
                value = min(merged.items(), key=lambda kv: (-kv[1], kv[0]))[0]
            rows.append({"column": column, "value": value})
        return pa.Table.from_pylist(rows, schema=pa.schema([("column", pa.string()), ("value", pa.string())]))

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        cfg = self.config
        drop = np.zeros(table.num_rows, dtype=bool)
        first_missing = np.full(table.num_rows, "", dtype=object)
        for role in self._required():
            gap = _is_missing(table.column(role), cfg.blank_is_missing) & ~drop
            first_missing[gap] = role
            drop |= gap
        reasons = [f"missing:{r}" for r in first_missing[drop]]
        details = [{"role": r} for r in first_missing[drop]]
        kept, removed, counters = split_rows(table, drop, reasons, details)

        fills = {row["column"]: json.loads(row["value"]) for row in (state.to_pylist() if state is not None else [])}
        changed = np.zeros(kept.num_rows, dtype=bool)
        report: list[pa.Table] = []
        for name, rule in self._fill_columns(kept.schema).items():
            column = kept.column(name)
            gap = _is_missing(column, cfg.blank_is_missing and name in TEXT_ROLES)
            if not gap.any():
                continue
            value = {"unk": cfg.unk_token, "constant": rule.value}.get(rule.strategy, fills.get(name))
            if value is None:
                counters[f"unfillable:{name}"] += int(gap.sum())
                continue
            field = kept.schema.field(name)
            if pa.types.is_integer(field.type) and isinstance(value, float) and rule.strategy == "median":
                value = round(value)  # an integer column keeps integers: the median rounded half to even
            try:
                scalar = pa.scalar(value).cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"stages.missing.fill.{name}: {value!r} does not fit column type {field.type}") from exc
            filled = pc.if_else(pa.array(gap), scalar, column.combine_chunks())
            kept = kept.set_column(kept.schema.get_field_index(name), field, filled)
            changed |= gap
            counters[f"filled:{name}"] += int(gap.sum())
            row_ids = kept.column(ROW_ID).filter(pa.array(gap))
            report.append(
                pa.table(
                    {
                        ROW_ID: row_ids,
                        "column": pa.array([name] * len(row_ids), pa.string()),
                        "strategy": pa.array([rule.strategy] * len(row_ids), pa.string()),
                        "value": pa.array([json.dumps(value, default=str)] * len(row_ids), pa.string()),
                    }
                )
            )
        kept, n_changed = mark_changed(kept, changed, self.name)
        fills_table = pa.concat_tables(report) if report else None
        return StageOutput(kept=kept, removed=removed, changed=n_changed, counters=Counter(counters), scores=fills_table)
