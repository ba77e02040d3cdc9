"""Normalised n-grams, and an index that finds which reference rows a text shares them with.

Why this module exists: decontamination asks, for every training row, whether it holds a
run of ``n`` tokens that also occurs in an evaluation item. Leaked items are rarely
byte-identical: they are re-wrapped into short lines, re-cased, re-punctuated, or sit
inside a longer row. Matching therefore happens on *normalised* tokens:

* Traditional Chinese characters become Simplified (OpenCC, :mod:`pipeline.text.fold`),
  so a converted copy of an item still matches;
* NFKC (full-width letters and digits become ASCII), then lower case;
* everything that is not a letter, digit or combining mark (punctuation, symbols,
  spaces, line breaks) is one separator, so ``"fox,\\njumps"`` and ``"Fox jumps"``
  give the same tokens;
* every CJK character (:data:`pipeline.text.script.CJK_CHARS`) is a token on its own,
  since Chinese and Japanese have no spaces between words; runs of other letters and
  digits are word tokens. One token stream thus serves Chinese, English and mixed rows.

Tokens are hashed to 64 bits and n-grams to 64-bit polynomials of their tokens, by the
compiled loops of :mod:`pipeline.dedup.kernels` (the near-dedup engine's, so one hash
function serves both). Which ``n`` a reference row uses is the caller's choice (the
``decontaminate`` stage takes more characters for a CJK row than words for an English
one); a reference row shorter than its ``n`` is indexed as one n-gram of its own length,
which matches a text that holds the row whole.

Nothing here knows about stages; ``pipeline.stages.decontaminate`` builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup import kernels
from pipeline.text.fold import ScriptFold, fold_key
from pipeline.text.script import CJK_CHARS

_SEPARATORS = r"[^\p{L}\p{N}\p{M}]+"

_FOLD = np.zeros(256, dtype=np.uint8)
"""Byte table applied while hashing tokens: ASCII letters lowered, ASCII digits and
every byte of a multi-byte character kept, any other ASCII byte a separator (0). On an
ASCII row this is the whole normalisation; a non-ASCII row is normalised by
:func:`normalise` first, which this table then leaves as it is."""
_FOLD[ord("0") : ord("9") + 1] = np.arange(ord("0"), ord("9") + 1)
_FOLD[ord("a") : ord("z") + 1] = np.arange(ord("a"), ord("z") + 1)
_FOLD[ord("A") : ord("Z") + 1] = np.arange(ord("a"), ord("z") + 1)
_FOLD[0x80:] = np.arange(0x80, 0x100)


def _strings(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.string())
    if not pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.large_string())
    return pc.fill_null(texts, "")


def normalise(texts: pa.Array | pa.ChunkedArray, script: ScriptFold = "t2s") -> pa.Array:
    """The texts as matched: Traditional Chinese in Simplified characters (the OpenCC
    conversion ``script`` of :func:`pipeline.text.fold.fold_key`), NFKC, lower
    case, separators folded to one space, each CJK character spaced apart (nulls become
    empty strings). ASCII rows, the bulk of most data, skip all of it: the byte table
    of the hashing step does the same to them."""
    texts = _strings(texts)
    non_ascii = pc.invert(pc.string_is_ascii(texts))
    if not pc.any(non_ascii).as_py():
        return texts
    slow = texts.filter(non_ascii)
    # every row holding non-ASCII text, not only rows written mostly in CJK: a Chinese
    # item quoted inside an English row must be folded as the item itself is
    slow = fold_key(slow, script, width=False, cjk=np.ones(len(slow), dtype=bool)).cast(pa.large_string())
    slow = pc.utf8_lower(pc.utf8_normalize(slow, "NFKC"))
    slow = pc.replace_substring_regex(slow, CJK_CHARS, r" \0 ")
    slow = pc.replace_substring_regex(slow, _SEPARATORS, " ")
    return pc.replace_with_mask(texts, non_ascii, slow)


def _buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, UTF-8 bytes) of a large_string array, zero-copy."""
    bufs = texts.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[texts.offset : texts.offset + len(texts) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0] : offsets[-1]]


