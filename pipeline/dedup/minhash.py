"""MinHash near-duplicate detection over whole arrays (numpy, pyarrow, compiled loops).

Why this module exists: the reference implementation (``datasketch``) builds one
Python ``MinHash`` object per document and runs at roughly 650 docs/s; a curation run
sees hundreds of thousands of documents, and a near-duplicate stage has to keep up
with the row stages. Every step here works on whole columns at once:

1. :func:`normalise` folds case, punctuation, symbols and whitespace, byte-wise with
   a lookup table for ASCII documents and with a regular expression only for the
   documents that hold non-ASCII characters.
2. :func:`shingle` hashes word (or character) n-grams to 64-bit integers and keeps
   each document's distinct shingles sorted, as one CSR pair of arrays
   (:class:`Shingles`); no Python object per document or per shingle.
3. :func:`signatures` turns each document's shingle set into ``num_perm`` ``uint32``
   minima (one-permutation hashing with rotation densification by default, classic
   k-permutation MinHash on request); a row of signatures is 4 bytes per position.
4. :func:`candidate_pairs` bands the signatures (LSH) and emits the document pairs
   that share a band; :func:`find_duplicates` verifies them against the exact shingle
   Jaccard (:func:`exact_jaccard`) and clusters the surviving edges around centres
   (:func:`centre_clusters`), so every dropped document was verified against the
   one kept.

The banding is tuned to a lower similarity than the verification threshold (see
:data:`LSH_MARGIN`): LSH then misses almost no pair above the threshold (recall), and
the exact check throws away the extra candidates it lets through (precision).

Loops that are per document or per pair (tokens, n-gram sets, signatures, exact
Jaccard) are compiled in :mod:`pipeline.dedup.kernels`; the rest is whole-array
numpy and pyarrow.

Memory stays bounded: shingling works through the texts in chunks, and shingles and
signatures may come in parts (one per shard, e.g. memory-mapped files) that are never
concatenated: banding reads one band at a time and verification a pair of parts at a
time. A corpus costs 8 bytes per distinct shingle and ``4 * num_perm`` bytes per
document in those parts, and about 16-24 bytes per document while banding.

Nothing here knows about Prefect or stages; ``pipeline.stages`` builds on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup import kernels
from pipeline.executors import usable_cores
from pipeline.memory import MappedPages
from pipeline.text.cjk import cjk_rows

__all__ = [
    "EMPTY",
    "HASH_BITS",
    "LSH_MARGIN",
    "DedupResult",
    "Shingles",
    "candidate_pairs",
    "centre_clusters",
    "estimate_jaccard",
    "exact_jaccard",
    "find_duplicates",
    "normalise",
    "optimal_bands",
    "shingle",
    "signatures",
    "unique",
]

HASH_BITS = 48
"""Shingle hashes are 48-bit values in ``uint64`` arrays, which leaves 16 bits for a
caller to pack a small tag beside a hash in one sortable key. 48 bits keep
collisions negligible: two unrelated shingles collide with probability 2^-48, and a
10,000-shingle document pair expects ~10^-6 spurious matches."""

_CHUNK_BYTES = 8 << 20
"""Text bytes shingled per chunk: folding and tokenising temporaries stay ~100 MB."""

EMPTY = kernels.EMPTY
"""Signature value of an empty bin, and of every position of an empty document's
signature. Real minima are clamped to ``EMPTY - 1``, so a position holding ``EMPTY``
never counts as a match (see :func:`estimate_jaccard`) and empty documents never
become candidates."""

LSH_MARGIN = 0.1
"""How far below the verification threshold :func:`find_duplicates` tunes the LSH
banding by default. Measured on 55k real paragraphs (50k corpus documents + 5k
copies with 1-3 word edits), 128 OPH positions, threshold 0.8: banding tuned for 0.7
(14 bands x 9 rows) finds 99.95% of the pairs with exact Jaccard >= 0.8 from ~4.7
candidates per true pair; margins 0.15 and 0.2 reach 99.99-100% for ~5.8 candidates
per true pair and ~15% more time. Tuned at 0.8 itself (10 x 12) recall on near-copies
falls to ~0.99 with OPH and ~0.82 with k-permutation signatures."""

# 64-bit mixing constants (splitmix64 finaliser, golden ratio, polynomial base).
# One set of constants for the numpy code here and the compiled loops, so both hash alike.
_M1, _M2, _GOLDEN, _POLY, _U32 = kernels.M1, kernels.M2, kernels.GOLDEN, kernels.POLY, kernels.U32


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective avalanche mix of ``uint64`` values (new array)."""
    z = x ^ (x >> np.uint64(30))
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def _mix_scalar(*parts: int) -> np.uint64:
    """Deterministic 64-bit mix of a few small integers (seeds, salts)."""
    acc = np.zeros(1, np.uint64)
    for p in parts:
        acc = _mix64(acc * _POLY + np.uint64(p & 0xFFFFFFFFFFFFFFFF) + _GOLDEN)
    return acc[0]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (start, count), vectorised."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(counts)
    shift = np.repeat(np.asarray(starts, np.int64) - (ends - counts), counts)
    return np.arange(total, dtype=np.int64) + shift


# ----------------------------------------------------------------------------- text


def _ascii_tables() -> tuple[np.ndarray, np.ndarray]:
    fold = np.arange(256, dtype=np.uint8)
    for b in range(128):
        ch = chr(b)
        if "A" <= ch <= "Z":
            fold[b] = ord(ch.lower())
        elif not ch.isalnum():  # controls, space, punctuation and symbols
            fold[b] = 0x20
    zero = fold.copy()
    zero[fold == 0x20] = 0
    return fold, zero


_ASCII_FOLD, _ASCII_FOLD_ZERO = _ascii_tables()
"""Byte tables: ASCII letters lowercased, every other ASCII byte but digits to a space
(``_ZERO``: to 0, which no text byte is after folding); bytes >= 0x80 (inside UTF-8
sequences) unchanged."""

