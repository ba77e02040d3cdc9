"""The one registration of every stage: run order, lookup by name, the config model.

A stage is a module with a :class:`~pipeline.stages.base.Stage` subclass and one entry
here: :data:`BUILTIN` for the pipeline's own stages, or :func:`register` for a stage
defined elsewhere (a plugin, a test). The flow runs the stages in this order, the
config's ``stages`` section gets one key per stage from :func:`stages_model`, and
reports and manifests list them as they ran; nothing else names a stage.

Order matters: text is repaired and stripped of noise before a row is judged empty,
conversations are checked for structure right after (a turn that held only HTML is
empty by then, and a conversation with no text at all has left as ``missing``),
and judged by language and quality before the surviving rows are deduplicated; exact
copies go first, so the near-duplicate step clusters what is left. Labels are judged
on the deduplicated rows (a copy would vote for its own label in cross-validation),
the split comes after every removal so its fractions hold in the output (but for
decontamination, which needs the splits to check train against validation and test),
and rows are only added (augmentation, rehearsal) to the train split once it exists.
Tokens are counted last among the removals, on the rows a trainer will get, per split.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache

from pydantic import Field, create_model

from pipeline.settings import StrictModel
from pipeline.stages.base import Stage, StageConfig

BUILTIN: tuple[str, ...] = (
    "pipeline.stages.normalize:NormalizeStage",
    "pipeline.stages.noise:NoiseStage",
    "pipeline.stages.missing:MissingStage",
    "pipeline.stages.conversation:ConversationStage",
    "pipeline.stages.language:LanguageStage",
    "pipeline.stages.quality:QualityStage",
    "pipeline.stages.exact_dedup:ExactDedupStage",
    "pipeline.stages.near_dedup:NearDedupStage",
    "pipeline.stages.label_issues:LabelIssuesStage",
    "pipeline.stages.split:SplitStage",
    "pipeline.stages.decontaminate:DecontaminateStage",
    "pipeline.stages.select:SelectStage",
    "pipeline.stages.tokens:TokensStage",
    "pipeline.stages.augment:AugmentStage",
    "pipeline.stages.rehearsal:RehearsalStage",
)
"""The pipeline's own stages, in run order, as ``module:class``."""


class StagesConfig(StrictModel):
    """The ``stages`` section of the config: one key per registered stage, made by
    :func:`stages_model`."""


_added: list[tuple[type[Stage], str | None, str | None]] = []
"""Stages registered at run time, with the stage each goes after or before."""
_generation = 0
"""Counts the changes to ``_added``: the cache key of the stage order."""
_listeners: list[Callable[[], None]] = []


def _load(path: str) -> type[Stage]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@cache
def _ordered(generation: int) -> tuple[type[Stage], ...]:
    """The stage classes in run order, as of ``generation`` (imports each module once)."""
    order = [_load(path) for path in BUILTIN]
    for cls, after, before in _added:
        names = [c.name for c in order]
        anchor = after or before
        if anchor not in names:
            raise ValueError(f"stage {cls.name}: no stage {anchor!r} to go {'after' if after else 'before'}")
        order.insert(names.index(anchor) + (1 if after else 0), cls)
    return tuple(order)


def stages() -> tuple[type[Stage], ...]:
    """Every registered stage class, in run order."""
    return _ordered(_generation)


def stage_names() -> tuple[str, ...]:
    return tuple(cls.name for cls in stages())


def stage_class(name: str) -> type[Stage]:
    """The class implementing stage ``name``."""
    for cls in stages():
        if cls.name == name:
            return cls
    raise KeyError(f"no stage {name!r}; the stages are {', '.join(stage_names())}")


def stages_model() -> type[StagesConfig]:
    """The config model of the ``stages`` section, one field per stage in run order."""
    return _stages_model(stages())


@cache
def _stages_model(classes: tuple[type[Stage], ...]) -> type[StagesConfig]:
    fields = {cls.name: (cls.config_model, Field(default_factory=cls.config_model)) for cls in classes}
    return create_model("StagesConfig", __base__=StagesConfig, **fields)  # type: ignore[call-overload]


def register(cls: type[Stage], *, after: str | None = None, before: str | None = None) -> type[Stage]:
    """Add a stage defined outside this package, right after or before a registered one.

    From then on the flow runs it, ``stages.<name>`` configures it and reports list it.
    On a Dask executor the workers must register it too: import the module that calls
    this from a module the workers import (see docs/architecture.md, Adding a stage).
    """
    if (after is None) == (before is None):
        raise ValueError(f"stage {cls.name}: give exactly one of after= or before=")
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise TypeError(f"{cls!r} is not a Stage subclass")
    if not (isinstance(getattr(cls, "config_model", None), type) and issubclass(cls.config_model, StageConfig)):
        raise TypeError(f"stage {cls.name}: config_model must be a StageConfig subclass")
    if cls.name in stage_names():
        raise ValueError(f"a stage named {cls.name!r} is already registered")
    _added.append((cls, after, before))
    try:
        _changed()
    except ValueError:
        _added.pop()
        _changed()
        raise
    return cls


def unregister(name: str) -> None:
    """Remove a stage added by :func:`register` (the pipeline's own stay)."""
    kept = [entry for entry in _added if entry[0].name != name]
    if len(kept) == len(_added):
        raise KeyError(f"no stage {name!r} was added by register()")
    if any(after == name or before == name for _, after, before in kept):
        raise ValueError(f"stage {name!r} is the anchor of another registered stage")
    _added[:] = kept
    _changed()


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever a stage is registered or removed (the config model
    of :mod:`pipeline.config` is rebuilt this way)."""
    _listeners.append(listener)


def _changed() -> None:
    """A new stage order: check it (an unknown anchor raises), then tell the listeners."""
    global _generation
    _generation += 1
    stages()
    for listener in _listeners:
        listener()
