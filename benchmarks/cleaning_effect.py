"""The cleaning effect: a model fine-tuned on the curated version of a damaged training
set against the same model fine-tuned on the damaged set itself.

    python benchmarks/cleaning_effect.py                    # CPU size, 3 seeds
    python benchmarks/cleaning_effect.py --reference        # and a model trained on the undamaged rows
    python benchmarks/cleaning_effect.py --flips uniform    # a flipped label becomes any other class
    python benchmarks/cleaning_effect.py --rows-per-class 80 --test-per-class 50   # a reduced size
    python benchmarks/cleaning_effect.py --large            # GPU size: 4x the rows, longer rows

Data. English fortunes (Debian ``fortunes``) labelled by their fortune file, the
``CLASSES`` below, read and cleaned as ``sample_data/build.py`` reads them (usable
length, English, natural near-copies dropped). Per class, ``--test-per-class`` rows go
to an untouched test set and ``--rows-per-class`` to training, by a seeded shuffle.

Damage, to a copy of the training rows only, with ``--data-seed``:

* label flips: ``FLIP_SHARE`` of the rows get another class: by default the next one
  in :data:`CLASSES` ("pair flipping": the class-conditional noise of people who
  mistake one class for a neighbour), with ``--flips uniform`` any other one;
* near-duplicates: ``DUP_SHARE`` more rows, copies of training rows (flipped or not)
  with a word or two changed, dropped or added (``sample_data/build.py``'s edits);
* markup: ``MARKUP_SHARE`` of the rows wrapped in HTML with entities and a link, half
  of them with boilerplate lines ("Read more", "Share this") as well.

Two versions of the damaged rows are published with ``python -m pipeline run``, in
one store: ``corrupted``, every stage off but ``split``, and ``curated``, the
pipeline's default stages set up for noisy short rows (:data:`CURATE_DEFAULTS`:
``label_issues`` relabels the rows it is sure of and drops the other rows it judges
mislabelled; ``--curate-set`` adds overrides). Both are split 90 / 10
into train and validation by the split stage; the training step then takes a seeded
10% of train as its own test split, which this benchmark does not use.

Training. For each ``--seeds`` value, the training step's default model (all-MiniLM-L6-v2
with LoRA) is fine-tuned on each version with that seed and the same budget (epochs,
batch size, learning rate, max length, no early stop; each run keeps its best epoch on
its own validation split), through ``pipeline.train.prepare`` and ``fit``, and scored
on the untouched test set. The budget is in epochs, so the curated run, on fewer rows,
takes fewer steps. The output gives both accuracies and macro-F1s per seed, their
means and standard deviations, and the difference; with ``--reference``, a third
model trained on the undamaged rows (published with every stage off but ``split``)
says what the damage cost and how much of it curation won back.

The runs go ``--jobs`` at a time (default one per core), each in its own process with
an equal share of the cores as torch threads. The machine's load changes the minutes,
not the scores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.finetune import add_training_arguments, spread, training_pool
from pipeline.stages.registry import stage_names
from pipeline.train import Progress, TrainConfig, prepare
from pipeline.train.loop import Backoff, evaluate, fit
from pipeline.train.models import quiet_libraries

CLASSES = ("computers", "politics", "science", "art")
"""Fortune files with 450 or more usable English fortunes each, so ``--large`` has rows."""
FLIP_SHARE = 0.20
DUP_SHARE = 0.20
MARKUP_SHARE = 0.20
SPLIT = {"train": 0.9, "validation": 0.1, "test": 0.0}
CURATE_DEFAULTS = [
    "stages.label_issues.features=embeddings",
    "stages.label_issues.rounds=2",
    "stages.label_issues.policy=relabel",
    "stages.label_issues.relabel_threshold=0.6",
    "stages.label_issues.unsure=drop",
    "stages.label_issues.max_issue_share=0.5",
    "stages.near_dedup.threshold=0.7",
]
"""How one would set the pipeline up for a short-row training set known to be noisy.
``label_issues`` (its default only flags rows for a person): judge on sentence
embeddings (TF-IDF is weak on a few hundred short fortunes), in two rounds (the
second taught without the rows the first calls wrong: on five damaged sets it cut the
right rows lost by a third to a half); give a row the model's label when the model
puts 0.6 or more on it and drop the other rows it judges mislabelled; act even when it
calls many rows wrong (its default gives up above 30%, taking that for a weak model;
here a fifth of the labels *are* wrong). ``near_dedup``: Jaccard 0.7 on character
shingles, since a one-word edit of a ten-word row already leaves about 0.7 (every
pair it removed at 0.7, and at 0.6, was a planted one)."""
TAG = re.compile(r"</?(?:p|a|b|i|em|strong|br|div)\b[^>]*>")


def _sample_build() -> Any:
    """``sample_data/build.py``, for its fortune reader and damage functions."""
    spec = importlib.util.spec_from_file_location("sample_build", REPO / "sample_data" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_fortunes(build: Any, train_per_class: int, test_per_class: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Clean training and test rows, ``{"id", "text", "label"}``, disjoint, stratified."""
    rng = random.Random(seed)
    seen = build.NearDupIndex()
    train, test = [], []
    for label in CLASSES:
        texts = [t for t in build.read_fortunes(label) if seen.add(t)]
        need = train_per_class + test_per_class
        if len(texts) < need:
            raise SystemExit(f"{label}: {len(texts)} usable fortunes, {need} needed; lower --rows-per-class")
        rng.shuffle(texts)
        test += [{"text": t, "label": label} for t in texts[:test_per_class]]
        train += [{"text": t, "label": label} for t in texts[test_per_class:need]]
    rng.shuffle(train)
    for i, row in enumerate(train):
        row["id"] = f"tr-{i:05d}"
    for i, row in enumerate(test):
        row["id"] = f"te-{i:05d}"
    return train, test


