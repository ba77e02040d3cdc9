"""text.stats: the Gopher-style scores, checked against a plain-Python reference, on
tiny texts with known values, and on text in other scripts."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from pipeline.text.stats import BULLETS, SCORE_COLUMNS, quality_scores


def scores_of(*texts: str | None) -> dict[str, list]:
    table = quality_scores(pa.array(list(texts), pa.string()))
    return {k: list(v) for k, v in table.items()}


# --- a plain-Python reference -------------------------------------------------------


def reference(text: str | None) -> dict[str, float]:
    """The scores, written the obvious way (for texts without unspaced scripts)."""
    text = text or ""
    words = text.split()
    n = len(words)
    chars = sum(len(w) for w in words)
    lines = [line.strip() for line in text.split("\n")]
    filled = [line for line in lines if line]
    seen: set[str] = set()
    dup = []
    for line in filled:
        if line in seen:
            dup.append(line)
        seen.add(line)
    out = {
        "word_count": n,
        "mean_word_length": chars / n if n else math.nan,
        "symbol_word_ratio": len(re.findall(r"#+[^\W]|\.\.\.|…", text)) / n if n else 0.0,
        "line_count": len(filled),
        "ellipsis_line_share": sum(x.endswith(("...", "…")) for x in filled) / len(filled) if filled else 0.0,
        "bullet_line_share": sum(x[0] in BULLETS for x in filled) / len(filled) if filled else 0.0,
        "alpha_word_share": sum(any(c.isalpha() for c in w) for w in words) / n if n else 0.0,
        "dup_line_share": len(dup) / len(filled) if filled else 0.0,
        "dup_line_char_share": sum(map(len, dup)) / sum(map(len, filled)) if filled else 0.0,
    }
    for size in (2, 3, 4):
        grams = Counter(tuple(words[i : i + size]) for i in range(n - size + 1))
        share = 0.0
        if grams:
            count, length = max((c, sum(map(len, g))) for g, c in grams.items())
            share = min(1.0, count * length / chars) if count > 1 else 0.0
        out[f"top_{size}gram_share"] = share
    # Rows in Latin script: not CJK, so only their characters are counted.
    out.update(cjk=False, char_count=chars, cjk_char_share=math.nan, char_rep_ratio=math.nan)
    return out


def random_texts(seed: int, n: int) -> list[str | None]:
    rng = random.Random(seed)
    vocab = [
        "a", "I", "the", "of", "cat", "sat", "Über", "straße", "naïve", "café", "2024", "3.14",
        "(see", "below)", "#tag", "##", "#", "C#", "...", "…", "wait...", "–", "-", "*", "•",
        "<URL>", "x" * 9, "y" * 17, "z" * 70, "z" * 71, "internationalization", "e.g.", "!!",
        "«quote»", "über-long", "12345678", "1234567a",
    ]  # fmt: skip
    seps = [" ", " ", " ", " ", "  ", "\n", "\n", "\n\n", "\t", " \u00a0", "\u3000", " \n "]
    texts: list[str | None] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.03:
            texts.append(None)
            continue
        if roll < 0.06:
            texts.append(rng.choice(["", " ", "\n", "  \n\t "]))
            continue
        k = rng.randint(1, 60)
        pool = rng.sample(vocab, rng.randint(2, 12))  # small pools make repetition likely
        parts = [rng.choice(pool) + rng.choice(seps) for _ in range(k)]
        text = "".join(parts)
        if rng.random() < 0.3:
            text = " " + text
        if rng.random() < 0.5:
            text = text.rstrip()
        texts.append(text)
    return texts


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scores_match_a_plain_python_reference(seed: int) -> None:
    texts = random_texts(seed, 400)
    scores = quality_scores(pa.array(texts, pa.string()))
    for i, text in enumerate(texts):
        expected = reference(text)
        for name in SCORE_COLUMNS:
            got = scores[name][i]
            assert (math.isnan(got) and math.isnan(expected[name])) or got == pytest.approx(expected[name]), (
                f"{name} of {text!r}: {got} != {expected[name]}"
            )


def test_rows_that_meet_without_whitespace_stay_apart() -> None:
    # In the concatenated buffer "b c" + "b c" reads "b cb c"; neither words nor n-grams
    # may run across the rows.
    got = scores_of("b c", "b c", "x b", "c x", "", "b c b c", "wait..", ".then")
    assert got["word_count"] == [2, 2, 2, 2, 0, 4, 1, 1]
    assert got["top_2gram_share"] == [0, 0, 0, 0, 0, pytest.approx(4 / 4), 0, 0]
    assert got["symbol_word_ratio"][-2:] == [0.0, 0.0]  # ".." + "." is no ellipsis


def test_long_words_are_told_apart_by_every_byte() -> None:
    # Words are identified by their bytes (hashed beyond 8 bytes, dictionary-encoded
    # beyond 64): words that differ only in a middle block, or only far into a long
    # word, must not make "P x" and "Q x" the same bigram.
    pairs = [
        ("AAAAAAAABBBBBBBBCCCCCCCCDDDDDDDD", "AAAAAAAACCCCCCCCBBBBBBBBDDDDDDDD"),
        ("k" * 70 + "a" + "k" * 29, "k" * 70 + "b" + "k" * 29),
        ("abcdefghij", "abcdefghik"),
    ]
    got = scores_of(*[f"{p} x {q} x" for p, q in pairs], *[f"{p} x {p} x" for p, _ in pairs])
    assert got["top_2gram_share"][:3] == [0.0, 0.0, 0.0]
    assert all(share > 0.9 for share in got["top_2gram_share"][3:])


def test_same_scores_for_sliced_chunked_and_large_string_input() -> None:
    texts = random_texts(7, 50)
    base = quality_scores(pa.array(texts, pa.string()))
    sliced = quality_scores(pa.array(["zz", *texts], pa.string()).slice(1))
    chunked = quality_scores(pa.chunked_array([pa.array(texts[:20]), pa.array(texts[20:])], pa.string()))
    large = quality_scores(pa.array(texts, pa.large_string()))
    for other in (sliced, chunked, large):
        for name in SCORE_COLUMNS:
            np.testing.assert_array_equal(other[name], base[name], err_msg=name)


# --- exact values on tiny texts -------------------------------------------------------


def test_word_count_and_mean_word_length() -> None:
    got = scores_of("a b\na b\nc d", "The quick brown fox.", "  spaced   out\ttext  ")
    assert got["word_count"] == [6, 4, 3]
    assert got["mean_word_length"] == [1.0, pytest.approx(17 / 4), pytest.approx(13 / 3)]


def test_duplicate_lines() -> None:
    got = scores_of("a b\na b\nc d", "one\n\n  one  \ntwo three\n", "same\nsame", "one line")
    assert got["line_count"] == [3, 3, 2, 1]
    assert got["dup_line_share"] == [pytest.approx(1 / 3), pytest.approx(1 / 3), 0.5, 0.0]
    assert got["dup_line_char_share"] == [pytest.approx(3 / 9), pytest.approx(3 / 15), 0.5, 0.0]


def test_top_ngram_shares() -> None:
    got = scores_of("x y z w x y z w", "a b c a b c a b c d", "alpha beta alpha beta gamma", "no repeats at all here")
    # "x y" twice: 2 * 2 / 8; "x y z" twice: 2 * 3 / 8; "x y z w" twice: 2 * 4 / 8.
    assert got["top_2gram_share"][0] == pytest.approx(0.5)
    assert got["top_3gram_share"][0] == pytest.approx(0.75)
    assert got["top_4gram_share"][0] == pytest.approx(1.0)
    # "a b" and "b c" three times each: 3 * 2 / 10; "a b c" three times: 9 / 10;
    # "a b c a", "b c a b", "c a b c" twice each: 8 / 10.
    assert [got[f"top_{n}gram_share"][1] for n in (2, 3, 4)] == [
        pytest.approx(0.6),
        pytest.approx(0.9),
        pytest.approx(0.8),
    ]
    # "alpha beta" twice: 2 * 9 / 23; no 3-gram repeats.
    assert got["top_2gram_share"][2] == pytest.approx(18 / 23)
    assert got["top_3gram_share"][2] == 0.0
    assert [got[f"top_{n}gram_share"][3] for n in (2, 3, 4)] == [0.0, 0.0, 0.0]


def test_overlapping_occurrences_count_and_the_share_is_capped() -> None:
    got = scores_of("a a a a a")
    assert got["top_2gram_share"] == [1.0]  # "a a" four times: 8 / 5, capped


def test_symbols_lines_and_letters() -> None:
    got = scores_of(
        "#tag #tag2 C# ## Head ... …",
        "- a\n* b\n• c\n\nnot",
        "12 34% (ok) é9 --- <URL> 12345678a 123456789",
        "Hmm...... ok.. fine.",
    )
    assert got["symbol_word_ratio"][0] == pytest.approx(4 / 7)  # #tag, #tag2, ..., …
    assert got["ellipsis_line_share"][0] == 1.0
    assert got["bullet_line_share"][1] == pytest.approx(3 / 4)
    assert got["alpha_word_share"][1] == pytest.approx(4 / 7)
    assert got["alpha_word_share"][2] == pytest.approx(4 / 8)  # (ok), é9, <URL>, 12345678a
    assert got["symbol_word_ratio"][3] == pytest.approx(2 / 3)  # six dots are two ellipses


def test_null_and_empty_text_have_no_words() -> None:
    got = scores_of(None, "", " \n ")
    assert got["word_count"] == [0, 0, 0]
    assert all(math.isnan(x) for x in got["mean_word_length"])


# --- other scripts -------------------------------------------------------------------------


def test_german_words_are_counted_by_characters_not_bytes() -> None:
    got = scores_of("Größe über straße")
    assert got["word_count"] == [3]
    assert got["mean_word_length"] == [pytest.approx(15 / 3)]  # 5 + 4 + 6 characters


def test_unspaced_scripts_count_one_word_per_character() -> None:
    # Chinese has no spaces: each character is a word, the n-grams are character
    # n-grams, and the mean word length is left null (it would only measure the
    # script, not the text). Punctuation is no word: neither "。" nor the ASCII ","
    # that stands alone between two Chinese characters.
    got = scores_of("我今天去商店。", "我今天去商店, Hello world", "我我我我我我我我我我我我我我我我我我我我我我")
    assert got["word_count"] == [6, 8, 22]
    assert math.isnan(got["mean_word_length"][0])
    assert got["mean_word_length"][1] == pytest.approx(5.0)  # only the spaced words
    assert got["alpha_word_share"][0] == 1.0
    assert got["cjk"] == [True, True, True]


def test_thai_punctuation_still_counts_as_words() -> None:
    # Only CJK rows lose their punctuation words; other rows keep today's scores.
    # 4 + 3 letters (with their combining marks), and "!".
    assert scores_of("สวัสดี ครับ !")["word_count"] == [8]


def test_thai_combining_marks_stay_with_their_letter() -> None:
    # "ที่" is one letter with two combining marks: one word, which holds a letter.
    got = scores_of("ที่ ที่")
    assert got["word_count"] == [2]
    assert got["alpha_word_share"] == [1.0]


# --- CJK rows ----------------------------------------------------------------------------


def char_rep_reference(text: str, n: int = 10) -> float:
    """data-juicer's character repetition ratio, the obvious way (whitespace removed)."""
    text = "".join(text.split())
    grams = Counter(text[i : i + n] for i in range(len(text) - n + 1))
    freqs = sorted(grams.values(), reverse=True)
    top = min(int(math.sqrt(len(freqs))), sum(f > 1 for f in freqs))
    return sum(freqs[:top]) / sum(freqs) if freqs else 0.0


