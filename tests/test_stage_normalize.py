"""normalize: what it repairs, what it leaves alone."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.schema import MESSAGE_TYPE, DatasetInfo
from pipeline.stages.normalize import NormalizeConfig, NormalizeStage
from tests.conftest import canonical

TEXT = DatasetInfo("text", ("text",))


def run(table: pa.Table, info: DatasetInfo = TEXT, **cfg):
    return NormalizeStage(NormalizeConfig(**cfg), info).apply(table)


def test_repairs_mojibake_and_counts_it() -> None:
    out = run(canonical(text=["The cafÃ© served crÃ¨me brÃ»lÃ©e.", "plain ascii"]))
    assert out.kept.column("text").to_pylist() == ["The café served crème brûlée.", "plain ascii"]
    assert out.counters["unicode_repaired"] == 1
    assert out.kept.column("changed_by").to_pylist() == ["normalize", ""]
    assert out.changed == 1 and out.removed.num_rows == 0


def test_keeps_correct_non_ascii_and_curly_quotes() -> None:
    text = "“Größe” — 東京 naïve"
    out = run(canonical(text=[text]))
    assert out.kept.column("text").to_pylist() == [text]
    assert out.changed == 0


def test_whitespace_and_control_characters() -> None:
    out = run(canonical(text=["  a\tb   c \r\nd\x07e\n\n\n\nf \u200b "]))
    assert out.kept.column("text").to_pylist() == ["a b c\nde\n\nf"]


def test_indentation_is_kept() -> None:
    code = "def f(x):\n    if x:\n        return  1"
    assert run(canonical(text=[code])).kept.column("text").to_pylist() == ["def f(x):\n    if x:\n        return 1"]


def test_switches_turn_steps_off() -> None:
    text = "cafÃ©  x"
    out = run(canonical(text=[text]), fix_unicode=False, collapse_whitespace=False)
    assert out.kept.column("text").to_pylist() == [text]


def test_nfkc_folds_compatibility_characters() -> None:
    assert run(canonical(text=["ﬁne"]), unicode_form="NFKC").kept.column("text").to_pylist() == ["fine"]


def test_nulls_stay_null() -> None:
    assert run(canonical(text=[None, "x"])).kept.column("text").to_pylist() == [None, "x"]


def test_instruction_fields_are_cleaned_separately() -> None:
    info = DatasetInfo("instruction", ("prompt", "response"))
    out = run(canonical(prompt=["Why  so?", "ok"], response=["BecauseÂ  yes", "fine"]), info)
    assert out.kept.column("prompt").to_pylist() == ["Why so?", "ok"]
    assert out.kept.column("response").to_pylist() == ["Because yes", "fine"]
    assert out.kept.column("changed_by").to_pylist() == ["normalize", ""]


def test_message_contents_are_cleaned() -> None:
    info = DatasetInfo("instruction", ("messages",))
    messages = pa.array([[{"role": "user", "content": "hi  there"}, {"role": "assistant", "content": "ok"}]], MESSAGE_TYPE)
    out = run(canonical(messages=messages), info)
    assert out.kept.column("messages").to_pylist() == [[{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "ok"}]]


def test_every_planted_mojibake_row_of_sample_data_is_repaired() -> None:
    import json

    from tests.conftest import REPO

    planted = json.loads((REPO / "sample_data" / "planted.json").read_text())["files"]
    rows = {}
    for name in ("classification", "instruction"):
        for line in (REPO / "sample_data" / f"{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows[row["id"]] = row
        details = planted[name]["problems"]["mojibake"]["details"]
        ids = sorted(details)
        fields = {details[i]["field"] for i in ids}
        for field in fields:
            these = [i for i in ids if details[i]["field"] == field]
            out = run(canonical(text=[rows[i][field] for i in these]), fix_unicode=True, collapse_whitespace=False)
            assert out.kept.column("text").to_pylist() == [details[i]["repaired"] for i in these]


def test_correct_typography_does_not_go_through_ftfy(monkeypatch) -> None:
    from pipeline.stages import normalize

    seen: list[str] = []
    real = normalize.ftfy.fix_text
    monkeypatch.setattr(normalize.ftfy, "fix_text", lambda text, config=None: seen.append(text) or real(text, config))
    run(canonical(text=["“Quoted” — déjà vu, naïve São Paulo", "â€œbrokenâ€\x9d"]))
    assert seen == ["â€œbrokenâ€\x9d"]


# --- CJK text, terminal escapes, script conversion --------------------------------------

CJK_PUNCTUATION = "你好，世界。（测试）！？：；「」『』、……"


def test_cjk_punctuation_survives_byte_for_byte_and_full_width_letters_and_digits_fold() -> None:
    out = run(canonical(text=[CJK_PUNCTUATION + "ＡＢＣ１２３ｘ", "Ｌａｔｉｎ：quoted 你好，世界"]))
    assert out.kept.column("text").to_pylist() == [CJK_PUNCTUATION + "ABC123x", "Latin：quoted 你好，世界"]
    assert out.counters["unicode_repaired"] == 2


def test_full_width_text_without_cjk_characters_folds_as_before() -> None:
    # No CJK character: full-width punctuation there is a width artefact, folded by ftfy.
    out = run(canonical(text=["ＬＯＵＤ　ＮＯＩＳＥＳ！（ｏｋ）"]))
    assert out.kept.column("text").to_pylist() == ["LOUD NOISES!(ok)"]


def test_mojibake_in_a_chinese_row_is_repaired_and_its_punctuation_kept() -> None:
    broken = "你好，世界。".encode().decode("cp1252", errors="replace")
    assert "�" not in broken  # every byte of this string decodes in cp1252
    out = run(canonical(text=[broken]))
    assert out.kept.column("text").to_pylist() == ["你好，世界。"]


def test_terminal_escapes_are_removed_whole_and_counted() -> None:
    texts = [
        "\x1b[33m    -- Debian \x1b[32m《行为准则》\x1b[m第一条\x1b[m",
        "plain \x1b[1mbold\x1b[22m ascii",  # ASCII rows skip ftfy: the escape went, "[1m" stayed
        "a\x1b[;\x1b[34;1mm来b",  # broken and nested, as in the Chinese fortunes
        "title\x1b]0;window\x07 and cursor\x1b[?25l moves\x1b(B",
    ]
    out = run(canonical(text=texts))
    assert out.kept.column("text").to_pylist() == [
        "-- Debian 《行为准则》第一条",
        "plain bold ascii",
        "a来b",
        "title and cursor moves",
    ]
    assert out.counters["terminal_escapes"] == 11


def test_escapes_stay_when_control_characters_are_kept() -> None:
    text = "plain \x1b[1mbold\x1b[22m ascii"
    out = run(canonical(text=[text]), strip_control=False)
    assert out.kept.column("text").to_pylist() == [text] and "terminal_escapes" not in out.counters


def test_script_converts_chinese_with_opencc_and_leaves_the_rest() -> None:
    texts = ["漢字，這是測試。後來", "汉字，这是测试。后来", "No Chinese here.", None]
    simplified = run(canonical(text=texts), script="simplified")
    assert simplified.kept.column("text").to_pylist() == ["汉字，这是测试。后来", *texts[1:]]
    assert simplified.kept.column("changed_by").to_pylist() == ["normalize", "", "", ""]
    traditional = run(canonical(text=texts), script="traditional")
    assert traditional.kept.column("text").to_pylist() == ["漢字，這是測試。後來", "漢字，這是測試。後來", *texts[2:]]


def test_script_is_off_by_default_and_validated() -> None:
    assert run(canonical(text=["漢字"])).kept.column("text").to_pylist() == ["漢字"]
    with pytest.raises(ValidationError, match="'simplified' or 'traditional'"):
        NormalizeConfig(script="klingon")
