"""One training run end to end: verify the version, prepare, fit, test, write the run folder.

::

    <runs>/<dataset>-<version>-<UTC time>/
      adapter/            the LoRA adapter (and a classifier head), or model/ in full fine-tuning
      tokenizer/
      metrics.json        per-epoch train and validation loss, test metrics, throughput
      config.json         the resolved training config, model, labels, device, split sources
      dataset.json        dataset, version, fingerprint and sha256 of the manifest trained on
      generations.jsonl   instruction: greedy replies to test prompts beside the references

The folder is written under a temporary name and renamed when complete, so a run
that fails leaves nothing that looks like a result. ``<runs>`` defaults to ``runs/``
in the store root, beside the dataset folders.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.store import staged_folder
from pipeline.train.causal import InstructionTask
from pipeline.train.classification import ClassificationTask
from pipeline.train.config import TrainConfig
from pipeline.train.data import Splits, conversations, load_splits, row_tools
from pipeline.train.lengths import cut_rows_warning
from pipeline.train.loop import Backoff, Device, FitResult, Task, evaluate, fit
from pipeline.train.manifest import VerifiedVersion, verify_version
from pipeline.train.models import ModelSource, add_lora, load_model, load_tokenizer, lora_targets, resolve_model
from pipeline.train.progress import Progress
from pipeline.train.throughput import estimate_memory

RUNS = "runs"
SPLITS = ("train", "validation", "test")


@dataclass
class Prepared:
    """Everything a run needs, loaded and checked, before the first step."""

    version: VerifiedVersion
    config: TrainConfig
    """Resolved: the task's defaults filled in."""
    device: Device
    source: ModelSource
    tokenizer: Any
    model: Any
    task: Task
    splits: Splits
    examples: dict[str, list[dict[str, Any]]]
    targets: tuple[str, ...] | None
    """LoRA's target modules; None in full fine-tuning."""


@dataclass
class RunResult:
    path: Path
    metrics: dict[str, Any]
    dataset: dict[str, Any]


def prepare(version_path: Path, config: TrainConfig, progress: Progress) -> Prepared:
    """Verify the version (refusing one that does not), read its splits, load the model."""
    version = verify_version(Path(version_path))
    config = config.resolved(version.kind)
    if (warning := cut_rows_warning(version, config.max_length)) is not None:
        progress.note(warning)
    device = Device.choose(config.device, config.precision)
    splits = load_splits(version, config)
    source = resolve_model(config.model, version.kind, note=progress.note)
    tokenizer = load_tokenizer(source)
    task: Task
    if version.kind == "classification":
        frames = [splits[s] for s in SPLITS]
        task = ClassificationTask.for_frames(tokenizer, frames, splits.train, config.max_length, config.class_weights)
        examples = {s: task.encode(splits[s]) for s in SPLITS}
        labels = task.labels
    else:
        task = InstructionTask(tokenizer, config.max_length, source.name)
        examples = {
            s: task.encode(conversations(splits[s]), list(splits[s]["row_id"]), row_tools(splits[s])) for s in SPLITS
        }
        labels = None
    for split in SPLITS:
        if not examples[split]:
            raise PipelineError(f"no row of the {split} split keeps any reply within max_length {config.max_length}")
    torch.manual_seed(config.seed)  # a new classifier head and LoRA's matrices start from random weights
    full = config.method == "full"
    model = load_model(source, version.kind, labels, torch.bfloat16 if device.bf16 and not full else torch.float32)
    targets = None
    if not full:
        targets = lora_targets(model, config.target_modules)
        model = add_lora(model, version.kind, config.lora_r, config.lora_alpha, config.lora_dropout, targets)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # frozen weights may be bf16; what the optimizer updates stays fp32
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if not full:
            model.enable_input_require_grads()
    model.to(device.device)
    return Prepared(version, config, device, source, tokenizer, model, task, splits, examples, targets)


def parameter_counts(model: Any) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_share": round(trainable / total, 6)}


