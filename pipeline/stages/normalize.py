"""Stage ``normalize``: repair broken Unicode (ftfy), drop control characters, tidy
whitespace.

ftfy costs a Python call per string (~0.3 ms), so it only sees strings that can need
it. Pure-ASCII text cannot hold mojibake. Of the rest, one vectorised regex keeps the
strings holding what mojibake is made of: a character that UTF-8 lead bytes decode to
in Latin-1 / Windows-1252 (``Ã``, ``Â``, ``â``, ``Ð``…) followed by one that
continuation bytes decode to (``©``, ``€``, ``™``, ``œ``…), plus the other damage ftfy
repairs (C1 controls, terminal escapes, ligatures, surrogates, replacement
characters). Curly quotes, dashes and accented words in correct text do not match, so
real non-English or typographic text skips ftfy too. Everything else is vectorised
with ``pyarrow.compute``.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import ftfy
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import transform_text_fields
from pipeline.stages.base import Stage, StageConfig, StageOutput, mark_changed, no_removals

# Lead-byte character then continuation-byte character, as Latin-1 or Windows-1252
# decode them; or any other damage ftfy repairs.
_CP1252_CONTINUATION = "\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178"
_MAYBE_DAMAGED = (
    rf"[\x{{c2}}-\x{{f4}}][\x{{80}}-\x{{bf}}{_CP1252_CONTINUATION}]"
    r"|[\x{c2}\x{c3}] "  # a lost no-break space: "Ã " was "à"
    r"|[\x{80}-\x{9f}\x{1b}\x{fffd}\x{fb00}-\x{fb06}\x{ff01}-\x{ff5e}]"
)

# C0 controls except tab and newline, DEL and C1 controls; carriage returns become newlines.
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{200b}\x{feff}]"


class NormalizeConfig(StageConfig):
    fix_unicode: bool = True
    """Repair mojibake and other encoding damage with ftfy."""
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_control: bool = True
    collapse_whitespace: bool = True
    """Runs of spaces and tabs inside a line become one space (indentation is kept),
    three or more newlines become two, lines lose trailing blanks and the text loses
    leading and trailing blanks."""


class NormalizeStage(Stage):
    name = "normalize"
    config_model = NormalizeConfig
    config: NormalizeConfig

    _ftfy_config = ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False)

    def _fix_unicode(self, strings: pa.Array) -> tuple[pa.Array, int]:
        non_ascii = pc.invert(pc.fill_null(pc.string_is_ascii(strings), True))
        candidates = np.flatnonzero(non_ascii.to_numpy(zero_copy_only=False))
        if len(candidates) == 0:
            return strings, 0
        damaged = pc.match_substring_regex(strings.take(pa.array(candidates)), _MAYBE_DAMAGED)
        idx = candidates[np.asarray(pc.fill_null(damaged, False).to_numpy(zero_copy_only=False), dtype=bool)]
        if len(idx) == 0:
            return strings, 0
        values = strings.to_pylist()
        fixed = 0
        for i in idx:
            repaired = ftfy.fix_text(values[i], self._ftfy_config)
            if repaired != values[i]:
                values[i] = repaired
                fixed += 1
        return pa.array(values, strings.type), fixed

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        counters: Counter[str] = Counter()
        cfg = self.config

        def clean(strings: pa.Array) -> pa.Array:
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
            return strings

        table, changed = transform_text_fields(table, self.info, clean)
        table, n_changed = mark_changed(table, changed, self.name)
        return StageOutput(kept=table, removed=no_removals(table), changed=n_changed, counters=counters)
