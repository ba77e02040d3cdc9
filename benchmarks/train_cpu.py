"""The fine-tuning step's CPU target: the classification default on 2,000 rows in under
5 minutes on this machine.

    python benchmarks/train_cpu.py                  # curates sample_data/ first if needed
    python benchmarks/train_cpu.py --rows 2000 --wait-idle 120

What is timed is ``python -m pipeline train`` as a new user runs it after ``python -m
pipeline run`` (``pipeline.train.train``, in this process): verifying the version,
loading all-MiniLM-L6-v2 from its package, LoRA with the default keys (3 epochs, batch
16, early stopping), the test split, writing the run folder. The one change is
``max_train_rows``, a seeded sample of the train split, since the sample's train split
has a few hundred rows more than the target's 2,000.

Printed: wall seconds, this process's CPU seconds, the cores other processes kept busy
meanwhile (``benchmarks/machine.py``; a timing with other work on the machine is
slower than the target means), training tokens per second, and the test metrics.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import CpuMeter, add_wait_idle_argument, wait_for_idle
from pipeline.train import Progress, TrainConfig, train
from pipeline.train.models import quiet_libraries

TARGET_SECONDS = 300.0


def sample_version(store: Path) -> Path:
    """The sample's classification version in ``store``, curated now if missing."""
    version = store / "classification" / "v0001"
    if not version.is_dir():
        print(f"curating sample_data/ into {store} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pipeline", "run", "--output", str(store), "--quiet"], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="train rows (default 2,000)")
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "train-cpu-store",
                        help="store holding the curated sample (made if missing)")
    add_wait_idle_argument(parser, 0, "before training")
    args = parser.parse_args(argv)

    quiet_libraries()
    version = sample_version(args.store)
    if args.wait_idle:
        wait_for_idle(args.wait_idle)
    config = TrainConfig(max_train_rows=args.rows)
    with tempfile.TemporaryDirectory() as runs, CpuMeter() as meter:
        result = train(version, config, runs_dir=Path(runs), progress=Progress())
    metrics = result.metrics
    tokens = metrics["throughput"]
    busy = f"{meter.others / meter.wall:.1f} cores" if meter.others is not None else "unknown"
    test = ", ".join(f"{k} {v:.3f}" for k, v in metrics["test"].items())
    print(f"rows: {metrics['rows']}; epochs run {len(metrics['epochs'])}, best {metrics['best_epoch']}")
    print(f"throughput: {tokens}")
    print(f"test: {test}")
    print(f"wall {meter.wall:.1f} s, CPU {meter.cpu:.1f} s, other processes kept {busy} busy meanwhile")
    verdict = "PASS" if meter.wall < TARGET_SECONDS else "FAIL"
    print(f"{verdict}  classification default on {metrics['rows']['train']:,} train rows: "
          f"{meter.wall:.0f} s (target < {TARGET_SECONDS:.0f} s; {busy} busy elsewhere)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
