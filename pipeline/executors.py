"""Where the curate flow's per-shard work runs: in the flow's process, or on Dask workers.

The flow fans out with ``.map()`` over shards, one Prefect task per shard and step.
``local`` (the default) runs each task's work in the task's own thread. ``dask``
hands it to a Dask worker, of a local cluster started for the run (``workers``) or of
a running scheduler (``address``): the task, still run and recorded by Prefect in the
flow's process, sends its step (:mod:`pipeline.steps`, paths in and paths out) with
:func:`run` and waits for the result. Ingest, the global decide steps and publish are
not per shard and stay in the flow's process, once each.

Why not Prefect's ``DaskTaskRunner``, which runs the Prefect task itself on the
worker: there every task builds a fresh API client and settings object, and the flow
process serialises the run's whole context for it. Measured here, 60 no-op tasks cost
0.66 CPU-seconds in-process and 23 on two Dask workers (0.38 s a task), and a
100,000-document run on two workers took longer than in one process. Sending only the
step costs milliseconds, the workers need neither Prefect nor its server, and caching,
resume and the task runs in the UI are those of the in-process run.

Steps pass shard paths, so workers must see the same file system as the flow (this
machine, or a shared mount); the scheduler (which unpickles each step) and the workers
must import this package, at the flow's version (an editable install, or
``PYTHONPATH``): :func:`connect` checks. The executor is in neither a version's fingerprint nor any task's
cache key: the same inputs and config publish the same version whatever ran them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import Field, model_validator

from pipeline import memory
from pipeline.errors import PipelineError
from pipeline.settings import StrictModel

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger("pipeline")

INSTALL_HINT = "pip install -e '.[dask]'"
T = TypeVar("T")

LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.tick.interval": "1s",
}
"""Dask settings of a local cluster. The statistical profiler, the system monitor and
the event loop's watchdog feed a dashboard that nobody watches here; at their default
rates they kept 15% of a core busy on an idle two-worker cluster, 4% without (measured
here), and the machine has two cores."""

_client: ContextVar[Client | None] = ContextVar("pipeline_dask_client", default=None)
"""The Dask client of the enclosing :func:`executor` block; Prefect copies it into the
threads its tasks run in."""

_slots: ContextVar[threading.BoundedSemaphore | None] = ContextVar("pipeline_local_slots", default=None)
"""How many per-shard steps may run at once in this process (``local``)."""


class ExecutorConfig(StrictModel):
    """The ``executor`` section of the config (``--executor``, ``--workers``, ``--address``)."""

    kind: Literal["local", "dask"] = "local"
    """``local``: per-shard work runs in the flow's process. ``dask``: on Dask workers."""
    workers: int | None = Field(default=None, gt=0)
    """dask: start a local cluster of this many single-threaded worker processes
    (default: one per core)."""
    threads: int | None = Field(default=None, gt=0)
    """local: at most this many per-shard steps at once (default: one per core).
    Prefect's thread pool starts every shard's task at once, and each step holds its
    shard and its temporaries: unbounded, a million rows in 20 shards held all 20
    (10 GB); the steps are mostly Python, so more threads than cores add memory,
    not speed."""
    address: str | None = None
    """dask: use the running scheduler at this address (``tcp://host:port``) instead."""
    timeout: float = Field(default=10.0, gt=0)
    """dask: seconds to wait for the scheduler to answer, and then for a worker to join it."""

    @model_validator(mode="after")
    def _check_dask_keys(self) -> ExecutorConfig:
        if self.kind == "local" and (self.workers is not None or self.address is not None):
            raise ValueError("workers and address apply to kind dask only (--executor dask)")
        if self.kind == "dask" and self.threads is not None:
            raise ValueError("threads applies to kind local only (a Dask worker runs one step at a time)")
        if self.workers is not None and self.address is not None:
            raise ValueError("set workers (start a local cluster) or address (use a running scheduler), not both")
        return self


@contextmanager
def executor(config: ExecutorConfig) -> Iterator[Client | None]:
    """Send the per-shard steps of flows run in the block to ``config``'s executor;
    yields the Dask client (None for ``local``).

    A local cluster lives as long as the block, so one cluster serves every dataset
    of a run. Before any work is sent, the scheduler must have a worker: with none,
    the run would wait forever.
    """
    if config.kind == "local":
        threads = config.threads or usable_cores()
        memory.limit_arenas(threads)
        token = _slots.set(threading.BoundedSemaphore(threads))
        try:
            yield None
        finally:
            _slots.reset(token)
        return
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise PipelineError(f"executor dask needs {exc.name}, which is not installed: {INSTALL_HINT}") from exc
    if config.address is not None:
        with connect(config.address, config.timeout) as client, _current(client):
            yield client
        return
    workers = config.workers or usable_cores()
    # One thread per worker: the stages are mostly Python, so a second thread in a
    # worker would wait for the GIL rather than use a core. The dashboard (or, without
    # bokeh, the scheduler's HTTP endpoints) takes any free port: a fixed one clashes
    # with any other cluster on the machine.
    with (
        dask.config.set(LOCAL_CLUSTER_CONFIG),
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
        _current(client),
    ):
        logger.info("dask: local cluster of %d workers at %s", workers, cluster.scheduler_address)
        yield client


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, as in
    a container limited to some cores), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def run(step: Callable[..., T], *args: object) -> T:
    """``step(*args)`` on the current executor: here, or on a Dask worker (waiting for
    it). A step's exception is raised here, as it would be in-process."""
    client = _client.get()
    if client is not None:
        return client.submit(memory.releasing, step, *args, pure=False).result()
    slots = _slots.get()
    if slots is None:
        return memory.releasing(step, *args)
    with slots:
        return memory.releasing(step, *args)


@contextmanager
def connect(address: str, timeout: float) -> Iterator[Client]:
    """A client of the scheduler at ``address`` once it has a worker, waiting up to
    ``timeout`` seconds for the scheduler to answer and then for a worker to join."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise PipelineError(f"executor.address {address}: no Dask scheduler answered within {timeout:g} s") from exc
    with client:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise PipelineError(
                f"executor.address {address}: the Dask scheduler has no workers (waited {timeout:g} s); "
                f"start some with `dask worker {address}`"
            ) from None
        _check_package(client, address)
        logger.info("dask: %d workers at %s", len(client.scheduler_info()["workers"]), address)
        yield client


def _check_package(client: Client, address: str) -> None:
    """Fail unless the scheduler and every worker import this package at this version.

    The scheduler unpickles each step to schedule it and the workers run it: without
    the package the run would fail at its first step with a traceback about
    deserialisation, and another version would publish another content than the
    fingerprint (taken here) says.
    """
    import pipeline

    def version() -> str | None:  # nested: pickled by value, so it loads where the package does not
        import importlib.util

        if importlib.util.find_spec("pipeline") is None:
            return None
        return importlib.import_module("pipeline").__version__

    found = {"scheduler": client.run_on_scheduler(version)}
    found |= {f"worker {worker}": v for worker, v in client.run(version).items()}
    for where, got in found.items():
        if got != pipeline.__version__:
            problem = f"has pipeline {got}, not {pipeline.__version__}"
            if got is None:
                problem = "cannot import the pipeline package"
            raise PipelineError(
                f"executor.address {address}: the Dask {where} {problem}; start the scheduler and its workers "
                "from a venv where `pip install -e .` installed this checkout (or with PYTHONPATH set to it)"
            )


@contextmanager
def _current(client: Client) -> Iterator[None]:
    token = _client.set(client)
    try:
        yield
    finally:
        _client.reset(token)
