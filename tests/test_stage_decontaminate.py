"""decontaminate: rows holding evaluation items leave, named for the set and the item, on
real English fortunes (the sample data) and Chinese ones (Debian ``fortunes-zh``)."""

from __future__ import annotations

import gzip
import json
import re
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.fingerprint import run_fingerprint
from pipeline.schema import DatasetInfo
from pipeline.stages.base import stats_of
from pipeline.stages.decontaminate import DecontaminateConfig, DecontaminateStage
from pipeline.stages.registry import stage_names
from pipeline.text import ngrams
from tests.conftest import canonical, clean_sample_rows

TEXT = DatasetInfo("text", ("text",))
INSTRUCTION = DatasetInfo("instruction", ("prompt", "response"))
SAMPLE = clean_sample_rows()
FORTUNES_ZH = Path("/usr/share/games/fortunes/chinese")
TEX = SAMPLE["computers"][0][1]  # "TeX is potentially the most significant invention in typesetting..."
STALLMAN = SAMPLE["computers"][2][1]  # "They seem to have learned the habit of cowering before authority..."


def chinese_fortunes() -> list[str]:
    if not FORTUNES_ZH.is_file():
        pytest.skip(f"{FORTUNES_ZH} is missing: apt-get install fortunes-zh")
    text = re.sub(r"\x1b\[[0-9;]*m", "", FORTUNES_ZH.read_text(encoding="utf-8"))
    return [c.strip() for c in text.split("\n%\n")]


