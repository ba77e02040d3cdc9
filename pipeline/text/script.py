"""Which script a row is written in, for stages whose rules differ by script.

Chinese, Japanese and Korean text has no spaces between words: word counts, word
shingles and whitespace n-grams see a whole sentence as one word. Stages that need to
judge such rows differently (quality rules, dedup shingles, n-gram matching, label
features, augmentation) ask here, row by row, so a dataset that mixes Chinese and
English rows is judged fairly on each. The decision is a share of characters, computed
with Arrow kernels over a whole column at once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Han ideographs (with extensions and compatibility forms), kana, Hangul syllables and
# Jamo, bopomofo: characters that are written without spaces between words.
CJK_CHARS = (
    r"[\x{1100}-\x{11FF}\x{2E80}-\x{2FDF}\x{3040}-\x{30FF}\x{3100}-\x{312F}\x{3130}-\x{318F}"
    r"\x{31A0}-\x{31BF}\x{31F0}-\x{31FF}\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{AC00}-\x{D7AF}"
    r"\x{F900}-\x{FAFF}\x{20000}-\x{3FFFF}]"
)
# Letters and digits of any script: the denominator of the share, so punctuation,
# spaces, markup and emoji do not decide which script a row is in.
_LETTERS = r"[\p{L}\p{N}]"

# A row is CJK when at least this share of its letters are CJK characters. Mixed rows
# ("pip install 失败了怎么办") are usually CJK with some Latin words; a third keeps them
# on the CJK side, while an English paragraph quoting one Chinese name stays English.
CJK_ROW_SHARE = 0.3


def cjk_share(text: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Share of each row's letters and digits that are CJK characters (0.0 for a row
    with none, or a null)."""
    cjk = pc.count_substring_regex(text, CJK_CHARS).to_numpy(zero_copy_only=False)
    letters = pc.count_substring_regex(text, _LETTERS).to_numpy(zero_copy_only=False)
    cjk = np.nan_to_num(cjk.astype(np.float64))
    letters = np.nan_to_num(letters.astype(np.float64))
    return np.divide(cjk, letters, out=np.zeros_like(cjk), where=letters > 0)


def is_cjk(text: pa.Array | pa.ChunkedArray, share: float = CJK_ROW_SHARE) -> np.ndarray:
    """Boolean mask of the rows written mostly in a CJK script (see :data:`CJK_ROW_SHARE`)."""
    return cjk_share(text) >= share


def is_cjk_text(text: str, share: float = CJK_ROW_SHARE) -> bool:
    """:func:`is_cjk` for one string, for code that works row by row."""
    return bool(is_cjk(pa.array([text], pa.large_string()), share)[0])
