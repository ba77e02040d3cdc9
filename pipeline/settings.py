"""The base of every settings model: the config file, a stage's section, a dataset.

It lives apart from the stages and the config so that any module with settings
(readers, executors, stages, training) can use it without importing either.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys, so a typo in a config fails loudly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
