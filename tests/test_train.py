"""Fine-tuning (``pipeline.train``) on tiny models built here from a config.

A 2-layer BERT and a 2-layer Llama with a word-level vocabulary of the test data
train in seconds on the CPU, so the real code paths (peft, the loop, the run folder)
run end to end without the offline default models.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.store import Store
from pipeline.train import Progress, TrainConfig, find_version, prepare, train, verify_version
from pipeline.train.batching import IGNORE, length_grouped_batches
from pipeline.train.causal import PLAIN_TEMPLATE, InstructionTask
from pipeline.train.classification import ClassificationTask, macro_f1
from pipeline.train.loop import fit
from pipeline.train.models import quiet_libraries
from pipeline.version import data_file_name

REPO = Path(__file__).resolve().parents[1]
CLASS_WORDS = {
    "sport": ["goal", "match", "team", "score", "ball", "coach", "league", "referee"],
    "food": ["soup", "bread", "salt", "bake", "pasta", "sauce", "garlic", "oven"],
    "tech": ["code", "server", "laptop", "bug", "compile", "network", "disk", "kernel"],
}
FILLER = ["the", "a", "was", "very", "today", "we", "saw", "and", "it", "is", "on", "with"]
PAIRS = dict(zip(CLASS_WORDS["food"], CLASS_WORDS["tech"]))
CHAT_WORDS = ["user", "assistant", "system", "you", "are", "helpful", "what", "goes"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<|im_start|>", "<|im_end|>"]
CHATML = (  # SmolLM2-135M-Instruct's template, which adds a system turn when there is none
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nyou are helpful<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QUICK = ["learning_rate=0.01", "batch_size=8", "epochs=4", "early_stopping_patience=0"]
"""Training keys for a tiny model: few epochs at a high rate, no early stop. (The
tiny models start from weights ten times the usual scale, ``initializer_range=0.2``:
at 0.02 their random features are so flat that LoRA needs many more steps.)"""


pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


@pytest.fixture(scope="module", autouse=True)
def _tiny_settings() -> Iterator[None]:
    """Quiet libraries, and one thread: on models this small, splitting each operation
    over threads costs more than it saves, and far more on a busy machine."""
    quiet_libraries()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tokenizer(chat: bool) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER) | set(CHAT_WORDS))
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if not chat:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHATML,
    )


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = _tokenizer(chat=False)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = _tokenizer(chat=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        initializer_range=0.2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def classification_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Texts of three class words and three filler words: separable by their words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(CLASS_WORDS)[i % 3]
        words = rng.sample(CLASS_WORDS[label], 3) + rng.sample(FILLER, 3)
        rng.shuffle(words)
        rows.append({"row_id": f"c{seed}-{i}", "text": " ".join(words), "label": label})
    return rows


def instruction_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        food = rng.choice(list(PAIRS))
        rows.append({"row_id": f"i{seed}-{i}", "prompt": f"what goes with {food}", "response": f"{food} goes with {PAIRS[food]}"})
    return rows


def publish(root: Path, dataset: str, kind: str, splits: dict[str, list[dict]], data_files: bool = True) -> Path:
    """A version in the store's format (``pipeline.version``): data files named by the
    fingerprint, a manifest with counts, published by ``Store.publish``."""
    roles = ["text", "label"] if kind == "classification" else ["prompt", "response"]
    fingerprint = hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()
    store = Store(root, dataset)
    staging = store.new_staging()
    (staging / "data").mkdir()
    listed = {}
    for split, rows in splits.items():
        name = data_file_name(split, fingerprint, 0, 1)
        table = pa.Table.from_pylist([{**r, "changed_by": "", "split": split} for r in rows])
        pq.write_table(table, staging / "data" / name)
        listed[f"data/{name}"] = {"sha256": hashlib.sha256((staging / "data" / name).read_bytes()).hexdigest(), "rows": len(rows)}
    manifest = {
        "dataset": dataset, "fingerprint": fingerprint, "kind": kind, "roles": roles,
        "counts": {"splits": {s: len(r) for s, r in splits.items()}},
    }
    if data_files:
        manifest["data_files"] = listed
    _, path = store.publish(staging, manifest)
    return path


@pytest.fixture
def cls_version(tmp_path: Path) -> Path:
    return publish(tmp_path / "out", "topics", "classification", {
        "train": classification_rows(96, 1), "validation": classification_rows(24, 2), "test": classification_rows(24, 3),
    })


@pytest.fixture
def ins_version(tmp_path: Path) -> Path:
    return publish(tmp_path / "out", "pairs", "instruction", {
        "train": instruction_rows(48, 1), "validation": instruction_rows(12, 2), "test": instruction_rows(12, 3),
    })


def config(model: str, *overrides: str) -> TrainConfig:
    return TrainConfig().with_overrides([f"model={model}", *QUICK, *overrides])


def silent() -> Progress:
    return Progress(write=lambda line: None)


# ---- end to end ----------------------------------------------------------------------


def test_classification_from_the_command_line(
    cls_version: Path, tiny_bert: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    args = ["train", "topics", "--output", str(tmp_path / "out"), "--model", tiny_bert, "-q"]
    assert main(args + [f"--set={o}" for o in QUICK]) == 0
    out = capsys.readouterr().out
    run = Path(out.split("run folder: ")[1].strip())
    assert run.parent == tmp_path / "out" / "runs" and run.name.startswith("topics-v0001-")
    assert {p.name for p in run.iterdir()} == {"adapter", "tokenizer", "metrics.json", "config.json", "dataset.json"}
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "tokenizer" / "tokenizer.json").is_file()

    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4]
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert set(metrics["test"]) == {"loss", "accuracy", "macro_f1"} and metrics["test"]["accuracy"] >= 0.6  # chance: 1/3
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["training"]["method"] == "lora" and resolved["model"]["lora_targets"] == ["query", "value"]
    assert resolved["labels"] == ["food", "sport", "tech"]
    dataset = json.loads((run / "dataset.json").read_text())
    assert dataset["version"] == "v0001" and dataset["verified"] == ["names", "counts", "sha256"]
    assert dataset["manifest_sha256"] == hashlib.sha256((cls_version / "manifest.json").read_bytes()).hexdigest()

    # the adapter (with its classifier head) reloads onto the base model and scores the same
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    model = PeftModel.from_pretrained(base, run / "adapter").eval()
    task = ClassificationTask(_tokenizer(chat=False), resolved["labels"], 128)
    test = pq.read_table(next((cls_version / "data").glob("test-*"))).to_pandas()
    scores = task.evaluate(model, [task.collate(task.encode(test))])
    assert scores["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_instruction_end_to_end(ins_version: Path, tiny_llama: str, tmp_path: Path) -> None:
    result = train(ins_version, config(tiny_llama, "generations=3", "max_new_tokens=6"), tmp_path / "runs", silent())
    assert {p.name for p in result.path.iterdir()} == {
        "adapter", "tokenizer", "metrics.json", "config.json", "dataset.json", "generations.jsonl"
    }
    metrics = json.loads((result.path / "metrics.json").read_text())
    assert metrics["epochs"][-1]["validation_loss"] < metrics["epochs"][0]["validation_loss"]
    assert metrics["test"]["perplexity"] == pytest.approx(math.exp(metrics["test"]["loss"]))
    assert metrics["throughput"]["tokens_per_second"] > 0 and 0 <= metrics["throughput"]["padding_share"] < 1
    generations = [json.loads(line) for line in (result.path / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 3
    assert all(g["prompt"].startswith("what goes with") and g["reference"] and isinstance(g["generated"], str) for g in generations)
    resolved = json.loads((result.path / "config.json").read_text())
    assert resolved["model"]["chat_template"] == "tokenizer"
    assert resolved["model"]["lora_targets"] == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_full_fine_tuning_saves_the_whole_model(cls_version: Path, tiny_bert: str, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    result = train(cls_version, config(tiny_bert, "method=full", "epochs=1", "learning_rate=1e-3"), tmp_path / "runs", silent())
    assert (result.path / "model" / "config.json").is_file() and not (result.path / "adapter").exists()
    model = AutoModelForSequenceClassification.from_pretrained(result.path / "model")
    assert model.config.id2label == {0: "food", 1: "sport", 2: "tech"}
    assert result.metrics["parameters"]["trainable_share"] == 1.0


# ---- loss on replies only --------------------------------------------------------------


def test_only_reply_tokens_carry_labels(tiny_llama: str) -> None:
    tokenizer = _tokenizer(chat=True)
    task = InstructionTask(tokenizer, max_length=512, model_name="tiny")
    messages = [
        {"role": "user", "content": "what goes with soup"},
        {"role": "assistant", "content": "soup goes with code"},
        {"role": "user", "content": "what goes with salt"},
        {"role": "assistant", "content": "salt goes with bug"},
    ]
    ids, labels = task.encode_messages(messages)
    assert len(ids) == len(labels)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    labelled = [t for t, label in zip(tokens, labels) if label != IGNORE]
    assert labelled == ["soup", "goes", "with", "code", "<|im_end|>", "salt", "goes", "with", "bug", "<|im_end|>"]
    assert all(label in (IGNORE, i) for i, label in zip(ids, labels))
    # the template's own system turn and both user turns are context only
    assert tokens[:3] == ["<|im_start|>", "system", "you"] and labels[:3] == [IGNORE] * 3

    cut_ids, cut_labels = InstructionTask(tokenizer, max_length=20, model_name="tiny").encode_messages(messages)
    assert cut_ids == ids[:20] and cut_labels == labels[:20]


def test_loss_counts_reply_tokens_only(tiny_llama: str) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = _tokenizer(chat=True)
    task = InstructionTask(tokenizer, max_length=512, model_name="tiny")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    a = [{"role": "user", "content": "what goes with soup"}, {"role": "assistant", "content": "soup goes with code"}]
    b = [{"role": "user", "content": "what goes with the very bread today"}, a[1]]
    batch_a, batch_b = (task.collate(task.encode([m], ["r"])) for m in (a, b))
    assert task.weight(batch_a) == task.weight(batch_b) == 5  # four reply words and <|im_end|>
    # a longer prompt changes the context, so the loss; its own tokens add no term
    terms = torch.nn.functional.cross_entropy(
        model(**{k: v for k, v in batch_b.items() if k != "labels"}).logits[0, :-1], batch_b["input_ids"][0, 1:],
        reduction="none",
    )
    reply = batch_b["labels"][0, 1:] != IGNORE
    assert task.loss_sum(model, batch_b).item() == pytest.approx(terms[reply].sum().item(), rel=1e-5)


def test_a_tokenizer_without_chat_template_gets_the_plain_one() -> None:
    tokenizer = _tokenizer(chat=True)
    tokenizer.chat_template = None
    task = InstructionTask(tokenizer, max_length=512, model_name="tiny")
    assert task.template.startswith("plain") and tokenizer.chat_template == PLAIN_TEMPLATE
    ids, labels = task.encode_messages([{"role": "user", "content": "soup"}, {"role": "assistant", "content": "bread"}])
    assert [t for t, label in zip(tokenizer.convert_ids_to_tokens(ids), labels) if label != IGNORE] == ["bread", "<|im_end|>"]


def _tool_conversation() -> tuple[list[dict[str, Any]], str]:
    """A canonical conversation (tool calls as JSON text, as versions hold them) and its
    row's tools; the function is called ``soup`` so the tiny vocabulary knows it."""
    call = json.dumps([{"id": "c1", "type": "function", "function": {"name": "soup", "arguments": "{}"}}])
    tools = json.dumps([{"type": "function", "function": {"name": "soup"}}])
    return [
        {"role": "user", "content": "what goes with soup", "tool_calls": None, "tool_call_id": None, "name": None},
        {"role": "assistant", "content": None, "tool_calls": call, "tool_call_id": None, "name": None},
        {"role": "tool", "content": "bread", "tool_calls": None, "tool_call_id": "c1", "name": "soup"},
        {"role": "assistant", "content": "soup goes with bread", "tool_calls": None, "tool_call_id": None, "name": None},
    ], tools


