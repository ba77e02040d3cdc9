"""Compiled inner loops of :mod:`pipeline.dedup.minhash` (numba, ``nopython`` mode).

Why compiled code here: near-deduplication is the pipeline's hot path, and the steps
below are loops over each document's bytes, tokens, shingles or bins, or over each
candidate pair's two shingle lists. As whole-array numpy they cost many passes over
memory (sorting ``(document, hash)`` keys to deduplicate, scattering minima with
``ufunc.at``, 25 full-array passes to densify bins, sorting both shingle lists of every
pair to intersect them); on this project's 2-core machines those passes, not
arithmetic, were the bottleneck. One compiled pass per document or pair does the same
work 3-10x faster (figures in ``benchmarks/dedup.py``'s output), with the same
results bit for bit as the numpy versions they replaced.

The kernels are single-threaded and release the GIL (``nogil=True``): the stage runs
them once per shard, and Prefect's thread pool (``.map`` over shards) then keeps every
core busy with no process start-up or pickling. Threads inside a kernel would only
compete with those, and numba's threading layers are either not thread-safe or not
fork-safe. Compiled code is cached next to this module (``cache=True``), so only
the first run on a machine pays the few seconds of compilation.

Every hash function here matches its numpy counterpart in :mod:`pipeline.dedup.minhash`
(``_mix64``, ``_fmix32``, the constants) so results do not depend on which side
computed them.
"""

from __future__ import annotations

import numba
import numpy as np

M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
POLY = np.uint64(0xFF51AFD7ED558CCD)
U32 = np.uint64(0xFFFFFFFF)
"""64-bit mixing constants (splitmix64 finaliser, golden ratio, polynomial base), shared
with :mod:`pipeline.dedup.minhash`."""
EMPTY = np.uint32(0xFFFFFFFF)
_MAX_VALUE = np.uint32(0xFFFFFFFE)
_GOLDEN32 = np.uint64(0x9E3779B9)


@numba.njit(cache=True, inline="always")
def _mix64(z: np.uint64) -> np.uint64:
    z = z ^ (z >> np.uint64(30))
    z = z * M1
    z = z ^ (z >> np.uint64(27))
    z = z * M2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _fmix32(x: np.uint64) -> np.uint32:
    """MurmurHash3's 32-bit finaliser, on a ``uint64`` holding 32 bits (numba widens
    ``uint32`` products, so the wrap-around is done by masking)."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x85EBCA6B)) & U32
    x = x ^ (x >> np.uint64(13))
    x = (x * np.uint64(0xC2B2AE35)) & U32
    return np.uint32(x ^ (x >> np.uint64(16)))


@numba.njit(cache=True)
def _position_key(p: int) -> np.uint64:
    """The random odd 64-bit key of byte position ``p`` within a word."""
    return _mix64(np.uint64(p) * GOLDEN + np.uint64(0x5EED)) | np.uint64(1)


@numba.njit(cache=True, nogil=True)
def word_hashes(raw: np.ndarray, offsets: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(word hashes, word offsets per document) of UTF-8 bytes, each byte first mapped
    through the 256-entry table ``fold`` (case folded, separators to 0): a word is a
    maximal run of non-zero folded bytes within a document, and its hash the
    multilinear ``mix64(sum_p byte_p * key(p))`` over its bytes (random odd 64-bit
    keys per position: no structured collisions, unlike a polynomial hash mod 2^64)."""
    n = len(offsets) - 1
    keys = np.empty(64, np.uint64)
    for p in range(64):
        keys[p] = _position_key(p)
    tok_offsets = np.zeros(n + 1, np.int64)
    for d in range(n):
        count = 0
        prev = 0
        for i in range(offsets[d], offsets[d + 1]):
            b = fold[raw[i]]
            if b != 0 and prev == 0:
                count += 1
            prev = b
        tok_offsets[d + 1] = tok_offsets[d] + count
    out = np.empty(tok_offsets[n], np.uint64)
    for d in range(n):
        w = tok_offsets[d]
        acc = np.uint64(0)
        p = 0
        for i in range(offsets[d], offsets[d + 1]):
            b = fold[raw[i]]
            if b != 0:
                key = keys[p] if p < 64 else _position_key(p)
                acc += np.uint64(b) * key
                p += 1
            elif p:
                out[w] = _mix64(acc)
                w += 1
                acc = np.uint64(0)
                p = 0
        if p:
            out[w] = _mix64(acc)
    return out, tok_offsets


