"""Stage ``normalize``: repair broken Unicode (ftfy), drop control characters and
terminal escape sequences, tidy whitespace; optionally convert Chinese text to one script.

ftfy costs a Python call per string (~0.3 ms), so it only sees strings that can need
it. Pure-ASCII text cannot hold mojibake. Of the rest, one vectorised regex keeps the
strings holding what mojibake is made of: a character that UTF-8 lead bytes decode to
in Latin-1 / Windows-1252 (``Ã``, ``Â``, ``â``, ``Ð``…) followed by one that
continuation bytes decode to (``©``, ``€``, ``™``, ``œ``…), plus the other damage ftfy
repairs (C1 controls, terminal escapes, ligatures, surrogates, replacement
characters). Curly quotes, dashes and accented words in correct text do not match, so
real non-English or typographic text skips ftfy too. Everything else is vectorised
with ``pyarrow.compute``.

Rows holding CJK text (a character of :data:`pipeline.text.script.CJK_CHARS`: Chinese,
Japanese, Korean) keep their full-width punctuation byte for byte: ``，。！？（）：；``
are the ordinary punctuation of these scripts, not width artefacts, and turned into
ASCII they read as one-letter words to later stages (datatrove's ``FTFYFormatter``
turns ftfy's width fix off for the same reason). The test is "holds a CJK character",
not "is mostly CJK": an English sentence quoting ``你好，世界`` or a Chinese manual page
full of command lines keeps its ``，`` too. ftfy sees these rows without its width fix,
and only full-width ASCII letters and digits (``ＡＢＣ１２３``) become half-width. Other
rows are repaired exactly as before, full-width punctuation included (in Latin text it
is a width artefact: ``ＬＯＵＤ！``).

Terminal escape sequences (ANSI colours such as ``ESC[33;1m``, cursor moves, window
titles) are part of ``strip_control``: removed whole, before anything else, so no
``[33m`` is left behind when the ESC alone would go, and counted as
``terminal_escapes``. Broken nested sequences (``ESC[;ESC[34;1mm``, which the Chinese
fortunes hold) are removed too.

``script: simplified | traditional`` converts Chinese characters with OpenCC (the
official ``opencc`` wheel; ``t2s`` / ``s2t``), in the rows that hold a Han character.
It is off by default: converting changes text, and Traditional data may be wanted.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Literal

import ftfy
import numpy as np
import opencc
import pyarrow as pa
import pyarrow.compute as pc
from ftfy.fixes import fix_character_width

from pipeline.schema import transform_text_fields
from pipeline.stages.base import Stage, StageConfig, StageOutput, mark_changed, no_removals
from pipeline.text.script import CJK_CHARS

# Lead-byte character then continuation-byte character, as Latin-1 or Windows-1252
# decode them; or any other damage ftfy repairs.
_CP1252_CONTINUATION = "\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178"
_MAYBE_DAMAGED = (
    rf"[\x{{c2}}-\x{{f4}}][\x{{80}}-\x{{bf}}{_CP1252_CONTINUATION}]"
    r"|[\x{c2}\x{c3}] "  # a lost no-break space: "Ã " was "à"
    r"|[\x{80}-\x{9f}\x{1b}\x{fffd}\x{fb00}-\x{fb06}\x{ff01}-\x{ff5e}]"
)

# In rows holding CJK text full-width punctuation is kept, so only the other kinds of
# damage send such a row to ftfy.
_MAYBE_DAMAGED_CJK = (
    rf"[\x{{c2}}-\x{{f4}}][\x{{80}}-\x{{bf}}{_CP1252_CONTINUATION}]"
    r"|[\x{c2}\x{c3}] "
    r"|[\x{80}-\x{9f}\x{1b}\x{fffd}\x{fb00}-\x{fb06}]"
)
_FULLWIDTH_ALNUM = r"[\x{ff10}-\x{ff19}\x{ff21}-\x{ff3a}\x{ff41}-\x{ff5a}]"
_HALFWIDTH_ALNUM = {
    cp: cp - 0xFEE0
    for first, last in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
    for cp in range(first, last + 1)
}

# ECMA-48 escape sequences: CSI (``ESC[`` parameters, intermediates, final byte), OSC and
# other strings up to their terminator (BEL or ``ESC\``), and the other escapes (``ESC(B``,
# ``ESC7``; ``ESC[`` and ``ESC]`` only ever open the first two kinds).
_TERMINAL_ESCAPE = (
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[ -/]*[0-Z`-~]"
)
# C0 controls except tab and newline, DEL and C1 controls; carriage returns become newlines.
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{200b}\x{feff}]"


# Han ideographs (with extensions and compatibility forms): what OpenCC converts.
_HAN = r"[\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}\x{20000}-\x{3FFFF}]"
_OPENCC_CONFIGS = {"simplified": "t2s", "traditional": "s2t"}


@functools.cache
def _opencc(config: str) -> opencc.OpenCC:
    """One converter per process and direction (loading its dictionaries takes ~20 ms)."""
    return opencc.OpenCC(config)


def _mask(flags: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(flags, False).to_numpy(zero_copy_only=False), dtype=bool)


def _np_counts(strings: pa.Array, pattern: str) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.count_substring_regex(strings, pattern), 0).to_numpy(zero_copy_only=False))


def _patch(strings: pa.Array, rows: np.ndarray, fn: Callable[[pa.Array], pa.Array | list[str]]) -> pa.Array:
    """Run ``fn`` on the rows flagged in ``rows`` only and put the results back."""
    mask = pa.array(rows)
    return pc.replace_with_mask(strings, mask, pa.array(fn(strings.filter(mask)), strings.type))


class NormalizeConfig(StageConfig):
    fix_unicode: bool = True
    """Repair mojibake and other encoding damage with ftfy."""
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_control: bool = True
    collapse_whitespace: bool = True
    """Runs of spaces and tabs inside a line become one space (indentation is kept),
    three or more newlines become two, lines lose trailing blanks and the text loses
    leading and trailing blanks."""
    script: Literal["simplified", "traditional"] | None = None
    """Convert Chinese text to Simplified or Traditional characters (OpenCC); off
    by default."""


class NormalizeStage(Stage):
    name = "normalize"
    config_model = NormalizeConfig
    config: NormalizeConfig

    # ftfy's width fix comes after the repair, once it is known whether the repaired
    # text holds CJK characters (mojibake of Chinese text holds none before).
    _ftfy_config = ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False, fix_character_width=False)

    def _fix_unicode(self, strings: pa.Array) -> tuple[pa.Array, int]:
        non_ascii = pc.invert(pc.fill_null(pc.string_is_ascii(strings), True))
        candidates = np.flatnonzero(non_ascii.to_numpy(zero_copy_only=False))
        if len(candidates) == 0:
            return strings, 0
        subset = strings.take(pa.array(candidates))
        cjk = _mask(pc.match_substring_regex(subset, CJK_CHARS))
        damaged = _mask(pc.match_substring_regex(subset, _MAYBE_DAMAGED))
        if cjk.any():
            damaged[cjk] = _mask(pc.match_substring_regex(subset.filter(pa.array(cjk)), _MAYBE_DAMAGED_CJK))
        changed = np.zeros(len(strings), dtype=bool)
        if damaged.any():
            values = strings.to_pylist()
            for i in candidates[damaged]:
                repaired = ftfy.fix_text(values[i], self._ftfy_config)
                if repaired != values[i]:
                    values[i] = repaired
                    changed[i] = True
            strings = pa.array(values, strings.type)
            cjk = _mask(pc.match_substring_regex(strings.take(pa.array(candidates)), CJK_CHARS))
        # Full width: every form folds in the repaired rows without CJK text (ftfy's
        # width fix), only letters and digits in rows with CJK text.
        width = np.zeros(len(strings), dtype=bool)
        width[candidates[damaged & ~cjk]] = True
        alnum = np.zeros(len(strings), dtype=bool)
        in_cjk = strings.take(pa.array(candidates[cjk]))
        alnum[candidates[cjk]] = _mask(pc.match_substring_regex(in_cjk, _FULLWIDTH_ALNUM))
        for rows, fold in ((width, fix_character_width), (alnum, lambda v: v.translate(_HALFWIDTH_ALNUM))):
            if rows.any():
                before = strings.filter(pa.array(rows))
                after = pa.array([fold(v) for v in before.to_pylist()], strings.type)
                strings = pc.replace_with_mask(strings, pa.array(rows), after)
                changed[rows] |= _mask(pc.not_equal(before, after))
        return strings, int(changed.sum())

    def _strip_escapes(self, strings: pa.Array) -> tuple[pa.Array, int]:
        """Remove terminal escape sequences, again until none is left (removing an inner
        sequence of a broken nested one completes the outer one)."""
        total = 0
        data = strings.buffers()[2]
        if data is None or not (np.frombuffer(data, dtype=np.uint8) == 0x1B).any():
            return strings, 0  # one pass over the bytes, far cheaper than a search per row
        rows = _mask(pc.match_substring(strings, "\x1b"))
        while rows.any():
            counts = np.zeros(len(strings), dtype=np.int64)
            counts[rows] = _np_counts(strings.filter(pa.array(rows)), _TERMINAL_ESCAPE)
            if not counts.any():
                break
            total += int(counts.sum())
            rows = counts > 0
            strings = _patch(strings, rows, lambda s: pc.replace_substring_regex(s, _TERMINAL_ESCAPE, ""))
        return strings, total

    def _convert_script(self, strings: pa.Array) -> pa.Array:
        han = _mask(pc.match_substring_regex(strings, _HAN))
        if not han.any():
            return strings
        converter = _opencc(_OPENCC_CONFIGS[self.config.script])
        return _patch(strings, han, lambda s: [converter.convert(v) for v in s.to_pylist()])

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        counters: Counter[str] = Counter()
        cfg = self.config

        def clean(strings: pa.Array) -> pa.Array:
            if cfg.strip_control:
                strings, escapes = self._strip_escapes(strings)
                counters["terminal_escapes"] += escapes
            if cfg.fix_unicode:
                strings, fixed = self._fix_unicode(strings)
                counters["unicode_repaired"] += fixed
            strings = pc.replace_substring_regex(strings, r"\r\n?", "\n")
            if cfg.strip_control:
                strings = pc.replace_substring_regex(strings, _CONTROL, "")
            if cfg.unicode_form != "none":
                strings = pc.utf8_normalize(strings, cfg.unicode_form)
            if cfg.collapse_whitespace:
                # Inside a line only: leading indentation (code, poetry, lists) is kept.
                strings = pc.replace_substring_regex(
                    strings, r"(\S)(?:[ \t\x{a0}\x{3000}]{2,}|[\t\x{a0}\x{3000}])", r"\1 "
                )
                strings = pc.replace_substring_regex(strings, r"[ \t]+\n", "\n")
                strings = pc.replace_substring_regex(strings, r"\n{3,}", "\n\n")
                strings = pc.utf8_trim_whitespace(strings)
            if cfg.script is not None:
                strings = self._convert_script(strings)
            return strings

        table, changed = transform_text_fields(table, self.info, clean)
        table, n_changed = mark_changed(table, changed, self.name)
        return StageOutput(kept=table, removed=no_removals(table), changed=n_changed, counters=counters)