_FOLD_REGEX = r"(?:[\x{80}-\x{9F}]|[^\x00-\x7F\p{L}\p{M}\p{N}\p{C}])+"
"""Non-ASCII characters folded to a space: punctuation (``\\p{P}``), symbols
(``\\p{S}``), separators (``\\p{Z}``, e.g. no-break space) and C1 controls. Written
as "not ASCII and not a letter, mark, number or other C" so the regex only matches
(and only costs) where such characters occur; the ASCII ones are the byte table's
job. Together they fold exactly ``[\\p{P}\\p{S}\\p{Z}\\p{Cc}]``."""


def _as_string_array(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.string())
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = texts.cast(pa.string())
    return texts


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets relative to the first string, utf-8 bytes) of a string array, zero-copy."""
    odt = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=odt)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = data[offsets[0] : offsets[-1]]
    return offsets - offsets[0], data


def _fold_unicode(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, UTF-8 bytes) of the texts (nulls as empty) with Unicode lowercase and
    non-ASCII punctuation folded by ``pyarrow.compute``, in the documents that hold
    non-ASCII characters only; ASCII is left for a byte table (:data:`_ASCII_FOLD`)."""
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    non_ascii = pc.invert(pc.string_is_ascii(texts))
    if pc.any(non_ascii).as_py():
        slow = texts.filter(non_ascii)
        slow = pc.replace_substring_regex(pc.utf8_lower(slow), _FOLD_REGEX, " ")
        texts = pc.replace_with_mask(texts, non_ascii, slow.cast(texts.type))
    return _string_buffers(texts)


def normalise(texts: pa.Array) -> pa.Array:
    """Lowercase, fold punctuation, symbols, separators and control characters
    (``[\\p{P}\\p{S}\\p{Z}\\p{Cc}]``) to spaces, collapse whitespace runs to one space
    and trim; nulls stay null.

    Why not one ``replace_substring_regex``: over every document that costs ~1 s per
    50k paragraphs, most of the whole dedup budget. Here ASCII goes through a
    256-entry byte table and a vectorised collapse (keep non-space bytes and the one
    space before each word that is not its string's first), and the regex only runs,
    after ``utf8_lower``, on documents holding non-ASCII characters, matching only
    non-ASCII punctuation (~20x cheaper).
    """
    texts = _as_string_array(texts)
    n = len(texts)
    if n == 0:
        return pa.array([], pa.string())
    offsets, raw = _fold_unicode(texts)
    folded = _ASCII_FOLD[raw]
    nonspace = folded != 0x20
    starts = nonspace.copy()
    starts[1:] &= ~nonspace[:-1]
    nonempty = offsets[:-1] < offsets[1:]
    first_bytes = offsets[:-1][nonempty]
    starts[first_bytes] = nonspace[first_bytes]
    word_starts = np.flatnonzero(starts)
    # The first word of each string: the first word start at or after its offset.
    first_word = np.searchsorted(word_starts, offsets[:-1][nonempty])
    keep = nonspace
    inner = np.ones(len(word_starts), dtype=bool)
    inner[first_word[first_word < len(word_starts)]] = False
    keep[word_starts[inner] - 1] = True
    dropped = np.flatnonzero(~keep)
    new_offsets = offsets - np.searchsorted(dropped, offsets)
    data = folded[keep]
    large = new_offsets[-1] >= 2**31 - 1
    out = pa.Array.from_buffers(
        pa.large_string() if large else pa.string(),
        n,
        [None, pa.py_buffer(new_offsets if large else new_offsets.astype(np.int32)), pa.py_buffer(data)],
    )
    if texts.null_count:
        out = pc.if_else(pc.is_valid(texts), out, pa.scalar(None, out.type))
    return out


@dataclass(frozen=True)
class Shingles:
    """The distinct shingle hashes of ``n`` documents in CSR form.

    ``values`` holds ``uint64`` hashes (:data:`HASH_BITS` bits used), sorted and unique
    within each document; document ``i`` owns ``values[offsets[i]:offsets[i + 1]]``.
    Two flat arrays instead of a list of sets: 8 bytes per shingle, no Python objects,
    and every later step (signatures, exact Jaccard) indexes them directly.
    """

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        """Number of distinct shingles per document (int64)."""
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        """The shingle hashes of document ``i``."""
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    @staticmethod
    def concat(parts: list[Shingles]) -> Shingles:
        """Documents of several :class:`Shingles` in order (e.g. chunk results)."""
        if not parts:
            return Shingles(np.zeros(0, np.uint64), np.zeros(1, np.int64))
        values = np.concatenate([p.values for p in parts])
        sizes = np.concatenate([p.sizes for p in parts])
        offsets = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return Shingles(values, offsets)