def corrupt(build: Any, clean: list[dict], seed: int, flips: str) -> tuple[list[dict], dict[str, Any]]:
    """The damaged copy of ``clean`` and the rows each kind of damage hit: ids of the
    flipped and marked-up rows, ``{copy id: source id}`` of the near-duplicates.
    ``flips``: a flipped row gets any other class (``uniform``) or the next class in
    :data:`CLASSES` (``pair``)."""
    rng = random.Random(seed)
    rows = [dict(r) for r in clean]
    planted: dict[str, Any] = {"flipped": [], "near_duplicate": {}, "markup": []}
    for row in rng.sample(rows, round(FLIP_SHARE * len(rows))):
        if flips == "pair":
            row["label"] = CLASSES[(CLASSES.index(row["label"]) + 1) % len(CLASSES)]
        else:
            row["label"] = rng.choice([c for c in CLASSES if c != row["label"]])
        planted["flipped"].append(row["id"])
    vocab = sorted({w.lower() for r in clean for w in build.WORD.findall(r["text"]) if len(w) > 3})
    copies = []
    editable = [r for r in rows if len(build.WORD.findall(r["text"])) >= 4]  # two word drops leave words
    for i, source in enumerate(rng.sample(editable, round(DUP_SHARE * len(rows)))):
        text, _ = build.near_edit(source["text"], rng, vocab)
        copies.append({"id": f"dup-{i:05d}", "text": text, "label": source["label"]})
        planted["near_duplicate"][copies[-1]["id"]] = source["id"]
    rows += copies
    for row in rng.sample(rows, round(MARKUP_SHARE * len(rows))):
        row["text"], _ = build.htmlify(row["text"], rng)
        if rng.random() < 0.5:
            row["text"], _ = build.add_boilerplate(row["text"], rng)
        planted["markup"].append(row["id"])
    rng.shuffle(rows)
    return rows, planted


def publish_versions(work: Path, damaged: Path, curate_set: list[str], clean: Path | None = None) -> dict[str, Path]:
    """``corrupted`` and ``curated`` versions of ``damaged`` in the store ``work/out``,
    and a ``clean`` one of the undamaged rows when ``clean`` is given."""
    split = {"split": dict(SPLIT)}
    off = {name: {"enabled": False} for name in stage_names() if name != "split"}
    stages: dict[str, Any] = {"language": {"allowed": ["en"]}, "near_dedup": {"shingles": "char"}}
    config = {
        "output": str(work / "out"),
        "datasets": [
            {"name": "corrupted", "inputs": [str(damaged)], "stages": {**off, **split}},
            {"name": "curated", "inputs": [str(damaged)], "stages": split},
        ],
        "stages": stages,
    }
    if clean is not None:
        config["datasets"].append({"name": "clean", "inputs": [str(clean)], "stages": {**off, **split}})
    (work / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "pipeline", "run", "--config", str(work / "pipeline.yaml"), "-q"]
    for item in curate_set:
        command += ["--set", item]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"pipeline run failed:\n{done.stdout}{done.stderr}")
    return {d["name"]: work / "out" / d["name"] / (work / "out" / d["name"] / "LATEST").read_text().strip() for d in config["datasets"]}


