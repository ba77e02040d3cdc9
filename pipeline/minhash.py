"""MinHash near-duplicate detection as whole-array numpy/pyarrow operations.

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

Memory stays bounded: shingling, signatures and verification work through the
documents (or pairs) in chunks, so temporaries scale with the chunk, not the corpus.
What has to be held for the whole corpus is the shingle CSR (8 bytes per distinct
shingle) and the signature matrix (``4 * num_perm`` bytes per document).

Nothing here knows about Prefect or stages; ``pipeline.stages`` builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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
]

HASH_BITS = 48
"""Shingle hashes are 48-bit values in ``uint64`` arrays. The spare 16 bits let a
chunk of up to 65,536 documents (or pairs) be sorted by (document, hash) with one
``np.sort`` of a single ``uint64`` key instead of a two-key ``np.lexsort`` (about 15x
faster on 2M shingles). 48 bits keep collisions negligible: two unrelated shingles
collide with probability 2^-48, and a 10,000-shingle document pair expects ~10^-6
spurious matches."""

_HASH_MASK = np.uint64((1 << HASH_BITS) - 1)
_LOCAL_BITS = 64 - HASH_BITS
_CHUNK_DOCS = 1 << _LOCAL_BITS
"""Documents (or pairs) per chunk in the sort-based steps: they fit the spare bits."""

EMPTY = np.uint32(0xFFFFFFFF)
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
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_POLY = np.uint64(0xFF51AFD7ED558CCD)
_U32 = np.uint64(0xFFFFFFFF)


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


def _fold(texts: pa.Array, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, folded bytes) of the texts (nulls as empty): Unicode lowercase and
    non-ASCII punctuation folded by ``pyarrow.compute`` in the documents that need
    it, then every byte through ``table``. Whitespace is not collapsed yet."""
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    non_ascii = pc.invert(pc.string_is_ascii(texts))
    if pc.any(non_ascii).as_py():
        slow = texts.filter(non_ascii)
        slow = pc.replace_substring_regex(pc.utf8_lower(slow), _FOLD_REGEX, " ")
        texts = pc.replace_with_mask(texts, non_ascii, slow.cast(texts.type))
    offsets, raw = _string_buffers(texts)
    return offsets, table[raw]


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
    offsets, folded = _fold(texts, _ASCII_FOLD)
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


_position_keys = np.zeros(0, np.uint64)


def _position_table(length: int) -> np.ndarray:
    """Random 64-bit keys ``T[p]`` for byte positions ``p`` within a word (grown on
    demand, deterministic)."""
    global _position_keys
    if len(_position_keys) < length:
        size = max(length, 2 * len(_position_keys), 64)
        _position_keys = _mix64(np.arange(size, dtype=np.uint64) * _GOLDEN + np.uint64(0x5EED)) | np.uint64(1)
    return _position_keys


