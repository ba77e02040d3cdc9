"""Stage ``decontaminate``: remove rows that hold items of an evaluation set.

A model fine-tuned on rows that contain a benchmark's items scores well on that
benchmark for the wrong reason. This stage finds such rows by shared n-grams with the
evaluation items, as datatrove and open-r1 do, but on *normalised* tokens
(:mod:`pipeline.text.ngrams`): case, punctuation and line breaks are folded, so an item
re-wrapped into short lines or re-punctuated still matches, and Chinese or Japanese
text is matched by characters (a row is CJK by :func:`pipeline.text.script.is_cjk`),
where whitespace n-grams see a whole sentence as one word.

Two kinds of reference rows:

* **evaluation sets** named in ``eval_sets``, each read by the readers with its own
  column roles (any file a dataset could be): every row of the dataset, whatever its
  split, is checked against them;
* **the dataset's own validation and test splits** (``own_splits``): train rows only
  are checked against them, so a score on the held-out splits measures generalisation.
  This is why the stage runs after ``split`` (it needs each row's split) and before
  ``augment`` and ``rehearsal`` (rows made from a contaminated row are never made).

A removed row has reason ``contamination:<eval set>`` (``contamination:validation`` or
``contamination:test`` for the dataset's own splits) and, in ``detail``, the matched
evaluation row's id, one shared n-gram (normalised), and how many n-grams it shares.

Global, in the three steps of the stage contract:

``summarize``  per shard: the text of its validation and test rows
``decide``     once: the n-gram index of every evaluation row and held-out row
``apply``      per shard: rows sharing enough n-grams with a reference row are removed
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from pipeline.errors import PipelineError
from pipeline.inputs import ColumnsConfig, DatasetConfig
from pipeline.readers import Reader, expand_inputs
from pipeline.schema import ROW_ID, SPLIT
from pipeline.settings import StrictModel
from pipeline.stages.base import Read, Stage, StageConfig, StageContext, StageOutput, split_rows, with_stats
from pipeline.text import ngrams
from pipeline.text.fold import ScriptFold
from pipeline.text.parts import has_sides, part_text
from pipeline.text.script import is_cjk

OWN_SPLITS = ("validation", "test")
"""The held-out splits whose rows train rows are checked against; reserved as names."""


class EvalSetConfig(StrictModel):
    """One evaluation set, read like a dataset."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """How reasons and reports name it: ``contamination:<name>``."""
    inputs: list[str] = Field(min_length=1)
    """Files, globs or ``save_to_disk`` folders."""
    format: Literal["auto", "parquet", "json", "jsonl", "csv", "hf"] = "auto"
    columns: ColumnsConfig = ColumnsConfig()
    """Its column roles, as for a dataset (``prompt: question``, ``response: answer``)."""

    @field_validator("name")
    @classmethod
    def _not_a_split(cls, name: str) -> str:
        if name in OWN_SPLITS:
            raise ValueError(f"{name!r} names the dataset's own split; give the evaluation set another name")
        return name


class DecontaminateConfig(StageConfig):
    enabled: bool = False
    """Off unless asked for: it needs evaluation sets to be worth running."""
    eval_sets: list[EvalSetConfig] = []
    own_splits: bool = True
    """Also remove train rows that share n-grams with the dataset's validation or test rows."""
    match: Literal["whole", "prompt", "response"] = "whole"
    """Which text is compared, on both sides: the whole row, or the prompt side only
    (the question leaked) or the response side only (the answer leaked). An evaluation
    set or dataset without that side (plain text) contributes its whole text."""
    ngram: int = Field(8, ge=1, le=64)
    """n-gram length in words, for rows in spaced scripts (open-r1 uses 8, datatrove 12)."""
    cjk_ngram: int = Field(12, ge=1, le=64)
    """n-gram length in characters, for Chinese, Japanese and Korean reference rows."""
    min_matches: int = Field(1, ge=1)
    """Distinct n-grams a row must share with one reference row to be removed."""
    min_overlap: float = Field(0.0, ge=0.0, le=1.0)
    """And the share of that reference row's n-grams it must hold (0.5: half the item)."""
    script_fold: ScriptFold = "t2s"
    """How Traditional Chinese is folded to Simplified before matching (an item converted
    from one script to the other still matches): ``t2s`` character by character,
    ``tw2sp`` / ``hk2s`` with Taiwan / Hong Kong phrases, ``none`` to match as written."""
    common_rows: int | None = Field(10, ge=1)
    """An n-gram found in more than this many reference rows is boilerplate (a
    benchmark's instruction template, an instruction dataset's prompt template, a
    licence line), not an item, and is not matched. None: every n-gram is."""

    @model_validator(mode="after")
    def _check(self) -> DecontaminateConfig:
        if self.enabled and not self.eval_sets and not self.own_splits:
            raise ValueError("enabled, but no eval_sets and own_splits is false: there is nothing to match against")
        names = [s.name for s in self.eval_sets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"eval_sets: the name {twice[0]!r} is given twice")
        return self


