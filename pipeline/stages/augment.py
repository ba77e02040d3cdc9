"""Stage ``augment``: EDA-style copies of training rows, for every row or to balance classes.

The operations are those of EDA (Wei & Zou, 2019, "Easy Data Augmentation
Techniques for Boosting Performance on Text Classification Tasks"): synonym
replacement, random insertion of a synonym, random swap and random deletion, each
touching a share ``alpha`` of the words, plus sentence shuffle. As in EDA, each
augmented copy gets ONE randomly chosen operation, so a copy stays close to its source
and its ``augment_ops`` says exactly what was done to it. Synonyms come from WordNet
(:mod:`pipeline.wordnet`); stop-words are never replaced. WordNet is optional: without
one, synonym replacement and insertion are skipped and the other operations make the
copies; the stage's figures (``operations``, ``thesaurus``, ``skipped``) and a warning
say so.

Rows written mostly in CJK script (:func:`pipeline.text.cjk.cjk_rows`) have no
spaces between words and no WordNet: their words come from ``rjieba`` (jieba's
segmentation), swap and delete move and drop those words, insert repeats a word of
the same row at a random place, sentence shuffle splits after 。！？, and synonym
replacement is never done. The figures say which operations each script's rows got
(``by_script``).

Only ``train`` rows are sources (all rows when there is no ``split`` column), so
validation and test stay real data. A copy must not equal, after casefolding and
folding whitespace, the augmented text of any existing row of any split: an
augmented row that repeats a test row would leak it into training.

Global, in the three steps of the stage contract:

``summarize``  per shard: row id, label, split and a 64-bit hash of the normalised
               augmented text of every row
``decide``     once: how many copies each source row makes (``copies_per_row``, or
               the per-class quota of ``balance``), plus every existing hash; and
               which operations run (decided once, so every shard does the same)
``apply``      per shard: the originals and their copies; the copy ``k`` of row ``r``
               draws from a generator seeded by ``(seed, r, k)``, so the output does
               not depend on sharding or on Python's hash randomisation
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from pipeline import wordnet
from pipeline.errors import PipelineError
from pipeline.schema import (
    AUGMENT_OPS,
    CHANGED_BY,
    ORIGIN,
    ORIGINAL,
    ROW_ID,
    SOURCE_ROW_ID,
    SPLIT,
    with_origin,
)
from pipeline.stages.base import Stage, StageConfig, StageOutput, no_removals, stats_of, with_stats
from pipeline.text.cjk import cjk_rows

log = logging.getLogger("pipeline")

AUGMENTED = "augmented"
TRAIN = "train"
TEXT_COLUMNS = ("text", "prompt", "response", "messages")
MAX_ATTEMPTS = 8
"""Candidates tried for one copy before giving up on it: a rejected candidate (no
change, or a duplicate) is redrawn from the copy's generator."""

STOP_WORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves
    """.split()
)
"""Function words (the common core of the NLTK and EDA English lists): replacing them
by "synonyms" mangles grammar without adding variety."""

Lookup = Callable[[str], Sequence[str]]
"""A word's synonyms, e.g. :func:`pipeline.wordnet.synonyms`."""
THESAURUS_OPS = ("synonym", "insert")
"""The operations that draw on WordNet's synonyms."""
CJK_OPS = ("insert", "swap", "delete", "shuffle")
"""The operations rows in CJK script get: every one but synonym replacement (WordNet
is English); their insert repeats a word of the row instead of adding a synonym."""


