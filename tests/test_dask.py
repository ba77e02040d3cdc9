"""The Dask executor: its config and checks, and the curate flow run through a real Dask
scheduler with two workers, which must publish what the in-process run publishes.

A run of 180,000 rows of real text checks that what a worker holds does not grow with
the rows. The integration tests start a real Prefect server, a ``dask scheduler`` and ``dask
worker`` processes on loopback (``tests/servers.py``); everything is stopped at the
end, also when a test fails. The workers get no Prefect settings: only the flow's
process talks to Prefect.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline import executors
from pipeline.cli import main
from pipeline.config import PipelineConfig, load_config
from pipeline.errors import PipelineError
from pipeline.executors import ExecutorConfig
from pipeline.steps import ingest
from tests.conftest import REPO
from tests.servers import dask_scheduler, dask_workers, free_port, prefect_api, service_env  # noqa: F401

ROWS, SHARD_ROWS = 200, 100
"""The first rows of the sample's classification file, with all its kinds of problem,
in two shards: every stage fans out over both workers."""


@pytest.fixture(scope="module")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = (REPO / "sample_data" / "classification.jsonl").read_text().splitlines(keepends=True)
    path = tmp_path_factory.mktemp("input") / "reviews.jsonl"
    path.write_text("".join(lines[:ROWS]))
    return path


def config_for(input_file: Path, output: Path, *overrides: str) -> PipelineConfig:
    return load_config(
        None, inputs=[str(input_file)], output=str(output), overrides=[f"shard_rows={SHARD_ROWS}", *overrides]
    )


# ----------------------------------------------------------------------- config and checks


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["executor.workers=2"], "apply to kind dask only"),
        (["executor.kind=dask", "executor.workers=2", "executor.address=tcp://127.0.0.1:8786"], "not both"),
        (["executor.kind=dask", "executor.workers=0"], "executor.workers"),
        (["executor.kind=ray"], "executor.kind"),
    ],
    ids=["workers-without-dask", "workers-and-address", "zero-workers", "unknown-kind"],
)
def test_invalid_executor_section_names_the_key(
    input_file: Path, tmp_path: Path, overrides: list[str], needle: str
) -> None:
    with pytest.raises(PipelineError, match="executor") as err:
        config_for(input_file, tmp_path, *overrides)
    assert needle in str(err.value)


def test_cli_flags_override_the_config_files_executor(
    input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipeline.cli import _parser
    from pipeline.cli.run import _executor_overrides

    def executor(*flags: str) -> ExecutorConfig:
        args = _parser().parse_args(["run", *flags])
        return config_for(input_file, tmp_path, *file_section, *_executor_overrides(args)).executor

    file_section = ["executor.kind=dask", "executor.address=tcp://10.0.0.1:8786"]
    assert executor().address == "tcp://10.0.0.1:8786"
    assert executor("--workers", "3") == ExecutorConfig(kind="dask", workers=3)
    assert executor("--address", "tcp://127.0.0.1:9000").address == "tcp://127.0.0.1:9000"
    assert executor("--executor", "local") == ExecutorConfig()
    file_section = ["executor.threads=1"]
    assert executor() == ExecutorConfig(threads=1)
    assert executor("--executor", "dask") == ExecutorConfig(kind="dask")
    file_section = []
    with pytest.raises(PipelineError, match="apply to kind dask only"):
        executor("--workers", "2")
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--workers", "2", "--address", "tcp://127.0.0.1:9000"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_executor_is_not_part_of_the_fingerprint(input_file: Path, tmp_path: Path) -> None:
    from pipeline.fingerprint import run_fingerprint

    local = config_for(input_file, tmp_path)
    dask = config_for(input_file, tmp_path, "executor.kind=dask", "executor.workers=2")
    name = local.datasets[0].name
    assert run_fingerprint(local, name) == run_fingerprint(dask, name)


def test_a_scheduler_that_does_not_answer_is_a_clear_error() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with (
        pytest.raises(PipelineError, match=f"executor.address {address}: no Dask scheduler answered within 1 s"),
        executors.connect(address, timeout=1),
    ):
        pass


# ----------------------------------------------------------------------- real servers


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``dask scheduler`` with two single-threaded ``dask worker`` processes."""
    logs = tmp_path_factory.mktemp("dask")
    env = service_env(logs / "prefect-home")
    with dask_scheduler(env, logs) as address, dask_workers(address, 2, env, logs):
        yield address


