"""How much work a step is: model FLOPs per token, utilisation of the GPU, memory need.

Model FLOPs utilisation (MFU) is the share of the accelerator's dense bf16 peak that
the *model's* arithmetic reaches, counted the usual way (PaLM, appendix B): a token
costs 2 FLOPs per weight of every matrix multiply going forward and 4 going back
(gradients of activations and of weights), plus ``12 * layers * width * seq_len`` for
attention. LoRA leaves the frozen weights without gradients, so a token costs 4 per
weight, not 6; recomputation (gradient checkpointing) is not counted. Embedding
lookups are not matrix multiplies and are left out; a tied output head is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
"""Dense bf16 peaks (NVIDIA data sheets, without sparsity) by a part of the device
name, first match wins; ``peak_tflops`` covers any other GPU."""


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in PEAK_BF16_TFLOPS if part in name), None)


def matmul_weights(model: Any) -> int:
    """Weights of the model's matrix multiplies (``Linear`` and GPT-2's ``Conv1D``); an
    output head tied to the embeddings counts, as it is a multiply of its own."""
    return sum(
        m.weight.numel()
        for m in model.modules()
        if (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D") and getattr(m, "weight", None) is not None
    )


def _dims(config: Any) -> tuple[int | None, int | None]:
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    return layers, width


class FlopCounter:
    """Model FLOPs of the training steps taken, summed sequence by sequence: each token
    of a sequence of ``n`` real tokens costs ``per_weight * weights + 12 * L * d * n``."""

    def __init__(self, model: Any, full: bool) -> None:
        layers, width = _dims(model.config)
        self.per_token = (6 if full else 4) * matmul_weights(model)
        self.per_token_and_position = 12 * layers * width if layers and width else 0
        self.total = 0.0

    def add(self, lengths: torch.Tensor) -> None:
        """Count one micro-batch, given the real (unpadded) length of each sequence."""
        n = lengths.double()
        self.total += float((self.per_token * n + self.per_token_and_position * n * n).sum())


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step needs, before any is spent: an estimate, not a measure."""

    weights: int
    gradients: int
    optimizer: int
    activations: int | None
    """None when the architecture's depth and width cannot be read from its config."""

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + (self.activations or 0)


def estimate_memory(
    model: Any, micro_batch: int, seq_len: int, compute_bytes: int, checkpointing: bool, outputs: int
) -> MemoryEstimate:
    """Weights as loaded, fp32 gradients and AdamW's two fp32 moments for the trainable
    weights, and activations after Korthikanti et al. (2022): ``34 * s * b * h`` bytes
    a layer at 16 bits (twice that at 32), or ``2 * s * b * h`` with checkpointing;
    plus ``outputs`` logits per token (a causal LM's vocabulary) and their gradient in fp32."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in params)
    layers, width = _dims(model.config)
    activations = None
    if layers and width:
        per_layer = (2 if checkpointing else 34) * seq_len * micro_batch * width * compute_bytes // 2
        activations = layers * per_layer + 2 * 4 * micro_batch * seq_len * outputs
    return MemoryEstimate(weights=weights, gradients=4 * trainable, optimizer=8 * trainable, activations=activations)

