"""The training settings: one flat set of keys, checked, with per-task defaults.

A stdlib dataclass rather than the pydantic models of ``pipeline.config``: the
training package must import nothing but torch, transformers, peft, pyarrow, pandas
and numpy, so it runs alone on a GPU machine. Keys left at ``None`` take a default
that depends on the task and method (:meth:`TrainConfig.resolved`); the run folder
records the resolved values, so a run says exactly what it did.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal

from pipeline.errors import PipelineError

Task = Literal["classification", "instruction"]
TASKS: tuple[str, ...] = ("classification", "instruction")

DEFAULT_LEARNING_RATE: dict[tuple[str, str], float] = {
    ("classification", "lora"): 1e-3,
    ("classification", "full"): 5e-5,
    ("instruction", "lora"): 2e-4,
    ("instruction", "full"): 2e-5,
}
"""LoRA moves few weights from a small init, so it wants a learning rate about ten
times that of full fine-tuning; a classifier head starts from scratch and takes more."""

DEFAULT_MAX_LENGTH = {"classification": 128, "instruction": 512}


@dataclass(frozen=True)
class TrainConfig:
    model: str | None = None
    """A local model folder, a ``.gguf`` file, or a hub id; None: the task's offline default."""
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    """Modules LoRA adapts; None: chosen per architecture (``pipeline.train.models``)."""
    epochs: int = 3
    learning_rate: float | None = None
    """None: :data:`DEFAULT_LEARNING_RATE` for the task and method."""
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    batch_size: int = 16
    """Examples per optimizer step (the effective batch), whatever the micro-batch."""
    micro_batch_size: int | None = None
    """Examples per forward pass at the start; None: ``batch_size``. Halved on
    out-of-memory, with gradient accumulation making up the effective batch."""
    max_length: int | None = None
    """Tokens per example, longer ones truncated; None: :data:`DEFAULT_MAX_LENGTH`."""
    max_grad_norm: float = 1.0
    early_stopping_patience: int = 2
    """Epochs without a better validation loss before training stops; 0: never."""
    min_delta: float = 0.0
    class_weights: bool = False
    """Classification: weigh the loss by inverse class frequency of the train split."""
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 on a GPU that has it, fp32 elsewhere (CPU included)."""
    device: str = "auto"
    gradient_checkpointing: bool = False
    max_train_rows: int | None = None
    """Train on a seeded sample of this many rows (a quick run); None: all."""
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    """Shares taken from train, with ``seed``, when the version has no such split."""
    generations: int = 5
    """Instruction: greedy generations on test prompts saved beside the metrics."""
    max_new_tokens: int = 64
    peak_tflops: float | None = None
    """The accelerator's dense bf16 peak, for model FLOPs utilisation when its name
    is not in ``pipeline.train.throughput.PEAK_BF16_TFLOPS``."""

    def __post_init__(self) -> None:
        positive = ("lora_r", "lora_alpha", "epochs", "batch_size", "micro_batch_size", "max_length", "max_train_rows",
                    "max_new_tokens")
        for key in positive:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise PipelineError(f"training key {key}: expected 1 or more, got {value}")
        for key in ("weight_decay", "min_delta", "max_grad_norm", "generations", "early_stopping_patience"):
            if getattr(self, key) < 0:
                raise PipelineError(f"training key {key}: expected 0 or more, got {getattr(self, key)}")
        for key in ("lora_dropout", "warmup_ratio"):
            if not 0 <= getattr(self, key) < 1:
                raise PipelineError(f"training key {key}: expected a fraction in [0, 1), got {getattr(self, key)}")
        if not (0 < self.validation_fraction < 1 and 0 < self.test_fraction < 1
                and self.validation_fraction + self.test_fraction < 1):
            raise PipelineError("training keys validation_fraction and test_fraction: each in (0, 1), together below 1")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise PipelineError(f"training key learning_rate: expected above 0, got {self.learning_rate}")
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise PipelineError(
                f"training key micro_batch_size: {self.micro_batch_size} is above batch_size {self.batch_size}"
            )
        for key, allowed in _choices().items():
            if getattr(self, key) not in allowed:
                raise PipelineError(f"training key {key}: expected one of {', '.join(allowed)}, got {getattr(self, key)!r}")

    def resolved(self, task: str) -> TrainConfig:
        """This config with the task's defaults in place of every ``None`` that has one."""
        return dataclasses.replace(
            self,
            learning_rate=self.learning_rate or DEFAULT_LEARNING_RATE[(task, self.method)],
            max_length=self.max_length or DEFAULT_MAX_LENGTH[task],
            micro_batch_size=self.micro_batch_size or self.batch_size,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from plain values (JSON, a flow parameter); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PipelineError(f"unknown training key {unknown[0]!r} (keys: {', '.join(sorted(known))})")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _coerce(key, value, hints[key]) for key, value in values.items()})

    def with_overrides(self, overrides: list[str]) -> TrainConfig:
        """This config with ``KEY=VALUE`` strings applied (the CLI's ``--set``)."""
        values = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise PipelineError(f"--set {item}: expected KEY=VALUE")
            values[key.strip()] = value.strip()
        return TrainConfig.from_dict(values)


def _choices() -> dict[str, tuple[str, ...]]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: typing.get_args(hints[f.name]) for f in fields(TrainConfig) if typing.get_origin(hints[f.name]) is Literal}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the type of ``key``: strings from the command line are parsed
    (``1e-4``, ``true``, ``none``, ``query,value``), JSON values are checked."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise PipelineError(f"training key {key}: a value is required")
    base = next((a for a in args if a is not type(None)), hint) if typing.get_origin(hint) is not Literal else hint
    if typing.get_origin(base) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise PipelineError(f"training key {key}: expected a list of names, got {value!r}")
        return tuple(i.strip() for i in items if i.strip())
    if typing.get_origin(base) is Literal or base is str:
        return str(value)
    if isinstance(value, str):
        try:
            value = json.loads(value.lower() if base is bool else value)
        except ValueError:
            raise PipelineError(f"training key {key}: expected {base.__name__}, got {value!r}") from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not base:
        raise PipelineError(f"training key {key}: expected {base.__name__}, got {value!r}")
    return value
