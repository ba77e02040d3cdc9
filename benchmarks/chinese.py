"""Chinese text: near-duplicate accuracy and speed, and the whole default chain.

    python benchmarks/chinese.py                     # 12,000 originals + planted copies
    python benchmarks/chinese.py --originals 8000 --repeat 3 --skip-chain

Data, from Debian packages only (``fortunes-zh``, ``manpages-zh``; nothing is
downloaded):

* every record of ``fortunes-zh`` (``chinese``, ``tang300``, ``song100``; records split
  on ``%`` lines, ANSI colour codes stripped for the originals) and every paragraph of
  the ``zh_CN`` manuals (troff stripped by ``benchmarks/corpus.py``) that is written
  mostly in CJK script and holds at least ``MIN_CJK`` CJK characters; exact repeats
  dropped;
* sentence-shuffled combinations of them (3-6 sentences drawn from any of the texts,
  split after 。！？；) until there are ``--originals`` documents;
* planted copies: ``--dup-share`` of the originals get a character-edited copy (each
  character replaced, deleted, inserted or swapped with probability drawn from
  [0, ``MAX_EDIT_RATE``], at least one edit; ``EXACT_SHARE`` of them verbatim), and
  ``--trad-share`` others get a Traditional copy (OpenCC ``s2t``, unedited). All shuffled.

Ground truth: exact Jaccard of the character 5-gram sets of the dedup key (the text
with full-width forms folded and Traditional characters folded to Simplified,
:func:`pipeline.text.fold.fold_key`), which is what the Chinese default compares. True
pairs (J >= 0.8) are the planted pairs and every pair a low-threshold LSH sweep
(k-permutation MinHash, another seed, banding for J = 0.5) proposes, all verified.
A true pair is found when one of its rows is removed; precision counts each removed
row with the row kept in its place (``duplicate_of``) as in ``benchmarks/dedup.py``.
Traditional recall counts the planted Traditional pairs found, whatever their J.

Systems: the ``near_dedup`` stage (summarize per shard, decide, apply) with its
defaults; with the defaults before Chinese support (``shingles: word``,
``script_fold: none``) for comparison; and, for the speed ratio, with its defaults on
the same number of English documents with 10% near copies
(``benchmarks/dedup.py``'s dataset from ``benchmarks/corpus.py``), timed in this run.
Throughput is rows per wall second and per CPU second of this process, best of
``--repeat`` each (on a shared machine the CPU figure is the steadier one).

The chain: the same Chinese rows (fortunes with their ANSI codes, as Debian ships
them) written as JSONL and run through ``python -m pipeline run`` with no config (a
fresh working directory, so no ``pipeline.yaml`` is found); docs/s is rows over the
wall time of that command, start-up and publishing included, and over the seconds the
stages themselves took; the rows each stage removed, by reason, come from the
version's ``reports/stages.parquet``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.corpus import load_corpus, troff_paragraphs
from benchmarks.dedup import make_dataset
from pipeline.dedup import minhash
from pipeline.schema import CHANGED_BY, ROW_ID, DatasetInfo
from pipeline.text.fold import cjk_rows, fold_key

FORTUNES = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("chinese", "tang300", "song100")
MAN_ZH_CN = Path("/usr/share/man/zh_CN")
MIN_CJK = 20
NGRAM = 5
THRESHOLD = 0.8
EXACT_SHARE = 0.1
MAX_EDIT_RATE = 0.05
"""Edited copies hit each character with a probability drawn from [0, this]: each
edit changes about 5 of the 5-character shingles, so J spans about 0.5 to 1.0."""
EDIT_OPS = ("replace", "delete", "insert", "swap")
TRUTH_LSH_THRESHOLD = 0.5
TRUTH_SEED = 7919
SHARD_ROWS = 50_000
TARGET_PRECISION, TARGET_RECALL, TARGET_TRAD_RECALL, TARGET_SPEED_RATIO = 0.99, 0.97, 0.95, 0.5
INFO = DatasetInfo("text", ("text",))
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SENTENCE_END = re.compile(r"(?<=[。！？；])")


# ------------------------------------------------------------------------------ data


def _cjk_count(text: str) -> int:
    return len(re.findall(r"[\u3400-\u9fff\uf900-\ufaff]", text))


def fortune_records() -> list[tuple[str, str]]:
    """(as shipped, ANSI stripped) of every fortunes-zh record."""
    out = []
    for name in FORTUNE_FILES:
        path = FORTUNES / name
        if not path.is_file():
            continue
        for record in re.split(r"\n%\n", path.read_text(encoding="utf-8", errors="replace")):
            raw = record.strip("\n")
            clean = re.sub(r"[ \t]+\n", "\n", ANSI.sub("", raw)).strip()
            if clean:
                out.append((raw, clean))
    return out


def man_paragraphs() -> list[str]:
    """Paragraphs of the zh_CN manuals, troff stripped."""
    out = []
    for path in sorted(MAN_ZH_CN.glob("man*/*.gz")):
        try:
            source = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        except (OSError, EOFError):
            continue
        out.extend(troff_paragraphs(source))
    return out


@dataclass
class Dataset:
    texts: list[str]
    raw: list[str]
    """The text as the chain reads it (fortunes with their ANSI codes)."""
    copy_of: np.ndarray
    """Index of the document a planted copy was made from, or -1."""
    traditional: np.ndarray
    """Planted copies that are the Traditional form of their original."""
    real: int


def build(originals: int, dup_share: float, trad_share: float, seed: int) -> Dataset:
    import opencc

    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    texts: list[str] = []
    raw: list[str] = []
    sources = fortune_records() + [(p, p) for p in man_paragraphs()]
    chinese = cjk_rows(pa.array([clean for _, clean in sources], pa.string()))
    for (shipped, clean), cjk in zip(sources, chinese.tolist()):
        if clean in seen or not cjk or _cjk_count(clean) < MIN_CJK:
            continue
        seen.add(clean)
        texts.append(clean)
        raw.append(shipped)
    if not texts:
        sys.exit("error: no Chinese text found: install the Debian packages fortunes-zh and manpages-zh")
    real = len(texts)
    sentences = [s.strip() for t in texts for s in SENTENCE_END.split(t) if _cjk_count(s) >= 4]
    while len(texts) < originals:
        doc = "".join(sentences[i] for i in rng.choice(len(sentences), rng.integers(3, 7), replace=False))
        if doc not in seen:
            seen.add(doc)
            texts.append(doc)
            raw.append(doc)
    if len(texts) > originals:
        keep = np.sort(rng.choice(len(texts), originals, replace=False))
        real = int((keep < real).sum())
        texts = [texts[i] for i in keep.tolist()]
        raw = [raw[i] for i in keep.tolist()]
    chars = np.array(list("".join(texts[i] for i in rng.choice(len(texts), 500).tolist())), dtype=object)
    n_edit, n_trad = round(dup_share * originals), round(trad_share * originals)
    sources = rng.choice(originals, n_edit + n_trad, replace=False)
    to_trad = opencc.OpenCC("s2t")
    copies, copy_of, trad = [], [], []
    for k, i in enumerate(sources.tolist()):
        if k >= n_edit:
            copies.append(to_trad.convert(texts[i]))
        elif rng.random() < EXACT_SHARE:
            copies.append(texts[i])
        else:
            copies.append(edit_chars(texts[i], rng.uniform(0.0, MAX_EDIT_RATE), rng, chars))
        copy_of.append(i)
        trad.append(k >= n_edit)
    all_texts, all_raw = texts + copies, raw + copies
    total = len(all_texts)
    copy_all = np.full(total, -1, np.int64)
    copy_all[originals:] = copy_of
    trad_all = np.zeros(total, bool)
    trad_all[originals:] = trad
    order = rng.permutation(total)
    new_pos = np.empty(total, np.int64)
    new_pos[order] = np.arange(total)
    copy_all = copy_all[order]
    copy_all[copy_all >= 0] = new_pos[copy_all[copy_all >= 0]]
    return Dataset([all_texts[i] for i in order], [all_raw[i] for i in order], copy_all, trad_all[order], real)


def edit_chars(text: str, rate: float, rng: np.random.Generator, vocab: np.ndarray) -> str:
    """``text`` with about ``rate * len(text)`` (at least one) character edits at
    distinct positions: replace, delete, insert a vocabulary character, or swap."""
    chars = list(text)
    n_edits = int(min(len(chars), max(1, rng.binomial(len(chars), rate))))
    for p in np.sort(rng.choice(len(chars), n_edits, replace=False))[::-1].tolist():
        op = EDIT_OPS[int(rng.integers(0, len(EDIT_OPS)))]
        fill = vocab[int(rng.integers(0, len(vocab)))]
        if op == "swap" and p + 1 < len(chars):
            chars[p], chars[p + 1] = chars[p + 1], chars[p]
        elif op == "delete" and len(chars) > 1:
            del chars[p]
        elif op == "insert":
            chars.insert(p, fill)
        else:
            chars[p] = fill
    return "".join(chars)


# ------------------------------------------------------------------- truth and runs


def pair_codes(pairs: np.ndarray, n: int) -> np.ndarray:
    pairs = np.sort(np.asarray(pairs, np.int64).reshape(-1, 2), axis=1)
    return pairs[:, 0] * n + pairs[:, 1]


def truth_pairs(texts: pa.Array, planted: np.ndarray) -> tuple[minhash.Shingles, np.ndarray]:
    """The truth's shingles (character 5-grams of the folded key) and the codes of
    the pairs with J >= THRESHOLD."""
    sh = minhash.shingle(fold_key(texts, "t2s"), NGRAM, "char")
    sigs = minhash.signatures(sh, 128, seed=TRUTH_SEED, scheme="kperm")
    bands, rows = minhash.optimal_bands(TRUTH_LSH_THRESHOLD, 128)
    cand = minhash.candidate_pairs(sigs, bands, rows, max_bucket_pairs=1 << 62)
    n = len(sh)
    codes = np.union1d(pair_codes(cand, n), pair_codes(planted, n))
    jac = minhash.exact_jaccard(sh, np.stack([codes // n, codes % n], axis=1))
    return sh, codes[jac >= THRESHOLD - 1e-12]


@dataclass
class Run:
    label: str
    docs_per_s: float
    """Rows per wall second, best of the repeats."""
    docs_per_cpu_s: float
    """Rows per CPU second of this process, best of the repeats: steadier than wall
    time on a machine other work shares."""
    removed: np.ndarray
    reported: np.ndarray
    """(removed row, the row kept in its place) pairs."""


def run_stage(label: str, texts: pa.Array, repeat: int, **config: object) -> Run:
    """The near_dedup stage over shards: summarize, decide, apply; best wall of ``repeat``."""
    from pipeline.stages.near_dedup import NearDedupConfig, NearDedupStage

    stage = NearDedupStage(NearDedupConfig(**config), INFO)
    ids = pa.array([f"r{i}" for i in range(len(texts))])
    table = pa.table({ROW_ID: ids, "text": texts, CHANGED_BY: pa.array([""] * len(texts))})
    shards = [table.slice(i, SHARD_ROWS) for i in range(0, table.num_rows, SHARD_ROWS)]
    stage.decide([stage.summarize(table.slice(0, 200))])  # compiled kernels and OpenCC loaded before timing
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        state = stage.decide([stage.summarize(s) for s in shards])
        outputs = [stage.apply(s, state) for s in shards]
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    removed_tables = [o.removed for o in outputs if o.removed is not None and o.removed.num_rows]
    removed = np.zeros(len(texts), bool)
    pairs = np.zeros((0, 2), np.int64)
    dropped = state.filter(pc.is_valid(state.column("duplicate_of")))
    if dropped.num_rows:
        a = pc.index_in(dropped.column(ROW_ID), value_set=ids).to_numpy(zero_copy_only=False)
        b = pc.index_in(dropped.column("duplicate_of"), value_set=ids).to_numpy(zero_copy_only=False)
        pairs = np.stack([a, b], axis=1)
        removed[a] = True
    assert sum(t.num_rows for t in removed_tables) == int(removed.sum())
    return Run(label, len(texts) / best, len(texts) / best_cpu, removed, pairs)


def accuracy(run: Run, n: int, truth: np.ndarray, trad_pairs: np.ndarray) -> tuple[float, float, float]:
    """(precision member -> survivor, recall over true pairs, recall over Traditional pairs)."""
    reported = pair_codes(run.reported, n)
    precision = float(np.isin(reported, truth).mean()) if len(reported) else 1.0
    a, b = truth // n, truth % n
    recall = float((run.removed[a] | run.removed[b]).mean()) if len(truth) else 1.0
    trad = float((run.removed[trad_pairs[:, 0]] | run.removed[trad_pairs[:, 1]]).mean()) if len(trad_pairs) else 1.0
    return precision, recall, trad


# ------------------------------------------------------------------------- the chain


def run_chain(data: Dataset) -> str:
    """``python -m pipeline run`` with no config on the Chinese rows; one summary line
    per stage."""
    with tempfile.TemporaryDirectory(prefix="chinese-bench-") as tmp:
        path = Path(tmp) / "zh.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for text in data.raw:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "pipeline", "run", "--input", str(path), "--output", str(Path(tmp) / "out"), "-q"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = "\n    ".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            return f"  the run failed (exit {proc.returncode}) after {wall:.1f} s:\n    {tail}"
        version = next(Path(tmp, "out").glob("*/v*"))
        stages = pq.read_table(version / "reports" / "stages.parquet").to_pylist()
        kept = sum(pq.read_metadata(f).num_rows for f in version.glob("data/*.parquet"))
        in_stages = sum(s.get("seconds", 0) for s in stages)
        lines = [
            (
                f"  {len(data.raw):,} rows in {wall:.1f} s wall, start-up and publishing included: "
                f"{len(data.raw) / wall:,.0f} docs/s; {in_stages:.1f} s in the stages: {len(data.raw) / in_stages:,.0f} docs/s"
            ),
            f"  {kept:,} rows published",
        ]
        for s in stages:
            reasons = s.get("reasons")
            if isinstance(reasons, str):
                reasons = json.loads(reasons or "{}")
            shown = ", ".join(f"{k} {v:,}" for k, v in (reasons or {}).items()) if reasons else ""
            lines.append(
                f"  {s['stage']:<14} {s.get('rows_in', 0):>7,} -> {s.get('rows_out', 0):>7,}  {s.get('seconds', 0):6.2f} s  {shown}"
            )
        return "\n".join(lines)


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--originals", type=int, default=12000)
    parser.add_argument("--dup-share", type=float, default=0.1)
    parser.add_argument("--trad-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-chain", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    data = build(args.originals, args.dup_share, args.trad_share, args.seed)
    n = len(data.texts)
    texts = pa.array(data.texts, pa.string())
    planted = np.flatnonzero(data.copy_of >= 0)
    planted_pairs = np.stack([data.copy_of[planted], planted], axis=1)
    trad_pairs = planted_pairs[data.traditional[planted]]
    sh, truth = truth_pairs(texts, planted_pairs)
    chars = int(pc.sum(pc.utf8_length(texts)).as_py())
    print(
        f"Chinese corpus: {n:,} rows ({data.real:,} real fortunes-zh records and zh_CN man paragraphs, "
        f"{args.originals - data.real:,} sentence-shuffled combinations, {len(planted) - len(trad_pairs):,} "
        f"character-edited copies, {len(trad_pairs):,} Traditional copies), {chars / n:.0f} characters a row; "
        f"built in {time.perf_counter() - t0:.1f} s"
    )
    jac = minhash.exact_jaccard(sh, planted_pairs[~data.traditional[planted]])
    print(
        f"Truth: {len(truth):,} pairs with character 5-gram Jaccard >= {THRESHOLD} of the folded key; planted edited "
        f"copies' J p5 {np.percentile(jac, 5):.2f}, median {np.median(jac):.2f}, {int((jac >= THRESHOLD).sum()):,} of "
        f"{len(jac):,} at >= {THRESHOLD}"
    )

    english = make_dataset(load_corpus(), n, 0.1, args.seed)
    en_texts = english.texts.cast(pa.string())
    runs = [
        run_stage("near_dedup defaults, Chinese", texts, args.repeat),
        run_stage("old defaults (word, no fold), Chinese", texts, args.repeat, shingles="word", script_fold="none"),
    ]
    en = run_stage("near_dedup defaults, English", en_texts, args.repeat)
    en_chars = int(pc.sum(pc.utf8_length(en_texts)).as_py())
    print(f"\n{'system':<40} {'rows/s':>9} {'rows/CPU s':>10} {'precision':>9} {'recall':>7} {'trad. recall':>12}")
    results = {}
    for run in runs:
        p, r, t = accuracy(run, n, truth, trad_pairs)
        results[run.label] = (p, r, t, run)
        print(f"{run.label:<40} {run.docs_per_s:>9,.0f} {run.docs_per_cpu_s:>10,.0f} {p:>9.4f} {r:>7.4f} {t:>12.4f}")
    print(
        f"{en.label:<40} {en.docs_per_s:>9,.0f} {en.docs_per_cpu_s:>10,.0f}   (English: {n:,} rows of "
        f"benchmarks/dedup.py's dataset, {en_chars / n:.0f} characters a row)"
    )
    p, r, t, zh = results[runs[0].label]
    speed, ratio, cpu_ratio = zh.docs_per_s, zh.docs_per_s / en.docs_per_s, zh.docs_per_cpu_s / en.docs_per_cpu_s

    def verdict(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    print(
        f"\nPrecision >= {TARGET_PRECISION} and recall >= {TARGET_RECALL} at character 5-gram J >= {THRESHOLD}: "
        f"{verdict(p >= TARGET_PRECISION and r >= TARGET_RECALL)} - precision {p:.4f}, recall {r:.4f}"
    )
    print(f"Recall on Traditional copies >= {TARGET_TRAD_RECALL}: {verdict(t >= TARGET_TRAD_RECALL)} - {t:.4f}")
    print(
        f"Chinese near-dedup throughput >= {TARGET_SPEED_RATIO}x English (same run, same row count): "
        f"{verdict(ratio >= TARGET_SPEED_RATIO)} - {ratio:.2f}x ({speed:,.0f} vs {en.docs_per_s:,.0f} rows/s; "
        f"{cpu_ratio:.2f}x per CPU second; per character {speed * chars / (en.docs_per_s * en_chars):.2f}x)"
    )
    if not args.skip_chain:
        print("\nWhole default chain on the Chinese rows (python -m pipeline run, no config):")
        print(run_chain(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