def _doc_chunks(offsets: np.ndarray, max_values: int, max_docs: int | None = None) -> list[tuple[int, int]]:
    """Consecutive document ranges holding at most ``max_values`` values (and
    ``max_docs`` documents) each; a larger document gets a range to itself."""
    n = len(offsets) - 1
    out = []
    lo = 0
    while lo < n:
        hi = int(np.searchsorted(offsets, offsets[lo] + max_values, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        if max_docs is not None:
            hi = min(hi, lo + max_docs)
        out.append((lo, hi))
        lo = hi
    return out


_TAGGED_DOCS = 1 << (64 - HASH_BITS)
"""Documents whose index fits the bits above a shingle hash: :func:`shingle`'s chunks."""


def _distinct_sorted(hashes: np.ndarray, offsets: np.ndarray) -> Shingles:
    """Each document's distinct hashes, sorted (at most :data:`_TAGGED_DOCS` documents).

    One numpy sort of ``document << HASH_BITS | hash`` keys, then one comparison of
    neighbours: numpy sorts ``uint64`` with SIMD, about three times as fast as sorting
    each document's few hundred hashes in a compiled loop, and numba's sort would add
    seconds to the first run's compilation."""
    docs = len(offsets) - 1
    sizes = np.diff(offsets)
    keys = np.repeat(np.arange(docs, dtype=np.uint64) << np.uint64(HASH_BITS), sizes)
    keys |= hashes
    keys.sort()
    distinct = np.empty(len(keys), dtype=bool)
    distinct[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=distinct[1:])
    keys = keys[distinct]
    counts = np.bincount((keys >> np.uint64(HASH_BITS)).astype(np.int64), minlength=docs)
    out = np.zeros(docs + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    keys &= np.uint64((1 << HASH_BITS) - 1)
    return Shingles(keys, out)


def shingle(
    texts: pa.Array,
    n: int = 5,
    kind: Literal["auto", "word", "char"] = "word",
    char_rows: np.ndarray | None = None,
) -> Shingles:
    """The distinct hashed n-grams of each normalised text (see :func:`normalise`).

    ``kind="word"``: n consecutive words; ``kind="char"``: n consecutive characters
    (spaces included), which suits text without spaces between words (Chinese,
    Japanese) and very short texts; ``kind="auto"``: characters for the rows in
    ``char_rows`` (a boolean mask; default the rows written mostly in CJK script,
    :func:`pipeline.text.cjk.cjk_rows`) and words for the others, each row shingled
    exactly as the one kind would shingle it. A text with fewer than ``n`` tokens gets one
    shingle of all its tokens (so short texts can still match exact copies of
    themselves); an empty or null text gets none. Texts are processed in chunks of at
    about 8 MB so temporaries stay bounded.

    The per-document loops (tokens, n-gram hashes) are compiled
    (:mod:`pipeline.dedup.kernels`); each chunk's hashes are then sorted and made
    distinct per document in one numpy sort (:func:`_distinct_sorted`).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if kind not in ("auto", "word", "char"):
        raise ValueError(f"kind must be 'auto', 'word' or 'char', got {kind!r}")
    texts = _as_string_array(texts)
    if kind == "auto":
        char_rows = cjk_rows(texts) if char_rows is None else np.asarray(char_rows, bool)
        if len(char_rows) != len(texts):
            raise ValueError(f"char_rows has {len(char_rows)} entries for {len(texts)} texts")
    text_offsets, _ = _string_buffers(texts)
    parts = []
    for lo, hi in _doc_chunks(text_offsets, _CHUNK_BYTES, _TAGGED_DOCS):
        chunk = texts.slice(lo, hi - lo)
        if kind == "auto":
            tokens, tok_offsets = _mixed_tokens(chunk, char_rows[lo:hi])
        else:
            tokens, tok_offsets = _tokens(chunk, kind)
        parts.append(_distinct_sorted(*kernels.ngram_hashes(tokens, tok_offsets, n, 64 - HASH_BITS)))
    if not parts:
        return Shingles(np.zeros(0, np.uint64), np.zeros(len(texts) + 1, np.int64))
    return Shingles.concat(parts)


def sketches(texts: pa.Array, n: int, kind: Literal["word", "char"], num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct shingle count, OPH signature) of each text: ``shingle(texts, n, kind)``
    then ``signatures(..., scheme="oph")``, the same numbers, in one compiled pass per
    chunk that never sorts or stores the shingles (:func:`kernels.ngram_signatures`)."""
    texts = _as_string_array(texts)
    counts, sigs = [np.zeros(0, np.int64)], [np.zeros((0, num_perm), np.uint32)]
    go_right, salt = _oph_parameters(num_perm, seed)
    text_offsets, _ = _string_buffers(texts)
    for lo, hi in _doc_chunks(text_offsets, _CHUNK_BYTES):
        tokens, tok_offsets = _tokens(texts.slice(lo, hi - lo), kind)
        c, sig = kernels.ngram_signatures(tokens, tok_offsets, n, 64 - HASH_BITS, num_perm, salt, go_right)
        counts.append(c)
        sigs.append(sig)
    return np.concatenate(counts), np.concatenate(sigs)


def tokens(texts: pa.Array, kind: Literal["word", "char"]) -> tuple[np.ndarray, np.ndarray]:
    """(token hashes, token offsets per text) that :func:`shingle` makes n-grams of."""
    return _tokens(_as_string_array(texts), kind)


def _tokens(chunk: pa.Array, kind: Literal["word", "char"]) -> tuple[np.ndarray, np.ndarray]:
    """(token hashes, token offsets per document) of a chunk of texts: words, or the
    characters of the normalised text."""
    offsets, raw = _fold_unicode(chunk)
    if kind == "word":
        return kernels.word_hashes(raw, offsets, _ASCII_FOLD_ZERO)
    # The characters of normalise()'s text, hashed in one compiled pass.
    return kernels.char_hashes(raw, offsets, _ASCII_FOLD)


def _mixed_tokens(chunk: pa.Array, char_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_tokens` of each document by its own kind: characters for ``char_rows``,
    words for the rest. The chunk is tokenised by the kind most of its rows need, only
    the other rows are copied out and tokenised again, and their tokens replace the
    first pass's; per chunk, so the arrays merged stay a few MB."""
    minority = char_rows if 2 * int(char_rows.sum()) <= len(chunk) else ~char_rows
    base_kind, other_kind = ("word", "char") if minority is char_rows else ("char", "word")
    tokens, offsets = _tokens(chunk, base_kind)
    if not minority.any():
        return tokens, offsets
    other, other_offsets = _tokens(chunk.take(pa.array(np.flatnonzero(minority))), other_kind)
    sizes = np.diff(offsets)
    sizes[minority] = np.diff(other_offsets)
    merged_offsets = np.zeros(len(chunk) + 1, np.int64)
    np.cumsum(sizes, out=merged_offsets[1:])
    # Documents keep their order in both passes, so boolean masks place each pass's tokens.
    merged = np.empty(int(merged_offsets[-1]), np.uint64)
    from_other = np.repeat(minority, sizes)
    merged[~from_other] = tokens[np.repeat(~minority, np.diff(offsets))]
    merged[from_other] = other
    return merged, merged_offsets


# ----------------------------------------------------------------------- signatures


def unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D integer array. ``np.unique`` in numpy 2.4
    hashes and then sorts; on 2.3M ``int64`` pair codes that took 2.1 s against
    0.09 s for this sort and neighbour comparison."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    distinct = np.empty(len(values), dtype=bool)
    distinct[0] = True
    np.not_equal(values[1:], values[:-1], out=distinct[1:])
    return values[distinct]


def _fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (what datasketch pre-mixes inputs with)."""
    x = x ^ (x >> np.uint32(16))
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x


def kperm_parameters(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of the ``num_perm`` permutations ``h -> a*h + b mod 2^32`` (``a`` odd),
    drawn exactly as ``datasketch.MinHash(scheme="affine32")`` draws them, so the two
    agree value for value."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def shingle_hash32(values: np.ndarray) -> np.ndarray:
    """The 32-bit input the k-permutation scheme feeds its permutations: the low
    32 bits of each shingle hash (what a datasketch ``hashfunc`` would return)."""
    return (values & _U32).astype(np.uint32)


def _kperm(sh: Shingles, num_perm: int, seed: int) -> np.ndarray:
    n = len(sh)
    sigs = np.full((n, num_perm), EMPTY, dtype=np.uint32)
    a, b = kperm_parameters(num_perm, seed)
    sizes = sh.sizes
    budget = max(1, (16 << 20) // (4 * num_perm))  # ~16 MB of (shingle, perm) values
    for lo, hi in _doc_chunks(sh.offsets, budget):
        start, stop = sh.offsets[lo], sh.offsets[hi]
        if stop == start:
            continue
        x = _fmix32(shingle_hash32(sh.values[start:stop]))
        perm = x[:, None] * a[None, :]
        perm += b[None, :]
        nonempty = np.flatnonzero(sizes[lo:hi] > 0)
        firsts = sh.offsets[lo:hi][nonempty] - start
        sigs[lo + nonempty] = np.minimum.reduceat(perm, firsts, axis=0)
    np.minimum(sigs, EMPTY - np.uint32(1), out=sigs, where=(sizes > 0)[:, None])
    return sigs


def _oph_parameters(num_perm: int, seed: int) -> tuple[np.ndarray, np.uint64]:
    """(each bin's densification direction, the shingle salt) of OPH for ``seed``."""
    go_right = (_mix64(np.arange(num_perm, dtype=np.uint64) ^ _mix_scalar(seed, 0xD1)) >> np.uint64(63)).astype(bool)
    return go_right, _mix_scalar(seed, 0x0F4)


def signatures(
    sh: Shingles,
    num_perm: int = 128,
    seed: int = 1,
    scheme: Literal["oph", "kperm"] = "oph",
) -> np.ndarray:
    """``(n, num_perm)`` ``uint32`` MinHash signatures of the shingle sets.

    ``"oph"`` (default), one-permutation hashing: each shingle is hashed once (seeded
    splitmix64), the top bits pick one of ``num_perm`` bins, the low 32 bits are the
    value, and each (document, bin) keeps its minimum; an empty bin then borrows from
    the nearest non-empty bin to its right or left (a fixed seeded coin per bin),
    rehashed with the distance ("improved densification", Shrivastava & Li 2014).
    Cost is one hash per shingle plus O(num_perm) per document, independent of
    ``num_perm`` per shingle; the loop is compiled (:mod:`pipeline.dedup.kernels`).

    ``"kperm"``, classic MinHash: ``num_perm`` permutations ``a*h + b mod 2^32`` of the
    MurmurHash3-premixed low 32 bits of each shingle hash, exactly datasketch's
    ``affine32`` scheme (same parameters for the same seed), so the values equal
    ``datasketch.MinHash(num_perm, seed, hashfunc=identity)`` fed
    :func:`shingle_hash32`. Cost is ``num_perm`` multiply-adds per shingle.

    Why OPH with rotation is the default (one process on a shared 2-core machine, real
    paragraphs of median 33 words, so most documents leave most of 128 bins empty;
    measured with the numpy versions, before the compiled loop; "optimal" is
    Shrivastava's 2017 probe-sequence densification, since removed):

    ============  ==================  =============  =============================
    scheme        signatures, 36k     MAE vs exact   LSH recall at J >= 0.8,
                  docs                Jaccard        14x9 / 10x12 bands
    ============  ==================  =============  =============================
    kperm         2.3 s               0.031          0.972 / 0.822
    oph optimal   1.1 s               0.034          0.968 / 0.816
    oph rotation  0.4 s               0.045          0.9996 / 0.991
    ============  ==================  =============  =============================

    Rotation copies neighbouring bins, so agreements and disagreements come in runs:
    the single estimate is noisier (MAE 0.045) but bands of near-duplicates collide
    more often, which is what candidate generation needs, and :func:`find_duplicates`
    verifies candidates on the exact shingle sets anyway. Use ``"kperm"`` when the
    estimate itself is the answer (``verify="estimate"``).

    Empty documents get a row of :data:`EMPTY`, which matches nothing. Other minima are
    clamped below :data:`EMPTY` (a 2^-32 distortion).
    """
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    if scheme == "oph":
        go_right, salt = _oph_parameters(num_perm, seed)
        return kernels.oph_signatures(sh.values, sh.offsets, num_perm, salt, go_right)
    if scheme == "kperm":
        return _kperm(sh, num_perm, seed)
    raise ValueError(f"scheme must be 'oph' or 'kperm', got {scheme!r}")


def _as_pairs(pairs: np.ndarray) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.size == 0:
        return pairs.reshape(0, 2)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (m, 2), got {pairs.shape}")
    return pairs


ShinglesParts = Shingles | Sequence[Shingles]
"""One :class:`Shingles`, or several (e.g. one per shard) numbered as if concatenated."""
SignatureParts = np.ndarray | Sequence[np.ndarray]
"""One ``(n, num_perm)`` signature matrix, or several numbered as if stacked."""


def _parts(x: Any) -> list[Any]:
    return [x] if isinstance(x, (Shingles, np.ndarray)) else list(x)


def _part_starts(sizes: Sequence[int]) -> np.ndarray:
    """Global index of each part's first document, and the total at the end."""
    return np.concatenate([[0], np.cumsum(np.asarray(sizes, np.int64))]).astype(np.int64)


def _by_part_pair(pairs: np.ndarray, starts: np.ndarray) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(part_a, part_b, positions, local_pairs)`` for each group of ``pairs`` whose
    two documents live in the same two parts, so each group can be worked on with
    only those two parts in memory."""
    if len(starts) == 2:
        if len(pairs):
            yield 0, 0, np.arange(len(pairs)), pairs
        return
    part_a = np.searchsorted(starts, pairs[:, 0], side="right") - 1
    part_b = np.searchsorted(starts, pairs[:, 1], side="right") - 1
    key = part_a * len(starts) + part_b
    if len(starts) ** 2 <= np.iinfo(np.int16).max:
        key = key.astype(np.int16)  # numpy sorts 16-bit keys stably by radix: linear, not n log n
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for positions in np.split(order, bounds):
        if len(positions):
            a, b = int(part_a[positions[0]]), int(part_b[positions[0]])
            yield a, b, positions, pairs[positions] - np.array([starts[a], starts[b]])


def estimate_jaccard(sigs: SignatureParts, pairs: np.ndarray) -> np.ndarray:
    """Estimated Jaccard per pair: the share of signature positions that are equal
    (and not :data:`EMPTY`, so empty documents estimate 0). ``float32``. With several
    parts, pairs are counted a pair of parts at a time, as :func:`exact_jaccard` does."""
    pairs = _as_pairs(pairs)
    parts = _parts(sigs)
    same = np.zeros(len(pairs), np.int64)

    def count(a: int, b: int, positions: np.ndarray, local: np.ndarray) -> None:
        same[positions] = _matching_positions(parts[a], parts[b], local, np.int64(EMPTY))

    _each_part_pair(pairs, _part_starts([len(p) for p in parts]), count)
    return (same / np.float32(parts[0].shape[1] if parts else 1)).astype(np.float32)


_BLOCK_ROWS = 1 << 16
"""Rows per block that :func:`kernels.matching_positions` groups pairs by."""


def _matching_positions(x: np.ndarray, y: np.ndarray, pairs: np.ndarray, empty: np.int64) -> np.ndarray:
    """:func:`kernels.matching_positions`; a large batch of pairs is cut into one
    slice per core, run on threads (the loop releases the GIL)."""
    if not len(pairs):
        return np.zeros(0, np.int64)
    threads = min(usable_cores(), 8) if len(pairs) >= 200_000 else 1
    if threads == 1:
        return kernels.matching_positions(x, y, pairs, empty, _BLOCK_ROWS)
    with ThreadPoolExecutor(threads) as pool:
        slices = np.array_split(pairs, threads)
        return np.concatenate(list(pool.map(lambda s: kernels.matching_positions(x, y, s, empty, _BLOCK_ROWS), slices)))


def estimate_prefilter(sigs: SignatureParts, min_estimate: float) -> Callable[[np.ndarray], np.ndarray]:
    """``keep(pairs) -> mask`` of the pairs whose estimated Jaccard is at least
    ``min_estimate``, on the low byte of each signature position (b-bit minwise
    hashing, Li & König 2010).

    Why bytes: filtering candidates is bound by memory, not arithmetic: each pair
    reads its two rows' signatures (1 KB at 128 positions), and split's banding at a
    million rows hands over 120 million pairs. One byte per position is a quarter of
    that. Two unrelated values share a low byte 1 time in 256, so the share of equal
    bytes is J + (1 - J) / 256, and the cut is moved by that much. A filter, not a
    verdict: the pairs it keeps are verified exactly. The bytes of all the parts are
    one array in memory, one byte per position per row (128 MB at a million rows of
    128 positions), so pairs need no grouping by part."""
    parts = _parts(sigs)
    k = parts[0].shape[1] if parts else 1
    pages = MappedPages([[p] for p in parts])
    low = np.empty((sum(len(p) for p in parts), k), np.uint8)
    at = 0
    for i, p in enumerate(parts):
        np.copyto(low[at : at + len(p)], p, casting="unsafe")  # the value mod 256
        at += len(p)
        pages.release(i)
    cut = (min_estimate * (1 - 1 / 256) + 1 / 256) * k
    return lambda pairs: _matching_positions(low, low, _as_pairs(pairs), np.int64(-1)) >= cut - 1e-9


def exact_jaccard(sh: ShinglesParts, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the shingle sets of each pair (``float64``; 0 when both are
    empty), by merging the two sorted lists of each pair in a compiled loop
    (:func:`pipeline.dedup.kernels.jaccard`): linear in the two sets, no sort.
    With several parts, pairs are grouped by the two parts they touch, so parts that
    are memory-mapped files are read a pair of parts at a time.

    Parts that are memory-mapped are dropped from the process's resident pages as each
    group of pairs is done (:class:`pipeline.memory.MappedPages`).

    Parts may instead be sources of tokens (a ``tokens(rows)`` method, an ``ngram``
    size and optionally ``memory()``, the buffers it reads, e.g.
    :class:`pipeline.dedup.signatures.TextShingles`): then only
    the candidate rows are tokenised, and each pair's n-grams are hashed into a set and
    compared there (:func:`pipeline.dedup.kernels.pair_jaccard`), the same figure
    without building sorted shingle lists."""
    pairs = _as_pairs(pairs)
    parts = _parts(sh)
    out = np.zeros(len(pairs), np.float64)
    pages = MappedPages([_memory(p) for p in parts])

    def verify(a: int, b: int, positions: np.ndarray, local: np.ndarray) -> None:
        x, y = parts[a], parts[b]
        if isinstance(x, Shingles) and isinstance(y, Shingles):
            out[positions] = kernels.jaccard(x.values, x.offsets, y.values, y.offsets, local)
        else:
            (ta, oa), (tb, ob), local = _taken(x, y, a == b, local)
            out[positions] = kernels.pair_jaccard(ta, oa, tb, ob, local, x.ngram, 64 - HASH_BITS)
        pages.release(a)
        pages.release(b)

    _each_part_pair(pairs, _part_starts([len(p) for p in parts]), verify)
    return out


def _memory(part: Any) -> list[np.ndarray | pa.Buffer]:
    """What a shingle part reads from: its arrays, or a token source's ``memory()``
    (none if it has no such method)."""
    if isinstance(part, Shingles):
        return [part.values, part.offsets]
    memory = getattr(part, "memory", None)
    return list(memory()) if memory is not None else []


def _each_part_pair(pairs: np.ndarray, starts: np.ndarray, work: Callable[[int, int, np.ndarray, np.ndarray], None]) -> None:
    """``work(part_a, part_b, positions, local_pairs)`` for each group of
    :func:`_by_part_pair`, on one thread per core.

    Why threads: a global stage's decide step runs alone in the flow's process, with
    the cores idle, and its verification is compiled kernels that release the GIL
    (re-shingling the candidate rows of ``split``: 46 of its 109 s at a million rows,
    in one thread). Groups write disjoint positions, so the result does not depend on
    the order they finish in; at most one group per thread is held at a time."""
    groups = _by_part_pair(pairs, starts)
    threads = min(usable_cores(), 8)
    if threads < 2 or len(starts) <= 2:
        for group in groups:
            work(*group)
        return
    with ThreadPoolExecutor(threads) as pool:
        running: set[Future[None]] = set()
        for group in groups:
            if len(running) >= threads:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
            running.add(pool.submit(work, *group))
        for future in running:
            future.result()


def _taken(x: Any, y: Any, same: bool, local: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The tokens of just the documents ``local`` pairs name, of two token sources
    (see :func:`exact_jaccard`), and the pairs renumbered to them. Only two parts'
    candidates are held at a time, whatever the corpus size."""
    if isinstance(x, Shingles) or isinstance(y, Shingles) or x.ngram != y.ngram:
        raise TypeError("exact_jaccard: parts must all be Shingles, or all token sources of one n-gram size")
    if same:
        rows = np.unique(local)
        taken = x.tokens(rows)
        return taken, taken, np.searchsorted(rows, local)
    out = []
    for part, column in ((x, local[:, 0]), (y, local[:, 1])):
        rows = np.unique(column)
        out.append((part.tokens(rows), np.searchsorted(rows, column)))
    (tx, ix), (ty, iy) = out
    return tx, ty, np.stack([ix, iy], axis=1)


# ------------------------------------------------------------------------------ LSH


def _gauss_legendre_area(lo: float, hi: float, rows: np.ndarray, bands: np.ndarray, num_perm: int, miss: bool) -> np.ndarray:
    """Integral over [lo, hi] of the LSH collision probability 1-(1-s^r)^b (or of its
    complement when ``miss``) for every (b, r) at once. The integrand is a polynomial of
    degree r*b <= num_perm, so Gauss-Legendre with num_perm/2+1 nodes is exact."""
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 2)
    s = (hi - lo) / 2 * nodes + (hi + lo) / 2
    p_none = (1.0 - s[None, :] ** rows[:, None]) ** bands[:, None]
    f = p_none if miss else 1.0 - p_none
    return (f * weights[None, :]).sum(axis=1) * (hi - lo) / 2


@lru_cache(maxsize=256)
def optimal_bands(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising the weighted areas
    under the LSH S-curve below ``threshold`` (false positives) and above it (false
    negatives) — the same objective and search order as datasketch's
    ``MinHashLSH._optimal_param``, with the integrals computed exactly (vectorised
    Gauss-Legendre) instead of by ``scipy.integrate.quad`` per candidate."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    bands, rows = [], []
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            bands.append(b)
            rows.append(r)
    b_arr, r_arr = np.array(bands, np.float64), np.array(rows, np.float64)
    fp = _gauss_legendre_area(0.0, threshold, r_arr, b_arr, num_perm, miss=False)
    fn = _gauss_legendre_area(threshold, 1.0, r_arr, b_arr, num_perm, miss=True)
    error = fp * false_positive_weight + fn * false_negative_weight
    best = int(np.argmin(error))  # first minimum, as datasketch's strict "<" keeps
    return bands[best], rows[best]


_BAND_SALTS = (np.arange(1, 1025, dtype=np.uint64) * _GOLDEN)
"""Per-band salt ``(band + 1) * golden`` (mod 2^64) for up to 1,024 bands."""


def _band_key(sigs: np.ndarray, band: int, rows: int) -> np.ndarray:
    """``(n,)`` ``uint64``: one hash of the ``rows`` signature values of ``band``."""
    block = sigs[:, band * rows : (band + 1) * rows]
    acc = np.zeros(len(sigs), np.uint64)
    for c in range(rows):
        acc *= _POLY
        acc += block[:, c]
    acc ^= _BAND_SALTS[band]
    return _mix64(acc)


def _group_pairs(order: np.ndarray, starts: np.ndarray, sizes: np.ndarray, max_bucket_pairs: int) -> list[np.ndarray]:
    """Pairs (as rows of documents) inside the buckets ``order[starts[g]:starts[g]+sizes[g]]``.

    Buckets with at most ``max_bucket_pairs`` pairs give all their pairs; larger
    buckets give a star (every member with the first) plus a chain (each member with
    the next), 2k-3 edges instead of k(k-1)/2.
    """
    out = []
    full = sizes * (sizes - 1) // 2 <= max_bucket_pairs
    if full.any():
        s, z = starts[full], sizes[full]
        pos = _ranges(s, z)
        end = np.repeat(s + z, z)
        d = 1
        while len(pos):
            ok = pos + d < end
            pos, end = pos[ok], end[ok]
            if not len(pos):
                break
            out.append(np.stack([order[pos], order[pos + d]], axis=1))
            d += 1
    if (~full).any():
        s, z = starts[~full], sizes[~full]
        members = _ranges(s + 1, z - 1)
        first = np.repeat(s, z - 1)
        out.append(np.stack([order[first], order[members]], axis=1))  # star
        chain = _ranges(s + 1, z - 2)
        out.append(np.stack([order[chain], order[chain + 1]], axis=1))  # chain
    return out


def _bucket_batches(sizes: np.ndarray, max_bucket_pairs: int, max_pairs: int) -> Iterator[slice]:
    """Consecutive runs of buckets (of ``sizes`` documents) that give at most
    ``max_pairs`` pairs together in :func:`_group_pairs`; a bucket that alone gives
    more is a run of its own."""
    full = sizes * (sizes - 1) // 2
    pairs = np.where(full <= max_bucket_pairs, full, 2 * sizes - 3)
    ends = np.cumsum(pairs)
    lo = 0
    while lo < len(sizes):
        hi = int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + max_pairs, side="right"))
        hi = max(hi, lo + 1)
        yield slice(lo, hi)
        lo = hi


BATCH_PAIRS = 4_000_000
"""Pairs :func:`candidate_pairs` makes from one band at a time before filtering them
(64 MB as pairs). A band's buckets can hold far more: on the scale benchmark's corpus
``split``'s banding makes about a million raw pairs per band at 400,000 rows, growing
with the square of the rows (some 50 million per band, 800 MB, at five million)."""


def candidate_pairs(
    sigs: SignatureParts,
    bands: int,
    rows: int,
    max_bucket_pairs: int = 50_000,
    keep: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """``(m, 2)`` ``int64`` unique pairs ``i < j`` whose signatures agree on all
    ``rows`` positions of at least one of ``bands`` bands.

    Each (document, band) is hashed to one ``uint64``; per band the keys are sorted and
    runs of equal keys are the buckets. A bucket of k documents holds k(k-1)/2 pairs,
    so a bucket of thousands (boilerplate, templated text) could flood verification:
    above ``max_bucket_pairs`` pairs (k > ~316 by default; on 150k real paragraphs a
    cap of 2,000 pairs lost 14% of the true pairs, 20,000 none) the bucket contributes
    only a star to its first member plus a chain through its members in document order. That
    links the whole bucket for connected components *if the links verify*; a member
    similar only to a non-neighbour that is not the first member is then found only
    through another band (with 9+ bands, usually). Empty documents (rows of
    :data:`EMPTY`) never become candidates.

    One band is grouped at a time, from the signature parts as they are (views, or
    memory-mapped files, whose pages are dropped from the process as each part is
    read, see :class:`pipeline.memory.MappedPages`): besides the pairs, memory holds one
    ``uint64`` key and one sort index per document (16 bytes per document, whatever
    ``num_perm``), and a band's pairs are made :data:`BATCH_PAIRS` at a time.
    Pairs found are kept as one ``int64`` code each (``i * n + j``) until the end.

    ``keep(pairs) -> mask``, when given, filters each batch of pairs as it is made, so
    only the survivors are ever held: with a low threshold on character shingles the
    candidates grow with the square of the rows (unrelated English documents share
    common 5-grams), 9.7 million at 200,000 rows, and holding them all took 14 GB at a
    million.
    """
    parts = [p for p in _parts(sigs) if len(p)]
    n = sum(len(p) for p in parts)
    width = parts[0].shape[1] if parts else bands * rows
    if bands < 1 or rows < 1 or bands * rows > width:
        raise ValueError(f"bands*rows must fit the {width} signature positions: {bands}x{rows}")
    pages = MappedPages([[p] for p in parts])
    live_parts = []
    for i, p in enumerate(parts):
        live_parts.append(~(p == EMPTY).all(axis=1))
        pages.release(i)
    live = np.flatnonzero(np.concatenate(live_parts)) if parts else np.zeros(0, np.int64)
    if len(live) < 2:
        return np.zeros((0, 2), np.int64)
    found: list[np.ndarray] = []
    for b in range(bands):
        keys = []
        for i, p in enumerate(parts):
            keys.append(_band_key(p, b, rows))
            pages.release(i)
        k = np.concatenate(keys)[live]
        del keys
        order = np.argsort(k, kind="stable")
        k = k[order]
        change = np.flatnonzero(k[1:] != k[:-1]) + 1
        starts = np.concatenate([[0], change])
        sizes = np.diff(np.concatenate([starts, [len(k)]]))
        multi = sizes > 1
        starts, sizes, members = starts[multi], sizes[multi], live[order]
        for batch in _bucket_batches(sizes, max_bucket_pairs, BATCH_PAIRS):
            made = _group_pairs(members, starts[batch], sizes[batch], max_bucket_pairs)
            pairs = np.concatenate(made) if len(made) != 1 else made[0]
            del made
            if keep is not None:
                pairs = pairs[keep(pairs)]
            lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
            found.append(lo * np.int64(n) + hi)
    if not found:
        return np.zeros((0, 2), np.int64)
    code = unique(np.concatenate(found))
    del found
    return np.stack([code // n, code % n], axis=1)


def centre_clusters(n: int, pairs: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Cluster label per document (``int64``): the index of its centre.

    Connected components are the wrong clusters for deduplication: a chain A~B~C of
    verified pairs joins A and C even when they share little, and boilerplate chains
    grow clusters of hundreds whose members are far from the one kept (on 165k real
    documents, 39% of the removals in clusters of 21+ were below the threshold to
    their survivor). So clusters are built around centres instead: documents are
    visited in ``order`` (the keep policy's priority; index order by default), an
    unassigned document becomes a centre, and its unassigned verified neighbours join
    it. Every non-centre then has a *direct* verified edge to its centre, and no two
    centres share one, so keeping the centres keeps no verified pair and drops nothing
    that was not verified against what was kept. A singleton is its own centre.
    """
    pairs = _as_pairs(pairs)
    labels = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return labels
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    by_src = np.argsort(src, kind="stable")
    src, dst = src[by_src], dst[by_src]
    starts = np.searchsorted(src, np.arange(n + 1))
    rank = np.arange(n, dtype=np.int64)
    if order is not None:
        rank[np.asarray(order, dtype=np.int64)] = np.arange(n, dtype=np.int64)
    nodes = unique(src)
    assigned = np.full(n, -1, dtype=np.int64)
    for doc in nodes[np.argsort(rank[nodes], kind="stable")].tolist():
        if assigned[doc] >= 0:
            continue
        assigned[doc] = doc
        neighbours = dst[starts[doc] : starts[doc + 1]]
        assigned[neighbours[assigned[neighbours] < 0]] = doc
    linked = assigned >= 0
    labels[linked] = assigned[linked]
    return labels


@dataclass
class DedupResult:
    """What :func:`find_duplicates` found.

    ``cluster``: label per document (``int64``), the index of its cluster's centre
    (:func:`centre_clusters`); a document without verified duplicates is its own
    label. Keep the documents with ``cluster == arange(n)``: the centres, chosen in
    ``order``.
    """

    cluster: np.ndarray
    pairs: np.ndarray
    """Verified edges ``(m, 2)``, ``i < j``."""
    similarity: np.ndarray
    """Jaccard of each verified edge: exact for ``verify="exact"``, else estimated."""
    candidates: int
    """Candidate pairs from LSH before verification."""
    bands: int
    rows: int

    @property
    def duplicates(self) -> np.ndarray:
        """Boolean mask of the documents that are not their cluster's centre."""
        return self.cluster != np.arange(len(self.cluster))


def find_duplicates(
    sh: ShinglesParts,
    sigs: SignatureParts,
    threshold: float = 0.8,
    bands: int | None = None,
    rows: int | None = None,
    verify: Literal["exact", "estimate", "none"] = "exact",
    lsh_threshold: float | None = None,
    max_bucket_pairs: int = 50_000,
    order: np.ndarray | None = None,
    min_estimate: float | None = None,
) -> DedupResult:
    """Near-duplicate clusters: LSH candidates, verified, then connected components.

    The banding is tuned (:func:`optimal_bands`) to ``lsh_threshold``, by default
    ``threshold - LSH_MARGIN``: lower than the verification threshold so that pairs
    just above ``threshold`` are still almost surely candidates. ``verify`` then
    keeps the candidate pairs whose Jaccard is at least ``threshold``: ``"exact"`` on
    the shingle sets (after a free size filter: J <= min/max of the set sizes),
    ``"estimate"`` on the signatures, ``"none"`` keeps every candidate. Clusters are
    built around centres over the kept edges only (:func:`centre_clusters`, visiting
    documents in ``order``), so every document dropped has a verified edge to the one
    kept in its place.

    ``min_estimate``: drop candidates whose signature estimate (on one byte per
    position, :func:`estimate_prefilter`) is below it, band by band as they are found
    (see ``keep`` in :func:`candidate_pairs`), before they are verified; memory then
    holds the survivors only. Set well below ``threshold`` (the estimate of a pair at 0.5 has a
    standard deviation of about 0.045 with 128 positions), it drops unrelated pairs,
    not near copies.
    """
    sh_parts, sig_parts = _parts(sh), _parts(sigs)
    n = sum(len(p) for p in sig_parts)
    num_perm = sig_parts[0].shape[1] if sig_parts else 1
    if [len(p) for p in sh_parts] != [len(p) for p in sig_parts]:
        raise ValueError(f"shingle parts of {[len(p) for p in sh_parts]} documents but signature parts of {[len(p) for p in sig_parts]}")
    if bands is None and rows is None:
        tuned = lsh_threshold if lsh_threshold is not None else max(threshold - LSH_MARGIN, 0.0)
        bands, rows = optimal_bands(tuned, num_perm)
    elif bands is None:
        bands = num_perm // rows
    elif rows is None:
        rows = num_perm // bands
    keep = estimate_prefilter(sig_parts, min_estimate) if min_estimate is not None else None
    cand = candidate_pairs(sigs, bands, rows, max_bucket_pairs, keep)
    if verify == "exact":
        sizes = np.concatenate([p.sizes for p in sh_parts]) if sh_parts else np.zeros(0, np.int64)
        small = np.minimum(sizes[cand[:, 0]], sizes[cand[:, 1]])
        large = np.maximum(sizes[cand[:, 0]], sizes[cand[:, 1]])
        possible = cand[small >= threshold * large - 1e-9]
        sim = exact_jaccard(sh, possible)
        keep = sim >= threshold
        pairs, sim = possible[keep], sim[keep]
    elif verify == "estimate":
        sim = estimate_jaccard(sigs, cand).astype(np.float64)
        keep = sim >= threshold
        pairs, sim = cand[keep], sim[keep]
    elif verify == "none":
        pairs, sim = cand, estimate_jaccard(sigs, cand).astype(np.float64)
    else:
        raise ValueError(f"verify must be 'exact', 'estimate' or 'none', got {verify!r}")
    return DedupResult(
        cluster=centre_clusters(n, pairs, order),
        pairs=pairs,
        similarity=sim,
        candidates=len(cand),
        bands=bands,
        rows=rows,
    )
