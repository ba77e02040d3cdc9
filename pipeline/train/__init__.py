"""Fine-tuning on a published version: ``python -m pipeline train`` and ``flows.finetune``.

It imports only torch, transformers, peft, pyarrow, pandas, numpy and the standard
library (plus Prefect-free ``pipeline`` modules), so it runs alone on a GPU machine.
The modules, in the order a run uses them:

``manifest``        find the version, verify its files against its manifest
``data``            its splits (a seeded one where the version has none)
``models``          offline default models, any folder / GGUF / hub id, LoRA targets
``classification``  encoder + head: cross-entropy, accuracy, macro-F1
``causal``          chat template, loss on reply tokens only, perplexity, generations
``loop``            batches, accumulation, OOM back-off, schedule, early stopping
``throughput``      model FLOPs, MFU, the dry run's memory estimate
``runner``          prepare, fit, test, write the run folder
"""

import importlib.util
from typing import Any

from pipeline.errors import PipelineError
from pipeline.train.config import TrainConfig
from pipeline.train.manifest import VerifiedVersion, find_version, verify_version
from pipeline.train.progress import Progress

__all__ = [
    "Progress", "RunResult", "TrainConfig", "VerifiedVersion", "find_version", "format_plan", "format_summary",
    "plan", "prepare", "require_packages", "train", "verify_version",
]
_RUNNER = {"RunResult", "format_plan", "format_summary", "plan", "prepare", "train"}


TRAINING_PACKAGES = ("torch", "transformers", "peft")


def require_packages() -> None:
    """Fail with how to install them when the training packages are missing (the base
    install has none: ``pip install -e .`` curates, ``.[train]`` also trains)."""
    missing = [name for name in TRAINING_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise PipelineError(
            f"training needs {', '.join(missing)}: pip install torch==2.13.0 && pip install -e '.[train]'"
        )


def __getattr__(name: str) -> Any:
    """The runner's names, imported on first use: they bring torch and transformers
    (seconds to import), which checking a config or a version does not need."""
    if name in _RUNNER:
        from pipeline.train import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'pipeline.train' has no attribute {name!r}")
