"""Which rows of a column are written in a CJK script, decided where it is cheap.

:func:`pipeline.text.script.is_cjk` counts letters with a Unicode regular expression,
about 70 µs a row: on an English corpus of 100,000 rows that is seconds spent to learn
nothing, and on Chinese text more than the rest of near-dedup's key. :func:`cjk_rows`
gives the same answer for every row from the UTF-8 bytes, and asks ``is_cjk`` only about
the rare rows its bounds leave undecided. Every stage that treats CJK rows differently
(normalize, noise, quality, the dedup keys, label features, augmentation) asks here.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup import kernels
from pipeline.text.script import CJK_CHARS, CJK_ROW_SHARE, is_cjk


def cjk_rows(texts: pa.Array | pa.ChunkedArray, ignore: str | None = None) -> np.ndarray:
    """:func:`pipeline.text.script.is_cjk` of each row, the same decision computed
    where it is cheap; nulls are not CJK.

    ``is_cjk`` counts letters with a Unicode regular expression, ~0.1 s per million
    characters: on Chinese text more than the rest of near-dedup's key. Here the
    pure-ASCII rows are skipped (one ``string_is_ascii`` pass), and for the others the
    characters of :data:`pipeline.text.script.CJK_CHARS` and the letters and digits
    are counted on the UTF-8 bytes with a table of code points (:func:`_classes`), as
    two bounds: the letters Python's Unicode database knows, and those plus the
    characters it does not know. Where the CJK share against both bounds falls on the
    same side of :data:`pipeline.text.script.CJK_ROW_SHARE` the answer is known (for
    nearly every row); only the rows in between are measured by ``is_cjk`` itself. ``ignore``: an RE2 pattern of text
    removed before the measure (the noise stage leaves ASCII digits out, so a row
    listing phone numbers is still written in Chinese)."""
    texts = as_string_array(texts)
    out = np.zeros(len(texts), dtype=bool)
    rows = non_ascii_rows(texts) if len(texts) else np.zeros(0, np.int64)
    if not len(rows):
        return out
    some = texts.take(pa.array(rows))
    if ignore is not None:
        some = pc.replace_substring_regex(some, ignore, "")
    cjk, least, most = _count_cjk(*utf8_buffers(some))
    yes = (least > 0) & (cjk >= CJK_ROW_SHARE * most)
    no = (cjk == 0) | (cjk < CJK_ROW_SHARE * least)
    out[rows[yes]] = True
    unsure = ~yes & ~no
    if unsure.any():
        out[rows[unsure]] = is_cjk(some.filter(pa.array(unsure)))
    return out


_CJK_RANGES = np.array(
    [(int(lo, 16), int(hi, 16)) for lo, hi in re.findall(r"\\x\{([0-9A-F]+)\}-\\x\{([0-9A-F]+)\}", CJK_CHARS)],
    dtype=np.int64,
)
"""The code point ranges of :data:`pipeline.text.script.CJK_CHARS`, read from it so
both count the same characters."""


@functools.lru_cache(maxsize=1)
def _classes() -> np.ndarray:
    """A byte per code point below U+40000 for :func:`pipeline.dedup.kernels.script_counts`:
    1 CJK (:data:`_CJK_RANGES`), 2 a letter or digit (Unicode category L* or N*, what
    ``is_cjk``'s ``[\\p{L}\\p{N}]`` counts), 4 unassigned in this Python's Unicode
    database. pyarrow's RE2 may know a newer Unicode than Python, so a character Python
    does not know only raises the upper bound, and rows it could tip are measured by
    ``is_cjk`` itself. Built once per process (about 0.1 s)."""
    size = 0x40000
    categories = [unicodedata.category(chr(cp)) for cp in range(size)]
    classes = np.array([2 if c[0] in "LN" else 4 if c == "Cn" else 0 for c in categories], dtype=np.uint8)
    for lo, hi in _CJK_RANGES:
        classes[lo : hi + 1] |= 1
    return classes


def _count_cjk(offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of UTF-8 ``data``: (characters in :data:`_CJK_RANGES`, a lower and an
    upper bound of its letters and digits), in one compiled pass
    (:func:`pipeline.dedup.kernels.script_counts`)."""
    return kernels.script_counts(data, offsets, _classes())


def utf8_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from the first string, UTF-8 bytes) of a string array, zero-copy."""
    odt = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    bufs = texts.buffers()
    offsets = np.frombuffer(bufs[1], dtype=odt)[texts.offset : texts.offset + len(texts) + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0] : offsets[-1]]


def non_ascii_rows(texts: pa.Array) -> np.ndarray:
    """Indices of the rows holding a non-ASCII character (the only ones a fold can change)."""
    return np.flatnonzero(~np.asarray(pc.fill_null(pc.string_is_ascii(texts), True), dtype=bool))


def as_string_array(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.string())
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = texts.cast(pa.string())
    return texts
