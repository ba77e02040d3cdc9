"""normalize, noise and quality on real Chinese text installed from Debian: the
``fortunes-zh`` records (5,671 in ``chinese``, ``song100`` and ``tang300``, with ANSI
colour codes and some Traditional records), the ``manpages-zh`` manuals (the same pages
in Simplified and Traditional script), and a dataset mixing Chinese poems with English
fortunes."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from pipeline.schema import DatasetInfo
from pipeline.stages.noise import NoiseConfig, NoiseStage
from pipeline.stages.normalize import NormalizeConfig, NormalizeStage
from pipeline.stages.quality import QualityConfig, QualityStage
from tests.conftest import canonical

TEXT = DatasetInfo("text", ("text",))
FORTUNES = Path("/usr/share/games/fortunes")
MAN = Path("/usr/share/man")
CJK_PUNCTUATION = "，。！？（）：；「」『』、…“”《》"
# An ESC byte, or what a half-removed colour code leaves ("[;m"); the records also show
# codes as text, in caret notation ("^[[32m") and in shell examples (printf "\x1b[31m").
ANSI_LEFTOVER = re.compile(r"\x1b|(?<!\\x1b)(?<!\^\[)\[[0-9;]*m")


def fortunes(*names: str) -> list[str]:
    """The records of the fortune files ``names``, split on lines holding ``%``."""
    records: list[str] = []
    for name in names:
        path = FORTUNES / name
        if not path.exists():
            pytest.skip(f"{path} is missing (Debian package fortunes-zh or fortunes not installed)")
        records += [r for r in re.split(r"(?m)^%\n", path.read_text(encoding="utf-8")) if r.strip()]
    return records


def man_lines(lang: str, page: str) -> list[str]:
    """The text lines of a manpages-zh page: troff requests dropped, font escapes removed."""
    path = MAN / lang / "man1" / f"{page}.1.gz"
    if not path.exists():
        pytest.skip(f"{path} is missing (Debian package manpages-zh not installed)")
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
    text = [re.sub(r"\\f[A-Z]|\\[,/&]", "", line).replace("\\-", "-") for line in lines]
    return [line for line in text if line.strip() and not line.startswith((".", "'"))]


def chain(texts: list[str], **normalize: object):
    """normalize > noise > quality, as the pipeline runs them; returns each output."""
    table = canonical(text=texts)
    normalized = NormalizeStage(NormalizeConfig(**normalize), TEXT).apply(table)
    cleaned = NoiseStage(NoiseConfig(), TEXT).apply(normalized.kept)
    judged = QualityStage(QualityConfig(), TEXT).apply(cleaned.kept)
    return normalized, cleaned, judged


@pytest.fixture(scope="module")
def fortunes_zh():
    records = fortunes("chinese", "song100", "tang300")
    return records, *chain(records)


def test_fortunes_zh_lose_their_colour_codes_and_nothing_else(fortunes_zh) -> None:
    records, normalized, _, _ = fortunes_zh
    assert len(records) == 5671
    assert sum("\x1b" in r for r in records) == 5550
    out = normalized.kept.column("text").to_pylist()
    assert not any(ANSI_LEFTOVER.search(text) for text in out)
    # 33,924 sequences, three of them broken and nested: ESC[;ESC[34;1mm.
    assert normalized.counters["terminal_escapes"] == 33924
    # CJK punctuation survives byte for byte, record by record.
    for before, after in zip(records, out):
        assert [c for c in after if c in CJK_PUNCTUATION] == [c for c in before if c in CJK_PUNCTUATION]


def test_fortunes_zh_full_width_digits_become_ascii_but_brackets_stay(fortunes_zh) -> None:
    records, normalized, _, _ = fortunes_zh
    out = normalized.kept.column("text").to_pylist()
    [i] = [i for i, r in enumerate(records) if "题目:《塞上》" in r]
    assert "作者:柳开（９４６－９９９）" in records[i]
    poem = "题目:《塞上》\n作者:柳开（946－999）\n鸣骹直上一千尺，天静无风声更干。\n碧眼胡儿三百骑，尽提金勒向云看。"
    assert out[i] == poem


def test_fortunes_zh_are_judged_as_chinese_and_no_clean_record_is_too_short(fortunes_zh) -> None:
    _, _, _, judged = fortunes_zh
    assert sum(judged.scores.column("cjk").to_pylist()) == 5588
    assert judged.kept.num_rows == 5543
    assert dict(judged.counters) == {
        "quality:too_many_dup_line_chars": 103,  # box-drawn tables: ├───┼───┤ lines repeat
        "quality:too_many_dup_lines": 13,
        "quality:too_many_symbols": 4,
        "quality:too_few_words": 3,
        "quality:too_few_alpha_words": 2,
        "quality:too_few_cjk_chars": 1,
        "quality:repeated_3grams": 1,
        "quality:repeated_2grams": 1,
    }
    short = {
        r["text"]
        for r in judged.removed.to_pylist()
        if r["reason"] in ("quality:too_few_words", "quality:too_few_chars", "quality:words_too_short")
    }
    assert short == {"Orz", "╮(╯▽╰)╭", "╮(╯_╰)╭"}  # emoticons, not text
    kept = set(judged.kept.column("text").to_pylist())
    assert {"小不忍则乱大谋。", "人算不如天算。", "天下乌鸦一般黑。"} <= kept  # eight characters or fewer


def test_fortunes_zh_urls_stop_at_chinese_punctuation(fortunes_zh) -> None:
    _, _, cleaned, _ = fortunes_zh
    out = "\n".join(cleaned.kept.column("text").to_pylist())
    assert cleaned.counters["urls"] == 90
    assert "（<URL>）上的通用信息" in out
    assert "<URL>。你可以通过输入下列命令来阅读文档。" in out


def test_traditional_fortunes_become_simplified_with_script_simplified() -> None:
    import opencc

    records = fortunes("chinese")
    t2s = opencc.OpenCC("t2s")
    traditional = [r for r in records if t2s.convert(r) != r]
    assert len(traditional) == 374
    normalized, _, _ = chain(traditional, script="simplified")
    out = normalized.kept.column("text").to_pylist()
    assert all(t2s.convert(text) == text for text in out)
    assert normalized.changed == 374


def test_traditional_manual_converts_to_the_simplified_lines_of_the_same_manual() -> None:
    simplified = set(man_lines("zh_CN", "ls"))
    traditional = man_lines("zh_TW", "ls")
    assert "ls - 列出目錄內容" in traditional and "ls - 列出目录内容" in simplified
    before = sum(line in simplified for line in traditional)
    out = NormalizeStage(NormalizeConfig(script="simplified"), TEXT).apply(canonical(text=traditional))
    converted = out.kept.column("text").to_pylist()
    after = sum(line in simplified for line in converted)
    assert "ls - 列出目录内容" in converted
    # Lines that only differ in characters now match; the rest differ in words too
    # (Taiwan's 檔案 for 文件, 資訊 for 信息), which character conversion leaves alone.
    assert (len(traditional), before, after) == (157, 60, 92)
    back = NormalizeStage(NormalizeConfig(script="traditional"), TEXT).apply(canonical(text=["ls - 列出目录内容"]))
    assert back.kept.column("text").to_pylist() == ["ls - 列出目錄內容"]


def test_a_mixed_chinese_and_english_dataset_is_judged_row_by_row() -> None:
    zh = fortunes("tang300", "song100")
    en = fortunes("food", "science")
    assert (len(zh), len(en)) == (408, 823)
    _, _, mixed = chain(zh + en)
    assert mixed.scores.column("cjk").to_pylist() == [True] * 408 + [False] * 823
    # Every Chinese poem is kept; the English rows lose what they lose alone.
    assert mixed.kept.num_rows == 1225
    assert dict(mixed.counters) == {
        "quality:repeated_2grams": 2,
        "quality:repeated_3grams": 2,
        "quality:too_few_alpha_words": 1,
        "quality:repeated_4grams": 1,
    }
    _, _, alone = chain(en)
    assert alone.removed.column("text").to_pylist() == mixed.removed.column("text").to_pylist()


def test_chinese_contact_details_in_a_real_record_are_masked() -> None:
    [record] = [r for r in fortunes("tang300") if "张九龄" in r][:1]
    text = record + "\n联系电话：138-1234-5678，座机 010-12345678，台湾 (02) 2345-6789，身份证 11010519491231002X。"
    _, cleaned, _ = chain([text])
    out = cleaned.kept.column("text")[0].as_py()
    assert out.endswith("联系电话：<PHONE>，座机 <PHONE>，台湾 <PHONE>，身份证 <ID>。")
    assert {k: cleaned.counters[k] for k in ("phones_cn", "phones_tw", "resident_ids")} == {
        "phones_cn": 2,
        "phones_tw": 1,
        "resident_ids": 1,
    }
