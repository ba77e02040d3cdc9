"""What a dataset is: its input files and which of their columns plays which role.

Kept apart from :mod:`pipeline.config` so that readers, and stages that read a second
dataset (``rehearsal``), can use it without importing every stage's config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.settings import StrictModel


class ColumnsConfig(StrictModel):
    """Which source column plays which role. Unset roles are found by common names."""

    text: str | None = None
    label: str | None = None
    prompt: str | list[str] | None = None
    """One column, or several joined by a blank line (Alpaca's instruction + input)."""
    response: str | None = None
    messages: str | None = None
    id: str | None = None
    """The source's id column; default ``id`` when present, else ids come from file
    name and row position."""
    drop: list[str] = []
    """Source columns not to carry into the output."""


class DatasetConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    inputs: list[str] = Field(min_length=1)
    """Files, folders of a ``datasets.save_to_disk`` or globs, read in this order."""
    format: Literal["auto", "parquet", "jsonl", "csv", "hf"] = "auto"
    columns: ColumnsConfig = ColumnsConfig()
    stages: dict[str, Any] = {}
    """Stage settings for this dataset only, merged over the top-level ``stages``
    (e.g. ``augment: {enabled: true, balance: true}`` for the labelled dataset)."""
