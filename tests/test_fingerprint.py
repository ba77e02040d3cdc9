"""Fingerprints, work keys and step keys: plain functions, tested without Prefect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.config import PipelineConfig, load_config
from pipeline.fingerprint import run_fingerprint, step_key
from pipeline.review import decisions_path
from pipeline.store import Store

ROWS = [{"id": str(i), "text": f"row number {i} of a small test set", "label": "ab"[i % 2]} for i in range(6)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(data: Path, out: Path, *overrides: str) -> PipelineConfig:
    return load_config(None, inputs=[str(data)], output=str(out), overrides=list(overrides))


def test_same_inputs_and_config_give_the_same_keys_wherever_the_files_are(tmp_path: Path) -> None:
    a = run_fingerprint(_config(_write(tmp_path / "a" / "data.jsonl", ROWS), tmp_path / "out"), "data")
    b = run_fingerprint(_config(_write(tmp_path / "b" / "data.jsonl", ROWS), tmp_path / "elsewhere"), "data")
    assert (a.value, a.work_key, a.config_hash) == (b.value, b.work_key, b.config_hash)
    assert [i["role"] for i in a.inputs] == ["dataset"] and a.inputs[0]["sha256"] == b.inputs[0]["sha256"]


def test_input_bytes_change_every_key_and_a_stage_setting_only_the_fingerprint(tmp_path: Path) -> None:
    data = _write(tmp_path / "data.jsonl", ROWS)
    base = run_fingerprint(_config(data, tmp_path / "out"), "data")
    setting = run_fingerprint(_config(data, tmp_path / "out", "stages.quality.min_words=5"), "data")
    assert setting.value != base.value and setting.work_key == base.work_key
    _write(data, ROWS[:-1])
    changed = run_fingerprint(_config(data, tmp_path / "out"), "data")
    assert changed.value != base.value and changed.work_key != base.work_key


def test_shard_size_decides_the_work_folder(tmp_path: Path) -> None:
    data = _write(tmp_path / "data.jsonl", ROWS)
    a = run_fingerprint(_config(data, tmp_path / "out"), "data")
    b = run_fingerprint(_config(data, tmp_path / "out", "shard_rows=2"), "data")
    assert a.work_key != b.work_key and a.value != b.value


def test_step_keys_chain_from_the_step_before() -> None:
    first = step_key("work", "normalize", {"enabled": True}, [])
    assert first == step_key("work", "normalize", {"enabled": True}, [])
    assert first != step_key("other-work", "normalize", {"enabled": True}, [])
    assert first != step_key("work", "normalize", {"enabled": False}, [])
    assert first != step_key("work", "normalize", {"enabled": True}, ["a" * 64])
    assert step_key(first, "noise", {}, []) != step_key(step_key("work", "normalize", {}, []), "noise", {}, [])


def test_rehearsal_files_are_inputs_of_the_run_and_of_its_step_only(tmp_path: Path) -> None:
    data = _write(tmp_path / "data.jsonl", ROWS)
    general = _write(tmp_path / "general.jsonl", ROWS[:3])
    overrides = ["stages.rehearsal.enabled=true", f"stages.rehearsal.inputs=[{general}]"]
    fp = run_fingerprint(_config(data, tmp_path / "out", *overrides), "data")
    assert [(i["role"], i["label"]) for i in fp.inputs] == [("dataset", "data.jsonl"), ("rehearsal", "general.jsonl")]
    assert fp.records() == {}
    _write(general, ROWS[:4])
    again = run_fingerprint(_config(data, tmp_path / "out", *overrides), "data")
    assert again.value != fp.value and again.work_key == fp.work_key
    assert again.step_key("k", "rehearsal", {}) != fp.step_key("k", "rehearsal", {})
    assert again.step_key("k", "split", {}) == fp.step_key("k", "split", {})
    off = run_fingerprint(_config(data, tmp_path / "out", f"stages.rehearsal.inputs=[{general}]"), "data")
    assert [i["role"] for i in off.inputs] == ["dataset"]


def test_review_decisions_are_hashed_recorded_and_handed_to_label_issues(tmp_path: Path) -> None:
    data = _write(tmp_path / "data.jsonl", ROWS)
    cfg = _config(data, tmp_path / "out")
    without = run_fingerprint(cfg, "data")
    decisions = decisions_path(Store(tmp_path / "out", "data"))
    _write(decisions, [{"row_id": "1", "decision": "drop"}, {"row_id": "2", "decision": "keep"}])
    review = run_fingerprint(cfg, "data")
    assert review.value != without.value and review.work_key == without.work_key
    assert review.records() == {
        "review": {"file": str(decisions), "sha256": review.reads["label_issues"][0].sha256, "decisions": 2}
    }
    assert review.stage_settings("label_issues", {"folds": 5}) == {"folds": 5, "review_file": str(decisions)}
    assert review.stage_settings("split", {"seed": 0}) == {"seed": 0}
    off = run_fingerprint(_config(data, tmp_path / "out", "stages.label_issues.enabled=false"), "data")
    assert off.records() == {} and off.reads == {}
    shutil.rmtree(decisions.parent)
    assert run_fingerprint(cfg, "data") == without