def eval_file(tmp_path: Path, rows: list[dict], name: str = "eval.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def run(tables: list[pa.Table], info: DatasetInfo = TEXT, **cfg):
    stage = DecontaminateStage(DecontaminateConfig(enabled=True, **cfg), info)
    state = stage.decide([stage.summarize(t) for t in tables])
    return state, [stage.apply(t, state) for t in tables]


def removed(outputs) -> dict[str, tuple[str, dict]]:
    out = {}
    for o in outputs:
        for r in o.removed.to_pylist():
            out[r["row_id"]] = (r["reason"], json.loads(r["detail"]))
    return out


def test_a_rewrapped_recased_item_and_a_chinese_span_are_removed_with_what_they_matched(tmp_path: Path) -> None:
    zh = chinese_fortunes()
    evals = eval_file(tmp_path, [{"id": "tex", "text": TEX}, {"id": "zh-1", "text": zh[0]}])
    shouted = "\n".join(textwrap.wrap(re.sub(r"[.,-]", "", TEX.upper()), 15))
    # 27 characters of the cookie, its full-width marks made ASCII, cut into lines of 7
    span = "很难避免遇到与你意见不和,或者难以合作\n的人.请接受这一事实"
    assert span.replace(",", "，").replace(".", "。").replace("\n", "") in zh[0].replace("\n", "")
    wrapped_span = "\n".join(span[i : i + 7] for i in range(0, len(span), 7))
    table = canonical(
        text=[
            f"Overheard in a lab:\n{shouted}",
            STALLMAN,
            f"{STALLMAN}\n{wrapped_span}",
            zh[1],
        ]
    )
    state, outputs = run([table.slice(0, 2), table.slice(2)], eval_sets=[{"name": "quotes", "inputs": [evals]}])
    gone = removed(outputs)
    assert sorted(gone) == ["r0", "r2"]
    reason, detail = gone["r0"]
    assert reason == "contamination:quotes"
    assert detail["eval_row_id"] == "tex"
    assert detail["ngram"] == "tex is potentially the most significant invention in"
    assert detail["matches"] == detail["eval_ngrams"] == len(ngrams.token_strings(pa.array([TEX]))[0]) - 7
    reason, detail = gone["r2"]
    assert (reason, detail["eval_row_id"]) == ("contamination:quotes", "zh-1")
    assert detail["ngram"] == "很 难 避 免 遇 到 与 你 意 见 不 和"
    assert detail["matches"] == 27 - 11
    assert sum(o.counters["contamination:quotes"] for o in outputs) == 2
    kept = [r for o in outputs for r in o.kept.column("row_id").to_pylist()]
    assert kept == ["r1", "r3"]
    report = pa.concat_tables([o.scores for o in outputs])
    assert report.column("row_id").to_pylist() == ["r0", "r2"]
    assert stats_of(state)["eval_sets"]["quotes"] == {"rows": 2, "indexed": 2, "too_short": 0, "matched_on": "whole"}
    assert stats_of(state)["ngram_lengths"] == [8, 12]


def man_line(locale: str, page: str, holding: str) -> str:
    """The first text line of a ``manpages-zh`` page that holds ``holding``."""
    path = Path("/usr/share/man") / locale / "man1" / page
    if not path.is_file():
        pytest.skip(f"{path} is missing: apt-get install manpages-zh")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return next(line.strip() for line in fh if holding in line and not line.startswith("."))


def test_a_traditional_copy_of_a_simplified_item_is_found(tmp_path: Path) -> None:
    simplified = man_line("zh_CN", "ac.1.gz", "GNU ac")  # the same manual, in both scripts
    traditional = man_line("zh_TW", "ac.1.gz", "GNU ac")
    assert simplified != traditional
    evals = eval_file(tmp_path, [{"id": "ac", "text": simplified}])
    table = canonical(text=[traditional])
    _, outputs = run([table], eval_sets=[{"name": "man", "inputs": [evals]}], own_splits=False)
    assert removed(outputs)["r0"][1]["ngram"] == "gnu ac 工 作 起 来 与 u x ac 基 本"
    _, outputs = run([table], eval_sets=[{"name": "man", "inputs": [evals]}], own_splits=False, script_fold="none")
    assert removed(outputs) == {}


def test_prompt_response_and_whole_row_matching(tmp_path: Path) -> None:
    question, answer = SAMPLE["science"][0][1], SAMPLE["science"][1][1]
    evals = eval_file(tmp_path, [{"id": "q7", "question": question, "answer": answer}])
    eval_set = {"name": "bench", "inputs": [evals], "columns": {"prompt": "question", "response": "answer"}}
    table = canonical(
        prompt=["\n".join(textwrap.wrap(question, 22)), STALLMAN, TEX],
        response=[TEX, answer.lower(), STALLMAN],
    )
    for match, expected in (("prompt", ["r0"]), ("response", ["r1"]), ("whole", ["r0", "r1"])):
        _, outputs = run([table], INSTRUCTION, eval_sets=[eval_set], match=match)
        assert sorted(removed(outputs)) == expected, match
        assert {d["eval_row_id"] for _, d in removed(outputs).values()} == {"q7"}


def test_train_rows_holding_a_validation_row_leave_and_held_out_rows_stay(tmp_path: Path) -> None:
    valid = SAMPLE["law"][0][1]
    table = canonical(
        text=[valid, f"Quoted: {valid.upper()}", TEX, f"Also: {valid}"],
        split=["validation", "train", "train", "test"],
    )
    state, outputs = run([table.slice(0, 2), table.slice(2)])
    gone = removed(outputs)
    assert sorted(gone) == ["r1"]
    assert gone["r1"][0] == "contamination:validation"
    assert gone["r1"][1]["eval_row_id"] == "r0"
    assert stats_of(state)["eval_sets"]["validation"]["rows"] == 1
    assert stats_of(state)["eval_sets"]["test"]["rows"] == 1
    _, outputs = run([table], own_splits=False, eval_sets=[{"name": "e", "inputs": [eval_file(tmp_path, [{"text": TEX}])]}])
    assert sorted(removed(outputs)) == ["r2"]
    state, outputs = run([table.drop_columns(["split"])])
    assert removed(outputs) == {}
    assert stats_of(state)["message"] == "own_splits: the dataset has no validation or test rows (is split enabled?)"


def test_min_matches_and_min_overlap_decide_from_the_shared_ngrams(tmp_path: Path) -> None:
    evals = eval_file(tmp_path, [{"id": "tex", "text": TEX}])
    nine_words = " ".join(TEX.split()[3:12])  # two 8-grams of the item
    table = canonical(text=[f"{STALLMAN}\n{nine_words}"])
    eval_sets = [{"name": "e", "inputs": [evals]}]
    _, outputs = run([table], eval_sets=eval_sets)
    assert removed(outputs)["r0"][1]["matches"] == 2
    _, outputs = run([table], eval_sets=eval_sets, min_matches=3)
    assert removed(outputs) == {}
    _, outputs = run([table], eval_sets=eval_sets, min_overlap=0.5)
    assert removed(outputs) == {}
    _, outputs = run([table], eval_sets=eval_sets, ngram=5, min_overlap=0.1)  # 5 of 40 5-grams
    assert removed(outputs)["r0"][1]["matches"] == 5


def test_a_template_shared_by_many_eval_rows_is_not_evidence_of_leakage(tmp_path: Path) -> None:
    template = "Read the quotation below and name the person who said it."
    items = [{"id": f"q{i}", "text": f"{template}\n{t}"} for i, (_, t) in enumerate(SAMPLE["politics"][:11])]
    evals = eval_file(tmp_path, items)
    table = canonical(text=[f"{template}\n{TEX}", f"{template}\n{SAMPLE['politics'][3][1]}"])
    eval_sets = [{"name": "quiz", "inputs": [evals]}]
    state, outputs = run([table], eval_sets=eval_sets, own_splits=False)
    assert sorted(removed(outputs)) == ["r1"], "the item itself still matches"
    assert removed(outputs)["r1"][1]["eval_row_id"] == "q3"
    assert stats_of(state)["common_ngrams"] == len(ngrams.token_strings(pa.array([template]))[0]) - 7
    _, outputs = run([table], eval_sets=eval_sets, own_splits=False, common_rows=None)
    assert sorted(removed(outputs)) == ["r0", "r1"]


def test_short_items_match_whole_or_are_counted_too_short(tmp_path: Path) -> None:
    evals = eval_file(tmp_path, [{"id": "a", "text": "Gordon Bell, on TeX."}, {"id": "b", "text": "TeX!"}])
    table = canonical(text=[f"As gordon bell ON tex said: {STALLMAN}", "tex", STALLMAN])
    state, outputs = run([table], eval_sets=[{"name": "e", "inputs": [evals]}], own_splits=False)
    assert {k: v[1]["ngram"] for k, v in removed(outputs).items()} == {"r0": "gordon bell on tex"}
    assert stats_of(state)["eval_sets"]["e"] == {"rows": 2, "indexed": 1, "too_short": 1, "matched_on": "whole"}


def test_the_eval_files_key_the_fingerprint_and_the_stage_runs_after_split(tmp_path: Path) -> None:
    names = stage_names()
    assert names.index("split") < names.index("decontaminate") < names.index("augment")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for _, t in SAMPLE["law"][:4]))
    (tmp_path / "evals").mkdir()
    first = eval_file(tmp_path / "evals", [{"text": TEX}], "a.jsonl")
    eval_file(tmp_path / "evals", [{"text": STALLMAN}], "b.jsonl")
    eval_set = json.dumps([{"name": "e", "inputs": [str(tmp_path / "evals" / "*.jsonl")]}])
    cfg = load_config(
        None,
        inputs=[str(data)],
        output=str(tmp_path / "out"),
        overrides=["stages.decontaminate.enabled=true", f"stages.decontaminate.eval_sets={eval_set}"],
    )
    before = run_fingerprint(cfg, cfg.datasets[0].name)
    reads = before.reads["decontaminate"]
    assert [(h.read.role, h.read.label, h.read.data) for h in reads] == [("eval:e", "a.jsonl", True), ("eval:e", "b.jsonl", True)]
    assert [i["label"] for i in before.inputs if i["role"] == "eval:e"] == ["a.jsonl", "b.jsonl"]
    Path(first).write_text(json.dumps({"text": SAMPLE["law"][1][1]}) + "\n")
    after = run_fingerprint(cfg, cfg.datasets[0].name)
    assert after.value != before.value and after.work_key == before.work_key
    assert after.step_key("k", "decontaminate", {}) != before.step_key("k", "decontaminate", {})
    assert after.step_key("k", "split", {}) == before.step_key("k", "split", {})


