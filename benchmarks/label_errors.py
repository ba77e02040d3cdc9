"""Label errors: how many flipped labels the ``label_issues`` stage finds, and how fast.

    python benchmarks/label_errors.py                        # both sets, all features (slow: see below)
    python benchmarks/label_errors.py --features tfidf       # the stage's default only
    python benchmarks/label_errors.py --sets hard --rows 4000 --features tfidf,ensemble
    python benchmarks/label_errors.py --rounds 1,2          # one verdict, and a second taught without the first's issues

Sets, real labelled text from this machine:

``easy``  documents labelled by where they come from (``benchmarks/corpus.py``): Debian
          package descriptions, English man pages, README/NEWS files under
          ``/usr/share/doc``, Python docstrings, English and German fortunes; the same
          number per source, ``--rows`` in all (default 20,000).
``hard``  English fortunes labelled by their fortune file (people, computers, politics,
          wisdom, ...): about 40 overlapping categories of unequal size. Files with
          fewer than ``MIN_CLASS_ROWS`` fortunes are left out; ``--rows`` caps the set
          with a seeded random subset.

Noise. For each ``--rates`` value, that share of the rows (seeded) gets a label drawn
uniformly from the other classes. Uniform flips are the textbook case; real errors
favour similar classes, which the hard set's overlapping categories imitate.

Methods. ``tfidf`` is the stage itself in its default configuration (``--shards``
shards summarised, one decide, each shard applied), timed end to end: the "stage
seconds" target. ``embeddings`` and ``ensemble`` encode each set once (timed apart,
reported as rows per second, because on a CPU it dwarfs everything else) and then call
``label_model.out_of_sample_probs`` and ``label_model.find_issues``, the two functions
the stage's decide calls, on the rows in the stage's order (``row_id`` order), so the
verdicts are the ones the stage would give; their seconds exclude the encoding.

Metrics, against the flips: the cross-validated accuracy of the model against the
given (noisy) and the true labels; the rows cleanlab flags, their precision and
recall; precision at k (k = the number of flips, rows ranked by label quality
ascending, as the report is); cleanlab's estimate of the noise (per-class noise rates
weighted by class size). ``--rounds`` runs every method once per value of the stage's
``rounds`` (see ``pipeline/label_model.py``). Timings record CPU seconds and how many cores other processes
kept busy meanwhile, as in ``benchmarks/row_stages.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.corpus import extract_fortunes, fortune_files, load_corpus  # noqa: E402
from benchmarks.machine import CpuMeter, add_wait_idle_argument, wait_for_idle  # noqa: E402
from pipeline import label_model  # noqa: E402
from pipeline.schema import DatasetInfo  # noqa: E402
from pipeline.stages.base import stats_of  # noqa: E402
from pipeline.stages.label_issues import LabelIssuesConfig, LabelIssuesStage  # noqa: E402

EASY_SOURCES = ("debian-descriptions", "fortunes-de", "fortunes-en", "man-en", "python-docstrings", "usr-share-doc")
MIN_CLASS_ROWS = 30
"""Smaller classes are left out of the sets, so that no flip rate pushes a class under
the stage's ``folds`` and every row is judged by every method."""
FOLDS = 5
TARGET_PRECISION_AT_K = 0.85
TARGET_STAGE_SECONDS = 60.0
INFO = DatasetInfo("classification", ("text", "label"))

console = Console(width=None if sys.stdout.isatty() else 190)


@dataclass
class LabelledSet:
    name: str
    texts: list[str]
    labels: np.ndarray
    """True class index of each row, into ``classes``."""
    classes: list[str]


@dataclass
class Result:
    set: str
    rows: int
    classes: int
    rate: float
    features: str
    rounds: int
    acc_given: float
    acc_true: float
    flagged: int
    precision: float
    recall: float
    precision_at_k: float
    noise_estimate: float
    seconds: float
    cpu: float
    others: float | None

    @property
    def busy(self) -> float | None:
        return None if self.others is None or self.seconds <= 0 else self.others / self.seconds