def curate(config: PipelineConfig, api: str) -> dict[str, Any]:
    """Run the curate flow on ``config``'s executor against the Prefect server at ``api``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.curate import curate as curate_flow

    with temporary_settings({PREFECT_API_URL: api}), executors.executor(config.executor):
        return curate_flow(config=config.model_dump(mode="json"), dataset=config.datasets[0].name)


def untimed(value: Any) -> Any:
    """``value`` without its ``seconds`` entries, at any depth; a stage's ``decision``
    (JSON text in ``stages.parquet``) is read first, as it may time its steps too."""
    if isinstance(value, list):
        return [untimed(v) for v in value]
    if isinstance(value, dict):
        return {
            k: untimed(json.loads(v) if k == "decision" and isinstance(v, str) else v)
            for k, v in value.items()
            if k != "seconds"
        }
    return value


def content(version: Path) -> dict[str, Any]:
    """Everything a version holds that two runs of the same inputs and config must
    agree on: every data and report file row by row, and the manifest, less timings,
    creation time and the code and library versions."""
    files = sorted((version / "data").glob("*.parquet")) + sorted((version / "reports").glob("*.parquet"))
    held = {str(path.relative_to(version)): untimed(pq.read_table(path).to_pylist()) for path in files}
    manifest = json.loads((version / "manifest.json").read_text())
    held["manifest"] = untimed({k: v for k, v in manifest.items() if k not in ("created", "packages")})
    return held


@pytest.fixture(scope="module")
def in_process(
    input_file: Path,
    prefect_api: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The reference: the same dataset curated with every step in the flow's own process."""
    result = curate(config_for(input_file, tmp_path_factory.mktemp("local")), prefect_api)
    assert result["status"] == "published"
    return result


def steps_per_worker(address: str) -> list[int]:
    """How many task state transitions each worker of the scheduler has gone through."""
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        return list(client.run(lambda dask_worker: dask_worker.state.transition_counter).values())


@pytest.mark.integration
def test_a_run_through_a_dask_scheduler_publishes_what_an_in_process_run_does(
    input_file: Path,
    tmp_path: Path,
    prefect_api: str,  # noqa: F811
    scheduler: str,
    in_process: dict[str, Any],
) -> None:
    before = steps_per_worker(scheduler)
    config = config_for(input_file, tmp_path, "executor.kind=dask", f"executor.address={scheduler}")
    result = curate(config, prefect_api)
    assert result["status"] == "published"
    assert all(after > then for after, then in zip(steps_per_worker(scheduler), before)), "both workers ran steps"
    expected, got = content(Path(in_process["path"])), content(Path(result["path"]))
    assert got["manifest"]["fingerprint"] == expected["manifest"]["fingerprint"]
    assert got.keys() == expected.keys() and any(name.startswith("data/validation") for name in got)
    for name in expected:
        assert got[name] == expected[name], name


@pytest.mark.integration
def test_an_input_error_on_a_worker_is_raised_in_the_flow(tmp_path: Path, scheduler: str) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    dataset = {"name": "empty", "inputs": [str(empty)]}
    with (
        executors.executor(ExecutorConfig(kind="dask", address=scheduler)),
        pytest.raises(PipelineError, match=re.escape(f"input {empty} is empty")),
    ):
        executors.run(ingest, dataset, SHARD_ROWS, str(tmp_path / "work"))


@pytest.mark.integration
def test_a_scheduler_with_another_version_of_the_package_is_refused(tmp_path: Path) -> None:
    # A scheduler started from another checkout: a `pipeline` package of another
    # version comes first on its path (the workers are fine).
    other = tmp_path / "other-checkout"
    (other / "pipeline").mkdir(parents=True)
    (other / "pipeline" / "__init__.py").write_text('__version__ = "0.0.0-other"\n')
    env = service_env(tmp_path / "prefect-home")
    stale = {**env, "PYTHONPATH": os.pathsep.join([str(other), env["PYTHONPATH"]])}
    with (
        dask_scheduler(stale, tmp_path) as address,
        dask_workers(address, 1, env, tmp_path),
        pytest.raises(PipelineError) as err,
        executors.connect(address, timeout=10),
    ):
        pass
    assert str(err.value).startswith(
        f"executor.address {address}: the Dask scheduler has pipeline 0.0.0-other, not {pipeline.__version__}; "
        "start the scheduler and its workers from a venv where `pip install -e .` installed this checkout"
    )


@pytest.mark.integration
def test_a_local_cluster_serves_the_block_and_stops_with_it() -> None:
    with executors.executor(ExecutorConfig(kind="dask", workers=2)) as client:
        address = client.scheduler.address
        assert address.startswith("tcp://127.0.0.1:")
        assert len(client.scheduler_info()["workers"]) == 2
    with pytest.raises(PipelineError, match="no Dask scheduler answered"), executors.connect(address, timeout=1):
        pass