def plan(prepared: Prepared) -> dict[str, Any]:
    """What a run would do and need, without training: the ``--dry-run``."""
    p = prepared
    lengths = [len(e["input_ids"]) for e in p.examples["train"]]
    micro = p.config.micro_batch_size or p.config.batch_size
    outputs = getattr(p.model.config, "vocab_size", 0) if p.task.kind == "instruction" else 0
    memory = estimate_memory(
        p.model, micro, max(lengths), 2 if p.device.bf16 else 4, p.config.gradient_checkpointing, outputs
    )
    return {
        "dataset": f"{p.version.dataset}/{p.version.version}",
        "verified": list(p.version.checks),
        "task": p.task.kind,
        "model": p.source.name,
        "method": p.config.method,
        "lora_targets": list(p.targets) if p.targets else None,
        "device": p.device.describe(),
        "parameters": parameter_counts(p.model),
        "rows": {s: len(p.examples[s]) for s in SPLITS},
        "split_sources": p.splits.sources,
        "tokens_per_epoch": sum(lengths),
        "mean_length": round(sum(lengths) / len(lengths), 1),
        "max_length": max(lengths),
        "steps_per_epoch": -(-len(lengths) // p.config.batch_size),
        "batch_size": p.config.batch_size,
        "micro_batch_size": micro,
        "epochs": p.config.epochs,
        "memory_estimate_bytes": {
            "weights": memory.weights, "gradients": memory.gradients, "optimizer": memory.optimizer,
            "activations": memory.activations, "total": memory.total,
        },
    }


def format_plan(plan: dict[str, Any]) -> str:
    gib = {k: (f"{v / 2**30:.2f} GiB" if v is not None else "unknown") for k, v in plan["memory_estimate_bytes"].items()}
    params = plan["parameters"]
    method = plan["method"] + (f" on {', '.join(plan['lora_targets'])}" if plan["lora_targets"] else "")
    return "\n".join([
        f"dry run: {plan['task']} on {plan['dataset']} (verified: {', '.join(plan['verified'])})",
        f"model: {plan['model']}, {method}; device {plan['device']}",
        (
            f"parameters: {params['total']:,} total, {params['trainable']:,} trainable "
            f"({100 * params['trainable_share']:.2f}%)"
        ),
        "rows: " + ", ".join(f"{s} {n:,}" for s, n in plan["rows"].items()),
        (
            f"tokens per epoch: {plan['tokens_per_epoch']:,} (mean {plan['mean_length']}, longest "
            f"{plan['max_length']} per row); {plan['steps_per_epoch']:,} steps of {plan['batch_size']} rows, "
            f"micro-batch {plan['micro_batch_size']}, {plan['epochs']} epochs"
        ),
        (
            f"memory estimate: {gib['total']} (weights {gib['weights']}, gradients {gib['gradients']}, "
            f"optimizer {gib['optimizer']}, activations {gib['activations']} at the longest row)"
        ),
    ])


def train(
    version_path: Path, config: TrainConfig, runs_dir: Path | None = None, progress: Progress | None = None
) -> RunResult:
    """Fine-tune on the version in ``version_path``; the run folder is the result."""
    progress = progress or Progress()
    started = time.perf_counter()
    p = prepare(version_path, config, progress)
    params = parameter_counts(p.model)
    progress.note(
        f"training {p.task.kind} on {p.version.dataset}/{p.version.version}: {p.source.name}, {p.config.method}, "
        f"{params['trainable']:,} of {params['total']:,} weights trainable, {p.device.describe()}"
    )
    result = fit(p.model, p.task, p.examples["train"], p.examples["validation"], p.config, p.device, progress)
    backoff = Backoff(result.micro_batch_size, progress, p.device)
    test = evaluate(p.model, p.task, p.examples["test"], p.device, backoff, "test")
    generations = []
    if isinstance(p.task, InstructionTask) and p.config.generations:
        p.model.eval()
        generations = p.task.generate(
            p.model, p.examples["test"][: p.config.generations], p.config.max_new_tokens, p.device.device
        )
    metrics = _metrics(p, result, test, params, time.perf_counter() - started)
    path = _write_run(p, metrics, generations, Path(runs_dir) if runs_dir else p.version.path.parent.parent / RUNS)
    return RunResult(path, metrics, p.version.record())


def _metrics(p: Prepared, result: FitResult, test: dict[str, float], params: dict, seconds: float) -> dict[str, Any]:
    return {
        "task": p.task.kind,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "test": test,
        "parameters": params,
        "rows": {s: len(p.examples[s]) for s in SPLITS},
        "batch": {
            "batch_size": p.config.batch_size,
            "micro_batch_size": {"start": p.config.micro_batch_size, "end": result.micro_batch_size},
            "backoffs": result.backoffs,
        },
        "throughput": result.throughput,
        "seconds": round(seconds, 3),
    }


def _resolved_config(p: Prepared) -> dict[str, Any]:
    model: dict[str, Any] = {"name": p.source.name, "path": p.source.path, "lora_targets": list(p.targets or [])}
    if isinstance(p.task, InstructionTask):
        model["chat_template"] = p.task.template
    out = {
        "training": p.config.to_dict(),
        "task": p.task.kind,
        "model": model,
        "device": p.device.describe(),
        "split_sources": p.splits.sources,
        "packages": {name: _version(name) for name in ("torch", "transformers", "peft", "pyarrow", "pandas", "numpy")},
    }
    if isinstance(p.task, ClassificationTask):
        out["labels"] = p.task.labels
    return out


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _write_run(p: Prepared, metrics: dict[str, Any], generations: list[dict], runs: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"{p.version.dataset}-{p.version.version}-{stamp}"
    with staged_folder(runs, name) as staging:
        p.model.save_pretrained(staging / ("model" if p.config.method == "full" else "adapter"))
        p.tokenizer.save_pretrained(staging / "tokenizer")
        _write_json(staging / "metrics.json", metrics)
        _write_json(staging / "config.json", _resolved_config(p))
        _write_json(staging / "dataset.json", p.version.record())
        if generations:
            (staging / "generations.jsonl").write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations))
        target, n = runs / name, 1
        while target.exists():
            n += 1
            target = runs / f"{name}-{n}"
        os.rename(staging, target)
    return target


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def format_summary(result: RunResult) -> str:
    m = result.metrics
    test = ", ".join(f"{k} {v:.4f}" for k, v in m["test"].items())
    best = m["epochs"][m["best_epoch"] - 1]
    early = " (stopped early)" if m["stopped_early"] else ""
    return "\n".join([
        (
            f"trained on {result.dataset['dataset']}/{result.dataset['version']} in {m['seconds']:,.0f} s: "
            f"{len(m['epochs'])} epochs{early}, best epoch {m['best_epoch']} "
            f"(validation loss {best['validation_loss']:.4f})"
        ),
        f"test: {test}",
        f"throughput: {m['throughput']['tokens_per_second']:,.0f} tokens/s"
        + (f", MFU {100 * m['throughput']['mfu']:.1f}%" if "mfu" in m["throughput"] else ""),
        f"run folder: {result.path}",
    ])