@contextmanager
def _named(eval_set: EvalSetConfig) -> Iterator[None]:
    """Say which setting a problem with an evaluation set's files comes from."""
    try:
        yield
    except PipelineError as err:
        raise PipelineError(f"stages.decontaminate.eval_sets {eval_set.name!r}: {err}") from err


def _dataset(eval_set: EvalSetConfig) -> DatasetConfig:
    return DatasetConfig(name=eval_set.name, inputs=eval_set.inputs, format=eval_set.format, columns=eval_set.columns)


class DecontaminateStage(Stage):
    name = "decontaminate"
    report_name = "contamination"
    config_model = DecontaminateConfig
    config: DecontaminateConfig
    is_global = True

    @classmethod
    def reads(cls, config: DecontaminateConfig, context: StageContext) -> list[Read]:
        """The evaluation sets' files: a changed item must re-run the stage."""
        reads = []
        for eval_set in config.eval_sets:
            with _named(eval_set):
                reads += [Read(f"eval:{eval_set.name}", f.path, f.label) for f in expand_inputs(_dataset(eval_set))]
        return reads

    def _text(self, table: pa.Table) -> pa.Array:
        return part_text(table, self.info, self.config.match)

    def summarize(self, table: pa.Table) -> pa.Table:
        """The shard's validation and test rows, with the text matched against."""
        held_out = np.zeros(table.num_rows, dtype=bool)
        if self.config.own_splits and SPLIT in table.column_names:
            held_out = np.asarray(pc.fill_null(pc.is_in(table.column(SPLIT), pa.array(OWN_SPLITS)), False))
        rows = table.filter(pa.array(held_out))
        return pa.table(
            {
                "eval_set": rows.column(SPLIT).cast(pa.string()) if rows.num_rows else pa.array([], pa.string()),
                "eval_row_id": rows.column(ROW_ID).cast(pa.string()),
                "text": self._text(rows).cast(pa.string()),
            }
        )

    def _eval_rows(self) -> tuple[list[pa.Table], dict[str, Any]]:
        """Every evaluation set's rows as (eval_set, eval_row_id, text), and what was read."""
        tables, stats = [], {}
        for eval_set in self.config.eval_sets:
            with _named(eval_set):
                reader = Reader(_dataset(eval_set), shard_rows=50_000)
                shards = list(reader.shards())
            side = self.config.match if has_sides(reader.info) else "whole"
            n = 0
            for shard in shards:
                n += shard.num_rows
                tables.append(
                    pa.table(
                        {
                            "eval_set": pa.array([eval_set.name] * shard.num_rows, pa.string()),
                            "eval_row_id": shard.column(ROW_ID).cast(pa.string()),
                            "text": part_text(shard, reader.info, side).cast(pa.string()),
                        }
                    )
                )
            stats[eval_set.name] = {"rows": n, "matched_on": side}
        return tables, stats

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        """The n-gram index of all reference rows, sorted by hash, one row per
        (n-gram, reference row): the state every shard is matched against."""
        cfg = self.config
        tables, stats = self._eval_rows()
        held_out = [s for s in summaries if s.num_rows]
        notes = []
        if cfg.own_splits and not held_out:
            notes.append("own_splits: the dataset has no validation or test rows (is split enabled?)")
        if cfg.match != "whole" and not has_sides(self.info):
            notes.append(f"match: {cfg.match}, but the dataset has no prompt and response: its whole text is matched")
        refs = pa.concat_tables(tables + held_out) if tables or held_out else None
        if refs is None or refs.num_rows == 0:
            return with_stats(_empty_state(), {"eval_sets": stats, "ngram_lengths": [], **_message(notes)})
        text = refs.column("text").combine_chunks()
        toks = ngrams.tokens(text, cfg.script_fold)
        n = np.where(is_cjk(text), cfg.cjk_ngram, cfg.ngram)
        index = ngrams.NgramIndex.build(toks, n, np.ceil(n / 2).astype(np.int64), cfg.common_rows)
        names = refs.column("eval_set").combine_chunks()
        indexed = index.sizes > 0
        for name in OWN_SPLITS:
            rows = int(pc.sum(pc.equal(names, name)).as_py() or 0)
            if rows:
                stats[name] = {"rows": rows, "matched_on": cfg.match if has_sides(self.info) else "whole"}
        for name, entry in stats.items():
            mine = np.asarray(pc.equal(names, name))
            entry["indexed"] = int((mine & indexed).sum())
            entry["too_short"] = int((mine & ~indexed).sum())
        figures: dict[str, Any] = {
            "eval_sets": stats,
            "ngram_lengths": list(index.lengths),
            "ngrams": len(index.hashes),
            "common_ngrams": index.common,
            **_message(notes),
        }
        state = pa.table(
            {
                "hash": pa.array(index.hashes, pa.uint64()),
                "entry": pa.array(index.entries, pa.int64()),
                "eval_set": pc.dictionary_encode(names.take(index.entries)),
                "eval_row_id": refs.column("eval_row_id").combine_chunks().take(index.entries),
                "eval_ngrams": pa.array(index.sizes[index.entries], pa.int64()),
                "length": pa.array(np.minimum(toks.lengths, n)[index.entries], pa.int16()),
            }
        )
        return with_stats(state, figures)

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        if state is None:
            raise ValueError("decontaminate.apply needs the state from decide()")
        text = self._text(table)
        toks = ngrams.tokens(text, self.config.script_fold)
        own = pc.is_in(state.column("eval_set").cast(pa.string()), pa.array(OWN_SPLITS))
        is_train = np.ones(table.num_rows, dtype=bool)
        if SPLIT in table.column_names:
            is_train = np.asarray(pc.fill_null(pc.equal(table.column(SPLIT), "train"), False))
        hits: dict[int, tuple[ngrams.Hit, pa.Table]] = {}
        # evaluation sets first: a row that holds a benchmark item is named for it
        for refs, allowed in ((state.filter(pc.invert(own)), None), (state.filter(own), is_train)):
            if refs.num_rows == 0:
                continue
            index = _index(refs)
            for hit in index.match(toks, self.config.min_matches, self.config.min_overlap):
                if hit.row not in hits and (allowed is None or allowed[hit.row]):
                    hits[hit.row] = (hit, refs)
        drop = np.zeros(table.num_rows, dtype=bool)
        drop[list(hits)] = True
        rows = sorted(hits)
        words = ngrams.token_strings(text.take(rows), self.config.script_fold) if rows else []
        reasons, details = [], []
        for row, row_words in zip(rows, words):
            hit, refs = hits[row]
            entry = refs.select(["eval_set", "eval_row_id", "eval_ngrams"]).slice(hit.pair, 1).to_pylist()[0]
            details.append(
                {
                    "eval_set": entry["eval_set"],
                    "eval_row_id": entry["eval_row_id"],
                    "ngram": ngrams.ngram_text(row_words, hit),
                    "matches": hit.matches,
                    "eval_ngrams": entry["eval_ngrams"],
                }
            )
            reasons.append(f"contamination:{entry['eval_set']}")
        kept, removed, counters = split_rows(table, drop, reasons, details)
        scores = pa.Table.from_pylist(
            [{ROW_ID: table.column(ROW_ID)[row].as_py(), **d} for row, d in zip(rows, details)], schema=SCORES
        )
        return StageOutput(kept=kept, removed=removed, counters=counters, scores=scores)