def test_tool_calls_are_trained_on(tiny_llama: str) -> None:
    """The call is part of what the model learns, whether or not the template knows tools."""
    messages, tools = _tool_conversation()
    # SmolLM2's template knows no tools: the call is JSON text in the assistant turn and
    # the definitions follow the system prompt.
    tokenizer = _tokenizer(chat=True)
    task = InstructionTask(tokenizer, max_length=512, model_name="tiny")
    prepared, template_tools = task.prepare(messages, tools)
    assert template_tools is None and prepared[0] == {"role": "system", "content": tools}
    assert prepared[2]["content"] == messages[1]["tool_calls"]
    ids, labels = task.encode_messages(messages, tools)
    labelled = [t for t, label in zip(tokenizer.convert_ids_to_tokens(ids), labels) if label != IGNORE]
    assert labelled.count("<|im_end|>") == 2 and "soup" in labelled[: labelled.index("<|im_end|>")]

    # A template that renders tool_calls gets them parsed, and the tools as its argument.
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' ' }}"
        "{% for c in m.tool_calls or [] %}{{ c.function.name + ' ' }}{% endfor %}"
        "{{ m['content'] + '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{% endif %}"
        "{% if tools %}{% endif %}"
    )
    task = InstructionTask(tokenizer, max_length=512, model_name="tiny")
    prepared, template_tools = task.prepare(messages, tools)
    assert template_tools == json.loads(tools) and prepared[1]["tool_calls"][0]["function"]["name"] == "soup"
    [example] = task.encode([messages], ["r"], [tools])
    labelled = [t for t, label in zip(tokenizer.convert_ids_to_tokens(example["input_ids"]), example["labels"]) if label != IGNORE]
    assert labelled == ["soup", "<|im_end|>", "soup", "goes", "with", "bread", "<|im_end|>"]


