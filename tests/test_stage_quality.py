"""quality: what each check removes (the scores themselves are tested in
tests/test_text_stats.py), what ordinary fine-tuning rows keep, gates, reasons and details."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.schema import MESSAGE_TYPE, DatasetInfo
from pipeline.stages.quality import CHECKS, QualityConfig, QualityStage
from pipeline.stages.registry import stage_class
from pipeline.text.stats import SCORE_COLUMNS
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


def reason_of(text: str, **cfg) -> str | None:
    out = run(canonical(text=[text, NORMAL]), **cfg)
    assert out.kept.column("text").to_pylist()[-1] == NORMAL, "the normal sentence must be kept"
    reasons = out.removed.column("reason").to_pylist()
    return reasons[0] if reasons else None


def distinct_words(n: int, prefix: str = "w") -> list[str]:
    """n different words (five characters with the default prefix)."""
    return [f"{prefix}{i:03d}x" for i in range(n)]


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
    # CJK rows
    "too_few_chars": ("好的。", {}),
    "too_many_chars": ("北京是中华人民共和国的首都，也是全国的政治中心和文化中心。", {"max_chars": 20}),
    # Five CJK characters in a box of rules: a CJK row, but 5 % of its characters are CJK.
    "too_few_cjk_chars": ("软件包列表\n┌" + "─" * 40 + "┐\n└" + "─" * 40 + "┘", {}),
    "repeated_char_ngrams": ("哈" * 30, {}),
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


def test_null_and_empty_rows_have_too_few_words() -> None:
    out = run(canonical(text=[None, "", NORMAL]))
    assert out.removed.column("reason").to_pylist() == ["quality:too_few_words"] * 2
    assert out.kept.column("row_id").to_pylist() == ["r2"]


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


def test_conversations_are_judged_on_the_assistant_turns_or_on_all() -> None:
    messages = pa.array(
        [
            [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris is the capital."}],
            [{"role": "user", "content": "Hi, how are you doing today?"}, {"role": "assistant", "content": "Fine."}],
        ],
        MESSAGE_TYPE,
    )
    info = DatasetInfo("instruction", ("messages",))
    out = run(canonical(messages=messages), info)
    assert out.scores.column("word_count").to_pylist() == [4, 1]
    assert out.removed.column("row_id").to_pylist() == ["r1"]
    everything = run(canonical(messages=messages), info, turns="all")
    assert everything.scores.column("word_count").to_pylist() == [7, 7]
    assert everything.removed.num_rows == 0


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


def test_unspaced_scripts_are_judged_by_character_ngrams() -> None:
    out = run(canonical(text=["我我我我我我我我我我我我我我我我我我我我我我", CHINESE]))
    assert out.removed.column("reason").to_pylist() == ["quality:repeated_char_ngrams"]


# --- wiring -------------------------------------------------------------------------------


def test_registry_and_config() -> None:
    assert stage_class("quality") is QualityStage
    assert QualityStage.name == "quality" and QualityStage.config_model is QualityConfig
    with pytest.raises(ValidationError):
        QualityConfig(min_word=3)
    with pytest.raises(ValidationError):
        QualityConfig(max_top_2gram_share=-0.1)
    assert QualityConfig(max_dup_line_share=None).max_dup_line_share is None


def test_ascii_punctuation_in_chinese_rows_is_no_word() -> None:
    # Spaced ASCII marks between Chinese characters once made one-letter "words" here
    # (mean word length 1.0: quality:words_too_short); they are no words at all now.
    text = "你好 , 世界 . 今天天气很好 , 我们去公园散步吧 ! 好的 : 走吧 ."
    out = run(canonical(text=[text]))
    assert out.removed.num_rows == 0
    assert out.scores.column("word_count").to_pylist() == [len(re.findall(r"[\u4e00-\u9fff]", text))]
    assert out.scores.column("char_count").to_pylist() == [len(text.replace(" ", ""))]


def test_cjk_and_spaced_rows_are_judged_by_their_own_checks() -> None:
    # Each row fails only the checks of its own script, whatever shares the shard with it.
    rows = ["好的。", "Hi there", "Paris.", "北京"]
    out = run(canonical(text=rows), min_chars=3)
    assert out.removed.column("reason").to_pylist() == [
        "quality:too_few_words",
        "quality:too_few_words",
        "quality:too_few_chars",
    ]
    assert out.kept.column("text").to_pylist() == ["好的。"]
