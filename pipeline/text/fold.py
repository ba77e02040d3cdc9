"""Comparison keys that ignore how Chinese text happens to be encoded.

The same sentence reaches a dataset in Simplified or Traditional characters (a Taiwan
or Hong Kong mirror of a mainland page, a converted manual) and with full-width or
half-width Latin letters, digits and punctuation (``ＡＢＣ１２３，`` against
``ABC123,``). A reader sees one text; a dedup key that compares code points sees two.
The dedup stages compare rows on :func:`fold_key`, never on the text itself: the rows
they keep are unchanged.

English and other rows without such characters keep their key byte for byte: the
folds only touch rows holding a full-width form or written mostly in CJK script
(:func:`pipeline.text.script.is_cjk`), and pure-ASCII rows are not even looked at,
so a corpus of English text pays one ``string_is_ascii`` pass.

Traditional to Simplified uses the official ``opencc`` wheel (C++; the pure-Python
``opencc-python-reimplemented`` is ~100x slower). Its conversions, by what they
undo:

``t2s``    character by character: undoes ``s2t`` (what most converted copies are)
``tw2sp``  Taiwan characters *and phrases* (伺服器 -> 服务器, 支援 -> 支持): undoes
           ``s2twp``, the conversion Debian's zh_TW manuals were made with
``hk2s``   Hong Kong characters

A phrase conversion would also rewrite Simplified text (tw2sp reads 文件, "file" on
the mainland, as Taiwan's word for a document and writes 文档), so ``tw2sp`` and
``hk2s`` run only on rows that hold Traditional characters (rows ``t2s`` changes);
the others get ``t2s``.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup import kernels
from pipeline.errors import PipelineError
from pipeline.text.cjk import as_string_array, cjk_rows, utf8_buffers

ScriptFold = Literal["t2s", "tw2sp", "hk2s", "none"]
SCRIPT_FOLDS: tuple[str, ...] = ("t2s", "tw2sp", "hk2s", "none")

# Full-width ASCII forms (U+FF01-FF5E) and the ideographic space (U+3000) are folded:
# the part of NFKC that maps a character to plain ASCII. The rest of NFKC (ligatures,
# circled numbers, compatibility ideographs) changes what a text says, not how it is typed.
_WIDTH_TABLE = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}

OPENCC_HINT = "the dedup key's Traditional to Simplified fold needs the official OpenCC wheel: pip install opencc"


def fold_width(text: str) -> str:
    """``text`` with full-width ASCII forms as ASCII and ideographic spaces as spaces."""
    return text.translate(_WIDTH_TABLE)


@functools.lru_cache(maxsize=4)
def _converter(conversion: str):  # opencc has no type stubs
    try:
        import opencc
    except ImportError as exc:
        raise PipelineError(OPENCC_HINT) from exc
    return opencc.OpenCC(conversion)


def fold_key(
    texts: pa.Array | pa.ChunkedArray,
    script: ScriptFold = "t2s",
    width: bool = True,
    cjk: np.ndarray | None = None,
) -> pa.Array:
    """The texts as dedup keys: full-width forms folded to ASCII (``width``) and, in
    rows written mostly in CJK script, Traditional characters to Simplified with the
    OpenCC conversion ``script`` (``"none"``: no script fold). ``cjk`` is
    :func:`cjk_rows` of ``texts`` when the caller has it. Rows needing neither fold,
    and nulls, come back byte for byte."""
    if script not in SCRIPT_FOLDS:
        raise ValueError(f"script must be one of {SCRIPT_FOLDS}, not {script!r}")
    texts = as_string_array(texts)
    if len(texts) == 0:
        return texts
    if width:
        texts = _fold_width_array(texts)
    if script == "none":
        return texts
    cjk = cjk_rows(texts) if cjk is None else np.asarray(cjk, dtype=bool)
    if not cjk.any():
        return texts
    table = _traditional_characters()
    rows = np.flatnonzero(cjk & kernels.rows_holding(*_utf8(texts), table) if table is not None else cjk)
    if not len(rows):
        return texts
    mask = np.zeros(len(texts), dtype=bool)
    mask[rows] = True
    written = texts.take(pa.array(rows))
    converted = _convert(written, _converter("t2s"))
    if script != "t2s":
        # A phrase conversion also rewrites Simplified words (tw2sp turns 文件 into 文档,
        # Taiwan's word for a document), so it runs only on the rows that hold
        # Traditional characters: those that t2s changed.
        traditional = np.flatnonzero(np.asarray(pc.not_equal(written, converted), dtype=bool))
        if len(traditional):
            phrased = _convert(written.take(pa.array(traditional)), _converter(script))
            to_phrase = np.zeros(len(written), dtype=bool)
            to_phrase[traditional] = True
            converted = pc.replace_with_mask(converted, pa.array(to_phrase), phrased.cast(converted.type))
    return pc.replace_with_mask(texts, pa.array(mask), converted.cast(texts.type))


_SEPARATOR = 0x1E
"""ASCII record separator: what :func:`_convert` joins rows with. No OpenCC dictionary
entry holds it, so a phrase never spans two rows and it comes back as it went in."""


@functools.lru_cache(maxsize=1)
def _traditional_characters() -> np.ndarray | None:
    """Boolean table over code points: the characters OpenCC's ``t2s`` may change, or
    None when the phrase table cannot be read (then every CJK row is converted).

    Only rows holding one of them are converted: in most Chinese data they are a few
    rows in a hundred, and the conversion cost more than the rest of the dedup key.
    The characters are those ``t2s`` changes on their own (found by converting every
    code point of three and four UTF-8 bytes: 5,119 of them, all in the CJK blocks) and
    those its phrase table changes in context (反覆 -> 反复: 覆 alone stays), read
    from ``TSPhrases.ocd2`` with the ``opencc_dict`` tool of the same wheel. Built once
    per process, in about 0.1 s."""
    phrases = _phrase_changes()
    if phrases is None:
        return None
    code_points = np.array([cp for cp in range(0x800, 0x40000) if not 0xD800 <= cp <= 0xDFFF and cp != 0x0A])
    converted = _converter("t2s").convert("\n".join(map(chr, code_points))).split("\n")
    table = np.zeros(0x40000, dtype=bool)
    table[[cp for cp, out in zip(code_points.tolist(), converted) if out != chr(cp)]] = True
    table[[cp for cp in phrases if cp < len(table)]] = True
    return table


def _phrase_changes() -> set[int] | None:
    """Code points that ``t2s``'s phrase table changes within a phrase (None when the
    wheel's ``opencc_dict`` tool or its ``TSPhrases.ocd2`` is not there, or fails)."""
    import subprocess
    import tempfile
    from pathlib import Path

    try:
        import opencc
    except ImportError as exc:
        raise PipelineError(OPENCC_HINT) from exc
    clib = Path(opencc.__file__).parent / "clib"
    tool, source = clib / "bin" / "opencc_dict", clib / "share" / "opencc" / "TSPhrases.ocd2"
    if not (tool.is_file() and source.is_file()):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "TSPhrases.txt"
        done = subprocess.run(
            [str(tool), "-i", str(source), "-o", str(text), "-f", "ocd2", "-t", "text"], capture_output=True, check=False
        )
        if done.returncode != 0 or not text.is_file():
            return None
        lines = text.read_text(encoding="utf-8").splitlines()
    changed: set[int] = set()
    for line in lines:
        key, _, values = line.partition("\t")
        first = values.split(" ")[0]  # OpenCC takes the first candidate
        if len(first) != len(key):
            changed.update(map(ord, key))
        else:
            changed.update(ord(k) for k, v in zip(key, first) if k != v)
    return changed