def test_eval_set_paths_in_a_config_file_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text(json.dumps({"text": TEX}) + "\n")
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            datasets:
              - name: d
                inputs: [data.jsonl]
                stages: {decontaminate: {eval_sets: [{name: b, inputs: [b.jsonl]}]}}
            stages:
              decontaminate: {enabled: true, eval_sets: [{name: a, inputs: [evals/a.jsonl]}]}
            """
        )
    )
    cfg = load_config(str(config))
    assert cfg.stages.decontaminate.eval_sets[0].inputs == [str(tmp_path / "evals" / "a.jsonl")]
    assert cfg.stages_for(cfg.datasets[0]).decontaminate.eval_sets[0].inputs == [str(tmp_path / "b.jsonl")]


def test_a_conversation_is_matched_by_its_turns(tmp_path: Path) -> None:
    evals = eval_file(tmp_path, [{"id": "q", "question": TEX, "answer": "Gordon Bell"}])
    eval_set = {"name": "e", "inputs": [evals], "columns": {"prompt": "question", "response": "answer"}}
    turns = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEX}, {"role": "assistant", "content": STALLMAN}],
        [{"role": "user", "content": "Who said this?"}, {"role": "assistant", "content": TEX}],
    ]
    table = canonical(messages=turns)
    info = DatasetInfo("instruction", ("messages",))
    for match, expected in (("prompt", ["r0"]), ("response", []), ("whole", ["r0", "r1"])):
        _, outputs = run([table], info, eval_sets=[eval_set], match=match, own_splits=False)
        assert sorted(removed(outputs)) == expected, match


def test_a_missing_eval_file_is_one_error_naming_the_set(tmp_path: Path) -> None:
    stage = DecontaminateStage(
        DecontaminateConfig(enabled=True, eval_sets=[{"name": "gsm8k", "inputs": [str(tmp_path / "no.jsonl")]}]), TEXT
    )
    with pytest.raises(PipelineError, match=r"^stages.decontaminate.eval_sets 'gsm8k': input not found: .*no.jsonl$"):
        stage.decide([])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"own_splits": False}, "nothing to match against"),
        ({"eval_sets": [{"name": "validation", "inputs": ["x"]}]}, "the dataset's own split"),
        ({"eval_sets": [{"name": "a", "inputs": ["x"]}, {"name": "a", "inputs": ["y"]}]}, "given twice"),
    ],
)
def test_config_errors(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DecontaminateConfig(enabled=True, **settings)
