"""Stage ``quality``: Gopher-style heuristic quality filters (Rae et al. 2021, appendix A;
datatrove's ``GopherQualityFilter`` and ``GopherRepetitionFilter``).

Every row gets the scores of :func:`pipeline.text.stats.quality_scores` (word count,
mean word length, symbol ratio, line shares, duplicate lines, top n-gram shares; the
list and how each is measured are there), computed on its joined text (prompt and
response together for instruction data; for a conversation, what the assistant says,
``turns: assistant``, since that is what a model learns to write, while the user's
questions are short, informal and not the model's to imitate); the thresholds in
:class:`QualityConfig` then decide. A removed row's reason names the first check it failed, its detail every
failed check with score and threshold.

Ratio and share checks are noisy on tiny texts ("I am a boy" has a mean word length
of 1.75, "What is 2 + 2?" 60 % alphabetic words, a one-line row ending in ``...`` is
100 % ellipsis lines). So word-length, symbol and alphabetic checks only judge rows
of at least ``min_words_for_ratios`` words, line checks rows of at least
``min_lines_for_line_checks`` non-empty lines, repetition checks rows of at least
``min_words_for_repetition`` words. The scores themselves are computed for every
row, so gates, like thresholds, can be tuned from the report without a re-run.

Rows written in a CJK script (Chinese, Japanese, Korean; decided row by row by
:func:`pipeline.text.script.is_cjk`, score ``cjk``) have no spaces between words, so
word counts and word lengths say nothing about them. They are judged instead by
character counts (``min_chars``, ``max_chars``), the share of CJK characters
(``min_cjk_char_share``) and data-juicer's character repetition ratio
(``max_char_rep_ratio``), besides the line, symbol and duplicate-line checks that
judge every row; in their word counts punctuation is no word. A dataset mixing
Chinese and English rows is so judged fairly on each. Every other row is judged
exactly as before, by the word checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.schema import ROW_ID, joined_text
from pipeline.stages.base import Stage, StageConfig, StageOutput, no_removals, split_rows
from pipeline.text.parts import turns_text
from pipeline.text.stats import NGRAM_SIZES, quality_scores


class QualityConfig(StageConfig):
    """Thresholds; ``None`` disables a check. The ``min_*_for_*`` gates say which rows
    the checks they gate judge; ``None`` lets those checks judge every row."""

    turns: Literal["assistant", "all"] = "assistant"
    """Conversations (``messages``): judge the assistant turns (``assistant``) or every
    turn joined (``all``). Other datasets are judged on all their text either way."""
    min_words: int | None = Field(3, ge=0)
    max_words: int | None = Field(100_000, ge=0)
    min_mean_word_length: float | None = Field(2.0, ge=0)
    max_mean_word_length: float | None = Field(12.0, ge=0)
    max_symbol_word_ratio: float | None = Field(0.1, ge=0)
    max_ellipsis_line_share: float | None = Field(0.9, ge=0)
    max_bullet_line_share: float | None = Field(0.9, ge=0)
    min_alpha_word_share: float | None = Field(0.6, ge=0)
    """Placeholders of the noise stage such as ``<URL>`` hold letters, so they count."""
    max_dup_line_share: float | None = Field(0.3, ge=0)
    max_dup_line_char_share: float | None = Field(0.2, ge=0)
    max_top_2gram_share: float | None = Field(0.2, ge=0)
    max_top_3gram_share: float | None = Field(0.18, ge=0)
    max_top_4gram_share: float | None = Field(0.16, ge=0)
    min_words_for_ratios: int | None = Field(10, ge=0)
    """Mean word length, symbol ratio and alphabetic share only judge rows this long."""
    min_lines_for_line_checks: int | None = Field(3, ge=0)
    """Ellipsis and bullet line shares only judge rows with this many non-empty lines."""
    min_words_for_repetition: int | None = Field(50, ge=0)
    """Duplicate-line and n-gram checks only judge rows this long. Gopher's shares were
    made for web pages; on a two-line quote one repeated phrase ("because he is a")
    already covers 20% of the words, so short rows are not judged on repetition."""
    min_chars: int | None = Field(5, ge=0)
    """CJK rows: fewest characters, whitespace aside (``小不忍则乱大谋。`` has 8)."""
    max_chars: int | None = Field(500_000, ge=0)
    min_cjk_char_share: float | None = Field(0.1, ge=0)
    """CJK rows: share of their characters (whitespace aside) that are CJK characters;
    below it a row is mostly digits, symbols, markup or code."""
    max_char_rep_ratio: float | None = Field(0.6, ge=0)
    """CJK rows: data-juicer's character repetition ratio (10-grams), with the
    threshold of its Chinese recipe."""


@dataclass(frozen=True)
class Check:
    reason: str
    """Removal reason, after ``quality:``."""
    score: str
    threshold: str
    """Config key of the threshold."""
    upper: bool
    """True: fail when the score is above the threshold; False: when below."""
    gate: str | None = None
    """Config key of the gate; the row's ``_GATES[gate]`` score must reach it."""
    rows: Literal["all", "cjk", "spaced"] = "all"
    """The rows the check judges: CJK rows (see :mod:`pipeline.text.script`), the
    others (scripts written with spaces between words), or all."""