def test_char_rep_ratio_matches_data_juicers_definition() -> None:
    rng = random.Random(7)
    pieces = ["北京", "上海", "天气", "很好", "我们", "，", "。", "今天", "abc", " ", "\n", "哈哈哈哈"]
    texts = [
        "".join(rng.choice(pieces[: rng.randint(2, len(pieces))]) for _ in range(rng.randint(0, 80)))
        for _ in range(300)
    ]
    texts = ["中文" + t for t in texts]  # every row is CJK
    got = quality_scores(pa.array(texts, pa.string()))
    assert got["cjk"].all()
    for text, ratio in zip(texts, got["char_rep_ratio"]):
        assert ratio == pytest.approx(char_rep_reference(text)), text


def test_cjk_rows_are_measured_by_characters() -> None:
    got = scores_of("北京是首都，也是文化中心。", "Beijing is the capital.", "表格 ┌──────┐", "哈" * 30)
    assert got["cjk"] == [True, False, True, True]
    assert got["char_count"] == [13, 20, 10, 30]  # whitespace aside, punctuation included
    assert got["cjk_char_share"][0] == pytest.approx(11 / 13)
    assert math.isnan(got["cjk_char_share"][1]) and math.isnan(got["char_rep_ratio"][1])
    assert got["cjk_char_share"][2] == pytest.approx(2 / 10)
    assert got["char_rep_ratio"][0] == 0.0 and got["char_rep_ratio"][3] == 1.0
