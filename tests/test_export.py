"""``export``: a version written back as Alpaca, ShareGPT or OpenAI and read again gives
the version's rows, every field of every message included; what a format cannot hold
stops the export with one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import steps
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.export import export_version
from pipeline.fingerprint import run_fingerprint
from pipeline.inputs import DatasetConfig
from pipeline.inspect import load_version
from pipeline.readers import Reader
from pipeline.schema import CHANGED_BY, SPLIT
from pipeline.stages.registry import stages as registered_stages
from pipeline.store import Store
from pipeline.version import RunRecord, StageReport, publish
from tests.test_formats import alpaca_rows, cli, openai_rows, sharegpt_rows, write_jsonl

OFF = ("language", "quality", "near_dedup")
"""Stages switched off: they judge the text, which is not what these tests are about."""
SETTINGS = [f"stages.{name}.enabled=false" for name in OFF] + ["stages.missing.fill_optional=false"]
"""``missing`` would fill the rows without ``meta`` with the most common one."""


def publish_input(path: Path, tmp: Path) -> Path:
    """Curate ``path`` through the stages (normalize, noise, missing, exact_dedup,
    split) without Prefect, and publish it: the version folder."""
    cfg = load_config(None, inputs=[str(path)], output=str(tmp / "out"), overrides=SETTINGS)
    ds = cfg.datasets[0]
    fp = run_fingerprint(cfg, ds.name)
    work = tmp / "work"
    ingested = steps.ingest(ds.model_dump(mode="json"), cfg.shard_rows, str(work))
    shards, removed, reports = ingested.shards, {}, []
    for index, cls in enumerate(registered_stages()):
        config = getattr(cfg.stages_for(ds), cls.name).model_dump(mode="json")
        stage = steps.make_stage(cls.name, config, ingested.info)
        if not stage.applies():
            continue
        out = str(work / f"{index}-{cls.name}")
        state = None
        if stage.is_global:
            summaries = [steps.summarize(cls.name, config, ingested, s, out) for s in shards]
            state = steps.decide(cls.name, config, ingested, summaries, out).state
        applied = [steps.apply(cls.name, config, ingested, s, state, out) for s in shards]
        shards = [a.kept for a in applied]
        removed[cls.name] = [a.removed for a in applied if a.removed]
        reports.append(StageReport.from_shards(cls.name, applied))
    record = RunRecord(
        dataset=ds.name, info=ingested.info, fingerprint=fp.value, inputs=fp.inputs, config=fp.payload,
        config_hash=fp.config_hash, input_rows=sum(s.rows for s in ingested.shards), final=shards,
        removed=removed, scores={}, stages=reports,
    )
    return publish(record, Store(cfg.output, ds.name))[1]


def kept(version: Path) -> list[dict[str, Any]]:
    """The version's rows, by row id, without the pipeline's bookkeeping."""
    table = pa.concat_tables([pq.read_table(p) for p in sorted((version / "data").glob("*.parquet"))])
    return sorted(table.drop_columns([CHANGED_BY, SPLIT]).to_pylist(), key=lambda r: r["row_id"])


def without_text(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their texts left out (the cleaning stages may rewrite those)."""
    blanked = []
    for row in rows:
        row = {k: None if k in ("prompt", "response") else v for k, v in row.items()}
        if row.get("messages") is not None:
            row["messages"] = [{**m, "content": None} for m in row["messages"]]
        blanked.append(row)
    return blanked


def read_back(path: Path) -> tuple[Reader, list[dict[str, Any]]]:
    reader = Reader(DatasetConfig(name="back", inputs=[str(path)]), 1000)
    table = pa.concat_tables(list(reader.shards())).drop_columns([CHANGED_BY])
    return reader, sorted(table.to_pylist(), key=lambda r: r["row_id"])


CASES = {
    "openai": (openai_rows, "messages"),
    "sharegpt": (sharegpt_rows, "messages"),
    "alpaca": (alpaca_rows, "messages"),
    "alpaca-plain": (lambda: alpaca_rows(history=False), "prompt"),
}


@pytest.mark.parametrize("case", CASES)
def test_round_trip_gives_the_same_rows(tmp_path: Path, case: str) -> None:
    """read -> canonical -> publish -> export -> read, in each format."""
    build, role = CASES[case]
    fmt = case.split("-")[0]
    source = write_jsonl(tmp_path / f"{fmt}.jsonl", build())
    original = Reader(DatasetConfig(name="src", inputs=[str(source)]), 1000)
    first = sorted(pa.concat_tables(list(original.shards())).drop_columns([CHANGED_BY]).to_pylist(), key=lambda r: r["row_id"])
    version = publish_input(source, tmp_path)
    rows = kept(version)
    assert without_text(rows) == without_text(first), "the stages cleaned the texts and touched nothing else"
    out = tmp_path / f"export-{fmt}.jsonl"
    result = export_version(load_version(version), fmt, out)
    assert sum(result.rows.values()) == len(rows) and set(result.rows) <= {"train", "validation", "test"}
    reader, back = read_back(out)
    assert reader.info == original.info and reader.info.roles[0] == role
    assert back == rows