SCORES = pa.schema(
    [
        (ROW_ID, pa.string()),
        ("eval_set", pa.string()),
        ("eval_row_id", pa.string()),
        ("ngram", pa.string()),
        ("matches", pa.int64()),
        ("eval_ngrams", pa.int64()),
    ]
)
"""``reports/contamination.parquet``: one row per removed row, with what it matched."""


def _message(notes: list[str]) -> dict[str, str]:
    """The decision's ``message``, as other stages give it: present only when there is one."""
    return {"message": "; ".join(notes)} if notes else {}


def _index(refs: pa.Table) -> ngrams.NgramIndex:
    """The :class:`~pipeline.text.ngrams.NgramIndex` held by (part of) the state table."""
    entries = refs.column("entry").to_numpy()
    sizes = np.zeros(int(entries.max()) + 1, np.int64)
    sizes[entries] = refs.column("eval_ngrams").to_numpy()
    lengths = tuple(int(x) for x in np.unique(refs.column("length").to_numpy()))
    return ngrams.NgramIndex(refs.column("hash").to_numpy(), entries, sizes, lengths)


def _empty_state() -> pa.Table:
    return pa.table(
        {
            "hash": pa.array([], pa.uint64()),
            "entry": pa.array([], pa.int64()),
            "eval_set": pc.dictionary_encode(pa.array([], pa.string())),
            "eval_row_id": pa.array([], pa.string()),
            "eval_ngrams": pa.array([], pa.int64()),
            "length": pa.array([], pa.int16()),
        }
    )
