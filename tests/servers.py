"""Real servers for integration tests, started on free loopback ports and always stopped.

Each service runs in its own process group, so that teardown reaches every process it
started (a ``dask worker``'s nanny child, Prefect's server processes) with one signal,
whether the test passed or not. Output goes to a log file whose tail is put in the
error when a service fails to come up.

The context managers are plain (usable from benchmarks too); the fixtures at the end
wrap them for pytest. Import a fixture into a test module to use it::

    from tests.servers import prefect_api  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # Started in the background by a non-interactive shell, the tests ignore SIGINT,
    # and so would every process they start: a Prefect worker would never stop (it
    # stops on SIGTERM by sending itself SIGINT), nor `pipeline deploy` on Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
"""The venv's scripts (``prefect``, ``dask``): the tests may run without the venv activated."""
PREFECT_STARTUP_SECONDS = 120.0
"""A healthy server takes 8-16 s here; a loaded CI machine may take several times that."""
DASK_STARTUP_SECONDS = 60.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may still take it before us)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(prefect_home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment of a service or worker: hermetic Prefect settings (no analytics,
    no network, its own home), this repository importable, and the ``pipeline`` logger
    forwarded to Prefect."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_EXTRA_LOGGERS="pipeline",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    )
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return env


def default_sigint() -> None:
    """Let a child handle SIGINT again (as ``preexec_fn``). A shell that starts pytest
    in the background makes it ignore SIGINT, and children inherit that: a Prefect
    worker then never stops on SIGTERM (it stops by sending itself SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


SETPRIV = shutil.which("setpriv")
"""util-linux's ``setpriv``, to have a service SIGKILLed when the process that started
it dies: teardown stops services when a test fails, but not when pytest itself is
killed, and a ``dask worker`` would then run on for good, waiting for its scheduler."""


class Service:
    """One started process group and its log."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as out:
            if SETPRIV is not None:
                args = [SETPRIV, "--pdeathsig", "KILL", "--", *args]
            self.process = subprocess.Popen(
                args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], seconds: float) -> None:
        """Poll ``ready`` until it is true; fail with the log's tail if the process
        exits or ``seconds`` pass first."""
        deadline = time.monotonic() + seconds
        while not ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {seconds:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM to the whole group; 10 s later, SIGKILL to whatever is left of it
        (the leader may exit on SIGTERM before its children do)."""
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass


@contextmanager
def started(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Iterator[Service]:
    service = Service(name, args, env, log_dir)
    try:
        yield service
    finally:
        service.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """``prefect server start`` on a free loopback port with its home (database, logs)
    in ``home``; yields the API URL (``http://127.0.0.1:PORT/api``) once healthy."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = service_env(home)
    env.update(PREFECT_SERVER_UI_ENABLED="false", PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with started("prefect-server", args, env, home) as server:
        api = f"http://127.0.0.1:{port}/api"
        server.wait_until(lambda: _healthy(f"{api}/health"), PREFECT_STARTUP_SECONDS)
        yield api


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def dask_scheduler(env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """``dask scheduler`` on a free loopback port; yields its ``tcp://`` address."""
    port = free_port()
    args = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    with started(f"dask-scheduler-{port}", args, env, log_dir) as scheduler:
        scheduler.wait_until(lambda: _listening(port), DASK_STARTUP_SECONDS)
        yield f"tcp://127.0.0.1:{port}"


@contextmanager
def dask_workers(address: str, count: int, env: dict[str, str], log_dir: Path) -> Iterator[None]:
    """``count`` single-threaded ``dask worker`` processes on loopback, connected to
    ``address``; returns once the scheduler lists them all."""
    from distributed import Client

    with ExitStack() as stack:
        for i in range(count):
            args = [
                str(BIN / "dask"),
                "worker",
                address,
                "--host",
                "127.0.0.1",
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--name",
                f"worker-{i}",
            ]
            stack.enter_context(started(f"dask-worker-{address.rsplit(':', 1)[1]}-{i}", args, env, log_dir))
        with Client(address, timeout=DASK_STARTUP_SECONDS, set_as_default=False) as client:
            client.wait_for_workers(count, timeout=DASK_STARTUP_SECONDS)
        yield


_session_api: list[str] = []
"""The URL of the session's server while it runs (see :func:`prefect_api`)."""


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect server for the session; yields its API URL. Tests point Prefect
    at it with ``prefect.settings.temporary_settings``, or pass it to subprocesses as
    ``PREFECT_API_URL``.

    pytest makes a separate session fixture of each module that imports this one, so
    the first to run starts the server and the others reuse it: one server per
    session, stopped when the first one's fixture is torn down at the session's end.
    """
    if _session_api:
        yield _session_api[0]
        return
    with tempfile.TemporaryDirectory(prefix="pipeline-prefect-server-") as home, prefect_server(Path(home)) as api:
        _session_api.append(api)
        try:
            yield api
        finally:
            _session_api.clear()
