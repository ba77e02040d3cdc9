"""The stages in the order they run, looked up by name.

Order matters: text is repaired and stripped of noise before a row is judged empty,
and judged by language and quality before the surviving rows are deduplicated; exact
copies go first, so the near-duplicate step clusters what is left. Labels are judged
on the deduplicated rows (a copy would vote for its own label in cross-validation),
the split comes after every removal so its fractions hold in the output, and rows are
only added (augmentation, rehearsal) to the train split once it exists.
"""

from __future__ import annotations

import importlib

from pipeline.stages.base import Stage

STAGE_ORDER: tuple[str, ...] = (
    "normalize",
    "noise",
    "missing",
    "language",
    "quality",
    "exact_dedup",
    "near_dedup",
    "label_issues",
    "split",
    "augment",
    "rehearsal",
)

_CLASSES = {
    "normalize": "pipeline.stages.normalize:NormalizeStage",
    "noise": "pipeline.stages.noise:NoiseStage",
    "missing": "pipeline.stages.missing:MissingStage",
    "language": "pipeline.stages.language:LanguageStage",
    "quality": "pipeline.stages.quality:QualityStage",
    "exact_dedup": "pipeline.stages.exact_dedup:ExactDedupStage",
    "near_dedup": "pipeline.stages.near_dedup:NearDedupStage",
    "label_issues": "pipeline.stages.label_issues:LabelIssuesStage",
    "split": "pipeline.stages.split:SplitStage",
    "augment": "pipeline.stages.augment:AugmentStage",
    "rehearsal": "pipeline.stages.rehearsal:RehearsalStage",
}


def stage_class(name: str) -> type[Stage]:
    """The class implementing stage ``name``."""
    module, _, cls = _CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)
