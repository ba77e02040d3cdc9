"""What the fine-tuning benchmarks (``cleaning_effect.py``, ``selection_effect.py``)
share: training processes that split the cores, and figures over seeds."""

from __future__ import annotations

import statistics

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
