"""exact_dedup, near_dedup, label_issues' features and augment on real Chinese text
installed from Debian: ``manpages-zh`` (the same manuals in Simplified, zh_CN, and in
Traditional, zh_TW), ``fortunes-zh`` (5,671 records in three files), and English
fortunes mixed in. Every figure is an exact outcome on those files."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import label_model
from pipeline.schema import DatasetInfo
from pipeline.stages.augment import AugmentConfig, AugmentStage
from pipeline.stages.base import stats_of
from pipeline.stages.exact_dedup import ExactDedupConfig, ExactDedupStage
from pipeline.stages.near_dedup import NearDedupConfig, NearDedupStage
from pipeline.text.cjk import cjk_rows

TEXT = DatasetInfo("text", ("text",))
FORTUNES = Path("/usr/share/games/fortunes")
MAN = Path("/usr/share/man")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
HAN = re.compile(r"[\u4e00-\u9fff]")


def fortunes(name: str) -> list[str]:
    """A fortune file's records, colour codes removed."""
    path = FORTUNES / name
    if not path.exists():
        pytest.skip(f"{path} is missing (Debian package fortunes or fortunes-zh not installed)")
    return [ANSI.sub("", r).strip() for r in re.split(r"(?m)^%\n", path.read_text(encoding="utf-8")) if r.strip()]


def man_paragraphs(lang: str, page: str) -> list[str]:
    """The paragraphs of a section 1 manual: text lines between troff requests, joined."""
    source = gzip.decompress((MAN / lang / "man1" / f"{page}.1.gz").read_bytes()).decode("utf-8")
    paragraphs, lines = [], []
    for line in source.splitlines():
        if line.startswith((".", "'")):
            if lines:
                paragraphs.append(" ".join(lines))
            lines = []
            continue
        line = re.sub(r"\\f[A-Z]|\\[,/&]", "", line).replace("\\-", "-").strip()
        if line:
            lines.append(line)
    return paragraphs + ([" ".join(lines)] if lines else [])


@pytest.fixture(scope="module")
def twins() -> tuple[list[str], list[str]]:
    """Paragraphs of the manuals in both scripts, paired where a page has as many
    paragraphs in both, with at least 20 Han characters and not already identical."""
    if not (MAN / "zh_TW" / "man1").is_dir() or not (MAN / "zh_CN" / "man1").is_dir():
        pytest.skip("/usr/share/man/zh_CN or zh_TW is missing (Debian package manpages-zh not installed)")
    simplified, traditional = [], []
    for path in sorted((MAN / "zh_TW" / "man1").glob("*.1.gz")):
        page = path.name[: -len(".1.gz")]
        if not (MAN / "zh_CN" / "man1" / path.name).exists():
            continue
        cn, tw = man_paragraphs("zh_CN", page), man_paragraphs("zh_TW", page)
        if len(cn) == len(tw):
            pairs = [(a, b) for a, b in zip(cn, tw) if len(HAN.findall(a)) >= 20 and a != b]
            simplified += [a for a, _ in pairs]
            traditional += [b for _, b in pairs]
    return simplified, traditional


def twins_found(
    stage: ExactDedupStage | NearDedupStage, simplified: list[str], traditional: list[str]
) -> tuple[int, int]:
    """(rows removed, twin pairs that end with the same survivor) over the
    Simplified paragraphs followed by their Traditional twins."""
    n = len(simplified)
    table = pa.table(
        {
            "row_id": [f"cn{i}" for i in range(n)] + [f"tw{i}" for i in range(n)],
            "text": simplified + traditional,
            "changed_by": [""] * (2 * n),
        }
    )
    removed = stage.apply(table, stage.decide([stage.summarize(table)])).removed.to_pylist()
    survivor = {r["row_id"]: json.loads(r["detail"])["duplicate_of"] for r in removed}
    same = sum(survivor.get(f"tw{i}", f"tw{i}") == survivor.get(f"cn{i}", f"cn{i}") for i in range(n))
    return len(removed), same


