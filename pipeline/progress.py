"""Progress of long stages: rows done, rate and time left, for a person at a terminal.

Two sides report into one process-global, thread-safe hub:

* the flow says a step started over N rows (:func:`step_started`, or :func:`step`
  around the block), that a shard finished (:func:`shard_finished`) and that the
  step ended (:func:`step_finished`);
* a stage running in the same process may say how many rows of its shard it has done
  so far (:func:`rows_done`), for loops slow enough that per-shard updates would leave
  the bar still for minutes. ``pipeline.steps`` tells the hub which shard a stage is
  working on (:func:`in_shard`), so stages need not know.

A shard's rows are counted once: when it finishes, the flow adds only what its stage
did not already report. On a Dask worker no reporter is installed, in-shard updates are
dropped, and the flow's per-shard updates carry the whole count; nothing relies on
memory shared with the flow. With no reporter installed (tests, a pipe, ``--quiet``)
every call is a no-op.

:class:`RichReporter` draws one ``rich`` progress line per running step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text


@dataclass(frozen=True)
class Step:
    """One pass of a stage over the rows: ``summarize``, ``decide`` or ``apply``."""

    stage: str
    phase: str = "apply"

    @property
    def label(self) -> str:
        return self.stage if self.phase == "apply" else f"{self.stage} {self.phase}"


class Reporter(Protocol):
    """What the hub tells a display. Calls are serialised by the hub's lock."""

    def started(self, step: Step, total: int | None) -> None:
        """``step`` began over ``total`` rows (None: a step with no rows to count)."""

    def advanced(self, step: Step, rows: int) -> None:
        """``rows`` more rows of ``step`` are done."""

    def finished(self, step: Step) -> None:
        """``step`` ended, successfully or not."""


_lock = threading.Lock()
_reporter: Reporter | None = None
_running: set[Step] = set()
_reported: dict[tuple[Step, str], int] = {}
"""Rows each running shard has reported from inside its stage, so far."""
_shard: ContextVar[tuple[Step, str] | None] = ContextVar("pipeline_progress_shard", default=None)


@contextmanager
def install(reporter: Reporter) -> Iterator[Reporter]:
    """Send this process's progress to ``reporter`` for the duration of the block."""
    global _reporter
    with _lock:
        if _reporter is not None:
            raise RuntimeError("a progress reporter is already installed")
        _reporter = reporter
    try:
        yield reporter
    finally:
        with _lock:
            _reporter = None
            _running.clear()
            _reported.clear()


@contextmanager
def step(stage: str, phase: str, total: int | None) -> Iterator[None]:
    """The block runs one step of ``stage`` over ``total`` rows (None: nothing to count)."""
    step_started(stage, phase, total)
    try:
        yield
    finally:
        step_finished(stage, phase)


def step_started(stage: str, phase: str, total: int | None) -> None:
    key = Step(stage, phase)
    with _lock:
        if _reporter is not None:
            _running.add(key)
            _reporter.started(key, total)


def shard_finished(stage: str, phase: str, shard: str, rows: int) -> None:
    """The flow saw ``shard`` (``rows`` rows) finish; adds what the stage did not report."""
    key = Step(stage, phase)
    with _lock:
        done = _reported.pop((key, shard), 0)
        if _reporter is not None and key in _running and rows > done:
            _reporter.advanced(key, rows - done)


def step_finished(stage: str, phase: str) -> None:
    key = Step(stage, phase)
    with _lock:
        if _reporter is not None and key in _running:
            _running.discard(key)
            for shard in [k for k in _reported if k[0] == key]:
                del _reported[shard]
            _reporter.finished(key)


@contextmanager
def in_shard(stage: str, phase: str, shard: str) -> Iterator[None]:
    """Attribute :func:`rows_done` calls in this block (this thread or task) to ``shard``."""
    token = _shard.set((Step(stage, phase), shard))
    try:
        yield
    finally:
        _shard.reset(token)


def rows_done(rows: int) -> None:
    """``rows`` more rows of the current shard are done; a no-op outside :func:`in_shard`,
    with no reporter installed, or once the step has ended."""
    key = _shard.get()
    if key is None or rows <= 0:
        return
    with _lock:
        if _reporter is not None and key[0] in _running:
            _reported[key] = _reported.get(key, 0) + rows
            _reporter.advanced(key[0], rows)


# ------------------------------------------------------------------------------ display


def rate(task: Task) -> float | None:
    """Rows per second since the step started, None before the first rows are done.

    An average over the whole step rather than rich's recent-window speed: without
    in-shard reporting the updates come a shard at a time, which can be minutes apart,
    longer than any window; a step's rows cost about the same from start to end.
    """
    elapsed = task.elapsed
    if not task.completed or not elapsed:
        return None
    return task.completed / elapsed


class RowsColumn(ProgressColumn):
    """``12,345/50,000 rows``; nothing for a step without a row count."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed):,}/{int(task.total):,} rows", style="progress.download")


class RateColumn(ProgressColumn):
    """``1,234 rows/s`` (see :func:`rate`)."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        speed = rate(task)
        return Text(f"{speed:,.0f} rows/s" if speed is not None else "? rows/s", style="progress.data.speed")


class TimeLeftColumn(ProgressColumn):
    """``0:01:23 left`` at the step's rate so far (see :func:`rate`)."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        speed = rate(task)
        if speed is None:
            return Text("-:--:-- left", style="progress.remaining")
        seconds = int(max(task.total - task.completed, 0) / speed)
        return Text(f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d} left", style="progress.remaining")


class RichReporter:
    """One transient ``rich`` progress line per running step: name, bar, rows done of
    the total, rows/s and time left. Lines vanish as their steps end; the stage's log
    line and the run's result table say what happened.

    Draw it on the console that log records go to (``RichHandler(console=...)``), so
    that they print above the bars instead of through them. ``get_time`` is rich's
    clock, replaceable for a reproducible rate.
    """

    def __init__(self, console: Console, get_time: Callable[[], float] | None = None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            RowsColumn(),
            RateColumn(),
            TimeLeftColumn(),
            console=console,
            transient=True,
            get_time=get_time,
        )
        self._tasks: dict[Step, TaskID] = {}

    def started(self, step: Step, total: int | None) -> None:
        self._tasks[step] = self.progress.add_task(step.label, total=total)

    def advanced(self, step: Step, rows: int) -> None:
        self.progress.advance(self._tasks[step], rows)

    def finished(self, step: Step) -> None:
        self.progress.remove_task(self._tasks.pop(step))


@contextmanager
def display(console: Console, *, quiet: bool = False) -> Iterator[bool]:
    """Show progress on ``console`` during the block, unless ``quiet`` or the console
    is not a terminal (a pipe or file would get control codes and redrawn lines).
    Yields whether it does."""
    if quiet or not console.is_terminal:
        yield False
        return
    reporter = RichReporter(console)
    with reporter.progress, install(reporter):
        yield True
