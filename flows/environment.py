"""Prefect's settings, logging and server, as the command line sets them up.

``python -m pipeline run`` runs the ``curate`` flow in-process with nothing to set up:
unless the user points ``PREFECT_API_URL`` at a server, it starts a temporary one
whose home (database, logs) lives in ``<output>/.prefect``, out of the user's way.
The ``prepare_*`` functions and :func:`start_temporary_server` set environment
variables, read when ``prefect`` is first imported: call them before that. Nothing
here imports ``prefect`` at module level.

The temporary server is the child process Prefect itself would start (``python -m
uvicorn ...``), but started by ``run`` as soon as the inputs are checked, rather than
by Prefect's client when the flow begins: its 2.7 s of start-up then overlap the run's
own imports (:class:`TemporaryServer`). A new home gets a copy of an empty database
that an earlier run's server left, or on a new machine one made from the schema
Prefect's migrations end at (:func:`_seed_database`), since migrating a new one
takes 5-6 s. The server is stopped at exit; a run that is killed cannot stop it, and the
server (about 200 MB) would run on for good. Each run marks its server with its own
identity, passed down in the environment, and stops the servers whose run is gone
before it starts its own (:func:`stop_orphaned_servers`).
"""

from __future__ import annotations

import atexit
import http.client
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows import prefect_database
from pipeline.errors import PipelineError
from pipeline.files import DISK_FULL_MESSAGES, disk_full

if TYPE_CHECKING:
    from rich.console import Console


SERVER_ROOM = 8 * 2**20
"""Free bytes the temporary server needs for its SQLite database (5 MB new, then growing)."""
RUN_ID = "PIPELINE_RUN_ID"
"""The environment variable that names the run (pid and start time) a server belongs to."""
EPHEMERAL = "PREFECT__SERVER_EPHEMERAL=1"
"""What Prefect puts in its temporary server's environment, and no other process's."""
STARTUP_FAILURE = 3
"""uvicorn's exit status when it cannot start, such as when its port was taken meanwhile."""
DATABASE_SETTINGS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")
"""Settings that move the server's database out of ``PREFECT_HOME``."""


