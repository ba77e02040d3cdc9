"""The ``finetune`` flow: a published version -> a run folder, as Prefect tasks.

A thin wrapper: the work is ``pipeline.train``, which imports no Prefect and runs
alone (``python -m pipeline train``). The flow adds what Prefect is for: the training
as a task in the UI, the per-epoch lines in the run's logs, and artifacts with the
metrics and the run folder. ``curate`` can chain into it once a version is published
(see the README, "Fine-tuning"). The version is verified inside the training task,
before any model is loaded: a separate check would hash every data file twice.

The task is not cached: a training run is an experiment whose folder is named by its
time, and the version check must look at the files as they are now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.train import Progress, TrainConfig, find_version, format_summary
from pipeline.train import train as train_version
from pipeline.train.models import quiet_libraries


@task(name="train", cache_policy=NO_CACHE)
def train_task(version_path: str, config: dict[str, Any], runs_dir: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    quiet_libraries()
    result = train_version(
        Path(version_path), TrainConfig.from_dict(config), runs_dir=Path(runs_dir) if runs_dir else None,
        progress=Progress(write=logger.info),
    )
    logger.info("%s", format_summary(result))
    return {"path": str(result.path), "metrics": result.metrics, "dataset": result.dataset}


@flow(name="finetune", log_prints=False)
def finetune(
    version: str | None = None, output: str | None = None, config: dict[str, Any] | None = None,
    runs_dir: str | None = None,
) -> dict[str, Any]:
    """Fine-tune on ``version`` (a folder, ``DATASET/vNNNN`` or ``DATASET`` in the
    store ``output``; by default the store's classification dataset) with training
    keys ``config`` (see ``pipeline.train.config.TrainConfig``)."""
    TrainConfig.from_dict(config or {})  # a typo fails before the version is read
    path = str(find_version(version, Path(output) if output else None))
    result = train_task(path, config or {}, runs_dir)  # verifies the version before loading a model
    record = result["dataset"]
    metrics = result["metrics"]
    key = "".join(c if c.isalnum() else "-" for c in record["dataset"].lower()).strip("-")
    create_table_artifact(
        key=f"{key}-finetune-epochs",
        table=[
            {k: v for k, v in e.items() if k != "validation"}
            | {f"validation_{k}": v for k, v in e["validation"].items() if k != "loss"}
            for e in metrics["epochs"]
        ],
        description=f"{record['dataset']} {record['version']}: loss per epoch",
    )
    test = ", ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items())
    create_markdown_artifact(
        key=f"{key}-finetune",
        markdown=f"**{record['dataset']} {record['version']}** ({metrics['task']}): test {test}; best epoch "
        f"{metrics['best_epoch']} of {len(metrics['epochs'])}.\n\nRun folder: `{result['path']}`",
        description=f"{record['dataset']} {record['version']}: fine-tuning result",
    )
    return result