class AugmentConfig(StageConfig):
    enabled: bool = False
    """Augmentation adds synthetic rows, so it runs only when asked for."""
    seed: int = 0
    synonym_rate: float = Field(0.1, ge=0.0, le=1.0)
    """EDA's alpha for synonym replacement: the share of a text's words replaced."""
    insert_rate: float = Field(0.1, ge=0.0, le=1.0)
    swap_rate: float = Field(0.1, ge=0.0, le=1.0)
    delete_rate: float = Field(0.1, ge=0.0, le=1.0)
    """Each word is deleted with this probability. A rate of 0 disables an operation."""
    shuffle_sentences: float = Field(0.0, ge=0.0, le=1.0)
    """Probability that a copy's operation is sentence shuffle instead of a word
    operation (always, when every word rate is 0)."""
    copies_per_row: int = Field(0, ge=0, le=100)
    """Plain mode: every train row gets this many copies."""
    balance: bool = False
    """Balancing mode: classes below ``target_share`` of the train rows are topped up
    with copies of their own rows, round-robin in input order."""
    target_share: float | None = Field(None, gt=0.0, le=1.0)
    """Share of the original train rows each class is lifted to; default
    ``0.5 / number of classes``: a seriously thin class reaches half its fair share,
    while a mildly thin one is left with real rows rather than synthetic ones."""
    max_copies_per_row: int = Field(10, ge=1, le=100)
    """Cap of copies per source row in balancing mode; beyond it a class stays short
    (``short_of_target`` in the stage's figures) rather than repeat one row 50 times."""
    fields: Literal["auto", "text", "prompt", "response", "both"] = "auto"
    """What is rewritten: ``auto`` is ``text`` for text and classification data and
    the prompt only for instruction data (the user turns of ``messages``), so
    responses stay as written; ``response`` and ``both`` are instruction-only."""
    wordnet_dir: str | None = None
    """WordNet folder, which must then hold one; default ``$PIPELINE_WORDNET_DIR``, else
    ``/usr/share/wordnet``, and where neither holds one the operations that need
    synonyms (``synonym``, ``insert``) are skipped, with a warning."""

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        if not self.enabled:
            return self
        if self.balance and self.copies_per_row:
            raise ValueError("copies_per_row and balance are two modes: set one")
        if not self.balance and not self.copies_per_row:
            raise ValueError("augment makes no rows: set copies_per_row > 0 or balance: true")
        if self.target_share is not None and not self.balance:
            raise ValueError("target_share is for balance: true")
        if not self.shuffle_sentences and not any(r for _, r in self.word_ops()):
            raise ValueError("every operation has rate 0: raise a *_rate or shuffle_sentences")
        return self

    def word_ops(self) -> list[tuple[str, float]]:
        return [
            ("synonym", self.synonym_rate),
            ("insert", self.insert_rate),
            ("swap", self.swap_rate),
            ("delete", self.delete_rate),
        ]


# --- the operations, on whitespace tokens ------------------------------------------------

_WORD_TOKEN = re.compile(r"(\W*)([^\W\d_]+(?:-[^\W\d_]+)*)(\W*)")
"""A word (letters, maybe hyphenated) with punctuation around it: ``"(well-known),"``."""
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(\s+)")


@dataclass
class Words:
    """A text as whitespace tokens and the whitespace before each, plus the trailing
    whitespace. Operations move or drop tokens and leave the whitespace in place, so
    line breaks of a multi-line text survive; punctuation stays on its token."""

    tokens: list[str]
    gaps: list[str]
    tail: str

    @classmethod
    def parse(cls, text: str) -> Words:
        # re.split with a group alternates token, whitespace, token...; only the first
        # and last token can be empty (leading or trailing whitespace).
        tokens, gaps, gap = [], [], ""
        for j, piece in enumerate(re.split(r"(\s+)", text)):
            if j % 2:
                gap = piece
            elif piece:
                tokens.append(piece)
                gaps.append(gap)
                gap = ""
        return cls(tokens=tokens, gaps=gaps, tail=gap)

    def text(self) -> str:
        return "".join(g + t for g, t in zip(self.gaps, self.tokens)) + self.tail


