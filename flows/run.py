"""Run every dataset of a config: ``python -m pipeline run`` and the ``curate-datasets`` flow.

Each dataset is one ``curate`` flow run, on the config's executor
(``pipeline.executors``), opened once for all of them. Callers check every dataset's
inputs first (:func:`check_inputs`), so that a missing file or an unmapped column of
the last dataset fails before the first one is curated: the CLI before it sets Prefect
up (this module imports ``prefect`` only in :func:`run_datasets`), the
``curate-datasets`` flow as it starts.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from pipeline import executors
from pipeline.config import PipelineConfig
from pipeline.readers import Reader
from pipeline.stages.base import StageContext
from pipeline.steps import preflight
from pipeline.store import Store


def check_inputs(cfg: PipelineConfig) -> None:
    """Fail on missing files, unreadable headers and unmapped columns of any dataset,
    and on what a stage would fail on mid-run (:func:`pipeline.steps.preflight`)."""
    for dataset in cfg.datasets:
        reader = Reader(dataset, cfg.shard_rows)
        context = StageContext(dataset, Store(cfg.output, dataset.name))
        preflight(dataset, cfg.stages_for(dataset), reader.info, context)


def run_datasets(
    cfg: PipelineConfig,
    around: Callable[[str], AbstractContextManager[Any]] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Curate every dataset of ``cfg``, in order; one result each, as ``curate`` gives it.

    ``around(name)`` is entered around each dataset's flow run (the CLI's progress
    display); ``on_result(result)`` is called as soon as that dataset is done, after
    ``around`` has exited. The inputs are checked already (:func:`check_inputs`).
    """
    from flows.curate import curate

    payload = cfg.model_dump(mode="json")
    results = []
    with executors.executor(cfg.executor):
        for dataset in cfg.datasets:
            with around(dataset.name) if around is not None else nullcontext():
                result = curate(config=payload, dataset=dataset.name)
            if on_result is not None:
                on_result(result)
            results.append(result)
    return results
