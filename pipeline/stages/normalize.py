"""Stage ``normalize``: repair broken Unicode (ftfy), drop control characters, tidy
whitespace.

ftfy costs a Python call per string, so it only sees strings that can need it:
pure-ASCII text cannot hold mojibake, and on typical English data that skips most
rows. Everything else is vectorised with ``pyarrow.compute``.
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
        needs = pc.invert(pc.fill_null(pc.string_is_ascii(strings), True))
        idx = np.flatnonzero(needs.to_numpy(zero_copy_only=False))
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