def _word_tokens(offsets: np.ndarray, folded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(word hashes, word offsets per document) from folded bytes in which every
    separator is 0 (see :func:`_fold`).

    A word is a maximal run of non-zero bytes, exactly a word of :func:`normalise`'s
    output. Its hash is multilinear, ``mix64(sum_p byte_p * T[p])`` over its bytes with
    random odd 64-bit keys per position, computed for all words at once with one
    ``np.add.reduceat`` over the segments between word starts (the separators in a
    segment add 0). That is ~3x faster than ``dictionary_encode`` + hashing the unique
    words, and unlike a polynomial hash mod 2^64 it has no structured collisions
    (distinct words collide with probability ~2^-57).
    """
    n = len(offsets) - 1
    nonzero = folded != 0
    starts = nonzero.copy()
    starts[1:] &= ~nonzero[:-1]
    firsts = offsets[:-1][offsets[:-1] < offsets[1:]]
    starts[firsts] = nonzero[firsts]
    word_starts = np.flatnonzero(starts)
    if len(word_starts) == 0:
        return np.zeros(0, np.uint64), np.zeros(n + 1, np.int64)
    base = word_starts[0]
    rel = word_starts - base
    seg = np.diff(rel, append=len(folded) - base)
    idx_dtype = np.int32 if len(folded) < 2**31 else np.int64
    pos = np.arange(len(folded) - base, dtype=idx_dtype)
    pos -= np.repeat(rel.astype(idx_dtype), seg)
    keys = _position_table(int(seg.max()))
    terms = keys[pos]
    terms *= folded[base:]
    hashes = _mix64(np.add.reduceat(terms, rel))
    word_offsets = np.searchsorted(word_starts, offsets, side="left").astype(np.int64)
    return hashes, word_offsets


def _char_tokens(offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(character hashes, character offsets per document) of normalised UTF-8 text.

    A code point's UTF-8 bytes (at most 4) are packed into one integer and mixed, so
    characters are compared as characters, not bytes.
    """
    n = len(offsets) - 1
    if len(data) == 0:
        return np.zeros(0, np.uint64), np.zeros(n + 1, np.int64)
    lead = (data & 0xC0) != 0x80
    starts = np.flatnonzero(lead)
    if lead.all():  # pure ASCII: one byte per character
        packed = data.astype(np.uint64)
    else:
        char_id = np.cumsum(lead) - 1
        shift = ((np.arange(len(data), dtype=np.int64) - starts[char_id]) * 8).astype(np.uint64)
        packed = np.bitwise_or.reduceat(data.astype(np.uint64) << shift, starts)
    hashes = _mix64(packed + _GOLDEN)
    tok_offsets = np.searchsorted(starts, offsets, side="left").astype(np.int64)
    return hashes, tok_offsets


def _ngrams(tokens: np.ndarray, tok_offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n-gram hashes, owning document) of every n-gram that stays within a document;
    a document with 1..n-1 tokens gets one hash of all its tokens.

    The n-gram hash is a polynomial over the token hashes (order matters), computed on
    shifted views of the whole token array, then masked to the n-grams that end in the
    document they start in and finished with the splitmix64 finaliser, salted with the
    gram length so a short document's whole-text gram is not an n-gram hash.
    """
    lengths = np.diff(tok_offsets)
    docs = np.arange(len(lengths), dtype=np.int64)
    grams, owners = [], []
    span = len(tokens) - n + 1
    if span > 0:
        acc = tokens[:span].copy()
        for k in range(1, n):
            acc *= _POLY
            acc += tokens[k : k + span]
        owner = np.repeat(docs, lengths)[:span]
        valid = np.arange(n, span + n, dtype=np.int64) <= tok_offsets[1:][owner]
        acc = acc[valid]
        acc += np.uint64((n * int(_GOLDEN)) & 0xFFFFFFFFFFFFFFFF)
        grams.append(_mix64(acc))
        owners.append(owner[valid])
    short = (lengths > 0) & (lengths < n)
    if short.any():
        start = tok_offsets[:-1][short]
        length = lengths[short]
        acc = tokens[start].copy()
        for k in range(1, n - 1):
            more = length > k
            acc[more] = acc[more] * _POLY + tokens[start[more] + k]
        acc += length.astype(np.uint64) * np.full(1, _GOLDEN)
        grams.append(_mix64(acc))
        owners.append(docs[short])
    if not grams:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(grams), np.concatenate(owners)


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


def _sorted_unique(hashes: np.ndarray, owner: np.ndarray, n_docs: int) -> Shingles:
    """Per-document sort + dedup of (owner, hash) with one ``np.sort`` of a packed key
    (``owner`` < 2^16 in the high bits, the top 48 hash bits below)."""
    key = (owner.astype(np.uint64) << np.uint64(HASH_BITS)) | (hashes >> np.uint64(_LOCAL_BITS))
    key.sort()
    if len(key):
        distinct = np.empty(len(key), dtype=bool)
        distinct[0] = True
        np.not_equal(key[1:], key[:-1], out=distinct[1:])
        key = key[distinct]
    counts = np.bincount((key >> np.uint64(HASH_BITS)).astype(np.int64), minlength=n_docs)
    offsets = np.zeros(n_docs + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Shingles(key & _HASH_MASK, offsets)


def shingle(texts: pa.Array, n: int = 5, kind: Literal["word", "char"] = "word") -> Shingles:
    """The distinct hashed n-grams of each normalised text (see :func:`normalise`).

    ``kind="word"``: n consecutive words; ``kind="char"``: n consecutive characters
    (spaces included), which suits text without spaces between words (Chinese,
    Japanese) and very short texts. A text with fewer than ``n`` tokens gets one
    shingle of all its tokens (so short texts can still match exact copies of
    themselves); an empty or null text gets none. Texts are processed in chunks of at
    most 65,536 documents and ~8 MB so temporaries stay bounded.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if kind not in ("word", "char"):
        raise ValueError(f"kind must be 'word' or 'char', got {kind!r}")
    texts = _as_string_array(texts)
    text_offsets, _ = _string_buffers(texts)
    parts = []
    for lo, hi in _doc_chunks(text_offsets, 8 << 20, _CHUNK_DOCS):
        chunk = texts.slice(lo, hi - lo)
        if kind == "word":
            tokens, tok_offsets = _word_tokens(*_fold(chunk, _ASCII_FOLD_ZERO))
        else:
            tokens, tok_offsets = _char_tokens(*_string_buffers(pc.fill_null(normalise(chunk), "")))
        grams, owner = _ngrams(tokens, tok_offsets, n)
        parts.append(_sorted_unique(grams, owner, hi - lo))
    if not parts:
        return Shingles(np.zeros(0, np.uint64), np.zeros(len(texts) + 1, np.int64))
    return Shingles.concat(parts)


# ----------------------------------------------------------------------- signatures


def _owners(offsets: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))




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


