"""Fine-tuning formats read whole: Alpaca, ShareGPT and OpenAI rows in JSON, JSON Lines,
gzip and zstd, told apart by their columns; large rows; bad records named by line.

The files are built here from real text: the Debian package descriptions and the chatbot
pairs of ``sample_data/`` (Q&A turns, tool results), shaped as each format writes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from pipeline.errors import PipelineError
from pipeline.inputs import ColumnsConfig, DatasetConfig, TagsConfig
from pipeline.readers import Reader
from pipeline.schema import CONVERSATION_TYPE, JSON_TEXT, DatasetInfo
from pipeline.stages.exact_dedup import ExactDedupConfig, ExactDedupStage
from pipeline.stages.noise import NoiseConfig, NoiseStage
from pipeline.stages.normalize import NormalizeConfig, NormalizeStage
from tests.conftest import REPO

SYSTEM = "You answer questions about Debian packages. Use the tools when you need a package's description."
TOOL = {
    "type": "function",
    "function": {
        "name": "apt_show",
        "description": "Show the description of a Debian package",
        "parameters": {"type": "object", "properties": {"package": {"type": "string"}}, "required": ["package"]},
    },
}
BLANK = dict.fromkeys(("name", "tool_calls", "tool_call_id", "weight", "source_role", "extra"))


def _sample(name: str) -> list[dict[str, Any]]:
    with open(REPO / "sample_data" / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def debian() -> list[dict[str, Any]]:
    """Q&A on Debian packages: ``package``, ``question``, ``answer`` (its description)."""
    rows = []
    for row in _sample("general.jsonl"):
        package = row["instruction"].removeprefix("What is the ").removesuffix(" package for?")
        rows.append({"package": package, "question": row["instruction"], "answer": row["output"]})
    return rows


def chatbot() -> list[dict[str, Any]]:
    """The sample's chatbot pairs that have a context (``input``) and no planted damage:
    real Alpaca rows."""
    planted = json.loads((REPO / "sample_data" / "planted.json").read_text())["files"]["instruction"]["problems"]
    damaged = {i for problem in planted.values() for i in problem["ids"]}
    rows = [r for r in _sample("instruction.jsonl") if r["input"].startswith("Topic: ") and r["id"] not in damaged]
    return [{k: r[k] for k in ("instruction", "input", "output")} for r in rows[:40]]


def openai_rows(n: int = 30) -> list[dict[str, Any]]:
    """OpenAI chat rows: a tool-call conversation every third row (system, user, the call,
    the tool's answer, the reply), two-turn chats with a message's own keys, and single
    pairs with a user name; ``meta`` is a number in some rows and text in others."""
    rows = []
    pkgs = debian()
    for i in range(n):
        a, b = pkgs[2 * i], pkgs[2 * i + 1]
        if i % 3 == 0:
            call = f"call_{i:03d}"
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": a["question"]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call, "type": "function",
                     "function": {"name": "apt_show", "arguments": json.dumps({"package": a["package"]})}}]},
                {"role": "tool", "tool_call_id": call, "name": "apt_show", "content": a["answer"]},
                {"role": "assistant", "content": a["answer"].split(". ")[0] + ".", "weight": 1},
            ]
            rows.append({"id": f"oa-{i:03d}", "messages": messages, "tools": [TOOL], "meta": i})
        elif i % 3 == 1:
            messages = [
                {"role": "user", "content": a["question"]},
                {"role": "assistant", "content": a["answer"], "weight": 0, "annotations": {"source": "debian", "n": [1, "x"]}},
                {"role": "user", "content": [{"type": "text", "text": b["question"]}]},
                {"role": "assistant", "content": b["answer"]},
            ]
            rows.append({"id": f"oa-{i:03d}", "messages": messages, "meta": f"row {i}"})
        else:
            messages = [{"role": "user", "content": a["question"], "name": "alice"}, {"role": "assistant", "content": a["answer"]}]
            rows.append({"id": f"oa-{i:03d}", "messages": messages})
    return rows


def sharegpt_rows(n: int = 30) -> list[dict[str, Any]]:
    """ShareGPT rows: tool conversations (``function_call`` with its JSON, ``observation``,
    tools as JSON text), multi-turn chats with a system prompt, one with the system prompt
    inside the conversation."""
    rows = []
    pkgs = debian()
    for i in range(n):
        a, b = pkgs[2 * i + 100], pkgs[2 * i + 101]
        if i % 3 == 0:
            conversations = [
                {"from": "human", "value": a["question"]},
                {"from": "function_call", "value": json.dumps({"name": "apt_show", "arguments": {"package": a["package"]}})},
                {"from": "observation", "value": a["answer"]},
                {"from": "gpt", "value": a["answer"].split(". ")[0] + "."},
            ]
            rows.append({"conversations": conversations, "system": SYSTEM, "tools": json.dumps([TOOL["function"]])})
        elif i % 3 == 1:
            conversations = [
                {"from": "human", "value": a["question"]}, {"from": "gpt", "value": a["answer"]},
                {"from": "human", "value": b["question"]}, {"from": "gpt", "value": b["answer"]},
            ]
            rows.append({"conversations": conversations, "system": SYSTEM})
        else:
            conversations = [
                {"from": "system", "value": SYSTEM},
                {"from": "human", "value": a["question"]}, {"from": "gpt", "value": a["answer"]},
            ]
            rows.append({"conversations": conversations})
    return rows


def alpaca_rows(history: bool = True) -> list[dict[str, Any]]:
    """Alpaca rows from the chatbot pairs; with ``history``, every other row carries the
    pair before it as history and a system prompt."""
    rows = []
    pairs = chatbot()
    for i, row in enumerate(pairs):
        row = dict(row)
        if history and i % 2:
            previous = pairs[i - 1]
            row["history"] = [[previous["instruction"], previous["output"]]]
            row["system"] = "You are a friendly chatbot."
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]], compression: str | None = None) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    with pa.output_stream(str(path), compression=compression) as out:
        out.write(data)
    return path


def read(path: Path, shard_rows: int = 1000, **columns: Any) -> tuple[Reader, pa.Table]:
    reader = Reader(DatasetConfig(name="t", inputs=[str(path)], columns=ColumnsConfig(**columns)), shard_rows)
    return reader, pa.concat_tables(list(reader.shards()))


def message(role: str, content: str | None, **fields: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **BLANK, **fields}


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m pipeline`` in a child process, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )


# ---- file formats ----------------------------------------------------------------


def test_alpaca_json_array_reads_as_prompt_and_response(tmp_path: Path) -> None:
    rows = alpaca_rows(history=False)
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    reader, out = read(path, shard_rows=16)
    assert reader.info == DatasetInfo("instruction", ("prompt", "response"))
    assert out.num_rows == len(rows) == 40
    assert out.column("prompt").to_pylist() == [f"{r['instruction']}\n\n{r['input']}" for r in rows]
    assert out.column("response").to_pylist() == [r["output"] for r in rows]
    assert out.column("row_id").to_pylist()[:2] == ["alpaca_data.json:0", "alpaca_data.json:1"]


def test_json_object_holding_the_records_and_json_lines_named_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = alpaca_rows(history=False)[:5]
    holder = tmp_path / "holder.json"
    holder.write_text(json.dumps({"version": "1.0", "data": rows}, indent=1))
    lines = write_jsonl(tmp_path / "lines.json", rows)
    for path in (holder, lines):
        _, out = read(path)
        assert out.column("response").to_pylist() == [r["output"] for r in rows], path.name
    assert "the records are the list 'data'; the other top-level keys (version) describe the file" in caplog.text
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"messages": openai_rows(3)[2]["messages"]}))
    reader, out = read(one)
    assert reader.info.roles == ("messages",) and out.num_rows == 1, "an object holding a conversation is one row"


@pytest.mark.parametrize("suffix, compression", [(".jsonl.gz", "gzip"), (".jsonl.zst", "zstd"), (".json.zstd", "zstd")])
def test_compressed_inputs_read_like_plain_ones(tmp_path: Path, suffix: str, compression: str) -> None:
    rows = openai_rows()
    _, plain = read(write_jsonl(tmp_path / "plain.jsonl", rows))
    _, packed = read(write_jsonl(tmp_path / f"packed{suffix}", rows, compression))
    assert packed.drop_columns(["row_id"]).equals(plain.drop_columns(["row_id"]))
    assert (tmp_path / f"packed{suffix}").read_bytes()[:2] != b'{"', "the file really is compressed"


def test_compressed_csv(tmp_path: Path) -> None:
    rows = [{"text": r["answer"], "label": r["package"][0]} for r in debian()[:50]]
    path = tmp_path / "d.csv.gz"
    with pa.output_stream(str(path), compression="gzip") as out:
        pacsv.write_csv(pa.Table.from_pylist(rows), out)
    _, table = read(path)
    assert table.column("text").to_pylist() == [r["text"] for r in rows]


def _big_text() -> str:
    """About 5 MB of real text: every package description, again and again."""
    text = " ".join(r["answer"] for r in debian())
    return " ".join([text] * (5_000_000 // len(text) + 1))


def test_a_5_mb_row_reads_in_json_lines_and_csv(tmp_path: Path) -> None:
    big = _big_text()
    assert len(big) > 5_000_000
    rows = [{"text": r["answer"]} for r in debian()[:30]]
    rows.insert(20, {"text": big})
    _, out = read(write_jsonl(tmp_path / "d.jsonl", rows))
    assert out.column("text").to_pylist() == [r["text"] for r in rows]
    csv_path = tmp_path / "d.csv"
    pacsv.write_csv(pa.Table.from_pylist(rows), csv_path)
    _, out = read(csv_path, shard_rows=7)
    assert out.column("text").to_pylist() == [r["text"] for r in rows]


def test_a_5_mb_conversation_in_a_json_array(tmp_path: Path) -> None:
    rows = sharegpt_rows(6)
    rows[3]["conversations"][0]["value"] = _big_text()
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(rows))
    _, out = read(path)
    assert out.column("messages")[3].as_py()[1] == message("user", rows[3]["conversations"][0]["value"], source_role="human")


# ---- bad records: file and line --------------------------------------------------


def _lines_with(bad: str, at: int) -> str:
    lines = [json.dumps({"text": r["answer"]}) for r in debian()[:200]]
    lines[at - 1] = bad
    lines[40] = ""  # a blank line still counts
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "bad, needle",
    [
        ('{"text": "cut short', r"d\.jsonl line 151: not valid JSON \(Unterminated string starting at: column 10\)"),
        ("[1, 2, 3]", r"d\.jsonl line 151: a record must be a JSON object, found a list"),
        ('{"text": 42}', r"d\.jsonl line 151: column 'text' for role 'text' holds a number, expected text"),
    ],
)
def test_a_bad_line_is_named_by_its_number(tmp_path: Path, bad: str, needle: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(_lines_with(bad, 151))
    with pytest.raises(PipelineError, match=needle) as err:
        read(path)
    assert "\n" not in str(err.value)


def test_run_stops_at_a_bad_line_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(_lines_with('{"text": "cut short', 151))
    result = cli("run", "--input", str(path), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {path} line 151: not valid JSON (Unterminated string")
    assert not (tmp_path / "out" / "d").exists()


def test_a_bad_line_past_the_header_is_found_while_reading(tmp_path: Path) -> None:
    lines = [json.dumps({"text": r["answer"]}) for r in debian()] * 4
    lines[1500] = '{"text": "no end'
    path = tmp_path / "d.jsonl.gz"
    with pa.output_stream(str(path), compression="gzip") as out:
        out.write(("\n".join(lines) + "\n").encode())
    reader = Reader(DatasetConfig(name="t", inputs=[str(path)]), 100)
    with pytest.raises(PipelineError, match=r"d\.jsonl\.gz line 1501: not valid JSON"):
        list(reader.shards())


def test_bad_records_in_a_json_array_are_named_by_line(tmp_path: Path) -> None:
    rows = sharegpt_rows(9)
    rows[7]["conversations"][1] = {"role": "gpt", "value": "a message without from"}
    path = tmp_path / "sg.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")  # record i on line i + 2
    with pytest.raises(PipelineError, match=r"sg\.json line 9: conversations\[1\] has no 'from' key \(keys: role, value\)"):
        read(path)
    path.write_text(path.read_text()[:-40])
    with pytest.raises(PipelineError, match=r"sg\.json line \d+: not valid JSON"):
        read(path)


def test_bad_csv_line_is_named(tmp_path: Path) -> None:
    lines = ["text,label"] + [f"{r['package']},x" for r in debian()[:300]]
    lines[250] = "one,two,three"
    path = tmp_path / "d.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match=r"d\.csv line 251: expected 2 fields, found 3"):
        read(path)


# ---- formats ----------------------------------------------------------------------


def test_openai_messages_keep_every_field(tmp_path: Path) -> None:
    rows = openai_rows(3)
    reader, out = read(write_jsonl(tmp_path / "chat.jsonl", rows))
    assert reader.info == DatasetInfo("instruction", ("messages",))
    assert out.column_names == ["row_id", "messages", "tools", "meta", "changed_by"]
    assert out.schema.field("messages").type == CONVERSATION_TYPE
    tool_row, chat_row, named_row = out.column("messages").to_pylist()
    call = rows[0]["messages"][2]["tool_calls"]
    assert tool_row == [
        message("system", SYSTEM),
        message("user", rows[0]["messages"][1]["content"]),
        message("assistant", None, tool_calls=json.dumps(call)),
        message("tool", rows[0]["messages"][3]["content"], name="apt_show", tool_call_id="call_000"),
        message("assistant", rows[0]["messages"][4]["content"], weight=1.0),
    ]
    assert chat_row[1] == message(
        "assistant", rows[1]["messages"][1]["content"], weight=0.0,
        extra=json.dumps({"annotations": {"source": "debian", "n": [1, "x"]}}),
    )
    assert chat_row[2] == message("user", None, extra=json.dumps({"content": rows[1]["messages"][2]["content"]}))
    assert named_row[0]["name"] == "alice"
    assert json.loads(out.column("tools")[0].as_py()) == [TOOL]
    assert out.column("tools")[1].as_py() is None
    assert out.column("meta").to_pylist() == ["0", '"row 1"', None], "mixed types are kept as JSON text"
    assert out.schema.field("meta").metadata == JSON_TEXT and out.schema.field("tools").metadata is None


def test_sharegpt_roles_are_normalised_and_their_names_kept(tmp_path: Path) -> None:
    rows = sharegpt_rows(3)
    reader, out = read(write_jsonl(tmp_path / "sg.jsonl", rows))
    assert reader.info.roles == ("messages",)
    tool_row, chat_row, inline_system = out.column("messages").to_pylist()
    conv = rows[0]["conversations"]
    assert tool_row == [
        message("system", SYSTEM),
        message("user", conv[0]["value"], source_role="human"),
        message("assistant", None, source_role="function_call", tool_calls=json.dumps(
            [{"type": "function", "function": json.loads(conv[1]["value"])}])),
        message("tool", conv[2]["value"], source_role="observation"),
        message("assistant", conv[3]["value"], source_role="gpt"),
    ]
    assert [m["role"] for m in chat_row] == ["system", "user", "assistant", "user", "assistant"]
    assert inline_system[0] == message("system", SYSTEM)
    assert out.column("tools").to_pylist() == [rows[0]["tools"], None, None], "ShareGPT's tools text is kept as it is"


def test_messages_held_as_json_text_in_csv(tmp_path: Path) -> None:
    rows = openai_rows(3)
    path = tmp_path / "chat.csv"
    pacsv.write_csv(pa.table({"id": [r["id"] for r in rows], "messages": [json.dumps(r["messages"]) for r in rows]}), path)
    _, from_csv = read(path)
    _, from_jsonl = read(write_jsonl(tmp_path / "chat.jsonl", [{"id": r["id"], "messages": r["messages"]} for r in rows]))
    assert from_csv.equals(from_jsonl)


def test_a_published_conversation_reads_back_as_it_is(tmp_path: Path) -> None:
    """A version's data file as input: its messages are canonical already."""
    import pyarrow.parquet as pq

    _, table = read(write_jsonl(tmp_path / "chat.jsonl", openai_rows(6)))
    pq.write_table(table.drop_columns(["changed_by"]), tmp_path / "v.parquet")
    _, again = read(tmp_path / "v.parquet", id="row_id")
    assert again.select(["row_id", "messages", "tools"]).equals(table.select(["row_id", "messages", "tools"]))


def test_a_function_call_that_is_not_json_is_kept_as_text(tmp_path: Path) -> None:
    rows = [{"conversations": [{"from": "human", "value": "Show me bash."}, {"from": "function_call", "value": "apt show bash"}]}]
    _, out = read(write_jsonl(tmp_path / "sg.jsonl", rows))
    call = out.column("messages")[0].as_py()[1]
    assert call["content"] is None and json.loads(call["tool_calls"]) == [{"type": "function", "function": "apt show bash"}]


def test_alpaca_with_history_and_system_reads_as_messages(tmp_path: Path) -> None:
    rows = alpaca_rows()
    reader, out = read(write_jsonl(tmp_path / "alpaca.jsonl", rows))
    assert reader.info.roles == ("messages",)
    first, second = out.column("messages").to_pylist()[:2]
    prompt = f"{rows[0]['instruction']}\n\n{rows[0]['input']}"
    assert first == [message("user", prompt), message("assistant", rows[0]["output"])]
    assert second == [
        message("system", "You are a friendly chatbot."),
        message("user", rows[0]["instruction"]), message("assistant", rows[0]["output"]),
        message("user", f"{rows[1]['instruction']}\n\n{rows[1]['input']}"), message("assistant", rows[1]["output"]),
    ]


def test_bad_alpaca_history_is_named(tmp_path: Path) -> None:
    rows = alpaca_rows()
    rows[5]["history"] = [["only a prompt"]]
    with pytest.raises(PipelineError, match=r"alpaca\.jsonl line 6: history\[0\] is not a \[prompt, response\] pair"):
        read(write_jsonl(tmp_path / "alpaca.jsonl", rows))


def test_format_and_tags_from_the_config(tmp_path: Path) -> None:
    """A ShareGPT-style file under other names: the override says how to read it."""
    rows = [
        {"dialog": [{"speaker": "USER", "text": r["question"]}, {"speaker": "BOT", "text": r["answer"]}], "prompt_sys": SYSTEM}
        for r in debian()[:4]
    ]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    tags = TagsConfig(role_tag="speaker", content_tag="text", user_tag="USER", assistant_tag=["BOT", "MODEL"])
    reader, out = read(path, format="sharegpt", messages="dialog", system="prompt_sys", tags=tags)
    assert reader.info.roles == ("messages",) and out.column_names == ["row_id", "messages", "changed_by"]
    assert out.column("messages")[0].as_py() == [
        message("system", SYSTEM),
        message("user", rows[0]["dialog"][0]["text"], source_role="USER"),
        message("assistant", rows[0]["dialog"][1]["text"], source_role="BOT"),
    ]
    with pytest.raises(PipelineError, match=r"line 1: dialog\[0\] has no 'role' key \(keys: speaker, text\)"):
        read(path, messages="dialog")


def test_an_explicit_text_format_keeps_messages_out(tmp_path: Path) -> None:
    rows = [{"content": r["answer"], "conversations": "not a chat here"} for r in debian()[:3]]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(PipelineError, match=r"d\.jsonl line 1: conversations is text that is not JSON"):
        read(path)
    reader, out = read(path, format="text")
    assert reader.info.kind == "text" and out.column("conversations").to_pylist() == ["not a chat here"] * 3


def test_keys_first_seen_late_are_carried(tmp_path: Path) -> None:
    rows = [{"text": r["answer"]} for r in debian()[:30]]
    rows[25]["source"] = {"suite": "bookworm"}
    _, out = read(write_jsonl(tmp_path / "d.jsonl", rows), shard_rows=10)
    assert out.column("source").to_pylist() == [None] * 25 + [{"suite": "bookworm"}] + [None] * 4


def test_a_column_mixing_types_across_shards_is_json_text_in_all(tmp_path: Path) -> None:
    rows = [{"text": r["answer"], "meta": i} for i, r in enumerate(debian()[:20])]
    rows[15]["meta"] = {"note": "text from here on"}
    reader = Reader(DatasetConfig(name="t", inputs=[str(write_jsonl(tmp_path / "d.jsonl", rows))]), 10)
    shards = list(reader.shards())
    assert [s.schema.field("meta").type for s in shards] == [pa.string(), pa.string()]
    assert pa.concat_tables(shards).column("meta").to_pylist() == [json.dumps(r["meta"]) for r in rows]


# ---- stages keep every field but the content they clean --------------------------


def test_cleaning_stages_touch_only_message_contents(tmp_path: Path) -> None:
    rows = openai_rows(3)
    rows[0]["messages"][3]["content"] = "Default  icon theme <b>of</b> GNOME."
    reader, table = read(write_jsonl(tmp_path / "chat.jsonl", rows))
    before = table.column("messages").to_pylist()
    table = NormalizeStage(NormalizeConfig(), reader.info).apply(table).kept
    table = NoiseStage(NoiseConfig(), reader.info).apply(table).kept
    after = table.column("messages").to_pylist()
    assert after[0][3] == {**before[0][3], "content": "Default icon theme of GNOME."}
    assert [[{k: v for k, v in m.items() if k != "content"} for m in row] for row in after] == [
        [{k: v for k, v in m.items() if k != "content"} for m in row] for row in before
    ]
    assert table.schema.field("messages").type == CONVERSATION_TYPE
    stage = ExactDedupStage(ExactDedupConfig(), reader.info)
    doubled = pa.concat_tables([table, table.set_column(0, "row_id", pa.array(["a", "b", "c"]))])
    kept = stage.apply(doubled, stage.decide([stage.summarize(doubled)])).kept
    assert kept.column("row_id").to_pylist() == table.column("row_id").to_pylist()