def easy_set(rows: int, seed: int) -> LabelledSet:
    corpus = load_corpus(min_docs=0)
    sources = np.asarray(corpus.column("source").to_pylist())
    present = [s for s in EASY_SOURCES if (sources == s).sum() >= MIN_CLASS_ROWS]
    if len(present) < 3:
        sys.exit(f"error: the corpus has only {present} of {EASY_SOURCES}; see benchmarks/corpus.py")
    per_class = [rows // len(present) + (i < rows % len(present)) for i in range(len(present))]
    # The corpus is shuffled with a fixed seed, so each source's first documents are a sample.
    picked = np.concatenate([np.flatnonzero(sources == s)[:m] for s, m in zip(present, per_class, strict=True)])
    picked = picked[np.random.default_rng(seed).permutation(len(picked))]
    texts = corpus.column("text").take(pa.array(picked)).to_pylist()
    return LabelledSet("easy", texts, np.searchsorted(present, sources[picked]), present)


def hard_set(rows: int, seed: int) -> LabelledSet:
    texts, names = [], []
    for source, path in fortune_files():
        if source == "fortunes-en":
            for _, text in extract_fortunes((source, path)):
                texts.append(text)
                names.append(path.name)
    if not texts:
        sys.exit("error: no English fortunes under /usr/share/games/fortunes (apt-get install fortunes)")
    order = np.random.default_rng(seed).permutation(len(texts))[:rows]
    names_arr = np.asarray(names)[order]
    counts = Counter(names_arr.tolist())
    keep = np.asarray([counts[n] >= MIN_CLASS_ROWS for n in names_arr])
    classes = sorted(c for c, n in counts.items() if n >= MIN_CLASS_ROWS)
    return LabelledSet(
        "hard", [texts[i] for i in order[keep]], np.searchsorted(classes, names_arr[keep]), classes
    )


def flip(labels: np.ndarray, k: int, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a ``rate`` share moved to a uniformly drawn other class, and the mask
    of the moved rows."""
    rng = np.random.default_rng([seed, round(rate * 1000)])
    moved = np.zeros(len(labels), dtype=bool)
    moved[rng.choice(len(labels), round(rate * len(labels)), replace=False)] = True
    noisy = labels.copy()
    noisy[moved] = (labels[moved] + rng.integers(1, k, int(moved.sum()))) % k
    return noisy, moved


def score(
    data: LabelledSet, rate: float, features: str, rounds: int, noisy: np.ndarray, moved: np.ndarray,
    suggested: np.ndarray, quality: np.ndarray, is_issue: np.ndarray, noise_rate: np.ndarray, meter: CpuMeter,
) -> Result:
    flagged = int(is_issue.sum())
    hits = int((is_issue & moved).sum())
    worst = np.argsort(quality, kind="stable")[: int(moved.sum())]
    shares = np.bincount(noisy, minlength=len(data.classes)) / len(noisy)
    return Result(
        set=data.name, rows=len(noisy), classes=len(data.classes), rate=rate, features=features, rounds=rounds,
        acc_given=float(np.mean(suggested == noisy)), acc_true=float(np.mean(suggested == data.labels)),
        flagged=flagged, precision=hits / flagged if flagged else 0.0, recall=hits / max(int(moved.sum()), 1),
        precision_at_k=float(moved[worst].mean()), noise_estimate=float(np.nansum(noise_rate * shares)),
        seconds=meter.wall, cpu=meter.cpu, others=meter.others,
    )


def run_stage(
    data: LabelledSet, rate: float, noisy: np.ndarray, moved: np.ndarray, shards: int, rounds: int
) -> Result:
    """The stage itself, default configuration but ``rounds``, over ``shards`` shards."""
    n = len(noisy)
    table = pa.table({
        "row_id": [f"{data.name}-{i:07d}" for i in range(n)],  # row_id order is data order
        "text": data.texts,
        "label": [data.classes[c] for c in noisy],
        "changed_by": [""] * n,
    })
    bounds = np.linspace(0, n, shards + 1).astype(int)
    parts = [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    stage = LabelIssuesStage(LabelIssuesConfig(rounds=rounds), INFO)
    with CpuMeter() as meter:
        state = stage.decide([stage.summarize(p) for p in parts])
        kept = sum(stage.apply(p, state).kept.num_rows for p in parts)
    assert kept == n, "policy flag keeps every row"
    stats = stats_of(state)
    noise_rate = np.array([c["noise_rate"] for c in stats["classes"]], dtype=float)
    suggested = np.searchsorted(data.classes, state.column("suggested_label").to_pylist())
    return score(
        data, rate, "tfidf", rounds, noisy, moved, suggested, state.column("label_quality").to_numpy(),
        state.column("is_issue").to_numpy(zero_copy_only=False), noise_rate, meter,
    )


def run_model(
    data: LabelledSet, rate: float, features: str, rounds: int, noisy: np.ndarray, moved: np.ndarray,
    vectors: np.ndarray,
) -> Result:
    """``out_of_sample_probs`` + ``find_issues`` with the set's embeddings at hand."""
    with CpuMeter() as meter:
        probs = label_model.out_of_sample_probs(
            data.texts, noisy, features=features, folds=FOLDS, seed=0, embeddings=vectors, rounds=rounds
        )
        found = label_model.find_issues(noisy, probs)
    return score(data, rate, features, rounds, noisy, moved, found.suggested, found.quality, found.is_issue,
                 found.noise_rate, meter)


def render(results: list[Result], notes: list[str]) -> None:
    table = Table(title="label_issues: flipped labels found (cleanlab, 5-fold out-of-sample probabilities)")
    for name, justify in [
        ("set", "left"), ("rows", "right"), ("classes", "right"), ("flipped", "right"), ("features", "left"), ("rounds", "right"),
        ("CV acc\ngiven", "right"), ("CV acc\ntrue", "right"), ("noise\nestimate", "right"),
        ("flagged", "right"), ("precision", "right"), ("recall", "right"), ("P@k", "right"),
        ("seconds", "right"), ("CPU s", "right"), ("busy\nelsewhere", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    previous = None
    for r in results:
        if previous is not None and previous != (r.set, r.rate):
            table.add_section()
        previous = (r.set, r.rate)
        busy = "?" if r.busy is None else f"{r.busy:.1f} cores"
        table.add_row(
            r.set, f"{r.rows:,}", str(r.classes), f"{r.rate:.0%}", r.features, str(r.rounds),
            f"{r.acc_given:.3f}", f"{r.acc_true:.3f}", f"{r.noise_estimate:.1%}",
            f"{r.flagged:,}", f"{r.precision:.3f}", f"{r.recall:.3f}", f"{r.precision_at_k:.3f}",
            f"{r.seconds:.1f}", f"{r.cpu:.1f}", busy,
        )
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(f"[{i}] {note}")


def verdicts(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        if r.set == "easy" and r.features == "tfidf" and r.rate == 0.1 and r.rounds == 1:
            ok = r.precision_at_k >= TARGET_PRECISION_AT_K
            lines.append(f"{'PASS' if ok else 'MISS'}  easy, 10% flips, tfidf: P@k {r.precision_at_k:.3f} "
                         f"(target >= {TARGET_PRECISION_AT_K})")
        if r.features == "tfidf" and r.rows >= 20_000 and r.rounds == 1:
            ok = r.seconds < TARGET_STAGE_SECONDS
            lines.append(f"{'PASS' if ok else 'MISS'}  stage on {r.rows:,} rows ({r.set}, {r.rate:.0%}), tfidf: "
                         f"{r.seconds:.1f} s (target < {TARGET_STAGE_SECONDS:.0f} s; "
                         f"{'?' if r.busy is None else f'{r.busy:.1f}'} cores busy elsewhere)")
    by_key = {(r.set, r.rate, r.features, r.rounds): r for r in results}
    for (name, rate, features, rounds), r in by_key.items():
        tfidf = by_key.get((name, rate, "tfidf", rounds))
        if name == "hard" and features == "ensemble" and tfidf is not None:
            ok = r.precision_at_k > tfidf.precision_at_k
            lines.append(f"{'PASS' if ok else 'MISS'}  hard, {rate:.0%} flips, {rounds} round(s): ensemble P@k {r.precision_at_k:.3f} "
                         f"vs tfidf {tfidf.precision_at_k:.3f} (target: ensemble higher)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="easy,hard", help="comma-separated: easy, hard")
    parser.add_argument("--features", default="tfidf,embeddings,ensemble", help="comma-separated feature options")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per set at most (default 20,000)")
    parser.add_argument("--rates", default="0.1,0.2", help="comma-separated shares of flipped labels")
    parser.add_argument("--rounds", default="1", help="comma-separated values of the stage's rounds (default 1)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    add_wait_idle_argument(parser, 0, "before each timing")
    args = parser.parse_args(argv)
    features = args.features.split(",")
    unknown = set(features) - set(label_model.FEATURES)
    if unknown:
        parser.error(f"unknown features {sorted(unknown)}; choose from {label_model.FEATURES}")
    builders = {"easy": easy_set, "hard": hard_set}
    results: list[Result] = []
    notes = [
        "tfidf: the stage end to end (summarize, decide, apply); embeddings, ensemble: the stage's model "
        "functions, seconds without encoding the sentences (see the encoding lines).",
    ]
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        data = builders[name](args.rows, args.seed)
        sizes = np.bincount(data.labels)
        console.print(f"{name}: {len(data.texts):,} rows, {len(data.classes)} classes "
                      f"({sizes.min():,} to {sizes.max():,} rows), read in {time.perf_counter() - t0:.1f}s")
        vectors = None
        if {"embeddings", "ensemble"} & set(features):
            if args.wait_idle:
                wait_for_idle(args.wait_idle, console.print)
            with CpuMeter() as meter:
                vectors = label_model.sentence_embeddings(data.texts)
            busy = "?" if meter.others is None else f"{meter.others / meter.wall:.1f}"
            notes.append(f"{name}: encoding {len(data.texts):,} rows with MiniLM took {meter.wall:.1f} s "
                         f"({len(data.texts) / meter.wall:.1f} rows/s, {meter.cpu:.1f} CPU s, "
                         f"{busy} cores busy elsewhere), model load included")
        for rate in (float(r) for r in args.rates.split(",")):
            noisy, moved = flip(data.labels, len(data.classes), rate, args.seed)
            for f in features:
                for rounds in (int(r) for r in args.rounds.split(",")):
                    console.print(f"  {name}, {rate:.0%} flipped, {f}, {rounds} round(s) ...")
                    if args.wait_idle:
                        wait_for_idle(args.wait_idle, console.print)
                    if f == "tfidf":
                        results.append(run_stage(data, rate, noisy, moved, args.shards, rounds))
                    else:
                        results.append(run_model(data, rate, f, rounds, noisy, moved, vectors))
    render(results, notes)
    for line in verdicts(results):
        console.print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
