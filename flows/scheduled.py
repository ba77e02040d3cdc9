"""The ``curate-datasets`` flow: every dataset of a config file, for deployments.

A deployment stores its parameters and shows them in the UI, so they must be plain
data a person can read and edit: the config file's path, inputs, output and ``--set``
overrides, as ``python -m pipeline run`` takes them. The config is read when a run
starts, not when the deployment is made, so a scheduled run picks up edits to the
file. Each dataset is one ``curate`` subflow run, with its own state, logs and
artifacts, on the config's executor (``pipeline.executors``): ``flows.run.run_datasets``,
as ``python -m pipeline run`` runs them.

Relative paths are taken from the run's working directory: the repository root for
``prefect.yaml``'s deployment (its worker changes there), the folder of
``python -m pipeline deploy`` for a served one (that command passes absolute paths).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow

from flows.run import check_inputs, run_datasets
from pipeline.config import load_config


@flow(name="curate-datasets", log_prints=False)
def curate_datasets(
    config: str | None = "pipeline.yaml",
    inputs: list[str] | None = None,
    output: str | None = None,
    overrides: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Curate every dataset of ``config`` (or of ``inputs``) into its store.

    ``output`` replaces the config's output folder; ``overrides`` are ``KEY=VALUE``
    strings as ``--set`` takes them. Returns one result per dataset, as ``curate``
    gives it. A missing file or unmapped column of the last dataset fails the run
    before the first one is curated, as `python -m pipeline run` does (``flows.run``).
    """
    # Prefect forwards the pipeline's records only if the logger lets INFO through
    # (with PREFECT_LOGGING_EXTRA_LOGGERS=pipeline in the run's environment).
    logging.getLogger("pipeline").setLevel(logging.INFO)
    cfg = load_config(config, inputs=inputs, output=output, overrides=overrides or [])
    check_inputs(cfg)
    return run_datasets(cfg)