def test_a_reply_of_weight_zero_is_context_only(tiny_llama: str) -> None:
    """OpenAI's ``weight: 0`` marks a reply the model should not learn from."""
    tokenizer = _tokenizer(chat=True)
    task = InstructionTask(tokenizer, max_length=512, model_name="tiny")
    messages = [
        {"role": "user", "content": "what goes with soup"},
        {"role": "assistant", "content": "soup goes with code", "weight": 0},
        {"role": "user", "content": "what goes with salt"},
        {"role": "assistant", "content": "salt goes with bug", "weight": 1},
    ]
    ids, labels = task.encode_messages(messages)
    labelled = [t for t, label in zip(tokenizer.convert_ids_to_tokens(ids), labels) if label != IGNORE]
    assert labelled == ["salt", "goes", "with", "bug", "<|im_end|>"]


def test_versions_hand_the_trainer_their_tool_calls() -> None:
    """``conversations`` keeps each turn's calls, call id and name, and ``row_tools`` the
    row's definitions, as the readers put them in the canonical table."""
    from pipeline.inputs import DatasetConfig
    from pipeline.readers import Reader
    from pipeline.train.data import conversations, row_tools

    reader = Reader(DatasetConfig(name="chat", inputs=[str(REPO / "sample_data" / "chat.jsonl")]), 10_000)
    frame = next(reader.shards()).to_pandas()
    rows, tools = conversations(frame), row_tools(frame)
    with_calls = [i for i, row in enumerate(rows) if any(m["tool_calls"] for m in row)]
    assert with_calls and tools is not None and all(tools[i] for i in with_calls)
    row = rows[with_calls[0]]
    call = next(m for m in row if m["tool_calls"])
    answer = next(m for m in row if m["role"] == "tool")
    assert json.loads(call["tool_calls"])[0]["id"] == answer["tool_call_id"]


