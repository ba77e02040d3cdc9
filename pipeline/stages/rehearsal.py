"""Stage ``rehearsal``: mix general-purpose rows into the train split.

Fine-tuning on a narrow dataset makes a model forget what it could do before
(catastrophic forgetting); replaying a small share of general data while training is
the usual remedy. This stage draws that share from a dataset the user names (any
input the readers take: JSONL, CSV, Parquet, a ``save_to_disk`` folder, or a
published version's ``data/train-*.parquet``) and adds it to the train split only, so
validation and test still measure the task itself.

Rows are drawn by a seeded hash of their id, not by position: the same rows come
back whatever the file order or sharding, and raising ``fraction`` adds rows without
replacing the ones already drawn. Each mixed row carries ``origin=rehearsal`` and its
id in the general dataset as ``source_row_id``; it never enters the ledger of the
dataset's own rows. The general dataset is mixed in as it is: point ``inputs`` at a
curated version of it.

Global, in the three steps of the stage contract:

``summarize``  per shard: how many train rows it has, and its first row id
``decide``     once: how many rows to draw, the draw, which shard takes each row
``apply``      per shard: the shard's rows plus the rehearsal rows dealt to it
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from pipeline.errors import PipelineError
from pipeline.inputs import ColumnsConfig, DatasetConfig
from pipeline.readers import Reader, expand_inputs
from pipeline.schema import (
    AUGMENT_OPS,
    CHANGED_BY,
    ORIGIN,
    ORIGINAL,
    ROW_ID,
    SOURCE_ROW_ID,
    SPLIT,
    joined_text,
    with_origin,
)
from pipeline.stages.base import Read, Stage, StageConfig, StageContext, StageOutput, no_removals, with_stats

REHEARSAL = "rehearsal"
TARGET = "_target_shard"


class RehearsalConfig(StageConfig):
    enabled: bool = False
    """Off unless asked for: it adds rows from outside the dataset."""
    inputs: list[str] = []
    """The general-purpose dataset: files, globs or ``save_to_disk`` folders."""
    format: Literal["auto", "parquet", "jsonl", "csv", "hf"] = "auto"
    columns: ColumnsConfig = ColumnsConfig()
    """Its column roles, as for a dataset; it must have the roles the dataset needs."""
    fraction: float = Field(0.1, gt=0.0, le=10.0)
    """Rehearsal rows per train row of the dataset (0.1: one general row for every ten)."""
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> RehearsalConfig:
        if self.enabled and not self.inputs:
            raise ValueError("enabled, but no inputs: name the general-purpose dataset to mix in")
        return self


def _draw_keys(ids: pa.Array, seed: int) -> np.ndarray:
    """A seeded pseudo-random 64-bit key per row id; the smallest keys are drawn."""
    digests = b"".join(hashlib.blake2b(f"{seed}\0{i}".encode(), digest_size=8).digest() for i in ids.to_pylist())
    return np.frombuffer(digests, dtype=">u8").astype(np.uint64)


class RehearsalStage(Stage):
    name = "rehearsal"
    config_model = RehearsalConfig
    config: RehearsalConfig
    is_global = True
    adds_columns = (ORIGIN, SOURCE_ROW_ID, AUGMENT_OPS)

    @classmethod
    def reads(cls, config: RehearsalConfig, context: StageContext) -> list[Read]:
        """The general dataset's files: the rows mixed in are drawn from them."""
        general = DatasetConfig(name=REHEARSAL, inputs=config.inputs, format=config.format)
        return [Read(REHEARSAL, f.path, f.label) for f in expand_inputs(general)]

    def summarize(self, table: pa.Table) -> pa.Table:
        """The shard's original train rows (augmented rows do not raise the share)."""
        train = np.ones(table.num_rows, dtype=bool)
        for column, value in ((SPLIT, "train"), (ORIGIN, ORIGINAL)):
            if column in table.column_names:
                train &= np.asarray(pc.fill_null(pc.equal(table.column(column), value), False), dtype=bool)
        first = table.column(ROW_ID)[0].as_py() if table.num_rows else None
        return pa.table(
            {"train_rows": pa.array([int(train.sum())], pa.int64()), "first_row_id": pa.array([first], pa.string())}
        )

    def _general(self) -> Reader:
        cfg = self.config
        dataset = DatasetConfig(name=REHEARSAL, inputs=cfg.inputs, format=cfg.format, columns=cfg.columns)
        reader = Reader(dataset, shard_rows=50_000)
        missing = [r for r in self.info.required if r not in reader.info.roles]
        if missing:
            raise PipelineError(
                f"stages.rehearsal.inputs ({', '.join(cfg.inputs)}) has the roles {list(reader.info.roles)}, "
                f"but the dataset needs {list(self.info.required)}: set stages.rehearsal.columns"
            )
        return reader

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        """Draw ``fraction`` x train rows from the general dataset, streaming: each shard
        of it is merged with the rows drawn so far and cut back to the smallest keys."""
        summary = pa.concat_tables(summaries)
        train_rows = int(pc.sum(summary.column("train_rows")).as_py() or 0)
        wanted = round(self.config.fraction * train_rows)
        reader = self._general()
        drawn: pa.Table | None = None
        seen = incomplete = 0
        for shard in reader.shards():
            seen += shard.num_rows
            complete = np.ones(shard.num_rows, dtype=bool)
            for role in self.info.required:
                column = shard.column(role)
                complete &= np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            text = pc.utf8_trim_whitespace(joined_text(shard, reader.info))
            complete &= np.asarray(pc.fill_null(pc.greater(pc.utf8_length(text), 0), False), dtype=bool)
            incomplete += int((~complete).sum())
            shard = shard.filter(pa.array(complete))
            shard = shard.append_column("_key", pa.array(_draw_keys(shard.column(ROW_ID).combine_chunks(), self.config.seed)))
            drawn = shard if drawn is None else pa.concat_tables([drawn, shard], promote_options="permissive")
            drawn = drawn.sort_by([("_key", "ascending")]).slice(0, wanted)
        if drawn is None:
            raise PipelineError(f"stages.rehearsal.inputs ({', '.join(self.config.inputs)}) hold no rows")
        drawn = drawn.sort_by([(ROW_ID, "ascending")]).drop_columns(["_key"])
        targets = [s for s in summary.column("first_row_id").to_pylist() if s is not None]
        target = [targets[i % len(targets)] for i in range(drawn.num_rows)] if targets else [None] * drawn.num_rows
        drawn = drawn.append_column(TARGET, pa.array(target, pa.string()))
        stats = {
            "train_rows": train_rows,
            "wanted": wanted,
            "mixed_in": drawn.num_rows,
            "general_rows": seen,
            "general_rows_incomplete": incomplete,
            "inputs": list(self.config.inputs),
        }
        if drawn.num_rows < wanted:
            stats["message"] = f"the general dataset has only {seen - incomplete} usable rows; {wanted} were wanted"
        return with_stats(drawn, stats)

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        if state is None:
            raise ValueError("rehearsal.apply needs the state from decide()")
        table = with_origin(table)
        first = table.column(ROW_ID)[0].as_py() if table.num_rows else None
        mine = state.filter(pc.equal(state.column(TARGET), first)) if first is not None else state.slice(0, 0)
        n = mine.num_rows
        if n == 0:
            return StageOutput(kept=table, removed=no_removals(table))
        columns = {}
        for field in table.schema:
            if field.name == ROW_ID:
                columns[ROW_ID] = pc.binary_join_element_wise("rehearsal:", mine.column(ROW_ID), "")
            elif field.name == ORIGIN:
                columns[ORIGIN] = pa.array([REHEARSAL] * n, pa.string())
            elif field.name == SOURCE_ROW_ID:
                columns[SOURCE_ROW_ID] = mine.column(ROW_ID)
            elif field.name == SPLIT:
                columns[SPLIT] = pa.array(["train"] * n, pa.string())
            elif field.name == CHANGED_BY:
                columns[CHANGED_BY] = pa.array([""] * n, pa.string())
            elif field.name in mine.column_names:
                columns[field.name] = self._cast(mine.column(field.name), field)
            else:
                columns[field.name] = pa.nulls(n, field.type)
        added = pa.table(columns, schema=table.schema)
        return StageOutput(
            kept=pa.concat_tables([table, added]),
            removed=no_removals(table),
            counters=Counter({"rehearsal_rows": n}),
        )

    @staticmethod
    def _cast(column: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
        try:
            return column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PipelineError(
                f"stages.rehearsal: column {field.name!r} of the general dataset holds {column.type}, "
                f"the dataset's holds {field.type}"
            ) from exc
