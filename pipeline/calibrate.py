"""``python -m pipeline dedup-calibrate``: what the near-dedup settings find on your data.

LSH trades candidates (verification time) against missed pairs, and the right bands
depend on the data. Calibration measures it instead of guessing: on a sample of the
dataset, a permissive sweep (bands tuned for a low similarity) collects nearly every
pair above the threshold and verifies it on exact Jaccard; that set is the reference.
Then each banding (the current one and those tuned for other thresholds) is scored:
how many candidates it makes, how many reference pairs it recovers (recall), and, with
``verify: estimate``, how many of the pairs it reports are true (precision; exact
verification is precise by construction). The recommendation is the cheapest banding
whose recall reaches the target.

The sample is read from the raw inputs, before the other stages: exact copies are
still in it (they count as pairs at Jaccard 1), and normalisation is the shingler's
own (case, punctuation and whitespace folded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.config import PipelineConfig
from pipeline.dedup import minhash
from pipeline.dedup.signatures import key_texts, minhash_columns, shingles_and_signatures
from pipeline.errors import PipelineError
from pipeline.readers import Reader
from pipeline.stages.near_dedup import NearDedupConfig

REFERENCE_LSH_THRESHOLD = 0.5
"""Bands of the reference sweep: pairs at Jaccard 0.8 are missed with probability
well below 1e-6 at this setting (and at 0.5 still about 1e-3)."""


@dataclass
class BandingScore:
    label: str
    bands: int
    rows: int
    candidates: int
    found: int
    reported: int
    true_reported: int
    seconds: float

    def recall(self, reference: int) -> float:
        return self.found / reference if reference else 1.0

    @property
    def precision(self) -> float:
        return self.true_reported / self.reported if self.reported else 1.0


@dataclass
class Calibration:
    dataset: str
    rows: int
    threshold: float
    reference_pairs: int
    current: BandingScore
    options: list[BandingScore]
    recommended: BandingScore | None


def _pair_keys(pairs: np.ndarray, n: int) -> np.ndarray:
    """One int64 per unordered pair, for set operations."""
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    return lo.astype(np.int64) * n + hi


def _score(
    label: str, sh: minhash.Shingles, sigs: np.ndarray, bands: int, rows: int, cfg: NearDedupConfig, reference: np.ndarray
) -> BandingScore:
    started = time.perf_counter()
    n = len(sh)
    cand = minhash.candidate_pairs(sigs, bands, rows)
    keys = _pair_keys(cand, n)
    found = int(np.isin(reference, keys).sum())
    if cfg.verify == "estimate":
        reported = cand[minhash.estimate_jaccard(sigs, cand) >= cfg.threshold]
    else:
        reported = cand[minhash.exact_jaccard(sh, cand) >= cfg.threshold]
    true_reported = int(np.isin(_pair_keys(reported, n), reference).sum())
    return BandingScore(label, bands, rows, len(cand), found, len(reported), true_reported, time.perf_counter() - started)


def calibrate(config: PipelineConfig, sample_rows: int = 50_000, target_recall: float = 0.99) -> list[Calibration]:
    """Score the near-dedup banding on up to ``sample_rows`` rows of each dataset."""
    results = []
    for dataset in config.datasets:
        cfg = config.stages_for(dataset).near_dedup
        reader = Reader(dataset, config.shard_rows)
        parts, total = [], 0
        for shard in reader.shards():
            shard = shard.slice(0, sample_rows - total)
            texts = key_texts(shard, reader.info, cfg.key)
            parts.append(pa.table(minhash_columns(texts, cfg.shingles, cfg.ngram, cfg.num_perm, cfg.seed, cfg.scheme)))
            total += shard.num_rows
            if total >= sample_rows:
                break
        if not total:
            raise PipelineError(f"dataset {dataset.name}: the inputs hold no rows ({', '.join(dataset.inputs)})")
        summary = pa.concat_tables(parts).combine_chunks()
        sh, sigs = shingles_and_signatures(summary, cfg.num_perm)
        ref_bands, ref_rows = minhash.optimal_bands(REFERENCE_LSH_THRESHOLD, cfg.num_perm)
        ref = minhash.candidate_pairs(sigs, ref_bands, ref_rows, max_bucket_pairs=10**9)
        reference = minhash.unique(_pair_keys(ref[minhash.exact_jaccard(sh, ref) >= cfg.threshold], len(sh)))

        lsh = cfg.lsh_threshold if cfg.lsh_threshold is not None else max(cfg.threshold - minhash.LSH_MARGIN, 0.05)
        bands, rows = (cfg.bands, cfg.rows) if cfg.bands else minhash.optimal_bands(lsh, cfg.num_perm)
        current = _score("current", sh, sigs, bands, rows, cfg, reference)
        options = []
        for tuned in np.arange(0.5, cfg.threshold + 1e-9, 0.05):
            b, r = minhash.optimal_bands(float(tuned), cfg.num_perm)
            options.append(_score(f"tuned for {tuned:.2f}", sh, sigs, b, r, cfg, reference))
        good = [o for o in options if o.recall(len(reference)) >= target_recall and o.precision >= 0.99]
        recommended = min(good, key=lambda o: o.candidates) if good else None
        results.append(Calibration(dataset.name, len(sh), cfg.threshold, len(reference), current, options, recommended))
    return results