# ---- early stopping, OOM back-off ------------------------------------------------------


def test_early_stopping_restores_and_saves_the_best_epoch(tiny_bert: str, tmp_path: Path) -> None:
    """Validation rows carry labels rotated from the train rows' rule, so the better
    the model learns train, the worse its validation loss: it must stop and go back."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    rotate = {"sport": "food", "food": "tech", "tech": "sport"}
    validation = [{**r, "label": rotate[r["label"]]} for r in classification_rows(24, 2)]
    version = publish(tmp_path / "out", "rotated", "classification", {
        "train": classification_rows(96, 1), "validation": validation, "test": classification_rows(24, 3),
    })
    result = train(version, config(tiny_bert, "epochs=8", "early_stopping_patience=2"), tmp_path / "runs", silent())
    m = result.metrics
    losses = [e["validation_loss"] for e in m["epochs"]]
    assert m["stopped_early"] and len(losses) == m["best_epoch"] + 2 < 8
    assert losses[m["best_epoch"] - 1] == min(losses)

    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    saved = PeftModel.from_pretrained(base, result.path / "adapter").eval()
    task = ClassificationTask(_tokenizer(chat=False), ["food", "sport", "tech"], 128)
    rows = pq.read_table(next((version / "data").glob("validation-*"))).to_pandas()
    assert task.evaluate(saved, [task.collate(task.encode(rows))])["loss"] == pytest.approx(min(losses), rel=1e-4)


def _oom_above(model: Any, size: int) -> None:
    """Make every forward pass over more than ``size`` examples run out of memory, as
    a GPU would, before any work is done."""

    def hook(module: Any, args: tuple) -> None:
        if args[0].shape[0] > size:
            raise torch.OutOfMemoryError(f"simulated: batch of {args[0].shape[0]} > {size}")

    model.get_input_embeddings().register_forward_pre_hook(hook)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_result(cls_version: Path, tiny_bert: str) -> None:
    cfg = config(tiny_bert, "epochs=2", "batch_size=8")
    notes: list[str] = []
    backed = prepare(cls_version, cfg, silent())
    _oom_above(backed.model, 2)
    result = fit(backed.model, backed.task, backed.examples["train"], backed.examples["validation"], backed.config,
                 backed.device, Progress(write=notes.append))
    assert result.micro_batch_size == 2
    assert [(b["from"], b["to"]) for b in result.backoffs] == [(8, 4), (4, 2)]
    assert any("out of memory at epoch 1 step 1 with micro-batch 8" in n for n in notes)

    plain = prepare(cls_version, config(tiny_bert, "epochs=2", "batch_size=8", "micro_batch_size=2"), silent())
    expected = fit(plain.model, plain.task, plain.examples["train"], plain.examples["validation"], plain.config,
                   plain.device, silent())
    for got, want in zip(result.epochs, expected.epochs):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["validation_loss"] == pytest.approx(want["validation_loss"], rel=1e-5)


def test_out_of_memory_at_one_example_is_an_error(cls_version: Path, tiny_bert: str) -> None:
    p = prepare(cls_version, config(tiny_bert, "batch_size=4"), silent())
    _oom_above(p.model, 0)
    with pytest.raises(PipelineError, match="out of memory with a micro-batch of 1"):
        fit(p.model, p.task, p.examples["train"], p.examples["validation"], p.config, p.device, silent())


# ---- verification ----------------------------------------------------------------------


def _drop_a_row(version: Path) -> None:
    path = next((version / "data").glob("train-*"))
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)


def _edit_a_row(version: Path) -> None:
    path = next((version / "data").glob("train-*"))
    rows = pq.read_table(path).to_pylist()
    rows[0]["label"] = "tech" if rows[0]["label"] != "tech" else "food"
    pq.write_table(pa.Table.from_pylist(rows), path)


def _edit_manifest(folder: Path, **changes: Any) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **changes}))


TAMPERING = {
    "a row removed": (_drop_a_row, "differ from the manifest's counts.splits"),
    "a label edited": (_edit_a_row, "does not match its sha256"),
    "a data file removed": (lambda v: next((v / "data").glob("test-*")).unlink(), "differ from the manifest"),
    "a foreign data file": (
        lambda v: (v / "data" / "train-000000000000-00000-of-00001.parquet").write_bytes(b""), "not a file of fingerprint"
    ),
    "another version's manifest": (lambda v: _edit_manifest(v, version="v0002"), "says version v0002"),
    "no fingerprint": (lambda v: _strip(v, "fingerprint"), "has no fingerprint"),
    "no manifest": (lambda v: (v / "manifest.json").unlink(), "no manifest.json"),
    "a broken manifest": (lambda v: (v / "manifest.json").write_text("{"), "cannot be read"),
    "a text dataset": (lambda v: _edit_manifest(v, kind="text"), "no training task"),
}


def _strip(version: Path, key: str) -> None:
    manifest = json.loads((version / "manifest.json").read_text())
    del manifest[key]
    (version / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_refuses_a_version_that_does_not_verify(cls_version: Path, tmp_path: Path, tamper: str) -> None:
    change, message = TAMPERING[tamper]
    change(cls_version)
    with pytest.raises(PipelineError, match="refusing to train on") as err:
        # a model that does not exist: verification must fail before any model is looked for
        train(cls_version, TrainConfig(model=str(tmp_path / "no-model")), tmp_path / "runs", silent())
    assert message in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_a_manifest_without_data_files_is_checked_by_names_and_counts(tmp_path: Path) -> None:
    version = publish(tmp_path / "out", "topics", "classification", {"train": classification_rows(30, 1)}, data_files=False)
    assert verify_version(version).checks == ("names", "counts")
    _edit_a_row(version)
    assert verify_version(version).checks == ("names", "counts")  # what a listed sha256 would catch
    _drop_a_row(version)
    with pytest.raises(PipelineError, match="counts.splits"):
        verify_version(version)


# ---- choosing and splitting the data -------------------------------------------------


def test_default_version_is_the_classification_dataset(tmp_path: Path) -> None:
    root = tmp_path / "out"
    publish(root, "a-instructions", "instruction", {"train": instruction_rows(6, 1)})
    publish(root, "b-topics", "classification", {"train": classification_rows(6, 1)})
    publish(root, "b-topics", "classification", {"train": classification_rows(7, 1)})
    assert find_version(None, root) == root / "b-topics" / "v0002"
    assert find_version("a-instructions", root) == root / "a-instructions" / "v0001"
    only = tmp_path / "only"
    publish(only, "notes", "text", {"train": [{"row_id": "1", "text": "x"}]})
    with pytest.raises(PipelineError, match="no dataset in .* can be trained"):
        find_version(None, only)


def test_a_version_without_validation_and_test_gets_a_recorded_seeded_split(tmp_path: Path, tiny_bert: str) -> None:
    version = publish(tmp_path / "out", "topics", "classification", {"train": classification_rows(40, 1)})
    first = prepare(version, config(tiny_bert, "seed=3"), silent())
    again = prepare(version, config(tiny_bert, "seed=3"), silent())
    ids = {s: [e["row_id"] for e in first.examples[s]] for s in ("train", "validation", "test")}
    assert ids == {s: [e["row_id"] for e in again.examples[s]] for s in ("train", "validation", "test")}
    assert [len(ids[s]) for s in ("train", "validation", "test")] == [32, 4, 4]
    assert len(set(ids["train"]) | set(ids["validation"]) | set(ids["test"])) == 40
    assert first.splits.sources["validation"] == "0.1 of train, seed 3 (the version has no validation split)"


def test_dry_run_prints_the_plan_and_trains_nothing(
    cls_version: Path, tiny_bert: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(cls_version), "--model", tiny_bert, "--dry-run", "-q", "--set", "batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "dry run: classification on topics/v0001 (verified: names, counts, sha256)" in out
    assert "lora on query, value" in out
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    total, trainable = (int(x.replace(",", "")) for x in
                        (lines["parameters"].split()[1], lines["parameters"].split()[3]))
    assert 0 < trainable < total and "%)" in lines["parameters"]
    assert lines["tokens per epoch"].startswith("tokens per epoch: 768 ")  # 96 rows of 6 words + [CLS] and [SEP]
    assert "12 steps of 8 rows" in out and "GiB" in lines["memory estimate"]
    assert not (tmp_path / "out" / "runs").exists()


# ---- small parts -----------------------------------------------------------------------


def test_training_keys_from_the_command_line() -> None:
    cfg = TrainConfig().with_overrides(["learning_rate=1e-4", "target_modules=query, value", "class_weights=true", "max_length=none"])
    assert cfg.learning_rate == 1e-4 and cfg.target_modules == ("query", "value") and cfg.class_weights is True
    assert cfg.resolved("instruction").max_length == 512 and cfg.resolved("classification").max_length == 128
    assert TrainConfig(method="full").resolved("classification").learning_rate == 5e-5
    for bad, message in [
        ("lr=1", "unknown training key 'lr'"), ("epochs=two", "epochs: expected int"), ("epochs=0", "expected 1 or more"),
        ("method=qlora", "method: expected one of lora, full"), ("micro_batch_size=64", "above batch_size 16"),
    ]:
        with pytest.raises(PipelineError, match=message):
            TrainConfig().with_overrides([bad])


def test_class_weights_are_inverse_frequency() -> None:
    import pandas as pd

    train_rows = pd.DataFrame({"label": ["a"] * 6 + ["b"] * 2, "text": ["x"] * 8, "row_id": [str(i) for i in range(8)]})
    task = ClassificationTask.for_frames(_tokenizer(chat=False), [train_rows], train_rows, 16, weighted=True)
    assert task.class_weights.tolist() == pytest.approx([8 / (2 * 6), 8 / (2 * 2)])
    assert task.weight({"labels": torch.tensor([0, 1, 1])}) == pytest.approx(8 / 12 + 2 * 8 / 4)


def test_macro_f1_matches_its_definition() -> None:
    import numpy as np

    y_true, y_pred = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    # class 0: P 1/2 R 1/2; class 1: P 2/3 R 1; class 2: 0
    assert macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_length_grouped_batches_cover_every_row_once() -> None:
    lengths = [random.Random(i).randint(1, 50) for i in range(203)]
    batches = list(length_grouped_batches(lengths, 8, seed=1))
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert batches != list(length_grouped_batches(lengths, 8, seed=2))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    unsorted = sum(len(c) * max(lengths[i] for i in c) for c in (list(range(203))[j : j + 8] for j in range(0, 203, 8)))
    assert padded < unsorted


def test_a_hub_id_without_a_network_says_so(tmp_path: Path, cls_version: Path) -> None:
    with pytest.raises(PipelineError, match="a hub id needs a network"):
        prepare(cls_version, TrainConfig(model="no-such-org/no-such-model"), silent())


def test_the_training_package_imports_no_prefect() -> None:
    code = (
        "import sys, pipeline.train, pipeline.train.runner; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'pydantic', 'rich', 'yaml')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_finetune_flow(ins_version: Path, tiny_llama: str, tmp_path: Path) -> None:
    from flows.finetune import finetune

    result = finetune(
        version="pairs", output=str(tmp_path / "out"), runs_dir=str(tmp_path / "runs"),
        config={"model": tiny_llama, "epochs": 1, "batch_size": 8, "generations": 1, "max_new_tokens": 4},
    )
    assert Path(result["path"]).parent == tmp_path / "runs" and result["dataset"]["version"] == "v0001"
    assert len(result["metrics"]["epochs"]) == 1
    with pytest.raises(PipelineError, match="unknown training key"):
        finetune(version="pairs", output=str(tmp_path / "out"), config={"epoch": 1})


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_curate_chains_into_finetune_when_the_config_says_so(tiny_bert: str, tmp_path: Path) -> None:
    from flows.curate import curate
    from pipeline.config import load_config

    data = tmp_path / "topics.jsonl"
    rows = [{"id": r.pop("row_id"), **r} for r in classification_rows(90, 4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = json.dumps({"model": tiny_bert, "epochs": 1, "batch_size": 8})
    cfg = load_config(None, inputs=[str(data)], output=str(tmp_path / "out"), overrides=[
        # word salad: no language to detect, and its near copies are on purpose
        "stages.language.enabled=false", "stages.near_dedup.enabled=false", "stages.quality.enabled=false",
        "finetune.enabled=true", f"finetune.settings={settings}",
    ])
    result = curate(config=cfg.model_dump(mode="json"), dataset="topics")
    run = Path(result["finetune"]["path"])
    assert result["status"] == "published" and run.parent == tmp_path / "out" / "runs"
    assert set(result["finetune"]["test"]) >= {"accuracy", "macro_f1"}
    trained_on = json.loads((run / "dataset.json").read_text())
    assert (trained_on["version"], trained_on["verified"]) == ("v0001", ["names", "counts", "sha256"])
    again = curate(config=cfg.model_dump(mode="json"), dataset="topics")
    assert again["status"] == "unchanged" and "finetune" not in again
    assert [p.name for p in (tmp_path / "out" / "runs").iterdir()] == [run.name], "no new version, no new training"


def test_missing_training_packages_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from pipeline.train import require_packages

    require_packages()  # this environment has them
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(PipelineError, match=r"training needs peft: .*pip install -e '\.\[train\]'"):
        require_packages()