def test_every_field_of_a_tool_call_conversation_survives(tmp_path: Path) -> None:
    """The round trip above compares whole rows; this says what is in them."""
    version = publish_input(write_jsonl(tmp_path / "chat.jsonl", openai_rows(3)), tmp_path)
    export_version(load_version(version), "openai", tmp_path / "out.jsonl")
    written = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()}
    for row in openai_rows(3):
        assert written[row["id"]]["messages"] == [
            {"content": None, **m} if m["role"] == "assistant" and "tool_calls" in m else m for m in row["messages"]
        ]
        assert written[row["id"]].get("tools") == row.get("tools") and written[row["id"]].get("meta") == row.get("meta")


def test_openai_tool_calls_exported_as_sharegpt(tmp_path: Path) -> None:
    """Across formats the call becomes a function_call turn LLaMA-Factory reads (name,
    arguments as an object), and nothing is dropped: the call id rides along."""
    version = publish_input(write_jsonl(tmp_path / "chat.jsonl", openai_rows(3)), tmp_path)
    result = export_version(load_version(version), "sharegpt", tmp_path / "sg.jsonl")
    row = json.loads((tmp_path / "sg.jsonl").read_text().splitlines()[0])
    turns = row["conversations"]
    assert [t["from"] for t in turns] == ["system", "human", "function_call", "observation", "gpt"]
    assert json.loads(turns[2]["value"]) == {"name": "apt_show", "arguments": {"package": "adwaita-icon-theme"}, "id": "call_000"}
    assert turns[3]["tool_call_id"] == "call_000" and turns[3]["name"] == "apt_show" and turns[4]["weight"] == 1
    entry = result.dataset_info("chat_v0001")["chat_v0001"]
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "conversations", "tools": "tools"}
    assert entry["tags"]["function_tag"] == "function_call" and entry["tags"]["observation_tag"] == "observation"
    _, back = read_back(tmp_path / "sg.jsonl")
    assert [m["role"] for m in back[0]["messages"]] == ["system", "user", "assistant", "tool", "assistant"]


def test_alpaca_cannot_hold_tool_calls(tmp_path: Path) -> None:
    version = publish_input(write_jsonl(tmp_path / "chat.jsonl", openai_rows(6)), tmp_path)
    out = tmp_path / "a.jsonl"
    with pytest.raises(PipelineError, match=r"6 rows of chat/v0001 cannot be written as alpaca \(first: row 'oa-000', "
                                            r"it offers tools\); export them as sharegpt or openai") as err:
        export_version(load_version(version), "alpaca", out)
    assert "\n" not in str(err.value) and not out.exists() and not list(tmp_path.glob(".a.jsonl*"))


def test_export_command_prints_the_loader_settings(tmp_path: Path) -> None:
    publish_input(write_jsonl(tmp_path / "chat.jsonl", openai_rows(9)), tmp_path)
    out = tmp_path / "train.jsonl"
    result = cli("export", "chat", "--output", str(tmp_path / "out"), "--format", "openai", "--split", "train", "--out", str(out))
    assert result.returncode == 0, result.stderr
    train = pq.read_table(next((tmp_path / "out" / "chat" / "v0001" / "data").glob("train-*.parquet")))
    assert len(out.read_text().splitlines()) == train.num_rows
    assert f"wrote {train.num_rows} rows of chat/v0001 (train {train.num_rows}) to {out} as openai" in result.stdout
    info = result.stdout.split("dataset_info.json:\n", 1)[1].split("\n\naxolotl", 1)[0]
    assert json.loads(info)["chat_v0001_train"]["columns"] == {"messages": "messages", "tools": "tools"}
    assert "type: chat_template\n    field_messages: messages\n    field_tools: tools" in result.stdout
    refused = cli("export", "chat", "--output", str(tmp_path / "out"), "--format", "alpaca", "--out", str(tmp_path / "a.jsonl"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")
    assert not (tmp_path / "a.jsonl").exists()
    unknown = cli("export", "chat", "--output", str(tmp_path / "out"), "--format", "openai", "--split", "dev", "--out", str(out))
    assert unknown.returncode == 2 and "--split dev: chat/v0001 has no such split (splits: train" in unknown.stderr


def test_export_refuses_a_dataset_without_conversations(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"Row {i} of plain text for the test."} for i in range(5)])
    version = publish_input(path, tmp_path)
    with pytest.raises(PipelineError, match="texts/v0001 is a text dataset; export writes instruction data"):
        export_version(load_version(version), "openai", tmp_path / "x.jsonl")