@numba.njit(cache=True, inline="always")
def _doc_ngrams(tokens: np.ndarray, start: int, length: int, n: int, bits: np.uint64, out: np.ndarray, at: int) -> int:
    """Write the n-gram hashes of one document (tokens ``start`` to ``start+length``)
    to ``out[at:]``, repeats included; returns how many. An n-gram's hash is a
    polynomial over its token hashes (order matters), salted with ``n`` and finished
    with splitmix64; a document with 1..n-1 tokens gets one hash of all its tokens,
    salted with its length. Hashes are shifted right by ``bits``."""
    if length >= n:
        salt = np.uint64(n) * GOLDEN
        for i in range(length - n + 1):
            acc = tokens[start + i]
            for k in range(1, n):
                acc = acc * POLY + tokens[start + i + k]
            out[at + i] = _mix64(acc + salt) >> bits
        return length - n + 1
    if length > 0:
        acc = tokens[start]
        for k in range(1, length):
            acc = acc * POLY + tokens[start + k]
        out[at] = _mix64(acc + np.uint64(length) * GOLDEN) >> bits
        return 1
    return 0


@numba.njit(cache=True, inline="always")
def _ngram_room(length: int, n: int) -> int:
    """How many n-gram hashes :func:`_doc_ngrams` writes for ``length`` tokens."""
    return length - n + 1 if length >= n else min(length, 1)


@numba.njit(cache=True, inline="always")
def _most_ngrams(tok_offsets: np.ndarray, n: int) -> int:
    """The most n-gram hashes :func:`_doc_ngrams` writes for one of the documents."""
    most = 0
    for d in range(len(tok_offsets) - 1):
        most = max(most, _ngram_room(tok_offsets[d + 1] - tok_offsets[d], n))
    return most


