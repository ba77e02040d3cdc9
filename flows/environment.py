"""Prefect's settings, logging and server, as the command line sets them up.

``python -m pipeline run`` runs the ``curate`` flow in-process with nothing to set up:
unless the user points ``PREFECT_API_URL`` at a server, Prefect starts a temporary one
whose home (database, logs) lives in ``<output>/.prefect``, out of the user's way.
The ``prepare_*`` functions set environment defaults, read when ``prefect`` is first
imported: call them before that. Nothing here imports ``prefect`` at module level.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from rich.console import Console


def prepare_prefect(output: str, verbose: bool) -> None:
    """Hermetic Prefect defaults for a run in this process; must run before ``prefect`` is imported."""
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(Path(output).resolve() / ".prefect"))
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes no parents
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def prepare_prefect_for_serving() -> None:
    """Defaults for serving a deployment from this process; must run before ``prefect``
    is imported. The runs, child processes, inherit them. There is no ``PREFECT_HOME``
    to set: a served schedule lives on a real server."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    os.environ.setdefault("DO_NOT_TRACK", "1")


class HideInputErrors(logging.Filter):
    """Drop Prefect's log records about a ``PipelineError``.

    Such an error is the user's input or config, and the CLI reports it in one line;
    Prefect would also log it, with a traceback, once per task and once per flow.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, PipelineError) and "PipelineError" not in record.getMessage()


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