@dataclass(frozen=True)
class Tokens:
    """Each text's token hashes as one CSR pair: text ``i`` has ``hashes[offsets[i]:offsets[i + 1]]``."""

    hashes: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Each text's distinct n-gram hashes, sorted, as (values, offsets); a text of
        1..n-1 tokens has one hash of all its tokens, an empty one none."""
        return kernels.ngram_sets(self.hashes, self.offsets, n, 0)


def tokens(texts: pa.Array | pa.ChunkedArray, script: ScriptFold = "t2s") -> Tokens:
    """Token hashes of the normalised texts (see :func:`normalise`)."""
    offsets, data = _buffers(normalise(texts, script))
    hashes, tok_offsets = kernels.word_hashes(data, offsets, _FOLD)
    return Tokens(hashes, tok_offsets)


def token_strings(texts: pa.Array | pa.ChunkedArray, script: ScriptFold = "t2s") -> list[list[str]]:
    """The normalised tokens as strings, for showing a match (the hashing step's byte
    table applied to ASCII rows, as there)."""
    out = []
    for text in normalise(texts, script).to_pylist():
        folded = bytes(_FOLD[np.frombuffer(text.encode(), np.uint8)]).decode()
        out.append(folded.replace("\0", " ").split())
    return out


@dataclass(frozen=True)
class Hit:
    """A text that shares n-grams with one reference row."""

    row: int
    """The text, by position."""
    entry: int
    """The reference row, by position in the index."""
    matches: int
    """Distinct n-grams of the reference row found in the text."""
    start: int
    """Where the first of them starts in the text, in tokens..."""
    length: int
    """...and its length in tokens."""
    pair: int
    """The position in the index of that n-gram's (hash, reference row) pair."""


def ngram_text(words: list[str], hit: Hit) -> str:
    """The normalised n-gram of a hit (tokens joined by a space), given its text's tokens
    as strings (:func:`token_strings`)."""
    return " ".join(words[hit.start : hit.start + hit.length])


@dataclass(frozen=True)
class NgramIndex:
    """Every n-gram of a set of reference rows, sorted by hash, with the row it comes from.

    ``hashes[i]`` occurs in reference row ``entries[i]``; a hash shared by several rows
    appears once per row. ``sizes[e]`` is row ``e``'s number of distinct n-grams, the
    denominator of an overlap share, ``lengths`` the n-gram lengths in the index (each
    length a text is hashed at when matched), and ``common`` the n-grams left out as
    shared by too many reference rows.
    """

    hashes: np.ndarray
    entries: np.ndarray
    sizes: np.ndarray
    lengths: tuple[int, ...]
    common: int = 0

    @classmethod
    def build(cls, toks: Tokens, n: np.ndarray, min_tokens: np.ndarray, max_rows: int | None = None) -> NgramIndex:
        """Index reference rows: row ``e`` by its ``n[e]``-grams, or whole when it has fewer
        than ``n[e]`` tokens but at least ``min_tokens[e]``; a shorter row is left out
        (``sizes[e] == 0``). An n-gram found in more than ``max_rows`` rows is left out
        too (counted in ``common``): it is the reference set's boilerplate, not an item."""
        lengths = toks.lengths
        size = np.minimum(lengths, n)
        usable = (lengths >= min_tokens) & (lengths > 0)
        hashes, entries = [], []
        sizes = np.zeros(len(lengths), np.int64)
        for length in np.unique(size[usable]):
            rows = np.flatnonzero(usable & (size == length))
            sub = _take(toks, rows)
            values, offsets = sub.ngrams(int(length))
            hashes.append(values)
            entries.append(np.repeat(rows, np.diff(offsets)))
            sizes[rows] = np.diff(offsets)
        if not hashes:
            return cls(np.zeros(0, np.uint64), np.zeros(0, np.int64), sizes, ())
        all_hashes = np.concatenate(hashes)
        all_entries = np.concatenate(entries)
        order = np.lexsort((all_entries, all_hashes))
        all_hashes, all_entries = all_hashes[order], all_entries[order]
        common = 0
        if max_rows is not None and len(all_hashes):
            starts = np.flatnonzero(np.r_[True, all_hashes[1:] != all_hashes[:-1]])
            rows_per_hash = np.diff(np.r_[starts, len(all_hashes)])
            keep = np.repeat(rows_per_hash <= max_rows, rows_per_hash)
            common = int((rows_per_hash > max_rows).sum())
            all_hashes, all_entries = all_hashes[keep], all_entries[keep]
        return cls(all_hashes, all_entries, sizes, tuple(int(x) for x in np.unique(size[usable])), common)

    @cached_property
    def _bloom(self) -> np.ndarray:
        """A bit per hash prefix: most n-grams of a text are in no reference row, and
        one cached bit tells so before a binary search through the index would."""
        bits = max(16, min(32, int(np.ceil(np.log2(max(len(self.hashes), 1) * 16)))))
        bloom = np.zeros(1 << (bits - 3), np.uint8)
        _fill_bloom(self.hashes, bloom, 64 - bits)
        return bloom

    def match(self, toks: Tokens, min_matches: int = 1, min_overlap: float = 0.0) -> list[Hit]:
        """For each text that shares at least ``min_matches`` distinct n-grams, and at
        least ``min_overlap`` of a reference row's n-grams, with some reference row: the
        hit with the most matches (ties: the earliest reference row)."""
        if not len(self.hashes):
            return []
        bloom = self._bloom
        shift = 64 - (len(bloom).bit_length() - 1 + 3)
        found = [_ngram_hits(toks.hashes, toks.offsets, n, self.hashes, bloom, shift) for n in self.lengths]
        row = np.concatenate([f[0] for f in found])
        value = np.concatenate([f[1] for f in found])
        start = np.concatenate([f[2] for f in found])
        length = np.concatenate([np.full(len(f[0]), n, np.int64) for f, n in zip(found, self.lengths)])
        if not len(row):
            return []
        # an n-gram a text repeats counts once
        order = np.lexsort((start, value, row))
        row, value, start, length = row[order], value[order], start[order], length[order]
        first = np.ones(len(row), dtype=bool)
        first[1:] = (row[1:] != row[:-1]) | (value[1:] != value[:-1])
        row, value, start, length = row[first], value[first], start[first], length[first]
        # every (text, reference row) pair of each shared n-gram
        left = np.searchsorted(self.hashes, value, side="left")
        repeat = np.searchsorted(self.hashes, value, side="right") - left
        pair_hit = np.repeat(np.arange(len(row)), repeat)
        pair = np.repeat(left - np.cumsum(repeat) + repeat, repeat) + np.arange(len(pair_hit))
        key = row[pair_hit] * len(self.sizes) + self.entries[pair]
        by_start = np.lexsort((start[pair_hit], key))  # so each pair's first is its earliest n-gram
        keys, first, counts = np.unique(key[by_start], return_index=True, return_counts=True)
        first_pair = by_start[first]
        text, entry = np.divmod(keys, len(self.sizes))
        good = (counts >= min_matches) & (counts >= min_overlap * self.sizes[entry])
        hits: dict[int, Hit] = {}
        for t, e, c, f in zip(text[good], entry[good], counts[good], first_pair[good]):
            best = hits.get(int(t))
            if best is None or c > best.matches:
                h = pair_hit[f]
                hits[int(t)] = Hit(int(t), int(e), int(c), int(start[h]), int(length[h]), int(pair[f]))
        return [hits[t] for t in sorted(hits)]


