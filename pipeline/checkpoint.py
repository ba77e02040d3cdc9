"""Where a run stands after its last finished stage, so the copies of the rows before
it can be deleted and a run that was stopped resumes after it.

Why: every stage that changes rows writes a copy of them, and the work folder held
each one until the version was published: 3.9 times the input at a million rows. Only
the newest copy is read again (by the next stage), so once a stage has finished on
every shard, the copy it read is deleted, and what the rest of the run needs (the rows
as that stage left them, each stage's removed rows, scores and figures) is written
here first, in one atomic file. The work folder then holds one copy of the rows, two
while a stage writes its own, and the summaries of one global stage.

What that costs: a stopped run resumes after its last finished stage, as before, and
the tasks of an unfinished stage still come from Prefect's cache shard by shard; but a
run whose settings differ from the stopped one's before that stage cannot use the
checkpoint, and the rows most stages before the change left are gone: it goes through
every stage again, taking from the cache only the steps whose files are still there.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pipeline
from pipeline.files import write_atomically
from pipeline.steps import Ingested, Shard
from pipeline.version import StageReport

log = logging.getLogger("pipeline")

FILE = "checkpoint.pkl"


@dataclass
class Checkpoint:
    """The curate flow's state after the stage at ``index`` of the registry."""

    index: int
    """Registry position of the last finished stage."""
    key: str
    """Its step key (:meth:`pipeline.fingerprint.Fingerprint.step_key`): chained from
    every stage before it, so equal keys mean equal settings all the way up."""
    ingested: Ingested
    shards: list[Shard]
    """The rows as that stage left them."""
    reports: list[StageReport] = field(default_factory=list)
    removed: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, list[str]] = field(default_factory=dict)
    report_order: dict[str, str] = field(default_factory=dict)
    code: str = pipeline.__version__

    def files(self) -> list[str]:
        """Every file the rest of the run reads from this checkpoint."""
        paths = [f for s in self.shards for f in s.files]
        paths += [p for ps in (*self.removed.values(), *self.scores.values()) for p in ps]
        return paths + ([self.ingested.rejected.path] if self.ingested.rejected else [])

    def save(self, work: Path) -> None:
        write_atomically(work / FILE, lambda tmp: tmp.write_bytes(pickle.dumps(self)))


def load(work: Path) -> Checkpoint | None:
    """The work folder's checkpoint, or None when there is none, it was written by
    another version of this package, or a file it names is gone (then the stages run
    again, from Prefect's cache where their files are still there)."""
    path = work / FILE
    if not path.exists():
        return None
    try:
        checkpoint = pickle.loads(path.read_bytes())
    except Exception as exc:  # a checkpoint of other code: not an error, just not usable
        log.info("%s: not usable (%s); running every stage", path, exc)
        return None
    if not isinstance(checkpoint, Checkpoint) or checkpoint.code != pipeline.__version__:
        return None
    if not all(os.path.exists(p) for p in checkpoint.files()):
        return None
    return checkpoint


def drop_superseded(before: list[Shard], after: list[Shard], work: Path) -> None:
    """Delete the row copies of ``before`` (what a stage read) that ``after`` (what it
    left) does not name: a shard a stage left as it was is passed on, not copied, so
    its file is still in use. Only files inside the work folder are deleted (the
    checkpoint naming ``after`` is written before this is called)."""
    kept = {s.path for s in after}
    for shard in before:
        path = Path(shard.path)
        if shard.path not in kept and path.is_relative_to(work):
            path.unlink(missing_ok=True)
