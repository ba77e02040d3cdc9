"""Decontamination: recall on planted evaluation items, clean rows lost, and speed of the
``decontaminate`` stage, against a whitespace n-gram baseline, on real English and
Chinese text.

    python benchmarks/decontamination.py                    # 10,000 eval rows, 40,000 training rows
    python benchmarks/decontamination.py --train 100000 --threads 2

Data (all local, :mod:`benchmarks.corpus` and Debian packages). Evaluation rows, about
60/40: English fortune cookies and paragraphs of ``/usr/share/common-licenses``, and
Chinese paragraphs of the ``manpages-zh`` pages in Simplified and Traditional script.
Clean training rows, from other sources so that they share no text with an evaluation
row by construction (as far as real text allows: man pages quote licences): English
man-page paragraphs (the corpus) and the ``fortunes-zh`` cookies (colour codes removed). ``--planted`` training rows are made from evaluation rows that
have at least 2n tokens, one way each, in turn:

``whole``      the item as the row, after an instruction of its own
``substring``  a contiguous span of the item (16 words, or 24 CJK characters) inside a
               clean row, no paraphrase
``rewrapped``  the item cut into lines of 10-30 characters (Chinese: 6-12), as a PDF
               copy or a chat export leaves it
``case_punct`` the item upper-cased (or title-cased), its punctuation replaced
               (Chinese full-width marks become ASCII, or are dropped)
``mixed``      a span, re-wrapped, re-cased and re-punctuated, inside a clean row

Recall is the share of planted rows removed; the clean-row loss is the share of clean
training rows removed (each is printed with what it matched, to judge by eye: some
corpus texts do share a sentence with an evaluation row, e.g. a licence line quoted in a
man page).

Baseline: the usual whitespace n-gram check (datatrove / open-r1 style): lower-case,
split on whitespace, a Python set of the evaluation rows' word n-grams (n = 8), a row is
contaminated when one of its n-grams is in the set. Speed is training rows per second of
the stage's ``apply`` over shards of ``--shard`` rows, on ``--threads`` threads (the flow
maps shards over a thread pool the same way), with the index built by ``decide`` once
beforehand (its time printed too); the baseline runs in one thread (it holds the GIL).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.corpus import load_corpus, troff_paragraphs
from pipeline.schema import DatasetInfo
from pipeline.stages.base import stats_of
from pipeline.stages.decontaminate import DecontaminateConfig, DecontaminateStage
from pipeline.text import ngrams
from pipeline.text.script import is_cjk

FORTUNES = Path("/usr/share/games/fortunes")
LICENSES = Path("/usr/share/common-licenses")
MAN = Path("/usr/share/man")
ESCAPES = re.compile(r"\x1b\[[0-9;]*m")
CJK = re.compile(r"[\u3400-\u9fff]")
WAYS = ("whole", "substring", "rewrapped", "case_punct", "mixed")
INFO = DatasetInfo("text", ("text",))


def cookies(path: Path) -> list[str]:
    text = ESCAPES.sub("", path.read_text(encoding="utf-8", errors="replace"))
    return [c.strip() for c in re.split(r"^%\s*$", text, flags=re.MULTILINE) if c.strip()]


def english_eval() -> list[str]:
    """Fortune cookies of 12 words or more, and licence paragraphs of 20 words or more."""
    out = []
    for path in sorted(FORTUNES.iterdir()):
        if path.is_file() and not path.suffix and path.name not in ("chinese", "art", "ascii-art"):
            out += [c for c in cookies(path) if len(c.split()) >= 12]
    for path in sorted(LICENSES.iterdir()):
        if path.is_file():
            paragraphs = re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace"))
            out += [p.strip() for p in paragraphs if len(p.split()) >= 20]
    return out


def man_pages(locale: str) -> list[str]:
    """Paragraphs of the ``manpages-zh`` pages of ``locale``, by the corpus's own
    paragraph rules (:func:`benchmarks.corpus.troff_paragraphs`)."""
    out = []
    for page in sorted((MAN / locale).glob("man*/*.gz")):
        with gzip.open(page, "rt", encoding="utf-8", errors="replace") as fh:
            out += troff_paragraphs(fh.read())
    return out


def chinese_eval() -> list[str]:
    """``manpages-zh`` paragraphs, Simplified and Traditional, with 24 CJK characters or more."""
    return [t for t in man_pages("zh_CN") + man_pages("zh_TW") if len(CJK.findall(t)) >= 24]


def clean_rows() -> list[str]:
    """Training rows that hold no evaluation row: English man-page paragraphs (corpus)
    and the ``fortunes-zh`` cookies (poems, sayings, Debian's code of conduct)."""
    corpus = load_corpus()
    english = corpus.filter(pc.equal(corpus.column("source"), "man-en")).column("text").to_pylist()
    path = FORTUNES / "chinese"
    chinese = [c for c in cookies(path) if len(CJK.findall(c)) >= 8] if path.exists() else []
    return english + chinese


def unique(texts: list[str]) -> list[str]:
    seen: set[str] = set()
    return [t for t in texts if not (t in seen or seen.add(t))]


# --- planting ---------------------------------------------------------------------------

ASCII_PUNCT = {"，": ",", "。": ".", "；": ";", "：": ":", "！": "!", "？": "?", "、": ",", "（": "(", "）": ")"}


def _units(text: str) -> list[str]:
    """Words, or CJK characters with the words between them: what a span is counted in."""
    return re.findall(r"[\u3400-\u9fff]|[^\s\u3400-\u9fff]+", text)


def _join(units: list[str], cjk: bool) -> str:
    return "".join(units) if cjk else " ".join(units)


def span(text: str, cjk: bool, rng: random.Random) -> str:
    units = _units(text)
    width = 24 if cjk else 16
    start = rng.randrange(0, max(1, len(units) - width))
    return _join(units[start : start + width], cjk)


def rewrap(text: str, cjk: bool, rng: random.Random) -> str:
    flat = " ".join(text.split())
    if cjk:
        lines, i = [], 0
        while i < len(flat):
            step = rng.randint(6, 12)
            lines.append(flat[i : i + step])
            i += step
        return "\n".join(lines)
    return "\n".join(textwrap.wrap(flat, width=rng.randint(10, 30)))


def recase_repunct(text: str, cjk: bool, rng: random.Random) -> str:
    if cjk:
        if rng.random() < 0.5:
            return "".join(ASCII_PUNCT.get(c, c) for c in text)
        return "".join(c for c in text if c not in ASCII_PUNCT)
    text = text.upper() if rng.random() < 0.5 else text.title()
    return re.sub(r"[,.;:!?]", lambda m: rng.choice([" -", ";", "", " ...", ","]), text)


def plant(item: str, cjk: bool, host: str, way: str, rng: random.Random) -> str:
    """A training row holding ``item`` (``cjk``: written in Chinese), made ``way``."""
    if way == "whole":
        return rng.choice(["Answer the following.\n\n", "Q: ", "Translate this:\n"]) + item
    if way == "substring":
        return f"{host}\n{span(item, cjk, rng)}\n{host[: len(host) // 2]}"
    if way == "rewrapped":
        return rewrap(item, cjk, rng)
    if way == "case_punct":
        return recase_repunct(item, cjk, rng)
    changed = rewrap(recase_repunct(span(item, cjk, rng), cjk, rng), cjk, rng)
    return f"{host[: len(host) // 2]} {changed} {host[len(host) // 2 :]}"


def shares_a_run(text: str, eval_row: str, cjk: bool) -> bool:
    """Whether ``text`` holds 2n consecutive normalised tokens of ``eval_row`` (n = 8
    words, 12 CJK characters)."""
    a, b = ngrams.token_strings(pa.array([text, eval_row]))
    width = 2 * (12 if cjk else 8)
    runs = {tuple(b[i : i + width]) for i in range(len(b) - width + 1)}
    return any(tuple(a[i : i + width]) in runs for i in range(len(a) - width + 1))


# --- the baseline -------------------------------------------------------------------------


def baseline_index(texts: list[str], n: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for t in texts:
        words = t.lower().split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return grams


def baseline_match(texts: list[str], grams: set[tuple[str, ...]], n: int) -> list[bool]:
    out = []
    for t in texts:
        words = t.lower().split()
        out.append(any(tuple(words[i : i + n]) in grams for i in range(len(words) - n + 1)))
    return out


# --- the run --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", type=int, default=10_000, help="evaluation rows")
    ap.add_argument("--train", type=int, default=40_000, help="clean training rows")
    ap.add_argument("--planted", type=int, default=1_000, help="training rows holding an evaluation item")
    ap.add_argument("--shard", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--script-fold", default="t2s", help="the stage's script_fold: t2s, tw2sp, hk2s or none")
    ap.add_argument("--show", type=int, default=4, help="clean rows removed to print, of each kind")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    t0 = time.perf_counter()
    english, chinese = unique(english_eval()), unique(chinese_eval())
    rng.shuffle(english)
    rng.shuffle(chinese)
    n_zh = min(len(chinese), args.eval * 4 // 10)
    eval_rows = english[: args.eval - n_zh] + chinese[:n_zh]
    held = set(eval_rows)
    pool = [t for t in unique(clean_rows()) if t not in held]
    rng.shuffle(pool)
    if len(pool) < args.train or len(eval_rows) < args.eval:
        print(f"error: this machine holds {len(eval_rows)} eval rows and {len(pool)} training rows", file=sys.stderr)
        return 2
    clean = pool[: args.train]
    eval_cjk = is_cjk(pa.array(eval_rows)).tolist()
    long_enough = [i for i, t in enumerate(eval_rows) if len(_units(t)) >= (24 if eval_cjk[i] else 16)]
    items = rng.sample(long_enough, args.planted)
    planted = [
        plant(eval_rows[e], eval_cjk[e], rng.choice(clean), WAYS[i % len(WAYS)], rng) for i, e in enumerate(items)
    ]
    rows = clean + planted
    is_planted = [False] * len(clean) + [True] * len(planted)
    order = list(range(len(rows)))
    rng.shuffle(order)
    rows = [rows[i] for i in order]
    is_planted = [is_planted[i] for i in order]
    ways = {}
    for j, i in enumerate(order):
        if i >= len(clean):
            ways[j] = WAYS[(i - len(clean)) % len(WAYS)]
    zh_eval = sum(eval_cjk)
    zh_train = int(is_cjk(pa.array(clean)).sum())
    print(f"data: {len(eval_rows):,} eval rows ({zh_eval:,} Chinese), {len(clean):,} clean training rows "
          f"({zh_train:,} Chinese), {len(planted):,} planted; built in {time.perf_counter() - t0:.1f}s")

    # the stage
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"decontamination-bench-{os.getpid()}.jsonl"
    pa_eval = pa.table({"id": [f"e{i}" for i in range(len(eval_rows))], "text": eval_rows})
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pa_eval.to_pylist()))
    try:
        cfg = DecontaminateConfig(
            enabled=True, own_splits=False, script_fold=args.script_fold, eval_sets=[{"name": "bench", "inputs": [str(tmp)]}]
        )
        stage = DecontaminateStage(cfg, INFO)
        t0 = time.perf_counter()
        state = stage.decide([])
        decide_s = time.perf_counter() - t0
    finally:
        tmp.unlink()
    stats = stats_of(state)
    ids = [f"t{i}" for i in range(len(rows))]
    table = pa.table({"row_id": ids, "text": rows, "changed_by": [""] * len(rows)})
    shards = [table.slice(i, args.shard) for i in range(0, table.num_rows, args.shard)]
    stage.apply(shards[0].slice(0, 100), state)  # compile and warm up
    timings, cpu = {}, {}
    for threads in sorted({1, args.threads}):
        t0, c0 = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(threads) as pool_:
            outputs = list(pool_.map(lambda s: stage.apply(s, state), shards))
        timings[threads], cpu[threads] = time.perf_counter() - t0, time.process_time() - c0
    removed = pa.concat_tables([o.removed for o in outputs])
    gone = set(removed.column("row_id").to_pylist())
    details = dict(zip(removed.column("row_id").to_pylist(), removed.column("detail").to_pylist()))

    t0 = time.perf_counter()
    grams = baseline_index(eval_rows, 8)
    base_index_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    base_hit = baseline_match(rows, grams, 8)
    base_s, base_cpu = time.perf_counter() - t0, time.process_time() - c0

    def figures(hit: list[bool]) -> tuple[float, dict[str, float], float]:
        recall = sum(h for h, p in zip(hit, is_planted) if p) / len(planted)
        per_way = {w: 0.0 for w in WAYS}
        for w in WAYS:
            rows_w = [j for j, way in ways.items() if way == w]
            per_way[w] = sum(hit[j] for j in rows_w) / len(rows_w)
        lost = sum(h for h, p in zip(hit, is_planted) if not p) / len(clean)
        return recall, per_way, lost

    ours = [f"t{j}" in gone for j in range(len(rows))]
    recall, per_way, lost = figures(ours)
    b_recall, b_way, b_lost = figures(base_hit)
    zh = [eval_cjk[e] for e in items]
    print(f"index: {stats['ngrams']:,} n-grams of lengths {stats['ngram_lengths']}, "
          f"{stats['eval_sets']['bench']['too_short']} eval rows too short; decide {decide_s:.2f}s")
    print(f"planted: {sum(zh)} from Chinese items, {len(zh) - sum(zh)} from English items")
    print()
    print(f"{'':28}{'stage':>12}{'baseline':>12}")
    print(f"{'recall (target >= 0.95)':28}{recall:12.3f}{b_recall:12.3f}")
    for w in WAYS:
        print(f"{'  ' + w:28}{per_way[w]:12.3f}{b_way[w]:12.3f}")
    print(f"{'clean rows removed (<= 0.5%)':28}{lost:12.3%}{b_lost:12.3%}")
    for threads, secs in timings.items():
        print(f"{f'rows/s, {threads} thread(s)':28}{len(rows) / secs:12,.0f}{'':>12}")
    print(f"{'rows/s, baseline 1 thread':28}{'':>12}{len(rows) / base_s:12,.0f}")
    per_cpu = len(rows) / cpu[1]
    print(f"{'rows per CPU-second':28}{per_cpu:12,.0f}{len(rows) / base_cpu:12,.0f}")
    best = max(len(rows) / s for s in timings.values())
    print(f"speed ratio stage/baseline: {best / (len(rows) / base_s):.1f}x wall, {per_cpu / (len(rows) / base_cpu):.1f}x CPU; "
          f"baseline index {base_index_s:.2f}s")
    load = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}, load average {load:.1f} (other processes share the cores: wall-clock "
          f"rows/s on 2 idle cores is about {min(2, os.cpu_count() or 1)} x rows per CPU-second)")
    print(f"rows {len(rows):,} in shards of {args.shard:,}")
    missed = [j for j, p in enumerate(is_planted) if p and not ours[j]]
    if missed:
        print("\nmissed planted rows (first 3):")
        for j in missed[:3]:
            print(f"  [{ways[j]}] {rows[j][:160]!r}")
    lost_rows = [j for j, p in enumerate(is_planted) if not p and ours[j]]
    matched = {j: int(json.loads(details[f"t{j}"])["eval_row_id"][1:]) for j in lost_rows}
    shared = [j for j in lost_rows if shares_a_run(rows[j], eval_rows[matched[j]], eval_cjk[matched[j]])]
    print(f"\nclean rows removed: {len(lost_rows)}, of which {len(shared)} share a run of 2n tokens or more "
          f"with the eval row they matched (text the two really have in common: licence lines, quotations); "
          f"{len(lost_rows) - len(shared)} ({(len(lost_rows) - len(shared)) / len(clean):.3%}) share less")
    for title, sample in (("sharing a long run", shared), ("sharing less", [j for j in lost_rows if j not in shared])):
        if sample:
            print(f"  first {args.show} {title}:")
            for j in sample[: args.show]:
                print(f"    {rows[j][:90]!r}\n      -> {details[f't{j}']}")
    ok = recall >= 0.95 and lost <= 0.005 and per_cpu * min(2, os.cpu_count() or 1) >= 20_000
    print(f"\ntargets {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
