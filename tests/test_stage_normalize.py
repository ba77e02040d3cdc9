"""normalize: what it repairs, what it leaves alone."""

from __future__ import annotations

import pyarrow as pa

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
