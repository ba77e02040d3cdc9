"""quality: Gopher-style scores (checked against a plain-Python reference), what each
check removes, what ordinary fine-tuning rows keep, gates, reasons and details."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.schema import MESSAGE_TYPE, DatasetInfo
from pipeline.stages.quality import (
    BULLETS,
    CHECKS,
    SCORE_COLUMNS,
    QualityConfig,
    QualityStage,
    quality_scores,
)
from pipeline.stages.registry import stage_class
from tests.conftest import canonical

TEXT = DatasetInfo("text", ("text",))
INSTRUCTION = DatasetInfo("instruction", ("prompt", "response"))

NORMAL = (
    "The committee approved the new budget for the public library on Tuesday, "
    "and the mayor said the reading rooms will open longer hours from next month."
)


def run(table: pa.Table, info: DatasetInfo = TEXT, **cfg):
    # The hand-made repetitive texts here are 20-50 words; judge repetition from 20.
    cfg.setdefault("min_words_for_repetition", 20)
    return QualityStage(QualityConfig(**cfg), info).apply(table)


def scores_of(*texts: str | None) -> dict[str, list]:
    table = quality_scores(pa.array(list(texts), pa.string()))
    return {k: list(v) for k, v in table.items()}


def reason_of(text: str, **cfg) -> str | None:
    out = run(canonical(text=[text, NORMAL]), **cfg)
    assert out.kept.column("text").to_pylist()[-1] == NORMAL, "the normal sentence must be kept"
    reasons = out.removed.column("reason").to_pylist()
    return reasons[0] if reasons else None


def distinct_words(n: int, prefix: str = "w") -> list[str]:
    """n different words (five characters with the default prefix)."""
    return [f"{prefix}{i:03d}x" for i in range(n)]


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
    out = run(canonical(text=[None, "", NORMAL]))
    assert out.removed.column("reason").to_pylist() == ["quality:too_few_words"] * 2
    assert out.kept.column("row_id").to_pylist() == ["r2"]


# --- each check removes what it is built for -------------------------------------------

PHRASE_REPEATS = {
    # Unique filler words around a repeated phrase, sized so that only the intended
    # n-gram size crosses its threshold (2: 0.2, 3: 0.18, 4: 0.16).
    2: " ".join(distinct_words(30) + ["alpha beta"] * 6),
    3: " ".join(w for i, f in enumerate(distinct_words(40)) for w in ([f, "alpha beta gamma"] if i % 10 == 0 else [f])),
    4: " ".join(
        w for i, f in enumerate(distinct_words(50)) for w in ([f, "alpha beta gamma delta"] if i % 16 == 0 else [f])
    ),
}
DUP_CHARS = "\n".join(
    [" ".join(distinct_words(30, "d"))] * 2 + [" ".join(distinct_words(6, f"u{i}")) for i in range(8)]
)

FAILING = {
    "too_few_words": ("Hi there", {}),
    "too_many_words": (" ".join(distinct_words(30)), {"max_words": 29}),
    "words_too_short": ("a b c d e f g h i j k l", {}),
    "words_too_long": (" ".join(["Donaudampfschifffahrtsgesellschaft"] * 4 + distinct_words(8)), {}),
    "too_many_symbols": ("#love #instagood #photooftheday #fashion #beautiful so happy today with friends", {}),
    # Enough words per line that the ellipses alone do not make too many symbols.
    "too_many_ellipsis_lines": (
        "\n".join(" ".join(distinct_words(11, f"e{i}")) + " and then..." for i in range(3)),
        {},
    ),
    "too_many_bullet_lines": ("- milk\n- eggs and bread\n* butter\n• two big apples", {}),
    "too_few_alpha_words": ("Totals 12 34 56 78 90 11 22 33 44 55 66 77 88", {}),
    "too_many_dup_lines": ("\n".join(["buy cheap watches online now"] * 5), {}),
    "too_many_dup_line_chars": (DUP_CHARS, {}),
    "repeated_2grams": (PHRASE_REPEATS[2], {}),
    "repeated_3grams": (PHRASE_REPEATS[3], {}),
    "repeated_4grams": (PHRASE_REPEATS[4], {}),
}


def test_every_check_has_a_failing_example() -> None:
    assert set(FAILING) == {c.reason for c in CHECKS}


@pytest.mark.parametrize("check", list(FAILING))
def test_check_removes_its_example_and_keeps_a_normal_sentence(check: str) -> None:
    text, cfg = FAILING[check]
    assert reason_of(text, **cfg) == f"quality:{check}"


@pytest.mark.parametrize("check", [c for c in CHECKS if c.reason != "too_few_words"], ids=lambda c: c.reason)
def test_a_threshold_of_none_disables_its_check(check) -> None:
    text, cfg = FAILING[check.reason]
    [failed] = [json.loads(d) for d in run(canonical(text=[text]), **cfg).removed.column("detail").to_pylist()]
    out = run(canonical(text=[text]), **{**cfg, check.threshold: None})
    details = [json.loads(d) for d in out.removed.column("detail").to_pylist()]
    assert all(check.reason not in d for d in details)
    # Kept unless it fails another check too.
    assert details == ([] if set(failed) == {check.reason} else [{k: v for k, v in failed.items() if k != check.reason}])


def test_disabling_min_words_keeps_an_empty_row() -> None:
    out = run(canonical(text=["", NORMAL]), min_words=None)
    assert out.kept.num_rows == 2


# --- ordinary short rows and gates -----------------------------------------------------

ORDINARY = [
    "What is the capital of France?",
    "I am a big fan of it and so am I",
    "This movie was great... would watch again!",
    "“To be, or not to be, that is the question.”",
    "What is 2 + 2?",
    "Compute 15 * 3 and then add 7 to the result.",
    "How do I read a file in C#?",
    "I don't know...",
    "- buy milk",
    "Sort: c a b",
    "### Answer\nUse `sorted(xs)`; it returns a new list.\n# comment\nprint(sorted(xs))",
    "Visit <URL> or write to <EMAIL> for details.",
]


def test_ordinary_fine_tuning_rows_are_kept() -> None:
    out = run(canonical(text=ORDINARY))
    assert out.removed.num_rows == 0, out.removed.to_pylist()


def test_gates_decide_which_rows_the_noisy_checks_judge() -> None:
    short = "I am a boy"  # mean word length 1.75 < 2, but only 4 words
    one_line = "I don't know..."  # 100 % ellipsis lines, but one line
    short_dups = "red fox\nred fox\nblue cat"  # a third of its lines repeat, but 6 words
    table = canonical(text=[short, one_line, short_dups])
    assert run(table).removed.num_rows == 0
    out = run(table, min_words_for_ratios=None, min_lines_for_line_checks=None, min_words_for_repetition=None)
    assert out.removed.column("reason").to_pylist() == [
        "quality:words_too_short",
        "quality:too_many_symbols",  # one ellipsis in three words comes first
        "quality:too_many_dup_lines",
    ]
    assert "too_many_ellipsis_lines" in json.loads(out.removed.column("detail")[1].as_py())
    # A gate set just above a row's size spares it; at its size, it judges it.
    assert run(canonical(text=[short]), min_words_for_ratios=5).removed.num_rows == 0
    assert run(canonical(text=[short]), min_words_for_ratios=4).removed.num_rows == 1


# --- scores, reasons, details ----------------------------------------------------------


def test_scores_cover_every_input_row_including_removed_ones() -> None:
    texts = ["Hi", NORMAL, None, FAILING["too_many_dup_lines"][0]]
    out = run(canonical(text=texts))
    assert out.removed.num_rows == 3
    scores = out.scores
    assert scores.column_names == ["row_id", *SCORE_COLUMNS]
    assert scores.column("row_id").to_pylist() == ["r0", "r1", "r2", "r3"]
    assert scores.column("word_count").to_pylist() == [1, 26, 0, 25]
    assert scores.schema.field("word_count").type == pa.int64()
    assert scores.schema.field("top_2gram_share").type == pa.float64()
    assert scores.column("mean_word_length").to_pylist()[2] is None  # nothing to measure


def test_reason_names_the_first_failed_check_and_detail_lists_all() -> None:
    text = "\n".join(["buy cheap watches online now"] * 5)
    out = run(canonical(text=[text]))
    [row] = out.removed.to_pylist()
    assert row["reason"] == "quality:too_many_dup_lines"
    detail = json.loads(row["detail"])
    assert set(detail) == {
        "too_many_dup_lines",
        "too_many_dup_line_chars",
        "repeated_2grams",
        "repeated_3grams",
        "repeated_4grams",
    }
    assert detail["too_many_dup_lines"] == {"score": 0.8, "threshold": 0.3}
    assert detail["repeated_2grams"]["threshold"] == 0.2 and detail["repeated_2grams"]["score"] > 0.2
    assert out.counters == {"quality:too_many_dup_lines": 1}
    assert row["text"] == text and row["changed_by"] == ""


def test_counters_count_rows_per_reason_and_nothing_removed_keeps_the_table() -> None:
    out = run(canonical(text=["Hi", "Oh no", NORMAL, "a b c d e f g h i j k l"]))
    assert out.counters == {"quality:too_few_words": 2, "quality:words_too_short": 1}
    assert out.kept.column("row_id").to_pylist() == ["r2"]
    clean = canonical(text=[NORMAL])
    out = run(clean)
    assert out.kept.equals(clean)
    assert out.removed.num_rows == 0 and out.removed.column_names == [*clean.column_names, "reason", "detail"]
    assert out.changed == 0 and not out.counters


def test_instruction_rows_are_judged_on_prompt_and_response_together() -> None:
    table = canonical(
        prompt=["Translate: hello", "Repeat after me.", "Hi"],
        response=["Bonjour", "Repeat after me.\nRepeat after me.\nRepeat after me.\nRepeat after me.", None],
    )
    out = run(table, INSTRUCTION, min_words_for_repetition=None)
    words = out.scores.column("word_count").to_pylist()
    assert words == [3, 15, 1]  # two words of prompt plus one of response, ...
    assert out.kept.column("row_id").to_pylist() == ["r0"]  # ... which alone would be too few
    reasons = dict(zip(out.removed.column("row_id").to_pylist(), out.removed.column("reason").to_pylist()))
    # The prompt's line repeats in the response: 4 of 5 lines are duplicates.
    assert reasons == {"r1": "quality:too_many_dup_lines", "r2": "quality:too_few_words"}
    assert out.scores.column("dup_line_share").to_pylist()[1] == pytest.approx(4 / 5)


def test_messages_are_judged_on_all_their_contents() -> None:
    messages = pa.array(
        [
            [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
            [{"role": "user", "content": "Hi"}],
        ],
        MESSAGE_TYPE,
    )
    out = run(canonical(messages=messages), DatasetInfo("instruction", ("messages",)))
    assert out.scores.column("word_count").to_pylist() == [4, 1]
    assert out.removed.column("reason").to_pylist() == ["quality:too_few_words"]


def test_an_empty_shard() -> None:
    out = run(canonical(text=pa.array([], pa.string())))
    assert out.kept.num_rows == out.removed.num_rows == out.scores.num_rows == 0
    assert out.scores.column_names == ["row_id", *SCORE_COLUMNS]


# --- other languages ---------------------------------------------------------------------

GERMAN = (
    "Die Bundesrepublik Deutschland ist ein Bundesstaat in Mitteleuropa. Sie besteht aus "
    "sechzehn Ländern und ist als freiheitlich-demokratischer und sozialer Rechtsstaat "
    "verfasst. Die Hauptstadt ist Berlin, die größte Stadt des Landes."
)
CHINESE = (
    "北京是中华人民共和国的首都，也是全国的政治中心和文化中心。北京有着三千多年的建城史和八百多年的建都史，"
    "是世界上拥有文化遗产项目最多的城市之一。每年都有很多来自世界各地的游客来北京参观。"
)
JAPANESE = "東京は日本の首都であり、世界でも有数の大都市です。東京には多くの観光地があり、浅草寺や東京タワーが有名です。"


def test_normal_german_chinese_and_japanese_text_is_kept() -> None:
    out = run(canonical(text=[GERMAN, CHINESE, JAPANESE, "Der Hund schläft."]))
    assert out.removed.num_rows == 0, out.removed.to_pylist()


def test_german_words_are_counted_by_characters_not_bytes() -> None:
    got = scores_of("Größe über straße")
    assert got["word_count"] == [3]
    assert got["mean_word_length"] == [pytest.approx(15 / 3)]  # 5 + 4 + 6 characters


def test_unspaced_scripts_count_one_word_per_character() -> None:
    # Chinese has no spaces: each character (punctuation included) is a word, the
    # n-grams are character n-grams, and the mean word length is left null (it would
    # only measure the script, not the text).
    got = scores_of("我今天去商店。", "我今天去商店。 Hello world", "我我我我我我我我我我我我我我我我我我我我我我")
    assert got["word_count"] == [7, 9, 22]
    assert math.isnan(got["mean_word_length"][0])
    assert got["mean_word_length"][1] == pytest.approx(5.0)  # only the spaced words
    assert got["alpha_word_share"][0] == pytest.approx(6 / 7)  # "。" holds no letter
    out = run(canonical(text=["我我我我我我我我我我我我我我我我我我我我我我", CHINESE]))
    assert out.removed.column("reason").to_pylist() == ["quality:repeated_2grams"]


def test_thai_combining_marks_stay_with_their_letter() -> None:
    # "ที่" is one letter with two combining marks: one word, which holds a letter.
    got = scores_of("ที่ ที่")
    assert got["word_count"] == [2]
    assert got["alpha_word_share"] == [1.0]


# --- wiring -------------------------------------------------------------------------------


def test_registry_and_config() -> None:
    assert stage_class("quality") is QualityStage
    assert QualityStage.name == "quality" and QualityStage.config_model is QualityConfig
    with pytest.raises(ValidationError):
        QualityConfig(min_word=3)
    with pytest.raises(ValidationError):
        QualityConfig(max_top_2gram_share=-0.1)
    assert QualityConfig(max_dup_line_share=None).max_dup_line_share is None
