"""What the benchmarks need to know about a shared machine: how busy other processes
keep its CPUs, and a way to wait for them before a timing."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

BUSY_CORES = 0.25
"""Other processes using more than this many cores make a timing contended."""


def system_cpu_seconds() -> float | None:
    """CPU seconds all processes have used since boot (plus time stolen by the host)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_idle(max_seconds: float, say: Callable[[str], None] = print) -> float | None:
    """Wait until other processes leave the CPUs alone (below ``BUSY_CORES`` for a
    second), for at most ``max_seconds``; the cores they were using when the wait ended."""
    deadline = time.perf_counter() + max_seconds
    announced = False
    while True:
        s0 = system_cpu_seconds()
        time.sleep(1.0)
        s1 = system_cpu_seconds()
        if s0 is None or s1 is None:
            return None
        busy = s1 - s0
        if busy < BUSY_CORES or time.perf_counter() >= deadline:
            return busy
        if not announced:
            say(f"  waiting up to {max_seconds:.0f}s for other processes ({busy:.1f} cores busy) ...")
            announced = True


class CpuMeter:
    """Wall time, own CPU time (``add_cpu`` for workers') and the CPU other processes
    used meanwhile, which tells whether the machine was shared during a timing."""

    def __enter__(self) -> CpuMeter:
        self.extra_cpu = 0.0
        self._sys0 = system_cpu_seconds()
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        return self

    def add_cpu(self, seconds: float) -> None:
        self.extra_cpu += seconds

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0 + self.extra_cpu
        sys1 = system_cpu_seconds()
        self.others = None if sys1 is None or self._sys0 is None else max(0.0, sys1 - self._sys0 - self.cpu)


def add_wait_idle_argument(parser: argparse.ArgumentParser, default: float, before: str) -> None:
    """``--wait-idle S``, the same in every benchmark: ``before`` says when it waits."""
    parser.add_argument(
        "--wait-idle", type=float, default=default, metavar="S",
        help=f"{before}, wait up to S seconds for other processes to leave the CPUs alone "
        f"(default {default:g}; 0: do not wait)",
    )
