"""``on_bad_record: skip``: bad JSON records leave the data as removed rows with reason
``format:<problem>``, the run reads on, and the ledger still holds every record.

The records are real: Debian package descriptions and ShareGPT conversations built from
them (see tests/test_formats.py), with bad ones put in at known lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.inputs import DatasetConfig
from pipeline.readers import Reader
from tests.test_formats import debian, sharegpt_rows

BAD = {
    3: ('{"text": "cut short', "format:invalid_json"),
    5: ("[1, 2, 3]", "format:not_an_object"),
    8: ('{"text": 42}', "format:bad_value"),
}


def _jsonl(path: Path) -> Path:
    lines = [json.dumps({"text": r["answer"]}) for r in debian()[:12]]
    for line, (bad, _) in BAD.items():
        lines[line - 1] = bad
    path.write_text("\n".join(lines) + "\n")
    return path


def _read(path: Path, skip: bool, shard_rows: int = 4) -> Reader:
    dataset = DatasetConfig(name="t", inputs=[str(path)], on_bad_record="skip" if skip else "error")
    reader = Reader(dataset, shard_rows)
    reader.tables = list(reader.shards())  # type: ignore[attr-defined]
    return reader


def test_skipped_records_are_set_aside_with_their_line_and_problem(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl")
    reader = _read(path, skip=True)
    ids = [i for t in reader.tables for i in t.column("row_id").to_pylist()]  # type: ignore[attr-defined]
    assert len(ids) == 12 - len(BAD)
    rejected = reader.rejects.table().to_pylist()
    assert [(r["row_id"], r["stage"], r["reason"]) for r in rejected] == [
        (f"d.jsonl:line-{line}", "read", reason) for line, (_, reason) in sorted(BAD.items())
    ]
    assert [r["record"] for r in rejected] == ['{"text": "cut short', "[1, 2, 3]", '{"text": 42}']
    assert json.loads(rejected[0]["detail"])["error"].startswith(f"{path} line 3: not valid JSON")
    assert not set(ids) & {r["row_id"] for r in rejected}
    texts = [t for table in reader.tables for t in table.column("text").to_pylist()]  # type: ignore[attr-defined]
    kept_lines = [n for n in range(1, 13) if n not in BAD]
    assert texts == [debian()[n - 1]["answer"] for n in kept_lines], "every good record, in file order"


def test_without_skip_the_first_bad_record_stops_the_read(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"d\.jsonl line 3: not valid JSON"):
        _read(_jsonl(tmp_path / "d.jsonl"), skip=False)


def test_a_bad_conversation_in_a_json_array_is_skipped_by_its_id_or_line(tmp_path: Path) -> None:
    rows = [{"id": f"sg-{i}", **row} for i, row in enumerate(sharegpt_rows(9))]
    rows[7]["conversations"][1] = {"role": "gpt", "value": "a message without from"}
    rows[7]["id"] = None
    rows[2]["conversations"] = "not a list"
    path = tmp_path / "sg.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")  # record i on line i + 2
    reader = _read(path, skip=True, shard_rows=100)
    rejected = reader.rejects.table().to_pylist()
    assert [(r["row_id"], r["reason"]) for r in rejected] == [
        ("sg-2", "format:bad_conversation"), ("sg.json:line-9", "format:bad_id")
    ]
    assert json.loads(rejected[1]["record"])["conversations"][1] == {"role": "gpt", "value": "a message without from"}
    assert sum(t.num_rows for t in reader.tables) == 7  # type: ignore[attr-defined]


def test_a_broken_json_document_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(sharegpt_rows(5))[:-40])
    with pytest.raises(PipelineError, match=r"sg\.json line 1: not valid JSON"):
        _read(path, skip=True)


def test_only_bad_records_is_an_error_that_says_so(tmp_path: Path) -> None:
    from pipeline.steps import ingest

    path = tmp_path / "d.jsonl"
    path.write_text("[1]\n{oops\n")
    with pytest.raises(PipelineError, match=r"d\.jsonl: none of its first 2 records can be read \(first: .*line 1: a record"):
        _read(path, skip=True)
    path = tmp_path / "sg.jsonl"
    path.write_text("".join(json.dumps({"conversations": "not a list"}) + "\n" for _ in range(3)))
    dataset = DatasetConfig(name="t", inputs=[str(path)], on_bad_record="skip").model_dump(mode="json")
    with pytest.raises(PipelineError, match=r"dataset t: all 3 of their records are bad \({'format:bad_conversation': 3}\)"):
        ingest(dataset, 10, str(tmp_path / "work"))


@pytest.mark.flow
def test_a_run_that_skips_publishes_the_bad_records_in_the_ledger(tmp_path: Path, prefect_harness: None) -> None:
    from flows.curate import curate

    path = _jsonl(tmp_path / "d.jsonl")
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"output: {tmp_path / 'out'}\n"
        f"datasets: [{{name: d, inputs: [{path}], on_bad_record: skip}}]\n"
        "stages: {language: {allowed: [en]}}\n"
    )
    cfg = load_config(str(config))
    result = curate(config=cfg.model_dump(mode="json"), dataset="d")
    assert result["status"] == "published"
    version = Path(result["path"])
    manifest = json.loads((version / "manifest.json").read_text())
    read = manifest["stages"][0]
    assert (read["stage"], read["rows_in"], read["rows_out"]) == ("read", 12, 9)
    assert read["reasons"] == {"format:bad_value": 1, "format:invalid_json": 1, "format:not_an_object": 1}
    assert manifest["counts"]["input_rows"] == 12
    removed = pq.read_table(version / "reports" / "removed.parquet").to_pylist()
    skipped = {r["row_id"]: r["reason"] for r in removed if r["stage"] == "read"}
    assert skipped == {f"d.jsonl:line-{line}": reason for line, (_, reason) in BAD.items()}
