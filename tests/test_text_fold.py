"""pipeline.text.fold: dedup keys fold width and Traditional script, leave every other
row byte for byte, and decide CJK rows exactly as pipeline.text.script.is_cjk does."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.text.cjk import cjk_rows
from pipeline.text.fold import fold_key, fold_width
from pipeline.text.script import is_cjk

FORTUNES = Path("/usr/share/games/fortunes")


def records(name: str) -> list[str]:
    path = FORTUNES / name
    if not path.exists():
        pytest.skip(f"{path} is missing (Debian package fortunes or fortunes-zh not installed)")
    return [r for r in re.split(r"(?m)^%\n", path.read_text(encoding="utf-8")) if r.strip()]


def test_full_width_forms_fold_to_ascii_and_nothing_else_does() -> None:
    assert fold_width("ＡＢＣ　ｘｙｚ１２３，！") == "ABC xyz123,!"
    # CJK punctuation outside the full-width ASCII block, and half-width katakana, stay.
    assert fold_width("你好。「引号」、ｱ") == "你好。「引号」、ｱ"


def test_the_array_fold_is_the_row_fold_of_every_row() -> None:
    """The whole-array width fold (bytes, lead bytes first) equals ``fold_width`` row by
    row, on Chinese fortunes (full-width punctuation and ideographic spaces among other
    three-byte characters), English ones, and rows ending in a folded form."""
    from pipeline.text.fold import _fold_width_array

    rows = records("chinese")[:400] + records("fortunes")[:200] + ["ＡＢＣ", "end　", "", "ｱ", "」＂"]
    arr = pa.array(rows + [None])
    assert any(fold_width(r) != r for r in rows[:400])
    assert _fold_width_array(arr).to_pylist() == [fold_width(r) for r in rows] + [None]


def test_keys_fold_traditional_only_in_cjk_rows() -> None:
    texts = pa.array(
        [
            "這個軟體會從標準輸入讀取資料。",
            "这个软体会从标准输入读取资料。",
            "The word 臺灣 in an English sentence stays as written in the key.",
            "ＦＵＬＬ　ｗｉｄｔｈ text",
            None,
            "plain ascii, untouched",
        ]
    )
    assert fold_key(texts).to_pylist() == [
        "这个软体会从标准输入读取资料。",
        "这个软体会从标准输入读取资料。",
        "The word 臺灣 in an English sentence stays as written in the key.",
        "FULL width text",
        None,
        "plain ascii, untouched",
    ]
    assert fold_key(texts, "none").to_pylist()[0] == "這個軟體會從標準輸入讀取資料。"
    assert fold_key(texts, "none", width=False).to_pylist()[3] == "ＦＵＬＬ　ｗｉｄｔｈ text"
    # Taiwan phrases too (連線 -> 连接, 伺服器 -> 服务器), with the phrase conversion.
    assert fold_key(pa.array(["連線到伺服器失敗"]), "tw2sp").to_pylist() == ["连接到服务器失败"]
    with pytest.raises(ValueError, match="script must be one of"):
        fold_key(texts, "s2t")


def test_a_text_with_line_breaks_keeps_them_in_its_key() -> None:
    # The conversion runs over all rows joined by newlines; rows with their own newlines
    # must come back whole.
    texts = pa.array(["第一行\n第二行\n", "沒有換行", "\n\n臺灣\n", "還有一行"])
    assert fold_key(texts).to_pylist() == ["第一行\n第二行\n", "没有换行", "\n\n台湾\n", "还有一行"]


def test_english_rows_keep_their_buffers() -> None:
    english = records("fortunes")
    texts = pa.array(english, pa.string())
    assert fold_key(texts) is texts  # no row needed a fold: the very same array


def test_cjk_rows_decide_as_is_cjk_on_real_text() -> None:
    chinese = records("chinese") + records("tang300") + records("song100")
    english = records("fortunes")
    texts = pa.array(chinese + english + ["⺀⺁", "⺀⺀⺀ abc def ghi jkl", "゛゛ab", "𠀀𠀁x", "ｱｲｳ", "", None])
    fast = cjk_rows(texts)
    np.testing.assert_array_equal(fast, is_cjk(texts))
    # 5,484 of the 5,671 records; the others are mostly Latin (a URL, English quotes,
    # colour codes around a few characters).
    assert len(chinese) == 5671 and int(fast[: len(chinese)].sum()) == 5484
    assert not fast[len(chinese) : len(chinese) + len(english)].any()


def test_only_rows_holding_traditional_characters_are_converted() -> None:
    """fold_key converts only the rows holding a character t2s changes; on real text
    (every fortunes-zh record and every zh_TW and zh_CN manual paragraph) that gives the
    very keys converting every CJK row would, Traditional and Simplified alike."""
    import gzip

    import opencc

    man = Path("/usr/share/man")
    if not (man / "zh_TW" / "man1").is_dir() or not (man / "zh_CN" / "man1").is_dir():
        pytest.skip("/usr/share/man/zh_CN or zh_TW is missing (Debian package manpages-zh not installed)")
    paragraphs = [
        p
        for lang in ("zh_TW", "zh_CN")
        for page in sorted((man / lang / "man1").glob("*.1.gz"))
        for p in re.split(r"\n\.(?:PP|SH|TP|IP)\b", gzip.decompress(page.read_bytes()).decode("utf-8", "replace"))
        if p.strip()
    ]
    texts = pa.array(records("chinese") + records("tang300") + records("song100") + paragraphs, pa.large_string())
    cjk = cjk_rows(texts)
    converter = opencc.OpenCC("t2s")
    expected = [converter.convert(t) if c else t for t, c in zip(fold_key(texts, "none").to_pylist(), cjk)]
    keys = fold_key(texts)
    assert keys.to_pylist() == expected
    changed = sum(a != b for a, b in zip(expected, fold_key(texts, "none").to_pylist()))
    assert 1000 < changed < int(cjk.sum())  # Traditional rows were converted, most Simplified ones untouched
