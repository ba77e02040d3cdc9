"""Text statistics behind Gopher-style quality heuristics (Rae et al. 2021, appendix A;
datatrove's ``GopherQualityFilter`` and ``GopherRepetitionFilter``).

Why this module exists: more than one stage reads these numbers. The ``quality`` stage
judges rows on them with its thresholds, and ``near_dedup``'s ``keep: quality`` ranks
near copies by :func:`overall_quality`. Here they are only measured; deciding is the
stages' business.

:func:`quality_scores` gives every row (one string per row) these scores:

``word_count``            whitespace-separated words
``mean_word_length``      characters per word (null when there is nothing to measure)
``symbol_word_ratio``     (hashtags + ellipses) per word
``line_count``            non-empty lines
``ellipsis_line_share``   non-empty lines ending in ``...`` or ``…``
``bullet_line_share``     non-empty lines starting with a bullet (``•``, ``-``, ``*``, ...)
``alpha_word_share``      words holding at least one letter (any script: ``\\p{L}``)
``dup_line_share``        non-empty lines repeating an earlier line of the same row
``dup_line_char_share``   the same, by characters (of non-empty, trimmed lines)
``top_{2,3,4}gram_share`` characters covered by the most frequent word n-gram, counted
                          once per occurrence, over all word characters; 0 unless it
                          occurs more than once
``cjk``                   the row is written in a CJK script (:func:`pipeline.text.cjk.cjk_rows`)
``char_count``            characters, whitespace aside
``cjk_char_share``        CJK rows: CJK characters among them (null on other rows)
``char_rep_ratio``        CJK rows: data-juicer's character repetition ratio, over
                          10-grams of the text without whitespace (null on other rows)

Departures from Gopher, chosen for fine-tuning rows rather than web pages:

* A ``#`` counts as a symbol only directly before a letter, digit or ``_`` (a hashtag,
  ``#include``), and a run of them counts once: Markdown headings (``## Setup``) and code
  comments (``# note``) are ordinary in instruction data, and ``C#`` is not a hashtag.
* Scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer, Myanmar) would
  make a sentence one giant "word" and fail the word-count and word-length checks. Each
  of their characters (with its combining marks) counts as one word instead, so their
  n-grams are character n-grams, and they are left out of ``mean_word_length``, which
  is null for a row written only in them. Korean uses spaces and needs nothing special.
  In CJK rows, tokens of punctuation and symbols alone are no words (``，``, ``。``, or
  an ASCII ``,`` standing between two Chinese characters once these are spaced out);
  rows of other scripts keep Gopher's whitespace words, punctuation tokens included, so
  their scores are those of before.
* Top n-gram shares count overlapping occurrences, as Gopher does, so "a a a a" would
  exceed 1; the score is capped at 1.

Everything is vectorised over the shard, with no Python loop per row. Words are found by
scanning the UTF-8 bytes with numpy; a word's identity is its bytes packed into a uint64
(longer words: a hash). An n-gram is keyed by (row, length, hash) in one uint64, and
one sort of the keys brings equal n-grams of a row together; an n-gram can only repeat
where its two (n-1)-gram halves do, so 3- and 4-grams are only built there. Large
temporaries come from Arrow's memory pool, which keeps freed pages: on this kind of
machine fresh numpy arrays of this size spend more time page-faulting than computing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.text.cjk import cjk_rows
from pipeline.text.script import CJK_CHARS

NGRAM_SIZES = (2, 3, 4)

# Scripts written without spaces between words, plus CJK punctuation and full-width
# forms; each character (with its combining marks) becomes one word.
_UNSPACED = (
    r"[\x{0E00}-\x{0EFF}\x{1000}-\x{109F}\x{1780}-\x{17FF}\x{2E80}-\x{9FFF}"
    r"\x{F900}-\x{FAFF}\x{FE30}-\x{FE4F}\x{FF00}-\x{FFEF}\x{20000}-\x{3FFFF}]\p{M}*"
)
# Unicode spaces, which a byte-level split would not see (utf8_split_whitespace does).
_UNICODE_SPACE = r"[\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]"
# In CJK rows, once every CJK character stands alone: a run of whitespace-separated
# tokens made of punctuation and symbols only (they are no words).
_PUNCTUATION_TOKENS = r"(?:^|\s)(?:[\p{P}\p{S}]+\s+)*[\p{P}\p{S}]+(?:\s|$)"
_ANY_SPACE = r"\s|" + _UNICODE_SPACE
CHAR_NGRAM = 10
"""Length of the character n-grams of ``char_rep_ratio`` (data-juicer's ``rep_len``)."""
# A hashtag-like run of '#' (before a letter, digit or '_'), or an ellipsis.
_HASHTAG = r"#+[\p{L}\p{N}_]"
SYMBOL_PATTERN = _HASHTAG + r"|\.\.\.|…"
BULLETS = ("-", "*", "•", "‣", "◦", "▪", "▫", "■", "□", "▶", "◀", "–", "·", "●", "○")

_ASCII_LETTER = np.zeros(256, dtype=bool)
_ASCII_LETTER[np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", np.uint8)] = True
_MAYBE_SPACE = np.zeros(256, dtype=bool)  # a line's edge byte that may be whitespace
_MAYBE_SPACE[[9, 10, 11, 12, 13, 32]] = True
_MAYBE_SPACE[0x80:] = True

_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier (multiplicative hashing)
_POLY = np.uint64(0xC2B2AE3D27D4EB4F)  # polynomial base for word and n-gram hashes
_CHAR_BITS = 12  # n-gram length in a sort key; words count at most 4095 // 4 characters
_SORT_CHUNK = 1 << 16  # keys are sorted in chunks of whole rows, which fit in cache
_BLOOM_BITS = 20  # largest "repeated n-gram" membership table
_HASHED_WORD_BYTES = 64  # longer words are dictionary-encoded rather than hashed


SCORE_COLUMNS = (
    "word_count",
    "mean_word_length",
    "symbol_word_ratio",
    "line_count",
    "ellipsis_line_share",
    "bullet_line_share",
    "alpha_word_share",
    "dup_line_share",
    "dup_line_char_share",
    *(f"top_{n}gram_share" for n in NGRAM_SIZES),
    "cjk",
    "char_count",
    "cjk_char_share",
    "char_rep_ratio",
)


# --- helpers -------------------------------------------------------------------------


def _empty(n: int, dtype: Any) -> np.ndarray:
    """An uninitialised array from Arrow's memory pool, which reuses freed pages."""
    dtype = np.dtype(dtype)
    return np.frombuffer(pa.allocate_buffer(max(n, 1) * dtype.itemsize), dtype=dtype)[:n]


def _share(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _np(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False))


def _offsets(strings: pa.Array) -> np.ndarray:
    """The value offsets of a (large) string array, into its data buffer."""
    dtype = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    raw = np.frombuffer(strings.buffers()[1], dtype=dtype)
    return raw[strings.offset : strings.offset + len(strings) + 1].astype(np.int64)


def _data(strings: pa.Array) -> np.ndarray:
    """The data buffer of a string array as bytes (empty when it has none)."""
    buf = strings.buffers()[2]
    return np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.zeros(0, dtype=np.uint8)


def _text_bytes(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of all strings back to back, and each string's offset into them."""
    offsets = _offsets(strings)
    return _data(strings)[offsets[0] : offsets[-1]], offsets - offsets[0]


def _row_of(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The row holding each position, given the rows' offsets."""
    return np.searchsorted(offsets, positions, side="right") - 1


def _subset(strings: pa.Array, mask: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    idx = np.flatnonzero(mask)
    return idx, strings.take(pa.array(idx))


def _put(strings: pa.Array, idx: np.ndarray, values: pa.Array) -> pa.Array:
    mask = np.zeros(len(strings), dtype=bool)
    mask[idx] = True
    return pc.replace_with_mask(strings, pa.array(mask), values.cast(strings.type))


def _gather_strings(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """The byte spans ``buf[start:start + length]`` as an Arrow string array."""
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - starts, lengths)
    large = offsets[-1] >= 2**31
    return pa.Array.from_buffers(
        pa.large_string() if large else pa.string(),
        len(starts),
        [None, pa.py_buffer(offsets if large else offsets.astype(np.int32)), pa.py_buffer(buf[index])],
    )


def _per_row(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sums of ``values`` over each row's range ``bounds[r]:bounds[r + 1]``."""
    out = np.zeros(len(bounds) - 1, dtype=np.int64)
    filled = np.flatnonzero(bounds[1:] > bounds[:-1])
    if len(filled):
        out[filled] = np.add.reduceat(values, bounds[:-1][filled])
    return out


# --- words ---------------------------------------------------------------------------


def _prepare_words(text: pa.Array, ascii_mask: np.ndarray, cjk: np.ndarray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Text ready for a byte-level split: in non-ASCII rows, Unicode spaces become plain
    spaces and each character of an unspaced script gets spaces around it. In CJK rows
    (``cjk``), tokens of punctuation and symbols alone are then removed: ``，``, ``。``
    or an ASCII ``,`` between two Chinese characters is no word.

    Also returns, per row, how many unspaced-script characters there were and their
    total length in characters (a character plus its combining marks).
    """
    n = len(text)
    units = np.zeros(n, dtype=np.int64)
    unit_chars = np.zeros(n, dtype=np.int64)
    if ascii_mask.all():
        return text, units, unit_chars
    idx, sub = _subset(text, ~ascii_mask)
    sub = pc.replace_substring_regex(sub, _UNICODE_SPACE, " ")
    counts = _np(pc.count_substring_regex(sub, _UNSPACED))
    if counts.any():
        stripped = pc.replace_substring_regex(sub, _UNSPACED, "")
        units[idx] = counts
        unit_chars[idx] = _np(pc.utf8_length(sub)) - _np(pc.utf8_length(stripped))
        sub = pc.replace_substring_regex(sub, f"({_UNSPACED})", r" \1 ")
    in_cjk = cjk[idx]
    if in_cjk.any():
        at, rows = _subset(sub, in_cjk)
        rows = pc.replace_substring_regex(rows, _PUNCTUATION_TOKENS, " ")
        stripped = pc.replace_substring_regex(rows, _UNSPACED, "")
        units[idx[at]] = _np(pc.count_substring_regex(rows, _UNSPACED))
        unit_chars[idx[at]] = _np(pc.utf8_length(rows)) - _np(pc.utf8_length(stripped))
        sub = _put(sub, at, rows)
    return _put(text, idx, sub), units, unit_chars


@dataclass
class _Words:
    """The words of every row, as byte spans of the rows' concatenated UTF-8 text.

    Bytes up to 0x20 (ASCII whitespace and control characters) separate words; a word
    never runs across two rows.
    """

    buf: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    bounds: np.ndarray
    """Row r's words are ``bounds[r]:bounds[r + 1]``."""

    @classmethod
    def split(cls, text: pa.Array) -> _Words:
        buf, offsets = _text_bytes(text)
        size = len(buf)
        inside = _empty(size + 2, bool)  # padded with a separator at both ends
        inside[0] = inside[-1] = False
        np.greater(buf, 0x20, out=inside[1:-1])
        # Rows that meet without whitespace between them cut a word in two.
        cuts = np.unique(offsets[1:-1])
        cuts = cuts[(cuts > 0) & (cuts < size)]
        cuts = cuts[inside[cuts] & inside[cuts + 1]]
        # edge[i]: a word starts (then: ends) at byte i.
        edge = _empty(size + 1, bool)
        np.greater(inside[1:], inside[:-1], out=edge)
        edge[cuts] = True
        starts = np.flatnonzero(edge)
        np.less(inside[1:], inside[:-1], out=edge)
        edge[cuts] = True
        ends = np.flatnonzero(edge)
        return cls(buf, starts, ends, np.searchsorted(starts, offsets))

    @functools.cached_property
    def nbytes(self) -> np.ndarray:
        return np.subtract(self.ends, self.starts, out=_empty(len(self.starts), np.int64))

    def char_lengths(self, all_ascii: bool) -> np.ndarray:
        """Characters per word: bytes less UTF-8 continuation bytes. Turns ``nbytes``
        into these counts in place, so it comes after everything that needs bytes."""
        lengths = self.nbytes
        if all_ascii or len(lengths) == 0:
            return lengths
        flag = _empty(len(self.buf), bool)
        np.less(self.buf.view(np.int8), -64, out=flag)  # continuation bytes: 0x80-0xBF
        word = np.searchsorted(self.starts, np.flatnonzero(flag), side="right") - 1
        if len(word):  # word is sorted: subtract its run lengths
            first = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])
            lengths[word[first]] -= np.diff(np.r_[first, len(word)])
        self.__dict__.pop("nbytes")  # no longer byte counts
        return lengths

    def strings(self, idx: np.ndarray) -> pa.Array:
        return _gather_strings(self.buf, self.starts[idx], self.nbytes[idx])

    def letters_and_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """Per word: does it hold a letter, and a uint64 id, equal for equal words.

        A word of up to 8 bytes is its own id (its bytes, little-endian and zero-padded;
        word bytes are never zero); a longer one gets a hash of its 8-byte blocks and
        length (up to ``_HASHED_WORD_BYTES``) or of its dictionary index (beyond), with
        the top bit set. Letters are found from the bytes for words starting with an
        ASCII letter and for ASCII words of up to 8 bytes, otherwise by a ``\\p{L}``
        regex.
        """
        m, size = len(self.starts), len(self.buf)
        nbytes = self.nbytes
        if m == 0:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.uint64)
        # The first eight bytes of every word, read unaligned from a zero-padded copy,
        # then cut to the word's length.
        padded = _empty(size + 8, np.uint8)
        padded[:size] = self.buf
        padded[size:] = 0
        ids = np.ndarray((size + 1,), dtype="<u8", buffer=padded, strides=(1,))[self.starts]
        unused = np.minimum(nbytes, 8, out=_empty(m, np.uint8), casting="unsafe")
        np.subtract(8, unused, out=unused)
        unused <<= 3
        ids <<= unused
        ids >>= unused

        letters = _ASCII_LETTER[ids.astype(np.uint8)]
        rest = np.flatnonzero(~letters)
        if len(rest):
            head = ids[rest]
            plain = (nbytes[rest] <= 8) & ((head & np.uint64(0x8080808080808080)) == 0)
            letters[rest[plain]] = _ASCII_LETTER[head[plain].view(np.uint8).reshape(-1, 8)].any(axis=1)
            rest = rest[~plain]
            if len(rest):
                letters[rest] = _np(pc.match_substring_regex(self.strings(rest), r"\p{L}"))

        long = np.flatnonzero(nbytes > 8)
        if len(long):
            with np.errstate(over="ignore"):
                h = (ids[long] ^ nbytes[long].astype(np.uint64)) * _POLY
                h ^= self._eight_at(self.ends[long] - 8)  # the last 8 bytes
                h *= _MIX
                middle, offset = long, 8  # then the blocks between head and tail
                while offset < _HASHED_WORD_BYTES:
                    middle = middle[nbytes[middle] > offset + 8]
                    if len(middle) == 0:
                        break
                    at = np.searchsorted(long, middle)
                    h[at] = (h[at] ^ self._eight_at(self.starts[middle] + offset)) * _POLY
                    offset += 8
                huge = np.flatnonzero(nbytes[long] > _HASHED_WORD_BYTES)
                if len(huge):
                    index = np.asarray(pc.dictionary_encode(self.strings(long[huge])).indices)
                    h[huge] = (index.astype(np.uint64) + np.uint64(1)) * _POLY
            ids[long] = h | np.uint64(1 << 63)
        return letters, ids

    def _eight_at(self, positions: np.ndarray) -> np.ndarray:
        """The eight bytes at each position (all inside ``buf``) as little-endian uint64."""
        eight = np.ndarray((len(self.buf) - 7,), dtype="<u8", buffer=self.buf, strides=(1,))
        return eight[positions]


# --- symbols and lines ---------------------------------------------------------------


def _symbol_counts(text: pa.Array, ascii_mask: np.ndarray) -> np.ndarray:
    """Per row, the matches of ``SYMBOL_PATTERN``: ``...`` (non-overlapping), ``…`` and
    hashtag-like ``#`` runs. The ellipses are counted from the bytes with numpy."""
    n = len(text)
    buf, offsets = _text_bytes(text)
    counts = np.zeros(n, dtype=np.int64)
    flag = _empty(len(buf), bool)
    if len(buf) >= 3:
        np.equal(buf, ord("."), out=flag)
        triple = _empty(len(buf) - 2, bool)
        np.logical_and(flag[:-2], flag[1:-1], out=triple)
        triple &= flag[2:]
        at = np.flatnonzero(triple)  # a run of k dots (k >= 3) holds k - 2 of these
        row = _row_of(offsets, at)
        within = row == _row_of(offsets, at + 2)
        at, row = at[within], row[within]
        if len(at):
            first = np.flatnonzero(np.r_[True, (np.diff(at) != 1) | (row[1:] != row[:-1])])
            dots = np.diff(np.r_[first, len(at)]) + 2
            counts += np.bincount(row[first], weights=dots // 3, minlength=n).astype(np.int64)
    if not ascii_mask.all():  # '…' is E2 80 A6 in UTF-8
        np.equal(buf, 0xE2, out=flag)
        lead = np.flatnonzero(flag[:-2])
        lead = lead[(buf[lead + 1] == 0x80) & (buf[lead + 2] == 0xA6)]
        counts += np.bincount(_row_of(offsets, lead), minlength=n)
    np.equal(buf, ord("#"), out=flag)
    hashes = np.flatnonzero(flag)
    if len(hashes):
        with_hash = np.zeros(n, dtype=bool)
        with_hash[_row_of(offsets, hashes)] = True
        idx, sub = _subset(text, with_hash)
        counts[idx] += _np(pc.count_substring_regex(sub, _HASHTAG))
    return counts


def _line_scores(text: pa.Array, all_ascii: bool) -> dict[str, np.ndarray]:
    """Line counts and shares; lines are split on ``\\n`` and trimmed."""
    import pandas as pd  # here, not at the top: a run that resumes past the quality stage saves 0.4 s

    n = len(text)
    lists = pc.split_pattern(text, "\n")
    lines = pc.list_flatten(lists)
    rows = np.asarray(pc.list_parent_indices(lists))
    offsets = _offsets(lines)
    nbytes = np.diff(offsets)
    # Trim the lines whose first or last byte may be whitespace (ASCII, or non-ASCII).
    filled = nbytes > 0
    data = _data(lines)
    edge = np.zeros(len(lines), dtype=bool)
    edge[filled] = _MAYBE_SPACE[data[offsets[:-1][filled]]] | _MAYBE_SPACE[data[offsets[1:][filled] - 1]]
    if edge.any():
        idx, sub = _subset(lines, edge)
        lines = _put(lines, idx, pc.utf8_trim_whitespace(sub))
        offsets, data = _offsets(lines), _data(lines)
        nbytes = np.diff(offsets)
        filled = nbytes > 0
    chars = nbytes if all_ascii else _np(pc.utf8_length(lines)).astype(np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    line_count = np.bincount(rows[filled], minlength=n)

    ellipsis = np.zeros(len(lines), dtype=bool)
    long = np.flatnonzero(nbytes >= 3)
    if len(long):
        last = ends[long]
        tail = (data[last - 3].astype(np.int64) << 16) | (data[last - 2].astype(np.int64) << 8) | data[last - 1]
        ellipsis[long] = (tail == 0x2E2E2E) | (tail == 0xE280A6)  # "..." or "…"

    first = np.full(len(lines), 0x20, dtype=np.uint8)
    first[filled] = data[starts[filled]]
    bullet = (first == ord("-")) | (first == ord("*"))
    idx, sub = _subset(lines, first >= 0x80)
    if len(idx):
        bullet[idx] = _np(pc.is_in(pc.utf8_slice_codeunits(sub, 0, 1), value_set=pa.array(BULLETS)))

    # Duplicate lines, only looked for in rows with two or more non-empty lines.
    dup = np.zeros(len(lines), dtype=bool)
    multi = filled & (line_count[rows] > 1)
    if multi.any():
        idx, sub = _subset(lines, multi)
        ids = np.asarray(pc.dictionary_encode(sub).indices).astype(np.int64)
        dup[idx] = pd.Series(rows[idx] * (int(ids.max()) + 1) + ids).duplicated().to_numpy()
    line_chars = np.bincount(rows[filled], weights=chars[filled], minlength=n)
    return {
        "line_count": line_count,
        "ellipsis_line_share": _share(np.bincount(rows[ellipsis], minlength=n), line_count),
        "bullet_line_share": _share(np.bincount(rows[bullet], minlength=n), line_count),
        "dup_line_share": _share(np.bincount(rows[dup], minlength=n), line_count),
        "dup_line_char_share": _share(np.bincount(rows[dup], weights=chars[dup], minlength=n), line_chars),
    }


# --- repetition ----------------------------------------------------------------------


def _sort_in_chunks(keys: np.ndarray, row_starts: np.ndarray) -> None:
    """Sort ``keys`` in place, in chunks of whole rows (``row_starts``: sorted positions
    where rows begin). The keys carry their row in their high bits and come in row
    order, so this is a full sort, done in cache-sized parts."""
    targets = np.arange(_SORT_CHUNK, len(keys), _SORT_CHUNK)
    cuts = row_starts[np.searchsorted(row_starts, targets, side="right") - 1]
    cuts = np.unique(np.r_[0, cuts, len(keys)])
    for start, stop in zip(cuts[:-1], cuts[1:]):
        keys[start:stop].sort()


def _top_ngram_shares(
    word_ids: np.ndarray, bounds: np.ndarray, lengths: np.ndarray, totals: np.ndarray
) -> dict[int, np.ndarray]:
    """Per row and n: characters covered by the most frequent n-gram (if it occurs more
    than once) over the row's word characters ``totals``; row r's words are
    ``bounds[r]:bounds[r + 1]``.

    An n-gram is keyed by (row, length in characters, hash of its word ids) in a uint64;
    sorting the keys puts equal n-grams of a row side by side. An n-gram at i can only
    repeat if the (n-1)-grams at i and i+1 both do, so after the bigrams only those
    positions are looked at.
    """
    n_rows, m = len(bounds) - 1, len(word_ids)
    shares = {n: np.zeros(n_rows, dtype=np.float64) for n in NGRAM_SIZES}
    if m < 2:
        return shares
    row_bits = max(1, int(n_rows - 1).bit_length())
    hash_bits = 64 - row_bits - _CHAR_BITS
    if hash_bits < 24:
        raise ValueError(f"quality: a shard of {n_rows} rows is too large for n-gram keys")
    row_shift, char_shift, hash_shift = (np.uint64(s) for s in (64 - row_bits, hash_bits, 64 - hash_bits))
    char_mask = (1 << _CHAR_BITS) - 1
    # Capped so that four words always fit the length field of a key.
    capped = np.minimum(lengths, char_mask // NGRAM_SIZES[-1], out=_empty(m, np.uint16), casting="unsafe")
    scratch = _empty(m - 1, np.uint64)
    maybe = np.zeros(0, dtype=np.int64)  # positions whose (n-1)-gram may repeat

    with np.errstate(over="ignore"):
        for n in NGRAM_SIZES:
            if n == 2:
                pos = None  # every position
                keys = np.multiply(word_ids[:-1], _POLY, out=_empty(m - 1, np.uint64))
                keys += word_ids[1:]
                chars = np.add(capped[:-1], capped[1:])
                # A bigram across two rows gets length 0, so it never matches a real one.
                across = bounds[1:-1] - 1
                chars[across[(across >= 0) & (across < m - 1)]] = 0
                # Row bits of every position: row r's key at its first word, filled forward.
                row_keys = scratch
                row_keys.fill(0)
                starts = np.flatnonzero(bounds[1:] > bounds[:-1])
                at_start = bounds[starts]
                inside = at_start < m - 1
                row_keys[at_start[inside]] = starts[inside].astype(np.uint64) << row_shift
                np.maximum.accumulate(row_keys, out=row_keys)
                row_starts = at_start
            else:
                # Candidates: the (n-1)-grams at i and i+1 may both repeat, within one row.
                pos = maybe[:-1][maybe[:-1] + 1 == maybe[1:]]
                row = _row_of(bounds, pos)
                pos = pos[bounds[row + 1] >= pos + n]
                if len(pos) == 0:
                    break
                keys = word_ids[pos]
                chars = capped[pos].astype(np.uint64)
                for k in range(1, n):
                    keys *= _POLY
                    keys += word_ids[pos + k]
                    chars += capped[pos + k]
                row = _row_of(bounds, pos)
                row_keys = row.astype(np.uint64) << row_shift
                row_starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
            keys *= _MIX
            keys >>= hash_shift
            keys |= row_keys
            if n == 2:
                np.left_shift(chars, char_shift, out=scratch)  # done with the row keys
                keys |= scratch
                ordered = scratch
                np.copyto(ordered, keys)
            else:
                keys |= chars << char_shift
                ordered = keys.copy()
            _sort_in_chunks(ordered, row_starts)

            # Runs of equal keys: where same[i] (ordered[i - 1] == ordered[i]) flips.
            same = np.zeros(len(ordered) + 1, dtype=bool)
            np.equal(ordered[1:], ordered[:-1], out=same[1:-1])
            flips = np.flatnonzero(same[1:] != same[:-1])
            if len(flips) == 0:
                break
            run_start, run_stop = flips[0::2], flips[1::2]
            occurrences = (run_stop - run_start + 1).astype(np.int64)
            repeated = ordered[run_start]
            group_row = (repeated >> row_shift).astype(np.int64)
            group_chars = ((repeated >> char_shift) & np.uint64(char_mask)).astype(np.int64)
            # The most frequent n-gram of each row, ties going to the longer one.
            rank = (occurrences << _CHAR_BITS) | group_chars
            row_start = np.flatnonzero(np.r_[True, group_row[1:] != group_row[:-1]])
            best = np.maximum.reduceat(rank, row_start)
            best_rows = group_row[row_start]
            covered = (best >> _CHAR_BITS) * (best & char_mask)
            shares[n][best_rows] = np.minimum(_share(covered, totals[best_rows]), 1.0)

            if n == NGRAM_SIZES[-1]:
                break
            # Positions whose n-gram may repeat, through a one-hash Bloom filter of the
            # repeated keys (a superset: a false hit only costs a candidate).
            bits = min(_BLOOM_BITS, max(10, (4 * len(repeated)).bit_length()))
            shift = np.uint64(64 - bits)
            table = np.zeros(1 << bits, dtype=bool)
            table[(repeated * _MIX) >> shift] = True
            keys *= _MIX
            keys >>= shift
            hit = table[keys]
            maybe = np.flatnonzero(hit) if pos is None else pos[hit]
    return shares


# --- CJK rows ------------------------------------------------------------------------


def _char_rep_ratio(chars: list[str], n: int = CHAR_NGRAM) -> np.ndarray:
    """Per string, data-juicer's character repetition ratio: of its character
    n-grams, the share taken by the ``sqrt(distinct n-grams)`` most frequent ones that
    occur more than once (0 for a string shorter than ``n`` or with no repeat).

    An n-gram is a polynomial hash of its code points, keyed with its string's index
    in the high bits; one sort counts them, a second (string, count) sort ranks them.
    """
    rows = len(chars)
    out = np.zeros(rows, dtype=np.float64)
    lengths = np.fromiter(map(len, chars), dtype=np.int64, count=rows)
    grams = np.maximum(lengths - n + 1, 0)
    if not grams.any():
        return out
    points = np.frombuffer("".join(chars).encode("utf-32-le"), dtype="<u4").astype(np.uint64)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    row = np.repeat(np.arange(rows), grams)
    pos = starts[row] + np.arange(len(row)) - np.repeat(np.r_[0, np.cumsum(grams)[:-1]], grams)
    row_shift = np.uint64(64 - max(1, int(rows - 1).bit_length()))
    keys = np.zeros(len(pos), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            keys *= _POLY
            keys += points[pos + k]
        keys *= _MIX
    keys >>= np.uint64(64) - row_shift
    keys |= row.astype(np.uint64) << row_shift
    keys.sort()
    group = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    freq = np.diff(np.r_[group, len(keys)])
    group_row = (keys[group] >> row_shift).astype(np.int64)
    distinct = np.bincount(group_row, minlength=rows)
    repeated = np.bincount(group_row[freq > 1], minlength=rows)
    top = np.minimum(np.sqrt(distinct).astype(np.int64), repeated)
    # Within each string, counts in falling order: sort by (string, -count).
    ranked = np.sort((group_row << 32) | (0xFFFFFFFF - freq))
    freq = 0xFFFFFFFF - (ranked & 0xFFFFFFFF)
    group_row = ranked >> 32
    rank = np.arange(len(freq)) - np.r_[0, np.cumsum(distinct)[:-1]][group_row]
    taken = rank < top[group_row]
    covered = np.bincount(group_row[taken], weights=freq[taken], minlength=rows)
    return _share(covered, grams)


def _cjk_scores(text: pa.Array, cjk: np.ndarray, word_chars: np.ndarray) -> dict[str, np.ndarray]:
    """The scores that judge CJK rows instead of word counts: characters (whitespace
    aside), the share of them that are CJK characters, and character repetition. Only
    ``char_count`` is measured on other rows (their non-whitespace characters are their
    word characters); the two others are null there."""
    n = len(text)
    char_count = word_chars.astype(np.int64)
    cjk_char_share = np.full(n, np.nan)
    char_rep_ratio = np.full(n, np.nan)
    if cjk.any():
        idx, sub = _subset(text, cjk)
        solid = pc.replace_substring_regex(sub, _ANY_SPACE, "")
        chars = _np(pc.utf8_length(solid)).astype(np.int64)
        char_count[idx] = chars
        cjk_char_share[idx] = _share(_np(pc.count_substring_regex(solid, CJK_CHARS)), chars)
        char_rep_ratio[idx] = _char_rep_ratio(solid.to_pylist())
    return {"cjk": cjk, "char_count": char_count, "cjk_char_share": cjk_char_share, "char_rep_ratio": char_rep_ratio}


# --- all scores ----------------------------------------------------------------------


def quality_scores(text: pa.Array | pa.ChunkedArray) -> dict[str, np.ndarray]:
    """All quality scores of ``text`` (one string per row; null counts as empty)."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    text = pc.fill_null(text, "")
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        text = text.cast(pa.large_string())
    n = len(text)
    ascii_mask = _np(pc.string_is_ascii(text)).astype(bool)
    all_ascii = bool(ascii_mask.all())

    cjk = np.zeros(n, dtype=bool) if all_ascii else cjk_rows(text)

    spaced, units, unit_chars = _prepare_words(text, ascii_mask, cjk)
    words = _Words.split(spaced)
    letters, ids = words.letters_and_ids()
    lengths = words.char_lengths(all_ascii)
    word_count = np.diff(words.bounds)
    word_chars = _per_row(lengths, words.bounds)
    spaced_words = word_count - units  # words of spaced scripts: the mean length is theirs
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_len = np.where(spaced_words > 0, (word_chars - unit_chars) / spaced_words, np.nan)
    no_letter = np.bincount(_row_of(words.bounds, np.flatnonzero(~letters)), minlength=n)

    scores: dict[str, np.ndarray] = {
        "word_count": word_count.astype(np.int64),
        "mean_word_length": mean_len,
        "symbol_word_ratio": _share(_symbol_counts(text, ascii_mask), word_count),
        "alpha_word_share": _share(word_count - no_letter, word_count),
    }
    scores.update(_line_scores(text, all_ascii))
    shares = _top_ngram_shares(ids, words.bounds, lengths, word_chars)
    scores.update({f"top_{k}gram_share": v for k, v in shares.items()})
    scores.update(_cjk_scores(text, cjk, word_chars))
    return {name: scores[name] for name in SCORE_COLUMNS}


NOISE_SHARES = (
    "symbol_word_ratio",
    "ellipsis_line_share",
    "bullet_line_share",
    "dup_line_share",
    "dup_line_char_share",
    *(f"top_{n}gram_share" for n in NGRAM_SIZES),
)
"""The scores that grow with markup, boilerplate and repetition, each 0 for clean text."""


def overall_quality(scores: dict[str, np.ndarray]) -> np.ndarray:
    """One number per row in [0, 1], higher is cleaner: 1 minus the mean of
    :data:`NOISE_SHARES` (each capped at 1) and of the share of words without a letter.

    The checks answer "keep or drop" with thresholds; choosing which of several
    near-duplicates to keep (``near_dedup``'s ``keep: quality``) needs a ranking
    instead: copies that all pass the filters still differ in how many hashtags,
    repeated lines or non-words they carry, and the cleanest should survive. A row
    with nothing to measure (null shares) counts as clean on that score; one with no
    words at all scores as wholly non-alphabetic.
    """
    bad = [np.minimum(np.nan_to_num(np.asarray(scores[name], np.float64), nan=0.0), 1.0) for name in NOISE_SHARES]
    bad.append(1.0 - np.nan_to_num(np.asarray(scores["alpha_word_share"], np.float64), nan=0.0))
    return 1.0 - np.mean(bad, axis=0)
