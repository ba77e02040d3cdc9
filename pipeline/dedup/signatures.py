"""Shingles and MinHash signatures as columns of a stage's summary table.

Why this module exists: a global stage's ``summarize`` step writes one Arrow table per
shard, and its ``decide`` step reads them back (memory-mapped, see
``pipeline.files.read_arrow``). ``near_dedup`` and ``split`` both summarise rows as shingles and
signatures, and ``dedup-calibrate`` computes the same columns on a sample; the layout
is defined once here, so what one writes the others read, with no stage importing
another.

``shingles``   list<uint64>: each row's shingle hashes, sorted and unique
``signature``  fixed_size_list<uint32>[num_perm]: each row's MinHash signature

or, where shingles are many per row (character n-grams: 8 bytes per character of
text), the compact layout of :func:`compact_minhash_columns`:

``key_text``        string: the text each row was shingled from
``shingle_count``   int64: how many distinct shingles it has
``signature``       as above

whose shingles :class:`TextShingles` computes again for the candidate rows only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup import minhash
from pipeline.errors import PipelineError
from pipeline.schema import DatasetInfo, field_strings, joined_text
from pipeline.text.cjk import cjk_rows
from pipeline.text.fold import ScriptFold, fold_key
from pipeline.text.parts import conversation_text, part_text, turns_text


def check_key(info: DatasetInfo, key: str) -> None:
    """Refuse ``key: first_user_turn`` for data that has no user turn."""
    if key == "first_user_turn" and info.kind != "instruction":
        raise PipelineError(f"stages.near_dedup.key: first_user_turn needs instruction data, not {info.kind}")


def key_texts(table: pa.Table, info: DatasetInfo, key: str) -> pa.Array:
    """The text each row is compared on (``near_dedup.key``).

    Instruction rows: ``prompt`` or ``response`` (for a conversation, its non-assistant
    or assistant turns), ``first_user_turn`` (the prompt, or a conversation's first user
    turn), or all of it (``auto``, ``both``: a conversation's roles, contents and tool
    calls, :func:`pipeline.text.parts.conversation_text`). Other rows: all text fields
    joined; ``first_user_turn`` is refused for them."""
    check_key(info, key)
    if "messages" in info.roles:
        if key == "first_user_turn":
            return turns_text(table, ["user"], first=True)
        if key in ("prompt", "response"):
            return part_text(table, info, key)
        return conversation_text(table)
    if info.kind == "instruction" and key in ("prompt", "response", "first_user_turn"):
        return pc.fill_null(field_strings(table, "prompt" if key == "first_user_turn" else key), "")
    return joined_text(table, info)


def minhash_columns(
    texts: pa.Array,
    shingles: str,
    ngram: int,
    num_perm: int,
    seed: int,
    scheme: str,
    fold: ScriptFold = "t2s",
) -> dict[str, pa.Array]:
    """Summary columns ``shingles`` (sorted unique hashes) and ``signature`` of each
    text, in the layout :func:`shingles_and_signatures` reads back.

    Texts are shingled as their dedup key (:func:`pipeline.text.fold.fold_key`:
    full-width forms as ASCII, CJK rows' Traditional characters as Simplified with
    the OpenCC conversion ``fold``), so a copy in the other script or width is a near
    copy; ``shingles="auto"`` picks character n-grams for CJK rows, words for the
    rest. Rows with neither CJK script nor full-width forms shingle as they always did."""
    cjk = cjk_rows(texts) if shingles == "auto" or fold != "none" else None
    keys = fold_key(texts, fold, cjk=cjk)
    sh = minhash.shingle(keys, n=ngram, kind=shingles, char_rows=cjk)
    sigs = minhash.signatures(sh, num_perm=num_perm, seed=seed, scheme=scheme)
    return {
        "shingles": pa.ListArray.from_arrays(pa.array(sh.offsets, pa.int32()), pa.array(sh.values, pa.uint64())),
        "signature": pa.FixedSizeListArray.from_arrays(pa.array(sigs.ravel()), num_perm),
    }


def column_array(summary: pa.Table, name: str) -> pa.Array:
    """A summary column as one array, without a copy where it is one chunk.

    Summaries are written as one record batch and read memory-mapped
    (``pipeline.files.read_arrow``), so their columns are one chunk of file-backed
    pages. ``combine_chunks`` copies even a single chunk into memory (pyarrow 26): at
    200,000 rows that was 0.7 GB of near_dedup's shingles and signatures made
    resident before the decide step began."""
    column = summary.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def shingles_and_signatures(summary: pa.Table, num_perm: int) -> tuple[minhash.Shingles, np.ndarray]:
    """The engine's arrays of one shard's summary, as views of its buffers (no
    copy, so memory-mapped summaries stay file-backed)."""
    if summary.num_rows == 0:
        return minhash.Shingles(np.zeros(0, np.uint64), np.zeros(1, np.int64)), np.zeros((0, num_perm), np.uint32)
    shingles = column_array(summary, "shingles")
    offsets = np.asarray(shingles.offsets.to_numpy(), dtype=np.int64)
    sh = minhash.Shingles(values=shingles.flatten().to_numpy(), offsets=offsets - offsets[0])
    sigs = column_array(summary, "signature").flatten().to_numpy().reshape(-1, num_perm)
    return sh, sigs


def compact_minhash_columns(
    texts: pa.Array, shingles: Literal["word", "char"], ngram: int, num_perm: int, seed: int, scheme: str
) -> dict[str, pa.Array]:
    """Summary columns ``key_text``, ``shingle_count`` and ``signature``: what
    :func:`minhash_columns` gives, with the text in place of its shingles.

    Why: character 5-grams of English cost 8 bytes per character, eight to ten times
    the text itself; at a million rows of 800 characters that was 6.4 GB of summaries
    in the work folder, all of it mapped by the decide step. The text costs one byte
    per character, and verification needs the shingles of the candidate pairs only.
    OPH signatures and counts are computed without ever holding the shingles
    (:func:`pipeline.dedup.minhash.sketches`); ``kperm`` shingles first.
    """
    if scheme == "oph":
        counts, signature = minhash.sketches(texts, ngram, shingles, num_perm, seed)
    else:
        sh = minhash.shingle(texts, n=ngram, kind=shingles)
        counts, signature = sh.sizes, minhash.signatures(sh, num_perm=num_perm, seed=seed, scheme=scheme)
    return {
        "key_text": texts,
        "shingle_count": pa.array(counts, pa.int64()),
        "signature": pa.FixedSizeListArray.from_arrays(pa.array(signature.ravel(), pa.uint32()), num_perm),
    }


class TextShingles:
    """One shard's shingles, computed on demand from its summary's ``key_text``.

    Stands in for a :class:`pipeline.dedup.minhash.Shingles` part in
    :func:`pipeline.dedup.minhash.find_duplicates`: the size filter reads
    ``sizes`` (stored), and :func:`pipeline.dedup.minhash.exact_jaccard` asks
    :meth:`tokens` of the candidates of one pair of shards at a time and hashes their
    ``ngram``-grams itself. Tokens are per row, so a row's shingles are the same
    whichever rows it is taken with.
    """

    def __init__(self, summary: pa.Table, shingles: Literal["word", "char"], ngram: int) -> None:
        self.texts = column_array(summary, "key_text")
        self.sizes = summary.column("shingle_count").to_numpy()
        self.kind, self.ngram = shingles, ngram

    def __len__(self) -> int:
        return len(self.sizes)

    def memory(self) -> list[np.ndarray | pa.Buffer]:
        """The buffers rows are read from (memory-mapped ones may be dropped from the
        process once read, see :class:`pipeline.memory.MappedPages`)."""
        return [b for b in self.texts.buffers() if b is not None] + [self.sizes]

    def tokens(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return minhash.tokens(self.texts.take(pa.array(rows, pa.int64())), self.kind)


def signature_matrix(summary: pa.Table, num_perm: int) -> np.ndarray:
    """``(rows, num_perm)`` ``uint32`` signatures of a summary, a view of its buffer."""
    if summary.num_rows == 0:
        return np.zeros((0, num_perm), np.uint32)
    return column_array(summary, "signature").flatten().to_numpy().reshape(-1, num_perm)