def test_traditional_manuals_are_found_duplicates_of_their_simplified_twins(twins) -> None:
    assert len(twins[0]) == len(twins[1]) == 5110
    # Before: word shingles see a Chinese clause as one word, and the scripts differ.
    assert twins_found(NearDedupStage(NearDedupConfig(shingles="word", script_fold="none"), TEXT), *twins) == (2008, 2)
    assert twins_found(ExactDedupStage(ExactDedupConfig(script_fold="none"), TEXT), *twins) == (1986, 0)
    # Default: character 5-grams of the key folded to Simplified character by character.
    assert twins_found(NearDedupStage(NearDedupConfig(), TEXT), *twins) == (2904, 1006)
    assert twins_found(ExactDedupStage(ExactDedupConfig(), TEXT), *twins) == (2407, 479)
    # The zh_TW pages were made with Taiwan phrase conversion (伺服器, 支援): undone by tw2sp.
    assert twins_found(NearDedupStage(NearDedupConfig(script_fold="tw2sp"), TEXT), *twins) == (5368, 4201)
    assert twins_found(ExactDedupStage(ExactDedupConfig(script_fold="tw2sp"), TEXT), *twins) == (4557, 3279)


def test_a_zh_tw_paragraph_is_an_exact_and_near_duplicate_of_its_zh_cn_twin() -> None:
    if not (MAN / "zh_TW" / "man1" / "base64.1.gz").exists():
        pytest.skip("manpages-zh is not installed")
    cn, tw = man_paragraphs("zh_CN", "base64")[2], man_paragraphs("zh_TW", "base64")[2]
    assert cn == "以 Base64 方式对文件列表中的文件或者标准输入编码或解码，并输出到标准输出。"
    assert tw == "以 Base64 方式對檔案列表中的檔案或者標準輸入編碼或解碼，並輸出到標準輸出。"
    table = pa.table({"row_id": ["cn", "tw"], "text": [cn, tw], "changed_by": ["", ""]})
    for stage in (
        ExactDedupStage(ExactDedupConfig(script_fold="tw2sp"), TEXT),
        NearDedupStage(NearDedupConfig(script_fold="tw2sp"), TEXT),
    ):
        out = stage.apply(table, stage.decide([stage.summarize(table)]))
        assert out.kept.column("row_id").to_pylist() == ["cn"]
        assert json.loads(out.removed.column("detail")[0].as_py())["duplicate_of"] == "cn"
    # Character by character, 檔案 (file) becomes 档案, not 文件: a near copy at
    # character 5-gram Jaccard below 0.8, kept by the default.
    stage = NearDedupStage(NearDedupConfig(), TEXT)
    assert stage.apply(table, stage.decide([stage.summarize(table)])).kept.num_rows == 2


def test_mixed_data_english_rows_keep_their_shingles_and_signatures() -> None:
    english = fortunes("fortunes")[:300]
    chinese = fortunes("tang300")[:300]
    table = pa.table(
        {
            "row_id": [f"r{i}" for i in range(600)],
            "text": [t for pair in zip(english, chinese) for t in pair],
            "changed_by": [""] * 600,
        }
    )
    new = NearDedupStage(NearDedupConfig(), TEXT).summarize(table)
    old = NearDedupStage(NearDedupConfig(shingles="word", script_fold="none"), TEXT).summarize(table)
    rows = pa.array(np.arange(0, 600, 2))
    for column in ("shingles", "signature"):
        assert new.column(column).take(rows).equals(old.column(column).take(rows))
    # Chinese rows: a 5-character shingle per position, not one word-shingle per clause.
    poem = pa.array(np.arange(1, 600, 2))
    assert [sum(len(s) for s in t.column("shingles").take(poem).to_pylist()) for t in (new, old)] == [24946, 2961]


def test_label_features_separate_chinese_classes() -> None:
    classes = [fortunes("chinese")[:600], fortunes("tang300"), fortunes("song100")]
    texts = [t for c in classes for t in c]
    truth = np.concatenate([[k] * len(c) for k, c in enumerate(classes)])
    rng = np.random.default_rng(0)
    flipped = rng.random(len(truth)) < 0.1
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, 3, flipped.sum())) % 3
    probs = label_model.out_of_sample_probs(texts, given, seed=0)
    found = label_model.find_issues(given, probs).is_issue
    assert (len(texts), int(flipped.sum())) == (1008, 90)
    assert int((probs.argmax(axis=1) == truth).sum()) == 1006
    assert (int(found.sum()), int((found & flipped).sum())) == (79, 78)


