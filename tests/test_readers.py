"""Readers: every format, role mapping, row ids, and the errors bad inputs give."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import PipelineError
from pipeline.inputs import ColumnsConfig, DatasetConfig
from pipeline.readers import Reader
from pipeline.schema import CONVERSATION_TYPE

ROWS = [
    {"id": "a1", "text": "First row of text.", "label": "pos", "source": "web"},
    {"id": "a2", "text": "Second row of text.", "label": "neg", "source": "book"},
    {"id": "a3", "text": "Third row of text.", "label": "pos", "source": "web"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read(inputs: list[Path], shard_rows: int = 1000, **columns) -> tuple[Reader, pa.Table]:
    reader = Reader(DatasetConfig(name="t", inputs=[str(p) for p in inputs], columns=ColumnsConfig(**columns)), shard_rows)
    shards = list(reader.shards())
    return reader, pa.concat_tables(shards)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "hf"])
def test_every_format_gives_the_same_canonical_table(tmp_path: Path, fmt: str) -> None:
    table = pa.Table.from_pylist(ROWS)
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    elif fmt == "csv":
        path = tmp_path / "d.csv"
        table.to_pandas().to_csv(path, index=False)
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        pq.write_table(table, path)
    else:
        import datasets

        path = tmp_path / "d_hf"
        datasets.Dataset(table).save_to_disk(str(path))
    reader, out = read([path])
    assert reader.info.kind == "classification"
    assert out.column_names == ["row_id", "text", "label", "source", "changed_by"]
    assert out.column("row_id").to_pylist() == ["a1", "a2", "a3"]
    assert out.column("text").to_pylist() == [r["text"] for r in ROWS]
    assert out.column("label").to_pylist() == ["pos", "neg", "pos"]


def test_shards_have_the_configured_row_count(tmp_path: Path) -> None:
    rows = [{"text": f"row number {i}"} for i in range(25)]
    path = tmp_path / "d.csv"
    pa.Table.from_pylist(rows).to_pandas().to_csv(path, index=False)
    reader = Reader(DatasetConfig(name="t", inputs=[str(path)]), 10)
    assert [s.num_rows for s in reader.shards()] == [10, 10, 5]


def test_ids_derived_from_file_and_position_when_no_id_column(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}, {"text": "y"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "z"}])
    reader, out = read([a, b], shard_rows=1)
    assert out.column("row_id").to_pylist() == ["a.jsonl:0", "a.jsonl:1", "b.jsonl:0"]
    assert reader.info.kind == "text"


def test_glob_reads_files_in_sorted_order(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "part-2.jsonl", [{"text": "two"}])
    write_jsonl(tmp_path / "part-1.jsonl", [{"text": "one"}])
    _, out = read([tmp_path / "part-*.jsonl"])
    assert out.column("text").to_pylist() == ["one", "two"]


def test_configured_id_column_and_mapping(tmp_path: Path) -> None:
    rows = [{"uid": 7, "body": "hello there", "cat": 1}, {"uid": 8, "body": "bye now", "cat": 0}]
    _, out = read([write_jsonl(tmp_path / "d.jsonl", rows)], id="uid", text="body", label="cat")
    assert out.column("row_id").to_pylist() == ["7", "8"]
    assert out.column("label").to_pylist() == [1, 0]
    assert "body" not in out.column_names


def test_alpaca_columns_map_themselves_and_input_joins_the_prompt(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Summarise.", "input": "A long text.", "output": "Short."},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    ]
    reader, out = read([write_jsonl(tmp_path / "d.jsonl", rows)])
    assert reader.info.kind == "instruction"
    assert out.column("prompt").to_pylist() == ["Summarise.\n\nA long text.", "Say hi."]
    assert out.column("response").to_pylist() == ["Short.", "Hi!"]


def test_messages_are_read_as_the_canonical_message_struct(tmp_path: Path) -> None:
    rows = [{"messages": [{"content": "hi", "role": "user"}, {"role": "assistant", "content": "hello"}]}]
    reader, out = read([write_jsonl(tmp_path / "d.jsonl", rows)])
    assert reader.info.kind == "instruction" and reader.info.required == ("messages",)
    assert out.schema.field("messages").type == CONVERSATION_TYPE
    blank = dict.fromkeys(("name", "tool_calls", "tool_call_id", "weight", "source_role", "extra"))
    assert out.column("messages").to_pylist() == [
        [{"role": "user", "content": "hi", **blank}, {"role": "assistant", "content": "hello", **blank}]
    ]


def test_labels_of_later_files_take_the_first_files_type(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": 1.5}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "y", "label": 2}])
    _, out = read([a, b])
    assert out.column("label").type == pa.float64() and out.column("label").to_pylist() == [1.5, 2.0]


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="input not found: .*nope.jsonl"):
        read([tmp_path / "nope.jsonl"])


def test_unreadable_parquet(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(PipelineError, match=r"bad\.parquet: cannot read it as parquet"):
        read([bad])


def test_mapped_column_that_does_not_exist(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(PipelineError, match=r"columns\.label: column 'category' not found in .*d\.jsonl \(columns: id, text"):
        read([path], label="category")


def test_text_column_of_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(PipelineError, match=r"d\.parquet: column 'text' for role 'text' holds int64, expected text"):
        read([path])


def test_no_text_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "x"}])
    with pytest.raises(PipelineError, match="no text column found .*columns: body"):
        read([path])


def test_empty_id_is_named_with_its_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x"}, {"id": None, "text": "y"}])
    with pytest.raises(PipelineError, match=r"d\.jsonl line 2: id column 'id' is empty"):
        read([path])
    table = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": ["a", None], "text": ["x", "y"]}), table)
    with pytest.raises(PipelineError, match=r"d\.parquet row 2: id column 'id' is empty"):
        read([table])


def test_column_clashing_with_a_role(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "x", "text": "y"}])
    with pytest.raises(PipelineError, match="clashes with a role"):
        read([path], text="body")
    _, out = read([path], text="body", drop=["text"])
    assert out.column("text").to_pylist() == ["x"]


def test_inputs_of_different_kinds_are_refused(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": 1}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "y"}])
    with pytest.raises(PipelineError, match="inputs disagree on roles"):
        read([a, b])


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("x")
    with pytest.raises(PipelineError, match="unknown file type '.txt'"):
        read([path])
