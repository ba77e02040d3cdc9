"""The training loop, with what fine-tuning guides warn about built in.

* **Effective batch size**: every optimizer step sees ``batch_size`` examples; they
  go through the model in micro-batches and the gradients accumulate. Each
  micro-batch's summed loss is divided by the whole batch's denominator (examples or
  reply tokens), so the gradient is the same however the batch is cut.
* **Out-of-memory back-off**: a step that runs out of memory is redone from its start
  with half the micro-batch (so twice the accumulation), down to one example; the
  evaluation backs off the same way. The effective batch, hence the result, stays.
* **Warm-up and schedule**: ``transformers.get_scheduler`` over all planned steps.
* **Early stopping**: validation loss after each epoch; the best epoch's trainable
  weights are kept (on the CPU) and put back at the end, so the model that is saved
  and tested is the best one, not the last.
* **Precision**: bf16 autocast where the GPU has it, fp32 otherwise (the CPU).
* **Seeds**: torch's and the batch order's, from ``seed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import torch

from pipeline.errors import PipelineError
from pipeline.train.batching import length_grouped_batches
from pipeline.train.config import TrainConfig
from pipeline.train.progress import Progress
from pipeline.train.throughput import FlopCounter, peak_tflops

T = TypeVar("T")
Batch = dict[str, torch.Tensor]


class Task(Protocol):
    kind: str

    def collate(self, examples: Sequence[dict[str, Any]]) -> Batch: ...

    def weight(self, batch: Batch) -> float: ...

    def loss_sum(self, model: Any, batch: Batch) -> torch.Tensor: ...

    def evaluate(self, model: Any, batches: Iterator[Batch]) -> dict[str, float]: ...


@dataclass(frozen=True)
class Device:
    """Where the model runs and in what precision it computes."""

    device: torch.device
    bf16: bool

    @classmethod
    def choose(cls, device: str, precision: str) -> Device:
        """``auto``: the GPU when there is one. bf16 under ``auto`` only on a GPU that
        supports it; asked for explicitly elsewhere, it is refused."""
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
        supported = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        if precision == "bf16" and not supported:
            raise PipelineError(f"training key precision: bf16 needs a GPU that supports it, not {dev}")
        return cls(dev, precision == "bf16" or (precision == "auto" and supported))

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def put(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{self.device} ({name}), {'bf16' if self.bf16 else 'fp32'}"


@dataclass
class FitResult:
    epochs: list[dict[str, Any]]
    """Per epoch: train and validation loss, validation metrics, seconds, tokens/s."""
    best_epoch: int
    stopped_early: bool
    micro_batch_size: int
    backoffs: list[dict[str, Any]] = field(default_factory=list)
    """Each out-of-memory back-off: where, and the micro-batch before and after."""
    throughput: dict[str, Any] = field(default_factory=dict)


class Backoff:
    """A micro-batch size that halves on out-of-memory, remembered across steps."""

    def __init__(self, size: int, progress: Progress, device: Device) -> None:
        self.size = size
        self.progress = progress
        self.device = device
        self.events: list[dict[str, Any]] = []

    def run(self, attempt: Callable[[int], T], where: str) -> T:
        """``attempt(size)``, again with half the size after each out-of-memory error."""
        while True:
            try:
                return attempt(self.size)
            except torch.OutOfMemoryError:
                pass  # leave the except block first, so the failed attempt's tensors can be freed
            if self.size == 1:
                raise PipelineError(
                    "out of memory with a micro-batch of 1: lower max_length, use LoRA (method=lora), "
                    "or set gradient_checkpointing=true"
                )
            if self.device.device.type == "cuda":
                torch.cuda.empty_cache()
            self.events.append({"where": where, "from": self.size, "to": self.size // 2})
            self.progress.note(f"out of memory at {where} with micro-batch {self.size}: retrying with {self.size // 2}")
            self.size //= 2


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def evaluate(model: Any, task: Task, examples: Sequence[dict[str, Any]], device: Device, backoff: Backoff, where: str) -> dict[str, float]:
    """``task.evaluate`` over ``examples``, in micro-batches that back off on out-of-memory."""
    model.eval()

    def attempt(size: int) -> dict[str, float]:
        with device.autocast():
            return task.evaluate(model, (device.put(task.collate(c)) for c in _chunks(examples, size)))

    return backoff.run(attempt, where)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights training changes (all of them in full fine-tuning)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def restore(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def accumulate(
    model: Any, task: Task, device: Device, optimizer: torch.optim.Optimizer, batch: Sequence[dict[str, Any]], size: int
) -> tuple[float, float, list[Batch]]:
    """Gradients of one optimizer step over ``batch``, in micro-batches of ``size``;
    returns the summed loss, its denominator and the micro-batches. Starts from zero
    gradients, so an attempt cut short by out-of-memory leaves nothing behind."""
    optimizer.zero_grad(set_to_none=True)
    micro = [task.collate(c) for c in _chunks(batch, size)]
    denominator = sum(task.weight(m) for m in micro)
    summed = 0.0
    for m in micro:
        with device.autocast():
            loss = task.loss_sum(model, device.put(m))
        (loss / denominator).backward()
        summed += float(loss.detach())
    return summed, denominator, micro


def fit(
    model: Any,
    task: Task,
    train: Sequence[dict[str, Any]],
    validation: Sequence[dict[str, Any]],
    config: TrainConfig,
    device: Device,
    progress: Progress,
) -> FitResult:
    """Train ``model`` on ``train`` with ``config`` (resolved), stopping early on
    ``validation``; the model ends with its best epoch's weights."""
    from transformers import get_scheduler

    torch.manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_scheduler(
        config.scheduler, optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    backoff = Backoff(config.micro_batch_size or config.batch_size, progress, device)
    flops = FlopCounter(model, full=config.method == "full")
    lengths = [len(e["input_ids"]) for e in train]
    history: list[dict[str, Any]] = []
    best_loss, best_epoch, best_state, waited = math.inf, 0, None, 0
    counted = {"tokens": 0, "padded": 0, "seconds": 0.0}
    if device.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device.device)

    for epoch in range(1, config.epochs + 1):
        model.train()
        progress.start_epoch(epoch, config.epochs, steps_per_epoch)
        started = time.perf_counter()
        loss_total, weight_total, tokens = 0.0, 0.0, 0
        for step, indices in enumerate(length_grouped_batches(lengths, config.batch_size, config.seed + epoch), 1):
            batch = [train[i] for i in indices]
            attempt = partial(accumulate, model, task, device, optimizer, batch)
            summed, denominator, micro = backoff.run(attempt, f"epoch {epoch} step {step}")
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step_tokens = 0
            for m in micro:
                real = m["attention_mask"].sum(1)
                flops.add(real)
                counted["padded"] += m["attention_mask"].numel()
                step_tokens += int(real.sum())
            tokens += step_tokens
            loss_total, weight_total = loss_total + summed, weight_total + denominator
            progress.step(summed / denominator, step_tokens)
        if device.device.type == "cuda":
            torch.cuda.synchronize(device.device)
        seconds = time.perf_counter() - started
        counted["tokens"] += tokens
        counted["seconds"] += seconds
        metrics = evaluate(model, task, validation, device, backoff, f"epoch {epoch} validation")
        record = {
            "epoch": epoch,
            "train_loss": loss_total / weight_total,
            "validation_loss": metrics["loss"],
            "validation": metrics,
            "seconds": round(seconds, 3),
            "tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1),
        }
        history.append(record)
        if metrics["loss"] < best_loss - config.min_delta:
            best_loss, best_epoch, best_state, waited = metrics["loss"], epoch, trainable_state(model), 0
            mark = " (best)"
        else:
            waited += 1
            mark = f" (best: epoch {best_epoch})"
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "loss")
        progress.end_epoch(
            f"train loss {record['train_loss']:.4f}, validation loss {metrics['loss']:.4f}{mark}"
            + (f", {shown}" if shown else "") + f", {record['tokens_per_second']:,.0f} tok/s"
        )
        if waited >= config.early_stopping_patience > 0 and epoch < config.epochs:
            progress.note(f"stopping early: no better validation loss for {waited} epochs")
            break
    if best_state is not None and best_epoch != history[-1]["epoch"]:
        restore(model, best_state)
    return FitResult(
        epochs=history,
        best_epoch=best_epoch,
        stopped_early=len(history) < config.epochs,
        micro_batch_size=backoff.size,
        backoffs=backoff.events,
        throughput=_throughput(counted, flops, device, config),
    )


def _throughput(counted: dict[str, Any], flops: FlopCounter, device: Device, config: TrainConfig) -> dict[str, Any]:
    seconds = counted["seconds"] or 1e-9
    out: dict[str, Any] = {
        "device": device.describe(),
        "train_tokens": counted["tokens"],
        "padding_share": round(1 - counted["tokens"] / max(counted["padded"], 1), 4),
        "train_seconds": round(counted["seconds"], 3),
        "tokens_per_second": round(counted["tokens"] / seconds, 1),
        "model_tflops_per_second": round(flops.total / seconds / 1e12, 4),
    }
    peak = peak_tflops(device.device, config.peak_tflops)
    if peak:
        out["peak_bf16_tflops"] = peak
        out["mfu"] = round(flops.total / seconds / 1e12 / peak, 4)
    if device.device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device.device) / 2**30, 3)
    return out