def test_label_features_of_english_rows_are_unchanged() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    english = fortunes("fortunes")[:400]
    words = TfidfVectorizer(
        ngram_range=(1, 2), min_df=2, max_features=label_model.MAX_FEATURES, sublinear_tf=True, dtype=np.float32
    )
    chars = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=(2, 5),
        min_df=3,
        max_features=label_model.MAX_FEATURES,
        sublinear_tf=True,
        dtype=np.float32,
    )
    import scipy.sparse as sp

    expected = sp.hstack([words.fit_transform(english), chars.fit_transform(english)], format="csr") * np.float32(
        1 / np.sqrt(2)
    )
    got = label_model.tfidf_features(english)
    assert (got != expected).nnz == 0 and got.shape == expected.shape
    # The token pattern adds single Han characters only: English tokenises as before.
    assert re.findall(label_model._WORD_OR_HAN, "I'd say a 2-word test") == ["say", "word", "test"]
    assert re.findall(label_model._WORD_OR_HAN, "我 是 中文 test") == ["我", "是", "中文", "test"]


def test_augment_makes_chinese_copies_from_the_rows_own_jieba_words() -> None:
    if not (MAN / "zh_CN" / "man1" / "ls.1.gz").exists():
        pytest.skip("manpages-zh is not installed")
    paragraphs = man_paragraphs("zh_CN", "ls")
    chinese = [p for p, cjk in zip(paragraphs, cjk_rows(pa.array(paragraphs))) if cjk and len(HAN.findall(p)) >= 20][
        :12
    ]
    english = fortunes("fortunes")[:4]
    texts = chinese + english
    table = pa.table({"row_id": [f"r{i}" for i in range(len(texts))], "text": texts, "changed_by": [""] * len(texts)})
    stage = AugmentStage(AugmentConfig(enabled=True, copies_per_row=3, synonym_rate=0.0, insert_rate=0.2), TEXT)
    state = stage.decide([stage.summarize(table)])
    stats = stats_of(state)
    assert stats["by_script"] == {
        "other": {
            "sources": 4,
            "operations": ["insert", "swap", "delete"] if stats["thesaurus"] else ["swap", "delete"],
        },
        "cjk": {"sources": 12, "operations": ["insert", "swap", "delete"]},
    }
    out = stage.apply(table, state)
    copies = [r for r in out.kept.to_pylist() if r["origin"] == "augmented"]
    source = dict(zip(table.column("row_id").to_pylist(), texts))
    made = {}
    for copy in copies:
        if copy["source_row_id"] in {f"r{i}" for i in range(len(chinese))}:
            before, after = source[copy["source_row_id"]], copy["text"]
            assert after != before
            assert set(after) <= set(before)  # no English synonym, no word from elsewhere
            op = copy["augment_ops"]
            made[op] = made.get(op, 0) + 1
            # swap moves jieba words, delete drops some, insert repeats some of the row's.
            assert {
                "swap": sorted(after) == sorted(before),
                "delete": len(after) < len(before),
                "insert": len(after) > len(before),
            }[op]
    assert made == {"insert": 12, "swap": 10, "delete": 14}  # 36 copies: 3 of each of 12 rows


def test_chinese_sentence_shuffle_moves_whole_sentences() -> None:
    import random

    from pipeline.stages.augment import cjk_sentence_shuffle

    def sentences(text: str) -> list[str]:
        return [s for s in re.split(r"(?<=[。！？])(?![。！？”’」』）])", text) if s]

    record = next(r for r in fortunes("chinese") if r.count("。") >= 3)
    shuffled = cjk_sentence_shuffle(record, random.Random(0))
    assert shuffled != record
    assert sorted(sentences(shuffled)) == sorted(sentences(record))
    # What follows the last end mark (the attribution line) stays last.
    assert shuffled.endswith("\n\n    -- Debian 《行为准则》第一条")