def prepare_prefect(output: str, verbose: bool) -> None:
    """Hermetic Prefect defaults for a run in this process; must run before ``prefect`` is imported.

    Stops the temporary servers of runs that were killed, and marks this run's own."""
    stop_orphaned_servers()
    own = _process_id(os.getpid())
    if own is not None:
        os.environ[RUN_ID] = own
    if not os.environ.get("PREFECT_API_URL"):
        home = Path(os.environ.setdefault("PREFECT_HOME", str(Path(output).resolve() / ".prefect")))
        home.mkdir(parents=True, exist_ok=True)  # Prefect makes no parents
        free = shutil.disk_usage(home).free
        if free < SERVER_ROOM:
            # Else the server fails to start, again and again on new ports, for 90 s,
            # printing its traceback each time.
            raise PipelineError(
                f"disk full: {free / 2**20:.1f} MB free in {home}, where Prefect's temporary server keeps its "
                f"database (it needs about {SERVER_ROOM // 2**20} MB): free some space or choose another --output, "
                "then run again"
            )
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _process_id(pid: int) -> str | None:
    """``<pid>:<start time>`` of a live process (a pid alone may be reused), from
    ``/proc``; None if there is no such process, or no ``/proc`` (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (name)", which may hold spaces
    if fields[0] == "Z":  # exited, not yet reaped
        return None
    return f"{pid}:{fields[19]}"


def _orphaned_servers() -> list[int]:
    """Pids of the temporary Prefect servers started by runs that are gone."""
    orphans = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        owner = next((v[len(RUN_ID) + 1:].decode() for v in environ if v.startswith(f"{RUN_ID}=".encode())), "")
        pid = owner.split(":")[0]
        if not pid.isdigit() or EPHEMERAL.encode() not in environ:
            continue
        if _process_id(int(pid)) != owner and _process_id(int(entry.name)) is not None:
            orphans.append(int(entry.name))
    return orphans


def stop_orphaned_servers(grace: float = 5.0) -> list[int]:
    """Stop the temporary Prefect servers whose run was killed (SIGTERM, then SIGKILL
    after ``grace`` seconds); their pids. A live run's server is left alone, whatever
    output folder it serves: only a server whose run is gone counts."""
    orphans = _orphaned_servers()
    for pid in orphans:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_process_id(pid) for pid in orphans) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in orphans:
        if _process_id(pid) is not None:
            _signal(pid, signal.SIGKILL)
    return orphans


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class TemporaryServer:
    """Prefect's temporary server for this process's flow runs, started in the background.

    The same server Prefect would start (``uvicorn`` on Prefect's app factory, no UI,
    marked ephemeral), on a free loopback port; Prefect's client finds it through
    ``PREFECT_API_URL``, as under Prefect's own test harness.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.new_database = _seed_database(home)
        self.port = 0
        self.process = self._spawn()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> subprocess.Popen[bytes]:
        """The server process on a port free now; its output goes where this process's does."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        app_dir = Path(find_spec("prefect").origin).parent.parent  # type: ignore[arg-type, union-attr]
        command = [
            sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "error", "--lifespan", "on",
        ]
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        return subprocess.Popen(command, env=env)

    def wait(self, timeout: float) -> None:
        """Return once the server answers ``/api/health``; start it again on another port
        if its port was taken meanwhile. Then, if its database was new, keep a copy of
        it, migrated and empty, for the next new home."""
        deadline = time.monotonic() + timeout
        while not self._healthy():
            status = self.process.poll()
            if status == STARTUP_FAILURE and _port_taken(self.port):
                self.process = self._spawn()
            elif status is not None:
                raise RuntimeError(f"Prefect's temporary server exited with status {status}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"Prefect's temporary server did not answer within {timeout:g} s "
                    "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
                )
            time.sleep(0.05)
        if self.new_database:
            _save_template(self.home / "prefect.db")

    def _healthy(self) -> bool:
        """Whether the server answers, asked directly (no proxy stands between)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/api/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); a stopped one stays stopped."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _port_taken(port: int) -> bool:
    """Whether another process holds ``port`` on 127.0.0.1 now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def start_temporary_server() -> TemporaryServer | None:
    """Start this run's temporary Prefect server now, stopped at exit; None where the run
    uses another server (``PREFECT_API_URL``) or Prefect is imported already.

    Prefect reads its settings once, when imported: the server's address must be in the
    environment by then, so this runs after :func:`prepare_prefect` and before ``prefect``
    is imported, and leaves the server to Prefect once it is (in-process callers that
    imported it, such as a test harness). Its caller waits for it
    (:meth:`TemporaryServer.wait`) before the flow runs. The server is stopped at exit
    rather than after the flow: Prefect sends its last logs and events at exit, before
    ``atexit`` functions run."""
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    server = TemporaryServer(Path(os.environ["PREFECT_HOME"]))
    atexit.register(server.stop)
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ.setdefault("PREFECT_UI_URL", "")  # no "View at" links: this server has no UI
    return server


def _database_template() -> Path:
    """Where an empty database migrated by the installed Prefect is kept:
    ``$XDG_CACHE_HOME/curation-pipeline/prefect/<version>.db`` (``~/.cache`` by default)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "curation-pipeline" / "prefect" / f"prefect-{version('prefect')}.db"


def _seed_database(home: Path) -> bool:
    """Give a new home its database: a copy of the template, or else one made from
    the packaged schema of Prefect's last migration (:mod:`flows.prefect_database`).
    Returns whether the home's database is new, not the template: then the server
    registers its block types in it (or, where there is no schema for the installed
    Prefect, makes it by migrating from nothing, 5-6 s), and :meth:`TemporaryServer.wait`
    keeps a copy as the template.

    The template is what Prefect's migrations (or the schema) and block registration
    left in an empty database, so the server finds it up to date. Either is put in
    place only if no database appeared meanwhile (``os.link`` fails on an existing
    name), so two runs starting in one new folder share one database."""
    if any(os.environ.get(name) for name in DATABASE_SETTINGS):
        return False
    database, template = home / "prefect.db", _database_template()
    if database.exists():
        return False
    partial = home / f".prefect.db.{os.getpid()}"
    copied = template.is_file()
    try:
        if copied:
            shutil.copyfile(template, partial)
        elif not prefect_database.create(partial):
            return True
        os.link(partial, database)
    except FileExistsError:
        pass
    except (OSError, sqlite3.Error) as exc:  # Prefect makes the database, as it would anyway
        logging.getLogger(__name__).debug("no database from %s: %s", template if copied else "the schema", exc)
        return True
    finally:
        partial.unlink(missing_ok=True)
    return not copied