@lru_cache(maxsize=32)
def _probe_table(num_perm: int, seed: int, attempts: int) -> np.ndarray:
    """``probe[t, j]``: the bin that empty bin ``j`` borrows from at attempt ``t``
    (a fixed seeded hash of (j, t), the same for every document)."""
    t = np.arange(1, attempts + 1, dtype=np.uint64)[:, None]
    j = np.arange(num_perm, dtype=np.uint64)[None, :]
    salt = _mix_scalar(seed, 0x0DE5)
    h = _mix64((t * np.uint64(num_perm) + j) * _GOLDEN ^ salt)
    return ((h >> np.uint64(32)) * np.uint64(num_perm) >> np.uint64(32)).astype(np.int64)


_DENSIFY_ATTEMPTS = 64


def _densify(sigs: np.ndarray, seed: int) -> None:
    """Fill empty bins of non-empty rows in place (Shrivastava 2017, "optimal
    densification"): empty bin ``j`` copies bin ``probe(j, t)`` for the first attempt
    ``t`` that hits a non-empty bin. The probe sequence depends only on (j, t, seed), so
    two documents whose bins agree get the same fill, keeping the estimate unbiased
    with less variance than copying the nearest neighbour bin. Bins still empty after
    :data:`_DENSIFY_ATTEMPTS` attempts (documents with very few shingles) take the next
    non-empty bin to the right, circularly: also a function of the bins alone."""
    n, k = sigs.shape
    empty_bin = sigs == EMPTY
    nonempty_doc = ~empty_bin.all(axis=1)
    rows, cols = np.nonzero(empty_bin & nonempty_doc[:, None])
    if len(rows) == 0:
        return
    filled = sigs.copy()
    probe = _probe_table(k, seed, _DENSIFY_ATTEMPTS)
    flat = sigs.reshape(-1)
    for t in range(_DENSIFY_ATTEMPTS):
        src = flat[rows * k + probe[t, cols]]
        hit = src != EMPTY
        filled[rows[hit], cols[hit]] = src[hit]
        rows, cols = rows[~hit], cols[~hit]
        if len(rows) == 0:
            break
    if len(rows):
        # Next non-empty bin to the right (circular) of each remaining bin.
        for d in range(1, k):
            src = flat[rows * k + (cols + d) % k]
            hit = src != EMPTY
            filled[rows[hit], cols[hit]] = src[hit]
            rows, cols = rows[~hit], cols[~hit]
            if len(rows) == 0:
                break
    sigs[...] = filled


