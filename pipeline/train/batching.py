"""Batches that waste little on padding, and padding itself.

A batch is padded to its longest example, so a batch of random lengths spends most
of its compute on padding when lengths vary a lot (instruction data does). Examples
are therefore grouped by length: shuffled with the epoch's seed, cut into windows of
``WINDOW`` batches, sorted by length inside a window, cut into batches, and the
batches shuffled again. Batches hold examples of similar length while the order of
training stays random from epoch to epoch. (Packing several examples into one
sequence would waste nothing, but needs attention masks that keep the examples
apart; length grouping gets most of the gain with none of that.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

WINDOW = 64
"""Batches per window sorted by length: large enough to find similar lengths, small
enough that each epoch still sees the data in a new order."""

IGNORE = -100
"""Label of a position that takes no loss (``torch.nn.functional.cross_entropy``'s
``ignore_index``)."""


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Indices of ``lengths`` in batches of ``batch_size`` (the last may be smaller),
    each batch of similar lengths, in a seeded random order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    batches: list[np.ndarray] = []
    window = batch_size * WINDOW
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    for i in rng.permutation(len(batches)):
        yield batches[i].tolist()


def pad(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-padded ``(batch, longest)`` tensor of ``sequences``."""
    out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def attention_mask(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    return pad([[1] * len(s) for s in sequences], 0)