@numba.njit(cache=True, nogil=True)
def ngram_hashes(tokens: np.ndarray, tok_offsets: np.ndarray, n: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Every n-gram hash (:func:`_doc_ngrams`) of each document, repeats included, in
    document order, as (values, offsets)."""
    docs = len(tok_offsets) - 1
    room = np.zeros(docs + 1, np.int64)
    for d in range(docs):
        room[d + 1] = room[d] + _ngram_room(tok_offsets[d + 1] - tok_offsets[d], n)
    out = np.empty(room[docs], np.uint64)
    bits = np.uint64(shift)
    for d in range(docs):
        _doc_ngrams(tokens, tok_offsets[d], tok_offsets[d + 1] - tok_offsets[d], n, bits, out, room[d])
    return out, room


@numba.njit(cache=True, nogil=True)
def ngram_sets(tokens: np.ndarray, tok_offsets: np.ndarray, n: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct n-gram hashes (:func:`_doc_ngrams`) of each document, sorted, as
    (values, offsets), for hashes of all 64 bits. (Shingles, of
    :data:`pipeline.dedup.minhash.HASH_BITS` bits, are sorted by numpy instead, with
    each document's index in the bits above the hash: :func:`pipeline.dedup.minhash.shingle`.)"""
    scratch, room = ngram_hashes(tokens, tok_offsets, n, shift)
    docs = len(room) - 1
    sizes = np.zeros(docs + 1, np.int64)
    for d in range(docs):
        seg = scratch[room[d] : room[d + 1]]
        seg.sort()
        kept = 0
        for i in range(len(seg)):
            if kept == 0 or seg[i] != seg[kept - 1]:
                seg[kept] = seg[i]
                kept += 1
        sizes[d + 1] = kept
    offsets = np.cumsum(sizes)
    values = np.empty(offsets[docs], np.uint64)
    for d in range(docs):
        values[offsets[d] : offsets[d + 1]] = scratch[room[d] : room[d] + sizes[d + 1]]
    return values, offsets


@numba.njit(cache=True, inline="always")
def _table_size(count: int) -> int:
    """A power of two at least twice ``count``: the open-addressing tables below stay
    at most half full, so a probe ends after about two slots."""
    size = 16
    while size < 2 * count:
        size *= 2
    return size


@numba.njit(cache=True, inline="always")
def _claim(keys: np.ndarray, stamps: np.ndarray, tags: np.ndarray, stamp: np.int64, mask: int, value: np.uint64) -> int:
    """The slot of ``value`` in a linear-probing hash set whose live slots carry
    ``stamp`` (older stamps count as empty, so a set is emptied by taking a new stamp,
    not by clearing); a new slot is claimed with tag 0. Values are mixed hashes, so
    their low bits pick the slot."""
    slot = np.int64(value & np.uint64(mask))
    while stamps[slot] == stamp:
        if keys[slot] == value:
            return slot
        slot = (slot + 1) & mask
    stamps[slot] = stamp
    keys[slot] = value
    tags[slot] = 0
    return slot


@numba.njit(cache=True, nogil=True)
def ngram_signatures(
    tokens: np.ndarray, tok_offsets: np.ndarray, n: int, shift: int, num_perm: int, salt: np.uint64, go_right: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(distinct n-gram count, OPH signature) of each document: what
    :func:`ngram_sets` then :func:`oph_signatures` give, bit for bit, without sorting.

    Why: sorting each document's n-grams was 94% of ``split``'s summarize (character
    5-grams, about 800 a row: 3.9 of 4.2 s per 50,000 rows) and of re-shingling its
    candidates, and neither needs them in order: a minimum ignores repeats, and the
    distinct count comes from a hash set in one pass."""
    docs = len(tok_offsets) - 1
    counts = np.zeros(docs, np.int64)
    out = np.empty((docs, num_perm), np.uint32)
    longest = _most_ngrams(tok_offsets, n)
    scratch = np.empty(longest, np.uint64)
    size = _table_size(longest)
    keys = np.empty(size, np.uint64)
    stamps = np.full(size, -1, np.int64)
    tags = np.empty(size, np.uint8)
    bins = np.empty(num_perm, np.uint32)
    bits = np.uint64(shift)
    for d in range(docs):
        made = _doc_ngrams(tokens, tok_offsets[d], tok_offsets[d + 1] - tok_offsets[d], n, bits, scratch, 0)
        mask = _table_size(made) - 1
        distinct = 0
        for i in range(made):
            slot = _claim(keys, stamps, tags, np.int64(d), mask, scratch[i])
            if tags[slot] == 0:
                tags[slot] = 1
                distinct += 1
        counts[d] = distinct
        _oph_row(scratch[:made], num_perm, salt, go_right, bins, out[d])
    return counts, out


@numba.njit(cache=True, nogil=True)
def pair_jaccard(
    tokens_a: np.ndarray, offsets_a: np.ndarray, tokens_b: np.ndarray, offsets_b: np.ndarray,
    pairs: np.ndarray, n: int, shift: int,
) -> np.ndarray:
    """Exact Jaccard of the n-gram sets (:func:`_doc_ngrams`) of document
    ``pairs[p, 0]`` of tokens A and ``pairs[p, 1]`` of tokens B, from their tokens:
    :func:`ngram_sets` then :func:`jaccard`, without sorting. A's n-grams go into a
    hash set tagged 1, B's are looked up (tag 3 when shared, 2 when B's alone), so
    each n-gram is hashed and probed once. 0 when both are empty."""
    longest_a, longest_b = _most_ngrams(offsets_a, n), _most_ngrams(offsets_b, n)
    grams_a = np.empty(longest_a, np.uint64)
    grams_b = np.empty(longest_b, np.uint64)
    size = _table_size(longest_a + longest_b)
    keys = np.empty(size, np.uint64)
    stamps = np.full(size, -1, np.int64)
    tags = np.empty(size, np.uint8)
    bits = np.uint64(shift)
    out = np.zeros(len(pairs), np.float64)
    for p in range(len(pairs)):
        i, j = pairs[p, 0], pairs[p, 1]
        made_a = _doc_ngrams(tokens_a, offsets_a[i], offsets_a[i + 1] - offsets_a[i], n, bits, grams_a, 0)
        made_b = _doc_ngrams(tokens_b, offsets_b[j], offsets_b[j + 1] - offsets_b[j], n, bits, grams_b, 0)
        mask = _table_size(made_a + made_b) - 1
        stamp = np.int64(p)
        union = 0
        shared = 0
        for t in range(made_a):
            slot = _claim(keys, stamps, tags, stamp, mask, grams_a[t])
            if tags[slot] == 0:
                tags[slot] = 1
                union += 1
        for t in range(made_b):
            slot = _claim(keys, stamps, tags, stamp, mask, grams_b[t])
            if tags[slot] == 0:
                tags[slot] = 2
                union += 1
            elif tags[slot] == 1:
                tags[slot] = 3
                shared += 1
        if union > 0:
            out[p] = shared / union
    return out


@numba.njit(cache=True, nogil=True)
def oph_signatures(values: np.ndarray, offsets: np.ndarray, num_perm: int, salt: np.uint64, go_right: np.ndarray) -> np.ndarray:
    """One-permutation MinHash with rotation densification, ``(docs, num_perm)``
    (:func:`_oph_row` of each document's values)."""
    docs = len(offsets) - 1
    out = np.empty((docs, num_perm), np.uint32)
    bins = np.empty(num_perm, np.uint32)
    for d in range(docs):
        _oph_row(values[offsets[d] : offsets[d + 1]], num_perm, salt, go_right, bins, out[d])
    return out


@numba.njit(cache=True, inline="always")
def _oph_row(values: np.ndarray, k: int, salt: np.uint64, go_right: np.ndarray, bins: np.ndarray, row: np.ndarray) -> None:
    """One document's OPH signature into ``row`` (``bins`` is scratch of ``k``).

    Each shingle is hashed once (``mix64(value ^ salt)``): the top 32 bits pick the
    bin (fastrange), the low 32 bits are the value, each bin keeps its minimum, so
    repeated values change nothing. An empty bin ``j`` of a non-empty document borrows
    from the nearest non-empty bin to its right (``go_right[j]``) or left, circularly,
    rehashed with the distance (Shrivastava & Li 2014, "improved densification"). An
    empty document stays all :data:`EMPTY`."""
    kk = np.uint64(k)
    bins[:] = EMPTY
    for i in range(len(values)):
        h = _mix64(values[i] ^ salt)
        b = ((h >> np.uint64(32)) * kk) >> np.uint64(32)
        v = np.uint32(min(h & U32, np.uint64(_MAX_VALUE)))
        if v < bins[b]:
            bins[b] = v
    if len(values) == 0:
        row[:] = EMPTY
        return
    for j in range(k):
        if bins[j] != EMPTY:
            row[j] = bins[j]
            continue
        dist = 1
        if go_right[j]:
            src = j + 1 if j + 1 < k else 0
            while bins[src] == EMPTY:
                src = src + 1 if src + 1 < k else 0
                dist += 1
        else:
            src = j - 1 if j > 0 else k - 1
            while bins[src] == EMPTY:
                src = src - 1 if src > 0 else k - 1
                dist += 1
        mixed = np.uint64(bins[src]) ^ ((np.uint64(dist) * _GOLDEN32) & U32)
        row[j] = min(_fmix32(mixed), _MAX_VALUE)


@numba.njit(cache=True, nogil=True)
def jaccard(
    values_a: np.ndarray, offsets_a: np.ndarray, values_b: np.ndarray, offsets_b: np.ndarray, pairs: np.ndarray
) -> np.ndarray:
    """Exact Jaccard of the (sorted, distinct) shingle lists of each pair, document
    ``pairs[p, 0]`` of set A and ``pairs[p, 1]`` of set B (pass the same arrays twice
    for pairs within one set), by merging the two lists: O(|a| + |b|) per pair, no
    sort. 0 when both are empty."""
    m = len(pairs)
    out = np.zeros(m, np.float64)
    for p in range(m):
        i, i_end = offsets_a[pairs[p, 0]], offsets_a[pairs[p, 0] + 1]
        j, j_end = offsets_b[pairs[p, 1]], offsets_b[pairs[p, 1] + 1]
        union = (i_end - i) + (j_end - j)
        shared = 0
        while i < i_end and j < j_end:
            x, y = values_a[i], values_b[j]
            if x == y:
                shared += 1
                i += 1
                j += 1
            elif x < y:
                i += 1
            else:
                j += 1
        union -= shared
        if union > 0:
            out[p] = shared / union
    return out


@numba.njit(cache=True, nogil=True)
def script_counts(data: np.ndarray, offsets: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per document of UTF-8 ``data``: (characters of class bit 1, a lower and an upper
    bound of its letters and digits), one pass over the bytes with one table lookup a
    character.

    ``classes`` holds a byte per code point: bit 1 a CJK character, bit 2 a letter or
    digit, bit 4 a code point whose class is not known (it counts for the upper bound
    only, as do code points past the table's end and cut-off characters). Used by
    :func:`pipeline.text.cjk.cjk_rows`."""
    n = len(offsets) - 1
    cjk = np.zeros(n, np.int64)
    least = np.zeros(n, np.int64)
    most = np.zeros(n, np.int64)
    size = len(classes)
    for d in range(n):
        i, end = offsets[d], offsets[d + 1]
        c = 0
        lo = 0
        hi = 0
        while i < end:
            b = data[i]
            if b < 0x80:
                cp = b
                i += 1
            elif b < 0xC0:  # a stray continuation byte
                i += 1
                continue
            elif b < 0xE0:
                cp = ((b & 0x1F) << 6) | (data[i + 1] & 0x3F) if i + 1 < end else -1
                i += 2
            elif b < 0xF0:
                cp = ((b & 0x0F) << 12) | ((data[i + 1] & 0x3F) << 6) | (data[i + 2] & 0x3F) if i + 2 < end else -1
                i += 3
            else:
                cp = (
                    ((b & 0x07) << 18) | ((data[i + 1] & 0x3F) << 12) | ((data[i + 2] & 0x3F) << 6) | (data[i + 3] & 0x3F)
                    if i + 3 < end
                    else -1
                )
                i += 4
            if cp < 0 or cp >= size:
                hi += 1
                continue
            k = classes[cp]
            if k & 1:
                c += 1
            if k & 2:
                lo += 1
                hi += 1
            elif k & 4:
                hi += 1
        cjk[d] = c
        least[d] = lo
        most[d] = hi
    return cjk, least, most


@numba.njit(cache=True, nogil=True)
def rows_holding(data: np.ndarray, offsets: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per document of UTF-8 ``data``: whether it holds a character of three or four
    bytes whose code point is set in the boolean ``table`` (code points past its end are
    not). Stops at a document's first such character. Used by
    :func:`pipeline.text.fold.fold_key` to find the rows a script conversion can change."""
    n = len(offsets) - 1
    out = np.zeros(n, np.bool_)
    size = len(table)
    for d in range(n):
        i, end = offsets[d], offsets[d + 1]
        while i < end:
            b = data[i]
            if b < 0xE0:
                i += 1
                continue
            if b < 0xF0:
                if i + 2 >= end:
                    break
                cp = ((b & 0x0F) << 12) | ((data[i + 1] & 0x3F) << 6) | (data[i + 2] & 0x3F)
                i += 3
            else:
                if i + 3 >= end:
                    break
                cp = ((b & 0x07) << 18) | ((data[i + 1] & 0x3F) << 12) | ((data[i + 2] & 0x3F) << 6) | (data[i + 3] & 0x3F)
                i += 4
            if cp < size and table[cp]:
                out[d] = True
                break
    return out


@numba.njit(cache=True, nogil=True)
def char_hashes(raw: np.ndarray, offsets: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(character hashes, character offsets per document) of UTF-8 bytes, each byte first
    mapped through the 256-entry table ``fold`` (ASCII case folded, other ASCII to a
    space, bytes >= 0x80 unchanged), with runs of spaces collapsed to one and spaces at
    either end of a document dropped: the characters of ``minhash.normalise``'s text, in
    one pass (the numpy version, ``normalise`` then packing and hashing, took twice as
    long on Chinese and English text alike). A character's UTF-8 bytes are packed
    little-endian into one integer and mixed (``mix64(packed + GOLDEN)``), so characters
    are compared as characters, not bytes."""
    n = len(offsets) - 1
    tok_offsets = np.zeros(n + 1, np.int64)
    for d in range(n):
        count = 0
        pending = False
        for i in range(offsets[d], offsets[d + 1]):
            b = fold[raw[i]]
            if b == 0x20:
                pending = count > 0
            elif (b & 0xC0) != 0x80:  # a character starts here
                count += 1 + pending
                pending = False
        tok_offsets[d + 1] = tok_offsets[d] + count
    out = np.empty(tok_offsets[n], np.uint64)
    for d in range(n):
        w = tok_offsets[d] - 1
        pending = False
        shift = np.uint64(0)
        for i in range(offsets[d], offsets[d + 1]):
            b = fold[raw[i]]
            if b == 0x20:
                pending = w >= tok_offsets[d]
                continue
            if (b & 0xC0) == 0x80:  # continuation byte of the current character
                shift += np.uint64(8)
                out[w] = out[w] | (np.uint64(b) << shift)
                continue
            if pending:
                w += 1
                out[w] = np.uint64(0x20)
                pending = False
            w += 1
            out[w] = np.uint64(b)
            shift = np.uint64(0)
        for t in range(tok_offsets[d], tok_offsets[d + 1]):
            out[t] = _mix64(out[t] + GOLDEN)
    return out, tok_offsets


@numba.njit(cache=True, nogil=True)
def matching_positions(x: np.ndarray, y: np.ndarray, pairs: np.ndarray, empty: np.int64, block: int) -> np.ndarray:
    """For each pair ``(i, j)``, how many positions of signatures ``x[i]`` and ``y[j]``
    are equal and not ``empty`` (-1: no value is empty): the MinHash estimate's
    numerator, without the two gathered rows per pair that numpy needs.

    The pairs are visited grouped by the ``block``-row blocks of ``x`` and ``y`` they
    touch (a counting sort, in here): split's byte signatures are 128 MB at a million
    rows, and pairs taken in band order would read them at random, where two blocks
    of 65,536 rows are 16 MB. Grouping them in numpy instead (sort, split, gather per
    group, holding the GIL) cost more than the comparisons: 18 of split's 28 s of
    candidate filtering at a million rows."""
    n = len(pairs)
    bx = max(1, (len(x) + block - 1) // block)
    by = max(1, (len(y) + block - 1) // block)
    group = np.empty(n, np.int64)
    counts = np.zeros(bx * by + 1, np.int64)
    for p in range(n):
        group[p] = (pairs[p, 0] // block) * by + pairs[p, 1] // block
        counts[group[p] + 1] += 1
    for g in range(bx * by):
        counts[g + 1] += counts[g]
    order = np.empty(n, np.int64)
    ends = counts[:-1].copy()
    for p in range(n):
        order[ends[group[p]]] = p
        ends[group[p]] += 1
    out = np.empty(n, np.int64)
    for q in range(n):
        p = order[q]
        i, j = pairs[p, 0], pairs[p, 1]
        same = 0
        if empty < 0:  # branch-free, so the loop vectorises
            for c in range(x.shape[1]):
                same += x[i, c] == y[j, c]
        else:
            for c in range(x.shape[1]):
                v = x[i, c]
                same += (v == y[j, c]) & (v != empty)
        out[p] = same
    return out


@numba.njit(cache=True, nogil=True)
def collapse_spaces(data: np.ndarray, offsets: np.ndarray, ascii_space: np.ndarray, wide: bool) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, offsets) of each document with every run of spaces replaced by one
    ASCII space: bytes with ``ascii_space[b]`` set and, when ``wide``, the no-break
    space (``C2 A0``) and the ideographic space (``E3 80 80``). What
    ``replace_substring_regex(texts, r"[\\s\\x{a0}\\x{3000}]+", " ")`` gives, in one pass
    instead of RE2's 0.7 s per 50,000 rows of English."""
    n = len(offsets) - 1
    out = np.empty(len(data), np.uint8)
    new_offsets = np.zeros(n + 1, np.int64)
    w = 0
    for d in range(n):
        i, end = offsets[d], offsets[d + 1]
        in_run = False
        while i < end:
            b = data[i]
            width = 0
            if ascii_space[b]:
                width = 1
            elif wide and b == 0xC2 and i + 1 < end and data[i + 1] == 0xA0:
                width = 2
            elif wide and b == 0xE3 and i + 2 < end and data[i + 1] == 0x80 and data[i + 2] == 0x80:
                width = 3
            if width:
                if not in_run:
                    out[w] = 0x20
                    w += 1
                    in_run = True
                i += width
                continue
            in_run = False
            out[w] = b
            w += 1
            i += 1
        new_offsets[d + 1] = w
    return out[:w], new_offsets
