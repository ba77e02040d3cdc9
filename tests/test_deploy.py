"""Deployments: ``prefect.yaml`` run by a ``process`` worker, and ``python -m pipeline deploy``.

The integration tests follow the README's walk-through against the session's real
Prefect server (``tests/servers.py``): ``prefect deploy --name curate`` from the repository
root, a ``process`` worker, a triggered run and the version it published; the flow
served by ``python -m pipeline deploy``, a run, Ctrl-C. The pool is created by the
worker (``--type process``) and runs are triggered through the API rather than
``prefect`` commands: each command costs seconds of start-up, and they are Prefect's
to test, not ours. The other tests check what ``deploy`` says before it needs a server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
import yaml

from pipeline.cli import main
from tests.servers import BIN, REPO, free_port, prefect_api, service_env, started  # noqa: F401 (fixture)

POOL = "local-process"
SAMPLE = "sample_data/instruction.jsonl"
QUICK = "stages.language.enabled=false"
"""langdetect takes most of a run's time on the sample; the deployments are the subject here."""
RUN_SECONDS = 240
T = TypeVar("T")


def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


@contextmanager
def api_settings(api: str) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        yield


def read_deployment(api: str, name: str) -> Any:
    """The deployment ``name`` (``FLOW/DEPLOYMENT``), or None while there is none."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with api_settings(api), get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def poll(get: Callable[[], T | None], seconds: float, what: str) -> T:
    """``get()`` once it returns something other than None or an empty list."""
    deadline = time.monotonic() + seconds
    while True:
        value = get()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {seconds:.0f} s")
        time.sleep(1)


def prefect_cli(env: dict[str, str], *args: str) -> None:
    """Run ``prefect ARGS`` from the repository root, as the README does."""
    done = subprocess.run(
        [str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def run_and_watch(api: str, deployment: str, **parameters: Any) -> None:
    """Trigger a run of ``deployment`` and wait for it to complete."""
    from prefect.deployments import run_deployment

    with api_settings(api):
        run = run_deployment(deployment, parameters=parameters, timeout=RUN_SECONDS, poll_interval=1, as_subflow=False)
    assert run.state is not None and run.state.is_completed(), f"{deployment}: {run.state}"


def published_fingerprint(out: Path, dataset: str) -> str:
    from pipeline.store import Store

    store = Store(out, dataset)
    assert store.versions() == ["v0001"]
    return store.manifest("v0001")["fingerprint"]


def expected_fingerprint(out: Path, config: Path | None = None) -> str:
    """The fingerprint ``python -m pipeline run`` would give the sample with ``config``."""
    from pipeline.config import load_config
    from pipeline.fingerprint import run_fingerprint

    cfg = load_config(config, inputs=[str(REPO / SAMPLE)], output=str(out), overrides=[QUICK])
    return run_fingerprint(cfg, "instruction").value


@pytest.fixture
def client_env(prefect_api: str, tmp_path: Path) -> dict[str, str]:  # noqa: F811
    """The environment of the CLI, worker and served process: the session's server,
    polling every second."""
    env = service_env(tmp_path / "prefect-home", prefect_api)
    env.update(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_LOGGING_LEVEL="INFO")
    return env


@pytest.mark.integration
def test_prefect_yaml_deploys_and_a_process_worker_runs_it(
    prefect_api: str, client_env: dict[str, str], tmp_path: Path  # noqa: F811
) -> None:
    declared = next(d for d in prefect_yaml()["deployments"] if d["name"] == "curate")
    worker = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
    # In the README's order: the pool first (a worker would create it too, but
    # `prefect deploy` refuses a pool that does not exist yet), then deploy, then a worker.
    prefect_cli(client_env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    prefect_cli(client_env, "--no-prompt", "deploy", "--name", "curate")
    with started("prefect-worker", worker, client_env, tmp_path):
        check_deployment_and_run_it(prefect_api, declared, tmp_path / "out")


def check_deployment_and_run_it(api: str, declared: dict[str, Any], out: Path) -> None:
    deployment = read_deployment(api, "curate-datasets/curate")
    assert deployment.work_pool_name == POOL
    assert deployment.parameters == declared["parameters"]
    schedule = deployment.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == (declared["schedules"][0]["cron"], declared["schedules"][0]["timezone"])
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]

    # The server's scheduler fills in the next runs, at 03:00 in the declared zone.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    def scheduled() -> list[Any]:
        with api_settings(api), get_client(sync_client=True) as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
        return [r for r in runs if r.state and r.state.is_scheduled()]

    zone = ZoneInfo(schedule.timezone)
    assert {r.expected_start_time.astimezone(zone).hour for r in poll(scheduled, 60, "scheduled runs")} == {3}

    # A relative input: the run must start in the repository root, as deployed.
    run_and_watch(api, "curate-datasets/curate", inputs=[SAMPLE], output=str(out), overrides=[QUICK])
    assert published_fingerprint(out, "instruction") == expected_fingerprint(out, REPO / declared["parameters"]["config"])


@pytest.mark.integration
def test_pipeline_deploy_serves_on_a_schedule_and_stops_on_ctrl_c(
    prefect_api: str, client_env: dict[str, str], tmp_path: Path  # noqa: F811
) -> None:
    out = tmp_path / "out"
    args = [
        sys.executable, "-m", "pipeline", "deploy", "--cron", "30 2 * * 1-5", "--timezone", "America/New_York",
        "--name", "served", "--input", SAMPLE, "--output", str(out), "--set", QUICK,
    ]
    log = tmp_path / "deploy.log"
    with open(log, "wb") as sink:
        serving = subprocess.Popen(
            args, cwd=REPO, env=client_env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deployment = poll(lambda: read_deployment(prefect_api, "curate-datasets/served"), 90, "served deployment")
        schedule = deployment.schedules[0].schedule
        assert (schedule.cron, schedule.timezone) == ("30 2 * * 1-5", "America/New_York")
        assert deployment.parameters["inputs"] == [str(REPO / SAMPLE)], "paths must not depend on the run's folder"
        assert deployment.parameters["output"] == str(out)

        run_and_watch(prefect_api, "curate-datasets/served")
        assert published_fingerprint(out, "instruction") == expected_fingerprint(out)

        os.killpg(serving.pid, signal.SIGINT)
        assert serving.wait(60) == 0, log.read_text()
    finally:
        if serving.poll() is None:
            os.killpg(serving.pid, signal.SIGKILL)
    assert "stopped: curate-datasets/served is paused" in log.read_text()
    assert read_deployment(prefect_api, "curate-datasets/served").paused


@pytest.mark.parametrize("deployment", prefect_yaml()["deployments"], ids=lambda d: d["name"])
def test_prefect_yaml_declares_a_scheduled_deployment_the_flow_accepts(deployment: dict[str, Any]) -> None:
    import importlib

    path, _, name = deployment["entrypoint"].partition(":")
    try:
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    except ModuleNotFoundError as exc:  # finetune's torch, transformers, peft: the train extra
        pytest.skip(f"{path} needs {exc.name}, which is not installed")
    getattr(module, name).validate_parameters(deployment["parameters"])
    assert deployment["schedules"] and all(ZoneInfo(s["timezone"]) for s in deployment["schedules"])
    assert deployment["work_pool"]["name"] == POOL


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "0 3 * *"], "--cron '0 3 * *': not a cron expression"),
        (["--cron", "0 3 * * *", "--timezone", "Mars/Olympus"], "--timezone 'Mars/Olympus': unknown time zone"),
        (["--interval", "0"], "--interval 0: expected a number of seconds above 0"),
    ],
)
def test_deploy_rejects_a_bad_schedule_in_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["deploy", "--config", str(REPO / "pipeline.yaml"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_deploy_without_a_server_says_how_to_start_one(capsys: pytest.CaptureFixture) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["deploy", "--cron", "0 3 * * *", "--config", str(REPO / "pipeline.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: deploy needs a Prefect server") and "prefect server start" in err
    assert "PREFECT_API_URL=" in err and err.count("\n") == 1

    url = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        assert main(["deploy", "--interval", "3600", "--config", str(REPO / "pipeline.yaml")]) == 2
    assert capsys.readouterr().err.startswith(f"error: no Prefect server answers at PREFECT_API_URL={url}")
