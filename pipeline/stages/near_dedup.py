"""Stage ``near_dedup``: MinHash LSH with verified clusters.

Existing tools merge whatever lands in one LSH bucket; one unlucky collision then
joins two unrelated texts, and chains of collisions build giant false clusters. Here
LSH only proposes candidate pairs, banded for a threshold below the target so few true
pairs are missed; every candidate is then checked (exact Jaccard of the shingle sets
by default) and only verified pairs become edges. Clusters form around
centres visited in the keep policy's order (first, longest, newest, quality): a row joins a
cluster only through a verified edge to the row kept in its place, so a chain A~B~C
never drops C for A.

Global, in the three steps of the stage contract:

``summarize``  per shard: shingle hashes (sorted, unique) and the MinHash signature of
               each row, plus what the keep policy needs (length, a column)
``decide``     once: candidate pairs from band hashes, verification, clusters,
               survivors; the state lists every row of every multi-row cluster
``apply``      per shard: rows that are not their cluster's survivor leave with
               reason ``near_duplicate``
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from pipeline.dedup import minhash
from pipeline.dedup.signatures import check_key, key_texts, minhash_columns, shingles_and_signatures
from pipeline.errors import PipelineError
from pipeline.schema import ROW_ID, joined_text
from pipeline.stages.base import Stage, StageConfig, StageOutput, split_rows, with_stats
from pipeline.text.fold import ScriptFold
from pipeline.text.stats import overall_quality, quality_scores


class NearDedupConfig(StageConfig):
    key: Literal["auto", "prompt", "response", "both", "first_user_turn"] = "auto"
    """What instruction rows are compared on; ``auto`` is prompt and response together
    (a conversation: every turn, roles and tool calls included); ``first_user_turn`` the
    prompt or a conversation's first user turn (see
    :func:`pipeline.dedup.signatures.key_texts`)."""
    shingles: Literal["auto", "word", "char"] = "auto"
    """``auto``: each row by its script, character n-grams for rows written mostly in
    CJK script (:func:`pipeline.text.script.is_cjk`: no spaces, so a word shingle would
    be a whole sentence) and word n-grams for the rest; ``word`` or ``char`` for all rows."""
    ngram: int = Field(5, ge=1, le=64)
    """Words or characters per shingle."""
    script_fold: ScriptFold = "t2s"
    """How CJK rows' Traditional characters are folded to Simplified in the key rows
    are compared on (:mod:`pipeline.text.fold`), so a Traditional copy of a Simplified
    row is a duplicate: ``t2s`` character by character, ``tw2sp`` also Taiwan phrases,
    ``hk2s`` Hong Kong forms, ``none`` to compare scripts as written. Full-width
    letters, digits and punctuation always compare as their ASCII forms."""
    num_perm: int = Field(128, ge=16, le=1024)
    scheme: Literal["oph", "kperm"] = "oph"
    seed: int = 1
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    """Jaccard similarity at or above which two rows are duplicates."""
    lsh_threshold: float | None = Field(None, gt=0.0, le=1.0)
    """Threshold the bands are tuned for; default a little below ``threshold``."""
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    verify: Literal["exact", "estimate"] = "exact"
    keep: Literal["first", "longest", "newest", "quality"] = "first"
    """Which member of a cluster survives: the first in input order, the longest text,
    the largest ``newest_column`` value, or the cleanest by
    :func:`pipeline.text.stats.overall_quality` (ties: the first)."""
    newest_column: str | None = None
    """For ``keep: newest``: the column whose largest value survives."""
    memory_budget_mb: int = Field(4096, ge=16)
    """Memory the decide step may use. Shingles and signatures stay in memory-mapped
    shard files; what must be resident grows with rows (see ``BYTES_PER_ROW``) plus
    the candidate pairs. A run whose estimate exceeds the budget stops before work."""

    @model_validator(mode="after")
    def _check(self) -> NearDedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if self.keep == "newest" and not self.newest_column:
            raise ValueError("keep: newest needs newest_column")
        return self


class NearDedupStage(Stage):
    name = "near_dedup"
    report_name = "duplicates"
    config_model = NearDedupConfig
    config: NearDedupConfig
    is_global = True

    def preflight(self) -> None:
        """The key suits the dataset (``first_user_turn`` needs instruction data)."""
        check_key(self.info, self.config.key)

    def summarize(self, table: pa.Table) -> pa.Table:
        cfg = self.config
        texts = key_texts(table, self.info, cfg.key)
        columns = {
            ROW_ID: table.column(ROW_ID),
            **minhash_columns(texts, cfg.shingles, cfg.ngram, cfg.num_perm, cfg.seed, cfg.scheme, cfg.script_fold),
            "length": pc.utf8_length(texts),
        }
        if cfg.keep == "quality":
            columns["quality"] = overall_quality(quality_scores(joined_text(table, self.info)))
        if cfg.keep == "newest":
            if cfg.newest_column not in table.column_names:
                raise ValueError(f"stages.near_dedup.newest_column: no column {cfg.newest_column!r}")
            columns["newest"] = table.column(cfg.newest_column)
        return pa.table(columns)

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        """Clusters of verified pairs; one row per member of every multi-row cluster.

        The shards' shingles and signatures are used where they lie (memory-mapped
        summary files, see ``pipeline.files.read_arrow``), never concatenated: resident memory
        is what banding and clustering need per row, checked against
        ``memory_budget_mb`` first."""
        cfg = self.config
        n = sum(s.num_rows for s in summaries)
        self._check_memory(n)
        parts = [shingles_and_signatures(s, cfg.num_perm) for s in summaries]
        sh, sigs = [p[0] for p in parts], [p[1] for p in parts]
        found = minhash.find_duplicates(
            sh, sigs, threshold=cfg.threshold, bands=cfg.bands, rows=cfg.rows,
            verify=cfg.verify, lsh_threshold=cfg.lsh_threshold, order=self._priority(summaries),
        )
        labels = found.cluster  # each row's centre: the row kept in its place
        sizes = np.bincount(labels, minlength=n)
        idx = np.flatnonzero(sizes[labels] > 1)
        pairs = np.stack([idx, labels[idx]], axis=1)
        if cfg.verify == "exact":
            similarity = minhash.exact_jaccard(sh, pairs)
        else:
            similarity = minhash.estimate_jaccard(sigs, pairs)
        ids = pa.chunked_array([s.column(ROW_ID) for s in summaries], pa.string())
        is_survivor = pairs[:, 0] == pairs[:, 1]
        cluster_sizes = Counter(sizes[sizes > 1].tolist())
        stats = {
            "bands": found.bands,
            "rows": found.rows,
            "candidate_pairs": found.candidates,
            "verified_pairs": len(found.pairs),
            "clusters": int((sizes > 1).sum()),
            "cluster_sizes": {str(k): v for k, v in sorted(cluster_sizes.items())},
        }
        return with_stats(pa.table(
            {
                ROW_ID: ids.take(idx).combine_chunks(),
                "cluster_id": pa.array(labels[idx], pa.int64()),
                "cluster_size": pa.array(sizes[labels[idx]], pa.int64()),
                "duplicate_of": pc.if_else(pa.array(is_survivor), None, ids.take(pairs[:, 1])).combine_chunks(),
                "similarity": pa.array(np.where(is_survivor, 1.0, similarity), pa.float64()),
            }
        ), stats)

    BYTES_PER_ROW = 400
    """Resident bytes per row in ``decide``, candidate pairs included: measured peak
    (tracemalloc) 50.8 MB on the 165,000 rows of ``benchmarks/dedup.py``'s corpus,
    whose boilerplate gives 394,000 candidate pairs (323 bytes per row; 92 on the
    scale benchmark's corpus, whose candidates are fewer), with a quarter added. It was
    743 before candidates were held as one ``int64`` code each. Independent of
    ``num_perm``: signatures (4 bytes per permutation per row) and shingles (8 bytes
    per distinct shingle) stay in the memory-mapped summary files, whose pages are
    dropped once read (:class:`pipeline.memory.MappedPages`)."""

    def _check_memory(self, rows: int) -> None:
        budget = self.config.memory_budget_mb
        need = rows * self.BYTES_PER_ROW / 2**20
        if need > budget:
            raise PipelineError(
                f"stages.near_dedup.memory_budget_mb is {budget} MB, but deciding over {rows:,} rows needs about "
                f"{need:,.0f} MB ({self.BYTES_PER_ROW} bytes per row, plus the candidate pairs): raise the budget "
                "or run near_dedup on a machine with more memory"
            )

    def _priority(self, summaries: list[pa.Table]) -> np.ndarray:
        """Row indices in keep order: the first of a cluster in this order survives."""
        n = sum(s.num_rows for s in summaries)
        position = np.arange(n)
        if self.config.keep == "first":
            return position

        def column(name: str) -> pa.Array:
            return pa.chunked_array([s.column(name) for s in summaries]).combine_chunks()

        if self.config.keep == "longest":
            return np.lexsort((position, -np.asarray(column("length"), np.int64)))
        if self.config.keep == "quality":
            return np.lexsort((position, -np.asarray(column("quality"))))
        newest = pc.rank(column("newest"), sort_keys="descending", tiebreaker="first")
        return np.lexsort((position, np.asarray(newest)))

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        if state is None:
            raise ValueError("near_dedup.apply needs the state from decide()")
        in_shard = pc.is_in(state.column(ROW_ID), value_set=table.column(ROW_ID))
        mine = state.filter(in_shard)
        removed_state = mine.filter(pc.is_valid(mine.column("duplicate_of")))
        by_id = {r[ROW_ID]: r for r in removed_state.to_pylist()}
        drop = np.asarray(pc.is_in(table.column(ROW_ID), value_set=removed_state.column(ROW_ID)), dtype=bool)
        dropped = table.column(ROW_ID).filter(pa.array(drop)).to_pylist()
        details = [
            {k: by_id[r][k] for k in ("duplicate_of", "cluster_id", "similarity")} for r in dropped
        ]
        kept, removed, counters = split_rows(table, drop, ["near_duplicate"] * len(dropped), details)
        report = mine.select([ROW_ID, "cluster_id", "duplicate_of", "similarity"])
        return StageOutput(kept=kept, removed=removed, counters=counters, scores=report)