def what_curation_did(version: Path, damaged: list[dict], planted: dict[str, Any], truth: dict[str, str]) -> dict[str, Any]:
    """What the curated version did about each kind of damage, against ``truth`` (each
    damaged row's true label): wrong labels before and after, how the flipped rows left
    (removed, relabelled right) and how many right labels went with them, how many
    source fortunes are still there, near-duplicate pairs of which one row went, and
    marked-up rows still holding a tag."""
    import pyarrow.parquet as pq

    removed = pq.read_table(version / "reports" / "removed.parquet", columns=["row_id", "stage"]).to_pylist()
    gone = {r["row_id"]: r["stage"] for r in removed}
    kept = pd.concat([pq.read_table(f, columns=["row_id", "text", "label"]).to_pandas() for f in (version / "data").glob("*.parquet")])
    label = dict(zip(kept["row_id"], kept["label"]))
    given = {r["id"]: r["label"] for r in damaged}
    with_tags = {i for i, text in zip(kept["row_id"], kept["text"]) if TAG.search(text)}
    manifest = json.loads((version / "manifest.json").read_text())
    right = [i for i in given if given[i] == truth[i]]
    return {
        "kept_rows": manifest["counts"]["kept_rows"],
        "removed_by_stage": pd.Series(list(gone.values()), dtype=str).value_counts().sort_index().to_dict(),
        "wrong_labels": [sum(given[i] != truth[i] for i in given), sum(label[i] != truth[i] for i in label)],
        "flipped": {
            "planted": len(planted["flipped"]),
            "removed": sum(i in gone for i in planted["flipped"]),
            "relabelled_right": sum(given[i] != label.get(i, given[i]) == truth[i] for i in planted["flipped"]),
        },
        "right_labels_removed": sum(i in gone for i in right),
        "right_labels_changed_wrong": sum(label.get(i, truth[i]) != truth[i] for i in right),
        "sources_kept": [len({planted["near_duplicate"].get(i, i) for i in label}), len(given) - len(planted["near_duplicate"])],
        "duplicate_pairs_resolved": [
            sum(c in gone or s in gone for c, s in planted["near_duplicate"].items()), len(planted["near_duplicate"])
        ],
        "markup_left": [len(with_tags & set(planted["markup"])), len(planted["markup"])],
        "stages_run": [s["stage"] for s in manifest["stages"] if s["enabled"]],
    }