def _densify_rotation(binmins: np.ndarray, seed: int) -> None:
    """Fill the empty bins of non-empty documents in place, ``binmins`` being
    ``(num_perm, docs)`` (bins as rows, so every step below is a whole-row vector op).

    "Improved densification" (Shrivastava & Li 2014): empty bin ``j`` borrows from the
    nearest non-empty bin to its right or to its left (circularly; the direction is a
    fixed seeded coin per bin), and the borrowed value is rehashed with the distance
    so it cannot equal a value another document holds in bin ``j`` itself. The nearest
    non-empty bins come from running minima/maxima of bin indices down the bins.
    """
    k, m = binmins.shape
    if m == 0:
        return
    empty = binmins == EMPTY
    if not empty.any():
        return
    go_right = (_mix64(np.arange(k, dtype=np.uint64) ^ _mix_scalar(seed, 0xD1)) >> np.uint64(63)).astype(bool)
    # Key (bin + 1) << 32 | value of every non-empty bin: a running minimum from the
    # right gives, in one uint64, the nearest non-empty bin at or right of each bin and
    # its value; a running maximum from the left the nearest one at or left of it.
    # (Row-by-row ufunc calls: ~50x faster than ufunc.accumulate along axis 0.)
    pos1 = (np.arange(k, dtype=np.uint64) + np.uint64(1))[:, None]
    keys = (pos1 << np.uint64(32)) | binmins
    none = np.uint64(0xFFFFFFFFFFFFFFFF)
    right = np.where(empty, none, keys)
    for j in range(k - 2, -1, -1):
        np.minimum(right[j], right[j + 1], out=right[j])
    wrap_r = right == none  # nothing to the right: wrap to the first non-empty bin
    right = np.where(wrap_r, right[0], right)
    left = np.where(empty, np.uint64(0), keys)
    for j in range(1, k):
        np.maximum(left[j], left[j - 1], out=left[j])
    wrap_l = left == 0  # nothing to the left: wrap to the last non-empty bin
    left = np.where(wrap_l, left[-1], left)
    src_r = (right >> np.uint64(32)).astype(np.int64) + np.where(wrap_r, k, 0)
    src_l = (left >> np.uint64(32)).astype(np.int64) - np.where(wrap_l, k, 0)
    here = pos1.astype(np.int64)
    dist = np.where(go_right[:, None], src_r - here, here - src_l).astype(np.uint32)
    val = (np.where(go_right[:, None], right, left) & _U32).astype(np.uint32)
    dist *= np.uint32(0x9E3779B9)
    val ^= dist
    borrowed = _fmix32(val)
    np.minimum(borrowed, EMPTY - np.uint32(1), out=borrowed)
    live = ~empty.all(axis=0)  # empty documents stay all-EMPTY
    np.copyto(binmins, borrowed, where=empty & live[None, :])


