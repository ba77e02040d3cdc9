"""The rows of a verified version, by split, in the shape a task needs.

The split stage gives a version its ``train`` / ``validation`` / ``test`` files. A
version published without one of them (the split stage off) gets a seeded split of
its train rows instead, and the run records where each split came from, so a score
is never read as held-out when it was not. Rows added by augmentation or rehearsal
belong in training only: they are dropped from validation and test if found there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.schema import ORIGIN, ORIGINAL, ROW_ID, TOOLS
from pipeline.train.config import TrainConfig
from pipeline.train.manifest import VerifiedVersion

EVAL_SPLITS = ("validation", "test")
TURN_FIELDS = ("role", "content", "tool_calls", "tool_call_id", "name", "weight")
"""What of a canonical message the trainer uses (``extra`` it does not)."""


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    sources: dict[str, str] = field(default_factory=dict)
    """split -> where its rows came from (``version``, or the seeded split taken)."""

    def __getitem__(self, split: str) -> pd.DataFrame:
        return getattr(self, split)


def required_columns(version: VerifiedVersion) -> tuple[str, ...]:
    """The role columns the version's task reads."""
    if version.kind == "classification":
        return ("text", "label")
    return ("messages",) if "messages" in version.roles else ("prompt", "response")


def load_splits(version: VerifiedVersion, config: TrainConfig) -> Splits:
    """Train, validation and test rows of ``version`` (``row_id``, the role columns)."""
    columns = required_columns(version)
    tables = {split: _read(version, split, columns) for split in version.files}
    if "train" not in tables:
        raise PipelineError(f"{version.path}: no train split to train on")
    train = tables["train"]
    sources = {"train": "version"}
    rng = np.random.default_rng(config.seed)
    out: dict[str, pd.DataFrame] = {}
    for split, fraction in (("validation", config.validation_fraction), ("test", config.test_fraction)):
        if split in tables:
            frame = tables[split]
            if ORIGIN in frame.columns:
                frame = frame[frame[ORIGIN] == ORIGINAL]
            out[split], sources[split] = frame, "version"
            continue
        originals = train[train[ORIGIN] == ORIGINAL] if ORIGIN in train.columns else train
        take = max(1, round(len(originals) * fraction))
        if len(originals) - take < 1:
            raise PipelineError(f"{version.path}: too few train rows ({len(originals)}) to split off a {split} split")
        chosen = rng.choice(originals.index.to_numpy(), size=take, replace=False)
        out[split] = train.loc[np.sort(chosen)]
        train = train.drop(index=chosen)
        sources[split] = f"{fraction:g} of train, seed {config.seed} (the version has no {split} split)"
    if config.max_train_rows is not None and len(train) > config.max_train_rows:
        keep = rng.choice(len(train), size=config.max_train_rows, replace=False)
        train = train.iloc[np.sort(keep)]
        sources["train"] = f"version, a seeded sample of {config.max_train_rows} rows"
    frames = {"train": train, **out}
    for split, frame in frames.items():
        if frame.empty:
            raise PipelineError(f"{version.path}: the {split} split has no rows")
        frames[split] = frame.drop(columns=[ORIGIN], errors="ignore").reset_index(drop=True)
    return Splits(**frames, sources=sources)


def row_tools(frame: pd.DataFrame) -> list[str | None] | None:
    """Each row's tool definitions (JSON text), when the version has a ``tools`` column."""
    return list(frame[TOOLS]) if TOOLS in frame.columns else None


def _read(version: VerifiedVersion, split: str, columns: tuple[str, ...]) -> pd.DataFrame:
    table = pa.concat_tables([pq.read_table(f) for f in version.files[split]], promote_options="permissive")
    lacking = [c for c in columns if c not in table.column_names]
    if lacking:
        raise PipelineError(f"{version.path}: split {split} has no column {lacking[0]!r} ({version.kind} needs it)")
    keep = [ROW_ID, *columns] + [c for c in (ORIGIN, TOOLS) if c in table.column_names]
    frame = table.select(keep).to_pandas(types_mapper=None)
    for column in columns:
        empty = frame[column].isna()
        if column != "messages":
            empty |= frame[column].astype(str).str.strip().eq("")
        if empty.any():
            row = frame.loc[empty.idxmax(), ROW_ID]
            raise PipelineError(f"{version.path}: row {row} of split {split} has no {column} (enable stages.missing)")
    return frame


def conversations(frame: pd.DataFrame) -> list[list[dict[str, Any]]]:
    """Instruction rows as chat messages: ``messages`` with their tool calls, tool call
    ids and names (as :func:`pipeline.chat.prepare` takes them), or a user turn
    (``prompt``) and an assistant turn (``response``)."""
    if "messages" in frame.columns:
        return [[{k: m.get(k) for k in TURN_FIELDS} for m in row] for row in frame["messages"]]
    return [
        [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        for p, r in zip(frame["prompt"], frame["response"])
    ]