def train_and_score(version: Path, test: pd.DataFrame, config: TrainConfig, name: str) -> dict[str, Any]:
    """Fine-tune on ``version`` and score on ``test``; progress lines start with ``name``."""
    started = time.perf_counter()
    p = prepare(version, config, Progress(write=lambda line: None))
    result = fit(p.model, p.task, p.examples["train"], p.examples["validation"], p.config, p.device,
                 Progress(write=lambda line: print(f"    {name}: {line}", flush=True)))
    scores = evaluate(p.model, p.task, p.task.encode(test), p.device, Backoff(result.micro_batch_size, Progress(), p.device), "test")
    return {
        "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "best_epoch": result.best_epoch,
        "train_rows": len(p.examples["train"]), "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-class", type=int, default=150, help="clean training rows per class (default 150)")
    parser.add_argument("--test-per-class", type=int, default=75, help="untouched test rows per class (default 75)")
    add_training_arguments(parser, epochs=6, learning_rate=3e-3, max_length=64,
                           why_rate="at the training step's 1e-3, a few hundred rows underfit in 6 epochs",
                           data_seed="seed of the data split and the damage")
    parser.add_argument("--flips", choices=("pair", "uniform"), default="pair",
                        help="a flipped label becomes the next class (pair, the default: classes people confuse) "
                        "or any other class (uniform)")
    parser.add_argument("--reference", action="store_true",
                        help="also train on the undamaged rows: what the damage cost, and how much curation won back")
    parser.add_argument("--large", action="store_true",
                        help="GPU size: 4x --rows-per-class and --test-per-class, max length 128")
    parser.add_argument("--curate-set", metavar="KEY=VALUE", action="append", default=[],
                        help="a config override, as `pipeline run --set` takes; it reaches the curated version only, "
                        "since the corrupted one's own settings switch its stages off")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cleaning-effect"), help="work folder (emptied)")
    args = parser.parse_args()
    if args.large:
        args.rows_per_class *= 4
        args.test_per_class *= 4
        args.max_length = 128
    quiet_libraries()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    build = _sample_build()
    clean, test_rows = load_fortunes(build, args.rows_per_class, args.test_per_class, args.data_seed)
    damaged, planted = corrupt(build, clean, args.data_seed, args.flips)
    truth = {r["id"]: r["label"] for r in clean}
    truth |= {copy: truth[source] for copy, source in planted["near_duplicate"].items()}
    damaged_path = args.work / "damaged.jsonl"
    damaged_path.write_text("".join(json.dumps(r) + "\n" for r in damaged))
    clean_path = args.work / "clean.jsonl"
    clean_path.write_text("".join(json.dumps(r) + "\n" for r in clean))
    test = pd.DataFrame({"row_id": [r["id"] for r in test_rows], "text": [r["text"] for r in test_rows],
                         "label": [r["label"] for r in test_rows]})
    print(f"fortunes, {len(CLASSES)} classes ({', '.join(CLASSES)}): {len(clean)} clean training rows -> "
          f"{len(damaged)} damaged ({len(planted['flipped'])} labels flipped ({args.flips}), {len(planted['near_duplicate'])} "
          f"near-duplicates, {len(planted['markup'])} with markup); {len(test)} untouched test rows", flush=True)

    started = time.perf_counter()
    versions = publish_versions(args.work, damaged_path, [*CURATE_DEFAULTS, *args.curate_set], clean_path if args.reference else None)
    curation = what_curation_did(versions["curated"], damaged, planted, truth)
    c, f = curation, curation["flipped"]
    print(f"published in {time.perf_counter() - started:.0f} s ({' '.join(CURATE_DEFAULTS + args.curate_set)}); "
          f"curated kept {c['kept_rows']} of {len(damaged)} rows, removed per stage {c['removed_by_stage']}. "
          f"Wrong labels {c['wrong_labels'][0]} -> {c['wrong_labels'][1]}: of {f['planted']} flipped, "
          f"{f['removed']} removed and {f['relabelled_right']} relabelled right; right labels removed "
          f"{c['right_labels_removed']}, changed to wrong {c['right_labels_changed_wrong']}. Source fortunes kept "
          f"{c['sources_kept'][0]}/{c['sources_kept'][1]}, near-duplicate pairs resolved {c['duplicate_pairs_resolved'][0]}/"
          f"{c['duplicate_pairs_resolved'][1]}, marked-up rows still holding a tag {c['markup_left'][0]}/"
          f"{c['markup_left'][1]}", flush=True)

    arms = ("corrupted", "curated", "clean") if args.reference else ("corrupted", "curated")
    runs = [(seed, arm) for seed in args.seeds for arm in arms]
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    with training_pool(args.jobs, len(runs)) as pool:
        futures = [
            pool.submit(train_and_score, versions[arm], test, TrainConfig(
                seed=seed, epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
                learning_rate=args.learning_rate, early_stopping_patience=0,
            ), f"seed {seed}, {arm}")
            for seed, arm in runs
        ]
        for (seed, arm), future in zip(runs, futures):
            r = future.result()
            results[arm].append(r)
            print(f"  seed {seed}, {arm}: test accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} "
                  f"({r['train_rows']} train rows, best epoch {r['best_epoch']}, {r['seconds']:.0f} s)", flush=True)

    acc = {arm: [r["accuracy"] for r in rows] for arm, rows in results.items()}
    f1 = {arm: [r["macro_f1"] for r in rows] for arm, rows in results.items()}
    diffs = [c - d for c, d in zip(acc["curated"], acc["corrupted"])]
    print(f"\ntest accuracy (%, mean ± sd over seeds {' '.join(map(str, args.seeds))}): "
          + ", ".join(f"{arm} {spread(acc[arm], 1, 100)}" for arm in arms))
    print("test macro-F1 (%): " + ", ".join(f"{arm} {spread(f1[arm], 1, 100)}" for arm in arms))
    print(f"difference, curated - corrupted: {100 * statistics.mean(diffs):+.1f} accuracy points "
          f"(per seed: {', '.join(f'{100 * d:+.1f}' for d in diffs)})")
    if args.reference:
        cost = statistics.mean(acc["clean"]) - statistics.mean(acc["corrupted"])
        print(f"the damage cost {100 * cost:+.1f} points (clean - corrupted); curation won back "
              f"{statistics.mean(diffs) / cost:.0%} of them" if cost > 0 else
              f"the damage cost nothing measurable (clean - corrupted: {100 * cost:+.1f} points)")
    print("command: python benchmarks/cleaning_effect.py " + " ".join(sys.argv[1:]))
    (args.work / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "curation": curation, "results": results}, indent=2
    ))


if __name__ == "__main__":
    main()
