"""The selection effect: a model fine-tuned on the rows the ``select`` stage keeps against
the same model fine-tuned on a random subset of the same size.

    python benchmarks/selection_effect.py                  # CPU size, 3 seeds
    python benchmarks/selection_effect.py --share 0.3      # keep 30% instead of half
    python benchmarks/selection_effect.py --large          # GPU size: more rows, longer rows, 5 seeds

Data. "What is the X package for?" answered by the package's Debian description, as
``sample_data/build_general.py`` reads them from ``/var/lib/dpkg/status`` (synopsis and
first paragraph, 15-90 words). ``--large`` wants more rows than the installed packages
give: it adds packages that are only known to apt (``apt-cache dumpavail``), answered
by their one-line synopsis, so most of its rows are short answers, an easier task than
the CPU size's (and the machine's apt lists decide which rows it gets). A seeded shuffle (``--data-seed``) gives ``--test-rows``
rows to an untouched test set and ``--train-rows`` to the training pool.

Damage, to a copy of the pool only, with ``--data-seed``: :data:`DAMAGE` of its rows
get a reply selection should drop:

* ``mismatched``: another package's description (a wrong answer that reads well);
* ``truncated``: the first three to six words of its own description (at most half of them);
* ``generic``: a reply that says nothing, from :data:`GENERIC`.

Two versions of the damaged pool are published by two runs of ``python -m pipeline
run`` into one store, both through the default stages with the split 90 / 10 into train
and validation: ``all``, with ``select`` off, and ``selected``, with
``--set stages.select.enabled=true --set stages.select.share=S`` (by IFD, its default
``max_ifd`` of 1; scores cached in the work folder, so every run scores afresh and the
scorer's rows/s is measured). ``select`` touches train rows only, so both versions
have the same validation rows.

Training. For each ``--seeds`` value, the training step's default instruction model
(SmolLM2-135M-Instruct with LoRA) is fine-tuned through ``pipeline.train.prepare`` and
``fit`` with that seed and the same budget (epochs, batch size, learning rate, max
length, no early stop; each run keeps its best epoch on the validation split). The
training step takes a seeded 10% of each version's train split as its own test split
(neither version has one), which this benchmark does not use. The arms:

* ``selected``: the ``selected`` version's remaining train rows;
* ``random``: the ``all`` version with the training step's ``max_train_rows`` set to
  the number of rows the ``selected`` arm trains on: a random subset of the same size,
  drawn with the training seed (so each seed sees another subset).

Score: the mean loss per reply token (and its perplexity) of the untouched test set's
reference answers given their questions, rendered with the model's chat template, as
the training step's own evaluation computes it; lower is better. The model before
fine-tuning is scored once, for scale. The output gives both per seed, means, standard
deviations and the difference, the planted rows each arm trained on, and the scorer's
rows/s (rows scored over the ``select`` stage's time in the manifest, loading the model included).

The runs go ``--jobs`` at a time (default one per core), each in its own process with
an equal share of the cores as torch threads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.finetune import add_training_arguments, spread, training_pool
from pipeline.train import Progress, TrainConfig, prepare
from pipeline.train.data import conversations
from pipeline.train.loop import Backoff, evaluate, fit
from pipeline.train.models import quiet_libraries

DAMAGE = {"mismatched": 0.14, "truncated": 0.07, "generic": 0.07}
"""Share of the pool each kind of damage hits (28% in all, disjoint rows)."""
GENERIC = (
    "I am not sure.",
    "I don't know.",
    "It is a software package.",
    "Sorry, I cannot help with that.",
    "It is used on Linux.",
    "Please check the documentation.",
)
SPLIT = {"train": 0.9, "validation": 0.1, "test": 0.0}


def _general_builder() -> Any:
    """``sample_data/build_general.py``, for its description reader and row format."""
    spec = importlib.util.spec_from_file_location("build_general", REPO / "sample_data" / "build_general.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apt_synopses() -> dict[str, str]:
    """Package name -> "<synopsis>." for every package apt knows (installed or not), from
    ``apt-cache dumpavail``; empty where apt has no package lists."""
    try:
        text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    found: dict[str, str] = {}
    for record in text.split("\n\n"):
        name = re.search(r"^Package: (\S+)$", record, re.MULTILINE)
        desc = re.search(r"^Description: (.+)$", record, re.MULTILINE)
        if name and desc and len(desc.group(1).split()) >= 4:
            synopsis = desc.group(1).strip().rstrip(".")
            found.setdefault(name.group(1), f"{synopsis[0].upper()}{synopsis[1:]}.")
    return found


def load_rows(build: Any, train_rows: int, test_rows: int, seed: int, synopses: bool) -> tuple[list[dict], list[dict]]:
    """Clean pool and test rows (``general.jsonl``'s format), disjoint, by a seeded shuffle."""
    answers = build.descriptions(build.STATUS.read_text(encoding="utf-8"))
    if synopses:
        answers = apt_synopses() | answers  # an installed package keeps its long description
    need = train_rows + test_rows
    if len(answers) < need:
        raise SystemExit(f"{len(answers)} packages with a usable description, {need} needed; lower --train-rows")
    packages = sorted(answers)
    random.Random(seed).shuffle(packages)
    test = [build.qa_row(f"te-{i:05d}", p, answers[p]) for i, p in enumerate(packages[:test_rows])]
    pool = [build.qa_row(f"tr-{i:05d}", p, answers[p]) for i, p in enumerate(packages[test_rows:need])]
    return pool, test


def damage(pool: list[dict], seed: int) -> tuple[list[dict], dict[str, str]]:
    """A copy of ``pool`` with :data:`DAMAGE` applied, and ``{row id: kind}`` of the rows hit."""
    rng = random.Random(seed)
    rows = [dict(r) for r in pool]
    hit = rng.sample(range(len(rows)), sum(round(share * len(rows)) for share in DAMAGE.values()))
    planted: dict[str, str] = {}
    start = 0
    for kind, share in DAMAGE.items():
        for i in hit[start : start + round(share * len(rows))]:
            row = rows[i]
            if kind == "mismatched":
                row["output"] = rng.choice([r["output"] for j, r in enumerate(pool) if j != i])
            elif kind == "truncated":
                words = pool[i]["output"].split()
                row["output"] = " ".join(words[: min(rng.randint(3, 6), len(words) // 2)])
            else:
                row["output"] = rng.choice(GENERIC)
            planted[row["id"]] = kind
        start += round(share * len(rows))
    return rows, planted


def publish_versions(work: Path, damaged: Path, share: float) -> dict[str, Path]:
    """``all`` (select off, as by default) and ``selected`` (select on, the top ``share``
    by IFD) versions of ``damaged`` in the store ``work/out``, through the default stages.
    Two runs, since a ``--set`` reaches every dataset of a config."""
    sets = {"all": [], "selected": ["stages.select.enabled=true", f"stages.select.share={share}"]}
    for name, overrides in sets.items():
        config = {
            "output": str(work / "out"),
            "datasets": [{"name": name, "inputs": [str(damaged)]}],
            "stages": {"split": dict(SPLIT), "select": {"cache_dir": str(work / "select-scores")}},
        }
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [sys.executable, "-m", "pipeline", "run", "--config", str(path), "-q"]
        for item in overrides:
            command += ["--set", item]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"pipeline run failed:\n{done.stdout}{done.stderr}")
    return {name: work / "out" / name / (work / "out" / name / "LATEST").read_text().strip() for name in sets}


def train_split_ids(version: Path) -> list[str]:
    """Row ids of ``version``'s train split."""
    frames = [pq.read_table(f, columns=["row_id", "split"]).to_pandas() for f in (version / "data").glob("*.parquet")]
    rows = pd.concat(frames)
    return list(rows.loc[rows["split"] == "train", "row_id"])


def scorer_speed(version: Path) -> dict[str, Any]:
    """Rows the ``select`` stage scored and the seconds it took, from the manifest."""
    manifest = json.loads((version / "manifest.json").read_text())
    stage = next(s for s in manifest["stages"] if s["stage"] == "select")
    decision = stage.get("decision") or {}
    return {"rows": decision.get("scored_now"), "seconds": stage.get("seconds"), "removed": decision.get("removed")}


def train_and_score(version: Path, test: pd.DataFrame, config: TrainConfig, name: str, train: bool = True) -> dict[str, Any]:
    """Fine-tune on ``version`` (unless ``train`` is false) and score the reference answers
    of ``test``; progress lines start with ``name``."""
    started = time.perf_counter()
    p = prepare(version, config, Progress(write=lambda line: None))
    micro = p.config.micro_batch_size or p.config.batch_size
    best_epoch = None
    if train:
        result = fit(p.model, p.task, p.examples["train"], p.examples["validation"], p.config, p.device,
                     Progress(write=lambda line: print(f"    {name}: {line}", flush=True)))
        micro, best_epoch = result.micro_batch_size, result.best_epoch
    examples = p.task.encode(conversations(test), list(test["row_id"]))  # type: ignore[union-attr]
    scores = evaluate(p.model, p.task, examples, p.device, Backoff(micro, Progress(), p.device), "test")
    return {
        "loss": scores["loss"], "perplexity": scores["perplexity"], "best_epoch": best_epoch,
        "train_ids": [e["row_id"] for e in p.examples["train"]], "seconds": round(time.perf_counter() - started, 1),
    }


def _planted(ids: list[str], planted: dict[str, str]) -> str:
    """How many of ``ids`` are planted rows, in all and by kind."""
    kinds = Counter(planted[i] for i in ids if i in planted)
    return f"{sum(kinds.values())} planted: " + ", ".join(f"{kinds[k]} {k}" for k in DAMAGE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=400, help="clean rows in the training pool (default 400)")
    parser.add_argument("--test-rows", type=int, default=120, help="untouched test rows (default 120)")
    parser.add_argument("--share", type=float, default=0.5, help="share of the train rows select keeps (default 0.5)")
    add_training_arguments(parser, epochs=2, learning_rate=1e-3, max_length=256,
                           why_rate="the step's 2e-4 barely moves LoRA in the ~40 steps of the CPU size",
                           data_seed="seed of the test/pool draw and the damage")
    parser.add_argument("--device", default="auto", help="training device: auto (the GPU when there is one), cpu, cuda")
    parser.add_argument("--large", action="store_true",
                        help="GPU size: 3,000 pool rows (apt synopses added), 400 test rows, 5 seeds, max length 512, "
                        "one run at a time")
    parser.add_argument("--work", type=Path, default=Path("/tmp/selection-effect"), help="work folder (emptied)")
    args = parser.parse_args()
    if args.large:
        args.train_rows, args.test_rows, args.seeds, args.max_length, args.jobs = 3000, 400, [0, 1, 2, 3, 4], 512, 1
    quiet_libraries()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    build = _general_builder()
    pool, test_rows = load_rows(build, args.train_rows, args.test_rows, args.data_seed, args.large)
    damaged, planted = damage(pool, args.data_seed)
    damaged_path = args.work / "damaged.jsonl"
    damaged_path.write_text("".join(json.dumps(r) + "\n" for r in damaged))
    test = pd.DataFrame({"row_id": [r["id"] for r in test_rows], "prompt": [r["instruction"] for r in test_rows],
                         "response": [r["output"] for r in test_rows]})
    kinds = Counter(planted.values())
    print(f"Debian package Q&A: {len(pool)} pool rows, {len(planted)} damaged ("
          + ", ".join(f"{n} {k}" for k, n in kinds.items()) + f"); {len(test)} untouched test rows", flush=True)

    started = time.perf_counter()
    versions = publish_versions(args.work, damaged_path, args.share)
    pool_train = train_split_ids(versions["all"])
    selected_train = train_split_ids(versions["selected"])
    speed = scorer_speed(versions["selected"])
    print(f"published in {time.perf_counter() - started:.0f} s; train split {len(pool_train)} rows "
          f"({_planted(pool_train, planted)}), select kept {len(selected_train)} "
          f"({_planted(selected_train, planted)}), removed {speed['removed']}; "
          f"scorer: {speed['rows']} rows in {speed['seconds']:.0f} s, {speed['rows'] / speed['seconds']:.2f} rows/s "
          f"(prompt+response and response alone, {os.cpu_count()} cores)", flush=True)

    # the training step carves its test split, round(10%), off each train split first
    same_size = len(selected_train) - max(1, round(len(selected_train) * 0.1))
    budget = {"epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length,
              "learning_rate": args.learning_rate, "early_stopping_patience": 0, "device": args.device}
    arms = {"selected": (versions["selected"], None), "random": (versions["all"], same_size)}
    runs = [(seed, arm) for seed in args.seeds for arm in arms]
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    with training_pool(args.jobs, len(runs)) as executor:
        untuned = executor.submit(train_and_score, versions["all"], test, TrainConfig(**budget), "untuned", False)
        futures = [
            executor.submit(train_and_score, arms[arm][0], test,
                         TrainConfig(seed=seed, max_train_rows=arms[arm][1], **budget), f"seed {seed}, {arm}")
            for seed, arm in runs
        ]
        base = untuned.result()
        print(f"  before fine-tuning: test loss {base['loss']:.4f}, perplexity {base['perplexity']:.2f}", flush=True)
        for (seed, arm), future in zip(runs, futures):
            r = future.result()
            r["planted"] = dict(Counter(planted[i] for i in r["train_ids"] if i in planted))
            results[arm].append(r)
            print(f"  seed {seed}, {arm}: test loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f} "
                  f"({len(r['train_ids'])} train rows, {_planted(r['train_ids'], planted)}; "
                  f"best epoch {r['best_epoch']}, {r['seconds']:.0f} s)", flush=True)

    loss = {arm: [r["loss"] for r in rows] for arm, rows in results.items()}
    ppl = {arm: [r["perplexity"] for r in rows] for arm, rows in results.items()}
    diffs = [s - r for s, r in zip(loss["selected"], loss["random"])]
    print(f"\ntest loss per reply token (mean ± sd over seeds {' '.join(map(str, args.seeds))}; lower is better): "
          + ", ".join(f"{arm} {spread(loss[arm])}" for arm in arms) + f"; before fine-tuning {base['loss']:.4f}")
    print("test perplexity: " + ", ".join(f"{arm} {spread(ppl[arm], 2)}" for arm in arms)
          + f"; before fine-tuning {base['perplexity']:.2f}")
    print(f"difference, selected - random: {statistics.mean(diffs):+.4f} loss "
          f"(per seed: {', '.join(f'{d:+.4f}' for d in diffs)}; negative: selection pays)")
    print("planted rows trained on (mean over seeds): " + ", ".join(
        f"{arm} {statistics.mean(sum(r['planted'].values()) for r in rows):.1f} of {len(rows[0]['train_ids'])}"
        for arm, rows in results.items()))
    print(f"total {time.perf_counter() - started:.0f} s after the data was built")
    print("command: python benchmarks/selection_effect.py " + " ".join(sys.argv[1:]))
    (args.work / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "scorer": speed, "untuned": base, "results": results,
         "planted": planted}, indent=2
    ))


if __name__ == "__main__":
    main()
