"""Shingles and MinHash signatures as columns of a stage's summary table.

Why this module exists: a global stage's ``summarize`` step writes one Arrow table per
shard, and its ``decide`` step reads them back (memory-mapped, see
``pipeline.files.read_arrow``). ``near_dedup`` and ``split`` both summarise rows as shingles and
signatures, and ``dedup-calibrate`` computes the same columns on a sample; the layout
is defined once here, so what one writes the others read, with no stage importing
another.

``shingles``   list<uint64>: each row's shingle hashes, sorted and unique
``signature``  fixed_size_list<uint32>[num_perm]: each row's MinHash signature
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup import minhash
from pipeline.schema import DatasetInfo, field_strings, joined_text


def key_texts(table: pa.Table, info: DatasetInfo, key: str) -> pa.Array:
    """The text each row is compared on (``near_dedup.key``): one field of instruction
    rows for ``prompt`` or ``response`` (when the dataset has it), otherwise all text
    fields joined."""
    if info.kind == "instruction" and key in ("prompt", "response") and key in info.roles:
        return pc.fill_null(field_strings(table, key), "")
    return joined_text(table, info)


def minhash_columns(
    texts: pa.Array, shingles: str, ngram: int, num_perm: int, seed: int, scheme: str
) -> dict[str, pa.Array]:
    """Summary columns ``shingles`` (sorted unique hashes) and ``signature`` of each
    text, in the layout :func:`shingles_and_signatures` reads back."""
    sh = minhash.shingle(texts, n=ngram, kind=shingles)
    sigs = minhash.signatures(sh, num_perm=num_perm, seed=seed, scheme=scheme)
    return {
        "shingles": pa.ListArray.from_arrays(pa.array(sh.offsets, pa.int32()), pa.array(sh.values, pa.uint64())),
        "signature": pa.FixedSizeListArray.from_arrays(pa.array(sigs.ravel()), num_perm),
    }


def shingles_and_signatures(summary: pa.Table, num_perm: int) -> tuple[minhash.Shingles, np.ndarray]:
    """The engine's arrays of one shard's summary, as views of its buffers (no
    copy, so memory-mapped summaries stay file-backed)."""
    if summary.num_rows == 0:
        return minhash.Shingles(np.zeros(0, np.uint64), np.zeros(1, np.int64)), np.zeros((0, num_perm), np.uint32)
    shingles = summary.column("shingles").combine_chunks()
    offsets = np.asarray(shingles.offsets.to_numpy(), dtype=np.int64)
    sh = minhash.Shingles(values=shingles.flatten().to_numpy(), offsets=offsets - offsets[0])
    sigs = summary.column("signature").combine_chunks().flatten().to_numpy().reshape(-1, num_perm)
    return sh, sigs