def test_a_scaled_out_run_without_a_prefect_server_says_how_to_start_one(
    input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    args = ["--executor", "dask", "--workers", "2"]
    # other tests of the session may have set a server (the flow tests' harness): none here
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code = main(["run", "--input", str(input_file), "--output", str(tmp_path / "out"), "--quiet", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: executor dask needs a Prefect server to record the run: start one with")
    assert "PREFECT_API_URL=" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_a_scheduler_without_workers_fails_fast_with_a_clear_error(
    input_file: Path, tmp_path: Path, prefect_api: str, capsys: pytest.CaptureFixture  # noqa: F811
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        dask_scheduler(service_env(tmp_path / "prefect-home"), tmp_path) as address,
        temporary_settings({PREFECT_API_URL: prefect_api}),
    ):
        args = ["--executor", "dask", "--address", address, "--set", "executor.timeout=2"]
        code = main(["run", "--input", str(input_file), "--output", str(tmp_path / "out"), "--quiet", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (
        f"error: executor.address {address}: the Dask scheduler has no workers (waited 2 s); "
        f"start some with `dask worker {address}`"
    )
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------- more than one process holds

LARGE_ROWS, LARGE_SHARD_ROWS = 240_000, 10_000
"""Real English text (``benchmarks/scale.py``'s corpus: 5% exact and 5% near copies) in
shards of 10,000 rows; its first third is run first, for comparison."""


class PeakMemory:
    """Peak RSS of some processes and peak size of a folder, sampled in a thread."""

    def __init__(self, pids: list[int], folder: Path) -> None:
        import psutil

        self.processes = [psutil.Process(pid) for pid in pids]
        self.folder = folder
        self.rss = [0] * len(pids)
        self.folder_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            for i, process in enumerate(self.processes):
                self.rss[i] = max(self.rss[i], process.memory_info().rss)
            self.folder_bytes = max(self.folder_bytes, self._size())

    def _size(self) -> int:
        """The folder's bytes now; 0 when it goes away as it is read (publishing deletes it)."""
        try:
            return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        except FileNotFoundError:
            return 0

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(corpus: Path, out: Path, api: str, scheduler: str, pids: list[int]) -> PeakMemory:
    config = load_config(None, inputs=[str(corpus)], output=str(out), overrides=[
        f"shard_rows={LARGE_SHARD_ROWS}", "executor.kind=dask", f"executor.address={scheduler}",
    ])
    with PeakMemory(pids, out / corpus.stem / ".work") as peak:
        assert curate(config, api)["status"] == "published"
    return peak


@pytest.mark.integration
def test_what_a_worker_holds_does_not_grow_with_the_rows(
    tmp_path: Path, prefect_api: str, scheduler: str  # noqa: F811
) -> None:
    """docs/scaling.md, "More than one machine": a worker holds one shard and its step's
    temporaries, so three times the rows (and a work folder larger than any worker's
    memory) leave the workers' peak memory where it was; every worker takes part. The
    flow's own process holds the decide steps (bytes per row) and is not measured here."""
    from distributed import Client

    from benchmarks.scale import build_corpus

    large, third = tmp_path / "large.jsonl", tmp_path / "third.jsonl"
    build_corpus(LARGE_ROWS, large)
    with large.open() as lines, third.open("w") as out:
        out.writelines(islice(lines, LARGE_ROWS // 3))
    with Client(scheduler, set_as_default=False) as client:
        pids = list(client.run(os.getpid).values())
    small = run_measured(third, tmp_path / "out-third", prefect_api, scheduler, pids)
    before = steps_per_worker(scheduler)
    peak = run_measured(large, tmp_path / "out-large", prefect_api, scheduler, pids)
    assert all(after > then for after, then in zip(steps_per_worker(scheduler), before)), "both workers ran steps"
    held = large.stat().st_size + peak.folder_bytes
    mib = lambda values: ", ".join(f"{v / 2**20:.0f}" for v in values)  # noqa: E731
    figures = (f"{LARGE_ROWS // 3:,} rows: workers' peak RSS {mib(small.rss)} MiB; {LARGE_ROWS:,} rows: "
               f"{mib(peak.rss)} MiB, input and work folder {held / 2**20:.0f} MiB")
    print(figures)
    assert held > 1.25 * max(peak.rss), figures
    assert max(peak.rss) < max(small.rss) + 0.1 * held, figures