@numba.njit(cache=True, nogil=True)
def _fill_bloom(hashes: np.ndarray, bloom: np.ndarray, shift: int) -> None:
    for h in hashes:
        b = h >> np.uint64(shift)
        bloom[b >> np.uint64(3)] |= np.uint8(1) << np.uint8(b & np.uint64(7))


@numba.njit(cache=True, nogil=True)
def _ngram_hits(
    tokens: np.ndarray, tok_offsets: np.ndarray, n: int, index: np.ndarray, bloom: np.ndarray, shift: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text, hash, start) of every n-gram of the texts that is in the sorted ``index``.

    One pass, no n-gram array: each window's hash (the polynomial of
    :func:`pipeline.dedup.kernels.ngram_sets`, rolled on in O(1) per token; a text
    shorter than ``n`` is one window of its own length) is checked against ``bloom`` and,
    when its bit is set, binary-searched in ``index``."""
    cap = 1024
    rows = np.empty(cap, np.int64)
    values = np.empty(cap, np.uint64)
    starts = np.empty(cap, np.int64)
    k = 0
    for d in range(len(tok_offsets) - 1):
        begin = tok_offsets[d]
        size = tok_offsets[d + 1] - begin
        if size == 0:
            continue
        width = min(n, size)
        salt = np.uint64(width) * kernels.GOLDEN
        top = np.uint64(1)  # POLY ** (width - 1): the weight of a window's first token
        acc = tokens[begin]
        for j in range(1, width):
            top = top * kernels.POLY
            acc = acc * kernels.POLY + tokens[begin + j]
        for i in range(size - width + 1):
            if i:  # roll the polynomial on by one token (exact: arithmetic mod 2**64)
                acc = (acc - tokens[begin + i - 1] * top) * kernels.POLY + tokens[begin + i + width - 1]
            h = kernels._mix64(acc + salt)
            b = h >> np.uint64(shift)
            if not (bloom[b >> np.uint64(3)] >> np.uint8(b & np.uint64(7))) & np.uint8(1):
                continue
            at = np.searchsorted(index, h)
            if at == len(index) or index[at] != h:
                continue
            if k == cap:
                cap *= 2
                rows2 = np.empty(cap, np.int64)
                values2 = np.empty(cap, np.uint64)
                starts2 = np.empty(cap, np.int64)
                rows2[:k] = rows[:k]
                values2[:k] = values[:k]
                starts2[:k] = starts[:k]
                rows, values, starts = rows2, values2, starts2
            rows[k] = d
            values[k] = h
            starts[k] = i
            k += 1
    return rows[:k], values[:k], starts[:k]


def _take(toks: Tokens, rows: np.ndarray) -> Tokens:
    """The token lists of ``rows`` only, in that order."""
    lengths = toks.lengths[rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    idx = np.repeat(toks.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
    return Tokens(toks.hashes[idx], offsets)