def _oph(sh: Shingles, num_perm: int, seed: int, densify: str) -> np.ndarray:
    n = len(sh)
    sigs = np.full((n, num_perm), EMPTY, dtype=np.uint32)
    salt = _mix_scalar(seed, 0x0F4)
    k = np.uint64(num_perm)
    # ~2 MB of bins per chunk: the densification temporaries stay cache-sized and are
    # reused by the allocator instead of being page-faulted in afresh.
    max_docs = max(1, (2 << 20) // (4 * num_perm))
    for lo, hi in _doc_chunks(sh.offsets, 1 << 22, max_docs):
        m = hi - lo
        start, stop = sh.offsets[lo], sh.offsets[hi]
        binmins = np.full((num_perm, m), EMPTY, dtype=np.uint32)
        if stop > start:
            h = _mix64(sh.values[start:stop] ^ salt)
            bins = (((h >> np.uint64(32)) * k) >> np.uint64(32)).astype(np.int64)  # fastrange: uniform in [0, k)
            vals = np.minimum(h & _U32, np.uint64(EMPTY - 1)).astype(np.uint32)
            owner = _owners(sh.offsets[lo : hi + 1] - start)
            np.minimum.at(binmins.reshape(-1), bins * m + owner, vals)
        if densify == "rotation":
            _densify_rotation(binmins, seed)
            sigs[lo:hi] = binmins.T
        else:
            rows = np.ascontiguousarray(binmins.T)
            _densify(rows, seed)
            sigs[lo:hi] = rows
    return sigs


def signatures(
    sh: Shingles,
    num_perm: int = 128,
    seed: int = 1,
    scheme: Literal["oph", "kperm"] = "oph",
    *,
    densify: Literal["rotation", "optimal"] = "rotation",
) -> np.ndarray:
    """``(n, num_perm)`` ``uint32`` MinHash signatures of the shingle sets.

    ``"oph"`` (default), one-permutation hashing: each shingle is hashed once (seeded
    splitmix64), the top bits pick one of ``num_perm`` bins, the low 32 bits are the
    value, and each (document, bin) keeps its minimum; empty bins are then filled
    from non-empty ones (densification, see ``densify``). Cost is one hash per shingle
    plus O(num_perm) per document, independent of ``num_perm`` per shingle.

    ``"kperm"``, classic MinHash: ``num_perm`` permutations ``a*h + b mod 2^32`` of the
    MurmurHash3-premixed low 32 bits of each shingle hash, exactly datasketch's
    ``affine32`` scheme (same parameters for the same seed), so the values equal
    ``datasketch.MinHash(num_perm, seed, hashfunc=identity)`` fed
    :func:`shingle_hash32`. Cost is ``num_perm`` multiply-adds per shingle.

    ``densify`` picks how OPH fills the bins no shingle fell into: ``"rotation"``
    (default, :func:`_densify_rotation`) or ``"optimal"`` (:func:`_densify`).

    Why OPH with rotation is the default (one process on a shared 2-core machine, real
    paragraphs of median 33 words, so most documents leave most of 128 bins empty):

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
    verifies candidates on the exact shingle sets anyway. Use ``"kperm"`` (or
    ``densify="optimal"``) when the estimate itself is the answer
    (``verify="estimate"``).

    Empty documents get a row of :data:`EMPTY`, which matches nothing. Other minima are
    clamped below :data:`EMPTY` (a 2^-32 distortion).
    """
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    if scheme == "oph":
        if densify not in ("rotation", "optimal"):
            raise ValueError(f"densify must be 'rotation' or 'optimal', got {densify!r}")
        return _oph(sh, num_perm, seed, densify)
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


def estimate_jaccard(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Estimated Jaccard per pair: the share of signature positions that are equal
    (and not :data:`EMPTY`, so empty documents estimate 0). ``float32``."""
    pairs = _as_pairs(pairs)
    out = np.zeros(len(pairs), np.float32)
    k = sigs.shape[1]
    step = max(1, (32 << 20) // max(1, k))
    for lo in range(0, len(pairs), step):
        p = pairs[lo : lo + step]
        a, b = sigs[p[:, 0]], sigs[p[:, 1]]
        same = (a == b) & (a != EMPTY)
        out[lo : lo + step] = same.sum(axis=1, dtype=np.int64) / np.float32(k)
    return out


def exact_jaccard(sh: Shingles, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the shingle sets of each pair (``float64``; 0 when both are
    empty).

    Vectorised by sorting, in chunks of at most 65,536 pairs and ~4M hashes: both
    documents' hashes are gathered and tagged with the pair's position in the chunk
    (high 16 bits of one ``uint64`` key), sorted once, and since each set is duplicate
    free, every pair of equal neighbours is one shared shingle.
    """
    pairs = _as_pairs(pairs)
    m = len(pairs)
    out = np.zeros(m, np.float64)
    if m == 0:
        return out
    sizes = sh.sizes
    la, lb = sizes[pairs[:, 0]], sizes[pairs[:, 1]]
    cost = np.cumsum(la + lb)
    packed = len(sh.values) == 0 or int(sh.values.max()) <= int(_HASH_MASK)
    lo = 0
    while lo < m:
        base = cost[lo - 1] if lo else 0
        hi = int(np.searchsorted(cost, base + (4 << 20), side="right"))
        hi = min(max(hi, lo + 1), lo + _CHUNK_DOCS, m)
        p = pairs[lo:hi]
        a_len, b_len = la[lo:hi], lb[lo:hi]
        both = np.empty(2 * len(p), np.int64)
        both[0::2], both[1::2] = p[:, 0], p[:, 1]
        counts = sizes[both]
        idx = _ranges(sh.offsets[both], counts)
        tag = np.repeat(np.arange(len(p), dtype=np.int64), a_len + b_len)
        vals = sh.values[idx]
        if packed:
            key = (tag.astype(np.uint64) << np.uint64(HASH_BITS)) | vals
            key.sort()
            eq = np.flatnonzero(key[1:] == key[:-1])
            shared_tag = (key[eq] >> np.uint64(HASH_BITS)).astype(np.int64)
        else:  # values wider than HASH_BITS (hand-built Shingles): two-key sort
            order = np.lexsort((vals, tag))
            t, v = tag[order], vals[order]
            eq = np.flatnonzero((t[1:] == t[:-1]) & (v[1:] == v[:-1]))
            shared_tag = t[eq]
        inter = np.bincount(shared_tag, minlength=len(p)).astype(np.float64)
        union = a_len + b_len - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:hi] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        lo = hi
    return out


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


def _band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(n, bands)`` ``uint64``: one hash of each band's ``rows`` signature values."""
    n = sigs.shape[0]
    block = sigs[:, : bands * rows].reshape(n, bands, rows)
    acc = np.zeros((n, bands), np.uint64)
    for c in range(rows):
        acc *= _POLY
        acc += block[:, :, c]
    acc ^= (np.arange(bands, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
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


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int, max_bucket_pairs: int = 50_000) -> np.ndarray:
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
    """
    n = sigs.shape[0]
    if bands < 1 or rows < 1 or bands * rows > sigs.shape[1]:
        raise ValueError(f"bands*rows must fit the {sigs.shape[1]} signature positions: {bands}x{rows}")
    live = np.flatnonzero(~(sigs == EMPTY).all(axis=1))
    if len(live) < 2:
        return np.zeros((0, 2), np.int64)
    keys = _band_keys(sigs[live], bands, rows)
    found: list[np.ndarray] = []
    for b in range(bands):
        order = np.argsort(keys[:, b], kind="stable")
        k = keys[order, b]
        change = np.flatnonzero(k[1:] != k[:-1]) + 1
        starts = np.concatenate([[0], change])
        sizes = np.diff(np.concatenate([starts, [len(k)]]))
        multi = sizes > 1
        if multi.any():
            found.extend(_group_pairs(live[order], starts[multi], sizes[multi], max_bucket_pairs))
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found)
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    code = np.unique(lo * np.int64(n) + hi)
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
    nodes = np.unique(src)
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
    sh: Shingles,
    sigs: np.ndarray,
    threshold: float = 0.8,
    bands: int | None = None,
    rows: int | None = None,
    verify: Literal["exact", "estimate", "none"] = "exact",
    lsh_threshold: float | None = None,
    max_bucket_pairs: int = 50_000,
    order: np.ndarray | None = None,
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
    """
    n, num_perm = sigs.shape
    if len(sh) != n:
        raise ValueError(f"{len(sh)} shingled documents but {n} signatures")
    if bands is None and rows is None:
        tuned = lsh_threshold if lsh_threshold is not None else max(threshold - LSH_MARGIN, 0.0)
        bands, rows = optimal_bands(tuned, num_perm)
    elif bands is None:
        bands = num_perm // rows
    elif rows is None:
        rows = num_perm // bands
    cand = candidate_pairs(sigs, bands, rows, max_bucket_pairs)
    if verify == "exact":
        sizes = sh.sizes
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