_GATES = {
    "min_words_for_ratios": "word_count",
    "min_lines_for_line_checks": "line_count",
    "min_words_for_repetition": "word_count",
}

CHECKS: tuple[Check, ...] = (
    Check("too_few_words", "word_count", "min_words", upper=False, rows="spaced"),
    Check("too_many_words", "word_count", "max_words", upper=True, rows="spaced"),
    Check("too_few_chars", "char_count", "min_chars", upper=False, rows="cjk"),
    Check("too_many_chars", "char_count", "max_chars", upper=True, rows="cjk"),
    Check("words_too_short", "mean_word_length", "min_mean_word_length", False, "min_words_for_ratios", "spaced"),
    Check("words_too_long", "mean_word_length", "max_mean_word_length", True, "min_words_for_ratios", "spaced"),
    Check("too_many_symbols", "symbol_word_ratio", "max_symbol_word_ratio", True, "min_words_for_ratios"),
    Check(
        "too_many_ellipsis_lines",
        "ellipsis_line_share",
        "max_ellipsis_line_share",
        True,
        "min_lines_for_line_checks",
    ),
    Check("too_many_bullet_lines", "bullet_line_share", "max_bullet_line_share", True, "min_lines_for_line_checks"),
    Check("too_few_alpha_words", "alpha_word_share", "min_alpha_word_share", False, "min_words_for_ratios", "spaced"),
    Check("too_few_cjk_chars", "cjk_char_share", "min_cjk_char_share", upper=False, rows="cjk"),
    Check("too_many_dup_lines", "dup_line_share", "max_dup_line_share", True, "min_words_for_repetition"),
    Check(
        "too_many_dup_line_chars",
        "dup_line_char_share",
        "max_dup_line_char_share",
        True,
        "min_words_for_repetition",
    ),
    *(
        Check(
            f"repeated_{n}grams",
            f"top_{n}gram_share",
            f"max_top_{n}gram_share",
            True,
            "min_words_for_repetition",
            "spaced",
        )
        for n in NGRAM_SIZES
    ),
    Check("repeated_char_ngrams", "char_rep_ratio", "max_char_rep_ratio", True, "min_words_for_repetition", "cjk"),
)
"""The checks in report order: a removed row's reason names the first one it failed."""


def _detail_value(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    return round(value, 4) if isinstance(value, float) else value


class QualityStage(Stage):
    name = "quality"
    config_model = QualityConfig
    config: QualityConfig

    def failures(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Boolean matrix (check x row) of the checks each row fails."""
        cfg = self.config
        fails = np.zeros((len(CHECKS), len(scores["word_count"])), dtype=bool)
        for i, check in enumerate(CHECKS):
            threshold = getattr(cfg, check.threshold)
            if threshold is None:
                continue
            score = scores[check.score]
            with np.errstate(invalid="ignore"):  # null (NaN) scores never fail
                fails[i] = score > threshold if check.upper else score < threshold
            if check.gate is not None and (gate := getattr(cfg, check.gate)) is not None:
                fails[i] &= scores[_GATES[check.gate]] >= gate
            if check.rows != "all":
                fails[i] &= scores["cjk"] if check.rows == "cjk" else ~scores["cjk"]
        return fails

    def _texts(self, table: pa.Table) -> pa.Array:
        """What each row is judged on (see ``turns``)."""
        if "messages" in self.info.roles and self.config.turns == "assistant":
            return turns_text(table, ["assistant"])
        return joined_text(table, self.info)

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        scores = quality_scores(self._texts(table))
        score_table = pa.table(
            {ROW_ID: table.column(ROW_ID), **{k: pa.array(v, from_pandas=True) for k, v in scores.items()}}
        )
        fails = self.failures(scores)
        drop = fails.any(axis=0)
        removed = np.flatnonzero(drop)
        if len(removed) == 0:
            return StageOutput(kept=table, removed=no_removals(table), scores=score_table)
        reasons = [f"quality:{CHECKS[i].reason}" for i in fails[:, removed].argmax(axis=0)]
        details = [
            {
                CHECKS[i].reason: {
                    "score": _detail_value(scores[CHECKS[i].score][row]),
                    "threshold": getattr(self.config, CHECKS[i].threshold),
                }
                for i in np.flatnonzero(fails[:, row])
            }
            for row in removed
        ]
        kept, removed_rows, counters = split_rows(table, drop, reasons, details)
        return StageOutput(kept=kept, removed=removed_rows, counters=counters, scores=score_table)