def _utf8(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, row offsets) as the compiled kernels take them."""
    offsets, data = utf8_buffers(texts)
    return data, offsets


def _convert(texts: pa.Array, converter) -> pa.Array:  # opencc has no type stubs
    """OpenCC's conversion of each (non-null) text, in one call over all of them joined
    by :data:`_SEPARATOR` and split back on the UTF-8 bytes: no Python string per row (a
    call per row cost three times as much, strings to and from Arrow as much again).
    A text holding the separator itself is converted on its own."""
    offsets, data = utf8_buffers(texts)
    n = len(texts)
    if n == 0:
        return pa.array([], pa.large_string())
    if (data == _SEPARATOR).any():
        return pa.array([converter.convert(t) for t in texts.to_pylist()], pa.large_string())
    joined = np.full(len(data) + n - 1, _SEPARATOR, np.uint8)
    shifted = offsets + np.arange(n + 1)  # row i starts i separators further on
    keep = np.ones(len(joined), dtype=bool)
    keep[shifted[1:-1] - 1] = False
    joined[keep] = data
    out = np.frombuffer(converter.convert(joined.tobytes().decode("utf-8")).encode("utf-8"), np.uint8)
    ends = np.flatnonzero(out == _SEPARATOR)
    if len(ends) != n - 1:  # cannot happen with OpenCC's dictionaries; stay safe
        return pa.array([converter.convert(t) for t in texts.to_pylist()], pa.large_string())
    new_offsets = np.concatenate([[0], ends - np.arange(n - 1), [len(out) - (n - 1)]]).astype(np.int64)
    body = out[out != _SEPARATOR]
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(new_offsets), pa.py_buffer(body)])


def _fold_width_array(texts: pa.Array) -> pa.Array:
    """:func:`fold_width` of every row, on the UTF-8 bytes of the whole array at once:
    a full-width form is the 3 bytes ``EF BC 81``-``EF BD 9E`` (U+FF01-FF5E) and the
    ideographic space ``E3 80 80``; each becomes its one ASCII byte (``0xEF`` and
    ``0xE3`` only ever lead a character in valid UTF-8, so no match straddles two)."""
    if texts.null_count == len(texts):
        return texts
    offsets, data = utf8_buffers(texts)
    if len(data) < 3:
        return texts
    # Possible lead bytes first (one pass over the text), then the pattern at those
    # places only: eleven whole-buffer passes cost 0.6 s per 50,000 rows of English.
    leads = np.flatnonzero(data[:-2] >= 0xE3)
    leads = leads[(data[leads] == 0xEF) | (data[leads] == 0xE3)]
    b0, b1, b2 = data[leads], data[leads + 1], data[leads + 2]
    fb = (b0 == 0xEF) & (b1 == 0xBC) & (b2 >= 0x81) & (b2 <= 0xBF)
    fd = (b0 == 0xEF) & (b1 == 0xBD) & (b2 >= 0x80) & (b2 <= 0x9E)
    space = (b0 == 0xE3) & (b1 == 0x80) & (b2 == 0x80)
    found = fb | fd | space
    starts = leads[found]
    if not len(starts):
        return texts
    b2, fb, space = b2[found], fb[found], space[found]
    data = data.copy()
    data[starts] = np.where(space, 0x20, np.where(fb, b2 - 0x60, b2 - 0x20))
    keep = np.ones(len(data), dtype=bool)
    keep[starts + 1] = False
    keep[starts + 2] = False
    new_offsets = offsets - np.searchsorted(np.flatnonzero(~keep), offsets)
    large = pa.types.is_large_string(texts.type)
    out = pa.Array.from_buffers(
        texts.type,
        len(texts),
        [None, pa.py_buffer(new_offsets if large else new_offsets.astype(np.int32)), pa.py_buffer(data[keep])],
    )
    return pc.if_else(pc.is_valid(texts), out, pa.scalar(None, texts.type)) if texts.null_count else out