def _content_words(words: Words) -> list[tuple[int, str, str, str]]:
    """Position, leading punctuation, word and trailing punctuation of each token that
    is a word but not a stop-word: the ones synonyms are looked up for."""
    found = []
    for i, token in enumerate(words.tokens):
        match = _WORD_TOKEN.fullmatch(token)
        if match and match.group(2).casefold() not in STOP_WORDS:
            found.append((i, *match.groups()))
    return found


def _with_case_of(word: str, model: str) -> str:
    if len(model) > 1 and model.isupper():
        return word.upper()
    if model[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _count(rate: float, n: int) -> int:
    """EDA's number of words an operation touches: ``max(1, int(alpha * n))``."""
    return max(1, int(rate * n))


def synonym_replacement(text: str, rate: float, rng: random.Random, lookup: Lookup) -> str:
    """Replace ``rate`` of the words, at random positions, by a WordNet synonym
    (keeping the token's punctuation and capitalisation); stop-words stay."""
    words = Words.parse(text)
    candidates = _content_words(words)
    rng.shuffle(candidates)
    todo = _count(rate, len(words.tokens))
    for i, before, core, after in candidates:
        if todo == 0:
            break
        options = lookup(core)
        if options:
            words.tokens[i] = before + _with_case_of(rng.choice(options), core) + after
            todo -= 1
    return words.text()


def random_insertion(text: str, rate: float, rng: random.Random, lookup: Lookup) -> str:
    """Insert, ``rate`` of the word count times, a synonym of a random word at a random
    position."""
    words = Words.parse(text)
    pool = [options for _, _, core, _ in _content_words(words) if (options := lookup(core))]
    if not pool:
        return text
    for _ in range(_count(rate, len(words.tokens))):
        at = rng.randint(0, len(words.tokens))
        words.tokens.insert(at, rng.choice(rng.choice(pool)))
        words.gaps.insert(at, " ")
        if at == 0:  # the leading whitespace stays in front of the text
            words.gaps[0], words.gaps[1] = words.gaps[1], words.gaps[0]
    return words.text()


def random_swap(text: str, rate: float, rng: random.Random) -> str:
    """Swap two random words, ``rate`` of the word count times."""
    words = Words.parse(text)
    n = len(words.tokens)
    if n < 2:
        return text
    for _ in range(_count(rate, n)):
        i, j = rng.sample(range(n), 2)
        words.tokens[i], words.tokens[j] = words.tokens[j], words.tokens[i]
    return words.text()


def random_deletion(text: str, rate: float, rng: random.Random) -> str:
    """Delete each word with probability ``rate``, keeping at least one. Of the two
    gaps around a deleted word the one with more line breaks stays."""
    words = Words.parse(text)
    n = len(words.tokens)
    if n < 2:
        return text
    drop = [rng.random() < rate for _ in range(n)]
    if all(drop):
        drop[rng.randrange(n)] = False
    tokens, gaps, carry = [], [], None
    for gap, token, gone in zip(words.gaps, words.tokens, drop):
        gap = gap if carry is None else _wider(carry, gap)
        if gone:
            carry = gap
        else:
            tokens.append(token)
            gaps.append(gap)
            carry = None
    tail = words.tail if carry is None else _wider(words.tail, carry)
    return Words(tokens, gaps, tail).text()


def _wider(first: str, second: str) -> str:
    """The gap with more line breaks; ``first`` on a tie."""
    return second if second.count("\n") > first.count("\n") else first


def sentence_shuffle(text: str, rng: random.Random) -> str:
    """Shuffle the sentences (split after ``.``, ``!`` or ``?`` and whitespace); the
    whitespace between them, paragraph breaks included, stays in place."""
    body = text.strip()
    start = len(text) - len(text.lstrip())
    lead, trail = text[:start], text[start + len(body):]
    sentences, separators, pos = [], [], 0
    for match in _SENTENCE_END.finditer(body):
        sentences.append(body[pos: match.start(1)])
        separators.append(match.group(1))
        pos = match.end(1)
    sentences.append(body[pos:])
    if len(sentences) < 2:
        return text
    rng.shuffle(sentences)
    return lead + "".join(s + sep for s, sep in zip(sentences, [*separators, ""])) + trail


# --- the operations on text without spaces (Chinese, Japanese): jieba words ------------------

_HAS_WORD = re.compile(r"\w")
_CJK_SENTENCE_END = re.compile(r"[。！？!?]+[”’」』）)]*")


def _cjk_words(text: str) -> tuple[list[str], list[int]]:
    """``text`` as ``rjieba`` tokens (joined with no separator they give it back) and the
    positions of those that are words: punctuation and spaces stay where they are."""
    import rjieba

    tokens = rjieba.cut(text)
    return tokens, [i for i, t in enumerate(tokens) if _HAS_WORD.search(t)]


def cjk_swap(text: str, rate: float, rng: random.Random) -> str:
    """:func:`random_swap` on jieba words."""
    tokens, at = _cjk_words(text)
    if len(at) < 2:
        return text
    for _ in range(_count(rate, len(at))):
        i, j = rng.sample(at, 2)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return "".join(tokens)


def cjk_deletion(text: str, rate: float, rng: random.Random) -> str:
    """:func:`random_deletion` on jieba words, keeping at least one."""
    tokens, at = _cjk_words(text)
    if len(at) < 2:
        return text
    drop = {i for i in at if rng.random() < rate}
    if len(drop) == len(at):
        drop.discard(rng.choice(at))
    return "".join(t for i, t in enumerate(tokens) if i not in drop)


def cjk_insertion(text: str, rate: float, rng: random.Random) -> str:
    """Insert, ``rate`` of the word count times, a copy of a random word of the text
    before a random word (there is no Chinese thesaurus to draw synonyms from)."""
    tokens, at = _cjk_words(text)
    if not at:
        return text
    words = [tokens[i] for i in at]
    for _ in range(_count(rate, len(at))):
        before = rng.choice(at)
        tokens.insert(before, rng.choice(words))
        at = [i + (i >= before) for i in at] + [before]
    return "".join(tokens)


def cjk_sentence_shuffle(text: str, rng: random.Random) -> str:
    """:func:`sentence_shuffle` for text whose sentences end in 。！？ with no space
    after; a trailing part without an end mark stays last."""
    sentences, pos = [], 0
    for match in _CJK_SENTENCE_END.finditer(text):
        sentences.append(text[pos: match.end()])
        pos = match.end()
    tail = text[pos:]
    if len(sentences) < 2:
        return sentence_shuffle(text, rng)
    rng.shuffle(sentences)
    return "".join(sentences) + tail


# --- the stage -----------------------------------------------------------------------------


def normalised_hash(text: str) -> int:
    """64-bit hash of ``text`` casefolded with whitespace folded; stable across
    processes (unlike ``hash``)."""
    key = " ".join(text.casefold().split()).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def copy_rng(seed: int, row_id: str, k: int) -> random.Random:
    """The generator of copy ``k`` of row ``row_id``: a function of these alone."""
    digest = hashlib.blake2b(f"{seed}\x1f{row_id}\x1f{k}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


class _Operations(NamedTuple):
    run: list[str]
    """The enabled operations this run does."""
    thesaurus: str | None
    """The WordNet folder they read, None when none does."""
    skipped: dict[str, str]
    """Enabled operations skipped, with why: those that need a WordNet where there is none."""


class _Copy(NamedTuple):
    source: int
    """Position of the source row in the shard."""
    k: int
    op: str
    strings: list[str | None]


class AugmentStage(Stage):
    name = "augment"
    report_name = "augmented"
    config_model = AugmentConfig
    config: AugmentConfig
    is_global = True
    adds_columns = (ORIGIN, SOURCE_ROW_ID, AUGMENT_OPS)

    # which strings of a row are rewritten

    def _targets(self) -> tuple[str, ...]:
        """Roles rewritten; for ``messages`` data ``prompt`` stands for the user turns
        and ``response`` for the assistant turns."""
        choice, kind = self.config.fields, self.info.kind
        if kind != "instruction":
            if choice in ("auto", "text"):
                return ("text",)
            raise PipelineError(
                f"stages.augment.fields: {choice!r} is for instruction data, this dataset is {kind} (use text)"
            )
        if choice == "text":
            raise PipelineError(
                "stages.augment.fields: 'text' is for text and classification data, this dataset is instruction "
                "(use prompt, response or both)"
            )
        return ("prompt", "response") if choice == "both" else ("prompt",) if choice == "auto" else (choice,)

    def _turn_roles(self) -> set[str]:
        return {{"prompt": "user", "response": "assistant"}[t] for t in self._targets()}

    def _strings(self, row: dict[str, Any]) -> list[str | None]:
        if "messages" in self.info.roles:
            roles = self._turn_roles()
            return [m["content"] for m in row["messages"] or [] if m["role"] in roles]
        return [row[t] for t in self._targets()]

    def _with_strings(self, row: dict[str, Any], strings: list[str | None]) -> dict[str, Any]:
        """The columns of ``row`` that hold the strings, rewritten."""
        if "messages" in self.info.roles:
            roles, new = self._turn_roles(), iter(strings)
            return {"messages": [{**m, "content": next(new)} if m["role"] in roles else m for m in row["messages"]]}
        return dict(zip(self._targets(), strings))

    @staticmethod
    def _text_rows(table: pa.Table) -> list[dict[str, Any]]:
        """The rows of ``table`` as dicts of their text columns only."""
        return table.select([c for c in TEXT_COLUMNS if c in table.column_names]).to_pylist()

    @staticmethod
    def _joined(strings: list[str | None]) -> str:
        return "\n".join(s or "" for s in strings)

    def preflight(self) -> None:
        """A balance target, a label column and a configured WordNet are there."""
        self._check()

    def _check(self) -> None:
        self._targets()
        if self.config.balance and "label" not in self.info.roles:
            raise PipelineError(f"stages.augment.balance needs a label column; this {self.info.kind} dataset has none")
        _ = self._operations  # a configured WordNet that is not there fails the first step

    @cached_property
    def _operations(self) -> _Operations:
        """The enabled operations this run does, the WordNet they read, and those skipped.

        WordNet is optional: where no WordNet is set in ``wordnet_dir`` and none is in
        ``$PIPELINE_WORDNET_DIR`` or ``/usr/share/wordnet``, the operations that need
        synonyms are skipped and the others still make copies. A ``wordnet_dir`` that
        holds none is an error: it was asked for."""
        cfg = self.config
        enabled = [name for name, rate in cfg.word_ops() if rate > 0] + (["shuffle"] if cfg.shuffle_sentences else [])
        needing = [op for op in enabled if op in THESAURUS_OPS]
        if not needing:
            return _Operations(enabled, None, {})
        missing = None if cfg.wordnet_dir else wordnet.absent()
        if missing is None:
            wordnet.prepared_dir(cfg.wordnet_dir)  # raises for a wordnet_dir without a WordNet
            return _Operations(enabled, str(wordnet.source_dir(cfg.wordnet_dir)), {})
        rest = [op for op in enabled if op not in THESAURUS_OPS]
        if not rest:
            raise PipelineError(
                f"stages.augment: every enabled operation ({', '.join(needing)}) needs WordNet, and {missing}: "
                f"apt-get install wordnet-base, or point {wordnet.ENV_VAR} or stages.augment.wordnet_dir at a "
                "WordNet 3.0 dict folder, or raise swap_rate, delete_rate or shuffle_sentences"
            )
        return _Operations(rest, None, {op: missing for op in needing})

    @cached_property
    def _cjk_operations(self) -> list[str]:
        """The enabled operations rows in CJK script get (:data:`CJK_OPS`): no WordNet needed."""
        cfg = self.config
        enabled = [name for name, rate in cfg.word_ops() if rate > 0] + (["shuffle"] if cfg.shuffle_sentences else [])
        return [op for op in enabled if op in CJK_OPS]

    def _cjk(self, strings: list[list[str | None]]) -> np.ndarray:
        """Which rows (their rewritten strings joined) are written mostly in CJK script."""
        return cjk_rows(pa.array([self._joined(s) for s in strings], pa.large_string()))

    # the three steps

    def summarize(self, table: pa.Table) -> pa.Table:
        self._check()
        strings = [self._strings(r) for r in self._text_rows(table)]
        usable = np.array([any(x and x.strip() for x in s) for s in strings], bool)
        if ORIGIN in table.column_names:  # copies are made of the dataset's own rows only
            usable &= np.asarray(pc.fill_null(pc.equal(table.column(ORIGIN), ORIGINAL), True), bool)
        summary = {
            ROW_ID: table.column(ROW_ID),
            "hash": pa.array([normalised_hash(self._joined(s)) for s in strings], pa.uint64()),
            "usable": pa.array(usable, pa.bool_()),
            "cjk": pa.array(self._cjk(strings), pa.bool_()),
        }
        for extra in ("label", SPLIT):
            if extra in table.column_names:
                summary[extra] = table.column(extra)
        return pa.table(summary)

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        """Copies per source row, and the sorted unique hashes of all rows.

        One table: source rows have ``row_id`` and ``copies`` (hash null), hash rows
        only ``hash``. 8 bytes per existing row is what apply needs to refuse
        duplicates; texts never travel."""
        self._check()
        summary = pa.concat_tables(summaries)
        n = summary.num_rows
        train = np.ones(n, bool)
        if SPLIT in summary.column_names:
            train = np.asarray(pc.fill_null(pc.equal(summary.column(SPLIT), TRAIN), False), bool)
        usable = np.asarray(summary.column("usable"), bool) & train
        labels = summary.column("label").to_pylist() if "label" in summary.column_names else None
        if self.config.balance:
            copies, stats = self._balance_quota(labels, train, usable)
        else:
            copies = np.where(usable, self.config.copies_per_row, 0)
            stats = {"mode": "copies_per_row"}
            if labels is not None:
                stats |= self._class_figures(labels, train, copies)
        stats |= {"train_rows": int(train.sum()), "sources": int((copies > 0).sum()), "rows_to_make": int(copies.sum())}
        operations = self._operations
        stats |= {"operations": operations.run, "thesaurus": operations.thesaurus, "skipped": operations.skipped}
        cjk = np.asarray(summary.column("cjk"), bool) if "cjk" in summary.column_names else np.zeros(n, bool)
        stats["by_script"] = {
            script: {"sources": int(((copies > 0) & rows).sum()), "operations": ops}
            for script, rows, ops in (("other", ~cjk, operations.run), ("cjk", cjk, self._cjk_operations))
            if ((copies > 0) & rows).any()
        }
        if operations.skipped:
            log.warning(
                "augment: %s: the %s operations are skipped, copies are made by %s (apt-get install wordnet-base, "
                "or point %s or stages.augment.wordnet_dir at a WordNet 3.0 dict folder)",
                next(iter(operations.skipped.values())), " and ".join(operations.skipped),
                ", ".join(operations.run), wordnet.ENV_VAR,
            )
        source = np.flatnonzero(copies)
        hashes = np.unique(np.asarray(summary.column("hash"), np.uint64))
        state = pa.concat_tables(
            [
                pa.table(
                    {
                        ROW_ID: summary.column(ROW_ID).take(pa.array(source)).combine_chunks().cast(pa.string()),
                        "copies": pa.array(copies[source], pa.int32()),
                        "hash": pa.nulls(len(source), pa.uint64()),
                    }
                ),
                pa.table(
                    {
                        ROW_ID: pa.nulls(len(hashes), pa.string()),
                        "copies": pa.nulls(len(hashes), pa.int32()),
                        "hash": pa.array(hashes, pa.uint64()),
                    }
                ),
            ]
        )
        return with_stats(state, stats)

    def _balance_quota(
        self, labels: list[Any], train: np.ndarray, usable: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Copies per row lifting each thin class to ``target_share`` of the train rows,
        spread round-robin over the class's usable rows in input order."""
        cfg = self.config
        copies = np.zeros(len(labels), np.int64)
        classes = Counter(labels[i] for i in np.flatnonzero(train) if labels[i] is not None)
        target_share = cfg.target_share or (0.5 / len(classes) if classes else 0.0)
        target = math.ceil(round(target_share * int(train.sum()), 9))
        rows_of: dict[Any, list[int]] = {}
        for i in np.flatnonzero(usable):
            rows_of.setdefault(labels[i], []).append(int(i))
        short = {}
        for label, count in classes.items():
            if count >= target:
                continue
            rows = rows_of.get(label, [])
            quota = min(target - count, len(rows) * cfg.max_copies_per_row)
            base, extra = divmod(quota, len(rows)) if rows else (0, 0)
            for j, i in enumerate(rows):
                copies[i] = base + (j < extra)
            if count + quota < target:
                short[str(label)] = target - count - quota
        stats = {"mode": "balance", "target_share": target_share, "target_rows": target, "short_of_target": short}
        return copies, stats | self._class_figures(labels, train, copies)

    @staticmethod
    def _class_figures(labels: list[Any], train: np.ndarray, copies: np.ndarray) -> dict[str, Any]:
        before: Counter[str] = Counter()
        after: Counter[str] = Counter()
        for i in np.flatnonzero(train):
            if labels[i] is not None:
                before[str(labels[i])] += 1
                after[str(labels[i])] += 1 + int(copies[i])
        return {"classes_before": dict(sorted(before.items())), "classes_after": dict(sorted(after.items()))}

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        if state is None:
            raise ValueError("augment.apply needs the state from decide()")
        self._check()
        operations = set(stats_of(state)["operations"])  # decided once, for every shard alike
        table = with_origin(table)
        mine = state.filter(pc.fill_null(pc.is_in(state.column(ROW_ID), value_set=table.column(ROW_ID)), False))
        copies = dict(zip(mine.column(ROW_ID).to_pylist(), mine.column("copies").to_pylist()))
        existing = np.asarray(state.column("hash").drop_null(), np.uint64)  # sorted by decide
        ids = table.column(ROW_ID).to_pylist()
        at = [i for i, r in enumerate(ids) if r in copies]
        labels = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(ids)
        made: list[_Copy] = []
        seen: set[int] = set()
        counters: Counter[str] = Counter()
        sources = [self._strings(row) for row in self._text_rows(table.take(pa.array(at, pa.int64())))]
        by_script = stats_of(state).get("by_script", {})
        cjk_operations = set(by_script.get("cjk", {}).get("operations", ()))
        for i, strings, cjk in zip(at, sources, self._cjk(sources).tolist()):
            row_operations = cjk_operations if cjk else operations
            if not row_operations:
                counters["augment_no_operation:cjk"] += copies[ids[i]]
                continue
            for k in range(copies[ids[i]]):
                rng = copy_rng(self.config.seed, ids[i], k)
                for _ in range(MAX_ATTEMPTS):
                    op, new = self._augment(strings, rng, row_operations, cjk)
                    if new == strings:
                        continue
                    key = normalised_hash(self._joined(new))
                    pos = np.searchsorted(existing, np.uint64(key))
                    if key in seen or (pos < len(existing) and existing[pos] == key):
                        continue
                    seen.add(key)
                    made.append(_Copy(i, k, op, new))
                    counters[f"augmented:{op}"] += 1
                    if labels[i] is not None:
                        counters[f"augmented_class:{labels[i]}"] += 1
                    break
                else:
                    counters["augment_rejected_duplicate"] += 1
        augmented = self._augmented_rows(table, made)
        return StageOutput(
            kept=pa.concat_tables([table, augmented]),
            removed=no_removals(table),
            counters=counters,
            scores=self._report(augmented),
        )

    def _augment(
        self, strings: list[str | None], rng: random.Random, operations: Collection[str], cjk: bool = False
    ) -> tuple[str, list[str | None]]:
        """One candidate copy: one operation, drawn from ``operations`` (the enabled ones
        this run can do for the row's script), applied to every rewritten string."""
        cfg = self.config
        word_ops = [(name, rate) for name, rate in cfg.word_ops() if rate > 0 and name in operations]
        if "shuffle" in operations and (not word_ops or rng.random() < cfg.shuffle_sentences):
            op, rate = "shuffle", cfg.shuffle_sentences
        else:
            op, rate = rng.choice(word_ops)
        rewrite = self._rewrite_cjk if cjk else self._rewrite
        return op, [None if s is None else rewrite(op, rate, s, rng) for s in strings]

    @staticmethod
    def _rewrite_cjk(op: str, rate: float, text: str, rng: random.Random) -> str:
        if op == "insert":
            return cjk_insertion(text, rate, rng)
        if op == "swap":
            return cjk_swap(text, rate, rng)
        if op == "delete":
            return cjk_deletion(text, rate, rng)
        return cjk_sentence_shuffle(text, rng)

    def _rewrite(self, op: str, rate: float, text: str, rng: random.Random) -> str:
        if op == "synonym":
            return synonym_replacement(text, rate, rng, self._synonym_lookup)
        if op == "insert":
            return random_insertion(text, rate, rng, self._synonym_lookup)
        if op == "swap":
            return random_swap(text, rate, rng)
        if op == "delete":
            return random_deletion(text, rate, rng)
        return sentence_shuffle(text, rng)

    @cached_property
    def _synonym_lookup(self) -> Lookup:
        """Loaded on the first copy that needs a synonym (WordNet takes seconds)."""
        return wordnet.synonym_lookup(self.config.wordnet_dir)

    def _augmented_rows(self, table: pa.Table, made: list[_Copy]) -> pa.Table:
        """The copies: every column of the source row, the rewritten strings, lineage."""
        rows = table.take(pa.array([m.source for m in made], pa.int64()))
        sources = rows.column(ROW_ID).to_pylist()
        rewritten = [self._with_strings(r, m.strings) for r, m in zip(self._text_rows(rows), made)]
        changed_by = rows.column(CHANGED_BY).to_pylist()
        new_columns = {
            ROW_ID: [f"{s}~aug{m.k}" for s, m in zip(sources, made)],
            ORIGIN: [AUGMENTED] * len(made),
            SOURCE_ROW_ID: sources,
            AUGMENT_OPS: [m.op for m in made],
            CHANGED_BY: [f"{c},{self.name}" if c else self.name for c in changed_by],
        }
        for column in ("messages",) if "messages" in self.info.roles else self._targets():
            new_columns[column] = [r[column] for r in rewritten]
        for column, values in new_columns.items():
            idx = rows.schema.get_field_index(column)
            rows = rows.set_column(idx, rows.schema.field(idx), pa.array(values, rows.schema.field(idx).type))
        return rows

    def _report(self, augmented: pa.Table) -> pa.Table:
        """``reports/augmented.parquet``: each copy, its source, operation and text."""
        report = {
            ROW_ID: augmented.column(ROW_ID),
            SOURCE_ROW_ID: augmented.column(SOURCE_ROW_ID),
            AUGMENT_OPS: augmented.column(AUGMENT_OPS),
        }
        if "label" in augmented.column_names:
            report["label"] = augmented.column("label")
        report["text"] = pa.array([self._joined(self._strings(r)) for r in self._text_rows(augmented)], pa.string())
        return pa.table(report)