def _save_template(database: Path) -> None:
    """Keep a copy of ``database``, freshly migrated by a server that answers, as the
    template of later new homes. SQLite's backup copies a consistent state while the
    server runs; a cache that cannot be written only means the next new home migrates too."""
    template = _database_template()
    partial = template.with_name(f".{template.name}.{os.getpid()}")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(partial)) as copy:
            source.backup(copy)
        os.replace(partial, template)
    except (OSError, sqlite3.Error) as exc:
        logging.getLogger(__name__).debug("no template database at %s: %s", template, exc)
        with suppress(OSError):  # a folder that could not be made holds no partial copy
            partial.unlink(missing_ok=True)


def prepare_prefect_for_serving() -> None:
    """Defaults for serving a deployment from this process; must run before ``prefect``
    is imported. The runs, child processes, inherit them. There is no ``PREFECT_HOME``
    to set: a served schedule lives on a real server."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    os.environ.setdefault("DO_NOT_TRACK", "1")


class HideInputErrors(logging.Filter):
    """Drop Prefect's log records about a ``PipelineError`` or a full disk.

    Such an error is the user's input or config, or their disk, and the CLI reports it
    in one line; Prefect would also log it, with a traceback, once per task and once
    per flow. Its state lines keep only the exception's text, hence the messages.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError) or disk_full(exc):
            return False
        message = record.getMessage()
        return "PipelineError" not in message and not any(m in message for m in DISK_FULL_MESSAGES)


def _prefect_handlers() -> list[logging.Handler]:
    """The handlers of the root logger and of every ``prefect`` logger made so far."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith("prefect")]
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in names)]
    return [handler for logger in loggers for handler in logger.handlers]


def hide_input_errors_in_prefect_logs() -> None:
    """Add :class:`HideInputErrors` to Prefect's log handlers (once each)."""
    from prefect import flow  # noqa: F401  (importing Prefect's API sets its log handlers up)

    for handler in _prefect_handlers():
        if not any(isinstance(f, HideInputErrors) for f in handler.filters):
            handler.addFilter(HideInputErrors())


@contextmanager
def prefect_logs_on(console: Console, enabled: bool) -> Iterator[None]:
    """Print Prefect's console log records through ``console`` for the duration.

    Prefect's handler has a console of its own on the real stderr; while progress
    bars are shown, its lines would land in the middle of them (``rich`` keeps a live
    display intact only for what prints through the display's console). ``console``
    must not read markup, as Prefect's does not.
    """
    if not enabled:
        yield
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    own = {handler: handler.console for handler in _prefect_handlers() if isinstance(handler, PrefectConsoleHandler)}
    for handler in own:
        handler.console = console
    try:
        yield
    finally:
        for handler, previous in own.items():
            handler.console = previous


def prefect_api(needs: str) -> str:
    """The configured Prefect API URL, once it answers; else an error that starts with
    ``needs`` (what needs a server, and why) and says how to start one."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise PipelineError(
            f"{needs}: start one with `prefect server start`, then export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    try:
        httpx.get(f"{api.rstrip('/')}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise PipelineError(
            f"no Prefect server answers at PREFECT_API_URL={api} ({exc}): start one with `prefect server start`"
        ) from None
    return api


def schedule(cron: str | None, interval: float | None, timezone: str) -> Any:
    """The Prefect schedule of ``deploy``'s ``--cron``, ``--interval`` and ``--timezone``
    (whose names its errors give), or None when neither is given."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.schedules import Cron, Interval

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise PipelineError(
            f"--timezone {timezone!r}: unknown time zone; use an IANA name such as Europe/Berlin or UTC"
        ) from None
    if cron is not None:
        try:
            return Cron(cron, timezone=timezone)
        except ValueError:
            raise PipelineError(f"--cron {cron!r}: not a cron expression (minute hour day month weekday)") from None
    if interval is not None:
        if interval <= 0:
            raise PipelineError(f"--interval {interval:g}: expected a number of seconds above 0")
        return Interval(interval, timezone=timezone)
    return None
