"""Training progress for a person: a live line at a terminal, a line per epoch anywhere.

Plain text on a stream, nothing else: the training package runs alone on a GPU box,
without the ``rich`` display the curate command uses. At a terminal the live line is
redrawn in place (step, running loss, tokens/s, time left); to a pipe or a log only
the per-epoch lines and notes are written, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Receives the training loop's events; ``write`` gets each finished line."""

    def __init__(self, write: Callable[[str], None] | None = None, live: TextIO | None = None) -> None:
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.live = live
        self._epoch = 0
        self._epochs = 0
        self._steps = 0
        self._done = 0
        self._loss = 0.0
        self._tokens = 0
        self._started = 0.0
        self._drawn = 0.0

    @classmethod
    def for_terminal(cls, quiet: bool = False) -> Progress:
        """Live on stderr when it is a terminal; silent but for errors with ``quiet``."""
        if quiet:
            return cls(write=lambda line: None)
        return cls(live=sys.stderr if sys.stderr.isatty() else None)

    def note(self, message: str) -> None:
        self._clear()
        self.write(message)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch, self._epochs, self._steps = epoch, epochs, steps
        self._done, self._loss, self._tokens = 0, 0.0, 0
        self._started = time.perf_counter()

    def step(self, loss: float, tokens: int) -> None:
        self._done += 1
        self._loss += loss
        self._tokens += tokens
        now = time.perf_counter()
        if self.live is None or (now - self._drawn < 0.2 and self._done < self._steps):
            return
        self._drawn = now
        elapsed = now - self._started
        left = elapsed / self._done * (self._steps - self._done)
        width = 24
        filled = int(width * self._done / max(self._steps, 1))
        self.live.write(
            f"\repoch {self._epoch}/{self._epochs} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self._done}/{self._steps} loss {self._loss / self._done:.4f} "
            f"{self._tokens / max(elapsed, 1e-9):,.0f} tok/s {left:,.0f}s left "
        )
        self.live.flush()

    def end_epoch(self, summary: str) -> None:
        self.note(f"epoch {self._epoch}/{self._epochs}: {summary}")

    def _clear(self) -> None:
        if self.live is not None and self._drawn:
            self.live.write("\r\033[K")
            self.live.flush()
            self._drawn = 0.0
