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

from typing import Any

from pipeline.train.config import TrainConfig
from pipeline.train.manifest import VerifiedVersion, find_version, verify_version
from pipeline.train.progress import Progress

__all__ = [
    "Progress", "RunResult", "TrainConfig", "VerifiedVersion", "find_version", "format_plan", "format_summary",
    "plan", "prepare", "train", "verify_version",
]
_RUNNER = {"RunResult", "format_plan", "format_summary", "plan", "prepare", "train"}


def __getattr__(name: str) -> Any:
    """The runner's names, imported on first use: they bring torch and transformers
    (seconds to import), which checking a config or a version does not need."""
    if name in _RUNNER:
        from pipeline.train import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'pipeline.train' has no attribute {name!r}")
