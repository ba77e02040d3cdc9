"""Stage ``split``: train / validation / test, stratified, with near copies kept together.

A validation or test row with a near copy in training measures memory, not
generalisation. ``near_dedup`` removes copies at its threshold (0.8 by default), but
pairs a little less alike (a reworded sentence, a quote with another attribution)
survive it. So this stage groups rows again, at a lower Jaccard threshold, with the
same MinHash engine, and joins groups transitively (connected components, unlike
``near_dedup``'s centre clusters: here a chain A~B~C must land in one split). Whole
groups are then dealt to the splits.

Dealing is stratified by label when the dataset has one: within each label, groups
are lined up in a seeded pseudo-random order (by a hash of their first row's id, not
their position) and the line is cut at the fractions (:func:`deal_groups`). The
fractions are met to within one group per label, a class too small to share keeps
its rows in train, the result does not depend on the sharding, and a row keeps its
split in the next version unless it sits near a cut.

Global, in the three steps of the stage contract:

``summarize``  per shard: MinHash signature of each row, its text and shingle count, its label
``decide``     once: near-copy pairs, groups, the split of every row
``apply``      per shard: the ``split`` column; no row leaves
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from pipeline.dedup import minhash
from pipeline.dedup.signatures import TextShingles, compact_minhash_columns, signature_matrix
from pipeline.schema import ROW_ID, SPLIT, joined_text
from pipeline.stages.base import Stage, StageConfig, StageOutput, no_removals, with_stats

SPLITS = ("train", "validation", "test")
PREFILTER = 0.7
"""Candidates whose signature estimate is below this share of ``group_threshold`` are
dropped band by band, before verification (``min_estimate`` of
:func:`pipeline.dedup.minhash.find_duplicates`). Character 5-grams make unrelated
English rows weakly alike (two rows sharing one sentence sit at Jaccard 0.1-0.3), and
the banding for 0.4 turns that into candidates that grow with the square of the rows:
10.4 million at 200,000 rows of the scale benchmark's corpus. Each survivor is
verified on shingles computed again from its text, so the survivors set the stage's
time. At the default threshold the cut is 0.35: the estimate of a pair at 0.5 has a
standard deviation of 0.044 with 128 positions, so it falls below 0.35 about 3 times
in 10,000 (against the banding's own miss of 13% at 0.5), and not once on the
100,000-row corpus; 16,000 candidates survive there instead of 85,000 at 0.25. The
estimate is taken on the low byte of each position (:func:`minhash.estimate_prefilter`),
a quarter of the memory read per pair, with the cut moved for the 1-in-256 chance
match; the verified pairs of the scale benchmark's million rows are the same."""


class SplitConfig(StageConfig):
    train: float = Field(0.8, ge=0.0, le=1.0)
    validation: float = Field(0.1, ge=0.0, le=1.0)
    test: float = Field(0.1, ge=0.0, le=1.0)
    """Fractions of the rows per split; they must add up to 1. A split with fraction 0
    is not written."""
    seed: int = 0
    stratify: bool = True
    """Keep each label's share the same in every split (datasets with a label)."""
    group_threshold: float = Field(0.5, gt=0.0, le=1.0)
    """Jaccard similarity at or above which two rows are near copies that must share a
    split. Lower than ``near_dedup.threshold``: rows that close are removed there."""
    shingles: Literal["word", "char"] = "char"
    """Character 5-grams by default: they see a reworded short sentence as close,
    where word 5-grams of a ten-word row barely overlap."""
    ngram: int = Field(5, ge=1, le=64)
    num_perm: int = Field(128, ge=16, le=1024)

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must add up to 1, got {total:g}")
        if self.train == 0:
            raise ValueError("train must be above 0")
        return self

    def fractions(self) -> dict[str, float]:
        return {s: getattr(self, s) for s in SPLITS if getattr(self, s) > 0}


def _seeded_keys(keys: list[str], seed: int) -> np.ndarray:
    """A pseudo-random 64-bit number per key that depends on the key and the seed only
    (not on its position), so adding rows elsewhere leaves a row's place alone."""
    digests = b"".join(hashlib.blake2b(f"{seed}\0{k}".encode(), digest_size=8).digest() for k in keys)
    return np.frombuffer(digests, dtype=">u8").astype(np.uint64)


def deal_groups(
    group_sizes: np.ndarray, group_keys: list[str], fractions: dict[str, float], seed: int
) -> np.ndarray:
    """Assign each group to a split (index into ``fractions``).

    Groups are lined up in the order of their seeded key hash, and the line is cut at
    the fractions' cumulative row counts; a group goes to the split its middle row
    falls in. A row therefore keeps its split when other rows come or go, unless it
    sits near a cut, and a class of two rows (middles at 0.5 and 1.5 of a train cut
    at 1.6) stays whole in train."""
    order = np.argsort(_seeded_keys(group_keys, seed), kind="stable")
    sizes = group_sizes[order]
    middles = np.cumsum(sizes) - sizes / 2
    cuts = np.cumsum([fractions[n] for n in fractions])[:-1] * sizes.sum()
    assigned = np.empty(len(group_sizes), dtype=np.int64)
    assigned[order] = np.searchsorted(cuts, middles, side="right")
    return assigned


class SplitStage(Stage):
    name = "split"
    report_name = "split_groups"
    config_model = SplitConfig
    config: SplitConfig
    is_global = True
    adds_columns = (SPLIT,)

    def summarize(self, table: pa.Table) -> pa.Table:
        cfg = self.config
        texts = joined_text(table, self.info)
        columns = {
            ROW_ID: table.column(ROW_ID),
            **compact_minhash_columns(texts, cfg.shingles, cfg.ngram, cfg.num_perm, seed=1, scheme="oph"),
        }
        if "label" in self.info.roles:
            columns["label"] = pc.cast(table.column("label"), pa.string())
        return pa.table(columns)

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        """Groups of near copies (connected components of verified pairs), then each
        label's groups dealt to the splits."""
        from scipy.sparse import coo_matrix  # here: a run that only applies the split saves its import
        from scipy.sparse.csgraph import connected_components

        cfg = self.config
        n = sum(s.num_rows for s in summaries)
        # Shingles are computed again for the candidate pairs only, a pair of shards
        # at a time (see compact_minhash_columns): memory stays flat in rows.
        found = minhash.find_duplicates(
            [TextShingles(s, cfg.shingles, cfg.ngram) for s in summaries],
            [signature_matrix(s, cfg.num_perm) for s in summaries],
            threshold=cfg.group_threshold,
            verify="exact",
            min_estimate=cfg.group_threshold * PREFILTER,
        )
        pairs = found.pairs
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, group = connected_components(graph, directed=False)
        ids = pa.chunked_array([s.column(ROW_ID) for s in summaries], pa.string()).combine_chunks()

        strata = np.zeros(n, dtype=np.int64)
        label_names: list[str] = []
        if cfg.stratify and "label" in self.info.roles and n:
            labels = pa.chunked_array([s.column("label") for s in summaries], pa.string()).combine_chunks()
            # a group is dealt with the label of its first row
            first_row = np.full(group.max() + 1, n, dtype=np.int64)
            np.minimum.at(first_row, group, np.arange(n))
            encoded = pc.dictionary_encode(pc.fill_null(labels, "\0null"))
            label_names = encoded.dictionary.to_pylist()
            strata = np.asarray(encoded.indices)[first_row[group]]

        fractions = cfg.fractions()
        names = list(fractions)
        split_of = np.zeros(n, dtype=np.int64)
        for stratum in np.unique(strata):
            rows = np.flatnonzero(strata == stratum)
            groups, members = np.unique(group[rows], return_inverse=True)
            sizes = np.bincount(members)
            # a group is known by its first row's id, which no resharding changes
            first = np.full(len(groups), len(rows), dtype=np.int64)
            np.minimum.at(first, members, np.arange(len(rows)))
            keys = ids.take(pa.array(rows[first])).to_pylist()
            split_of[rows] = deal_groups(sizes, keys, fractions, cfg.seed)[members]

        group_sizes = np.bincount(group, minlength=n)[group]
        counts = dict(zip(names, np.bincount(split_of, minlength=len(names)).tolist()))
        per_label: dict[str, dict[str, int]] = {}
        if label_names:
            for stratum, split in zip(strata, split_of):
                per_label.setdefault(label_names[stratum], Counter())[names[split]] += 1
        stats = {
            "rows": {name: counts.get(name, 0) for name in names},
            "near_copy_pairs": int(len(pairs)),
            "groups_of_2_or_more": int((np.bincount(group) > 1).sum()) if n else 0,
            "largest_group": int(group_sizes.max()) if n else 0,
            "rows_per_label": {k: dict(v) for k, v in sorted(per_label.items())},
        }
        return with_stats(
            pa.table(
                {
                    ROW_ID: ids,
                    SPLIT: pa.array(names, pa.string()).take(pa.array(split_of)),
                    "group_id": pa.array(group, pa.int64()),
                    "group_size": pa.array(group_sizes, pa.int64()),
                }
            ),
            stats,
        )

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        if state is None:
            raise ValueError("split.apply needs the state from decide()")
        mine = state.filter(pc.is_in(state.column(ROW_ID), value_set=table.column(ROW_ID)))
        index = pc.index_in(table.column(ROW_ID), value_set=mine.column(ROW_ID))
        split = mine.column(SPLIT).combine_chunks().take(index)
        if SPLIT in table.column_names:
            table = table.set_column(table.schema.get_field_index(SPLIT), SPLIT, split)
        else:
            table = table.append_column(SPLIT, split)
        counters = Counter(f"split:{s}" for s in split.to_pylist())
        grouped = mine.filter(pc.greater(mine.column("group_size"), 1))
        return StageOutput(kept=table, removed=no_removals(table), counters=counters, scores=grouped)
