"""What the fine-tuning benchmarks (``cleaning_effect.py``, ``selection_effect.py``)
share: training processes that split the cores, and figures over seeds."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor

from pipeline.train.models import quiet_libraries


def worker_threads(threads: int) -> None:
    """Each training process gets its share of the cores, so runs side by side do not
    fight over them: on 2 cores, nine runs two at a time on a thread each took 19
    minutes (2.1 a run), against 26 for six one after the other (4.3 a run)."""
    import torch

    torch.set_num_threads(threads)
    quiet_libraries()


def spread(values: list[float], digits: int = 4, scale: float = 1.0) -> str:
    """``mean ± sd`` of ``values`` times ``scale`` (sd 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * sd:.{digits}f}"


def add_training_arguments(
    parser: argparse.ArgumentParser, epochs: int, learning_rate: float, why_rate: str, max_length: int, data_seed: str
) -> None:
    """The options both benchmarks train with: seeds, data seed, budget, parallel runs."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--data-seed", type=int, default=0, help=data_seed)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per optimizer step (default 8)")
    parser.add_argument("--learning-rate", type=float, default=learning_rate, help=f"default {learning_rate:g}: {why_rate}")
    parser.add_argument("--max-length", type=int, default=max_length, help=f"tokens per row (default {max_length})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="training runs at once, each in its own process (default: one per core)")


def training_pool(jobs: int, runs: int) -> ProcessPoolExecutor:
    """``jobs`` training processes with an equal share of the cores each (said on the
    console), spawned: torch is not fork-safe once its threads exist."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    print(f"training {runs} runs, {jobs} at a time, {threads} torch thread(s) each", flush=True)
    spawn = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(jobs, mp_context=spawn, initializer=worker_threads, initargs=(threads,))
