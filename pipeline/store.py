"""The versioned store: one folder per dataset, one immutable folder per version.

::

    out/<dataset>/
      LATEST                  name of the newest version, replaced atomically
      v0001/                  data/*.parquet, reports/*.parquet, manifest.json, README.md
      .staging-<id>/          a version being written; never read
      .staging-<id>.lock      held by the run writing it, removed with it
      .work/<key>/            shards and cached task results of a run in progress
      .work/<key>.lock        held by the run using that work folder, removed with it

A version is written in full to a staging folder, then published under a lock by one
``rename``: a crash at any point leaves either no new version or a complete one, never
half of one. Version numbers are allocated under the same lock, so two runs on one
output folder cannot take the same number. A run killed while publishing leaves its
staging folder behind; the next run removes it (:meth:`Store.remove_stale`), knowing it
for a dead run's because no live process holds its lock.

Two runs of the same inputs would share a work folder, and the first to publish
removes it under the other: :meth:`Store.work_lock` makes the second wait for the
first instead (runs of different inputs do not wait for each other).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.files import write_text

MANIFEST = "manifest.json"
LATEST = "LATEST"
STAGING = ".staging-"

_held_staging: dict[Path, ExitStack] = {}
"""Staging folder -> the lock this process holds on it, whichever ``Store`` made it."""


class Store:
    def __init__(self, root: str | Path, dataset: str) -> None:
        self.dir = Path(root) / dataset
        self.dataset = dataset

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if p.is_dir() and p.name[:1] == "v" and p.name[1:].isdigit())

    def latest(self) -> str | None:
        try:
            return (self.dir / LATEST).read_text().strip() or None
        except FileNotFoundError:
            return None

    def manifest(self, version: str) -> dict:
        return json.loads((self.dir / version / MANIFEST).read_text())

    def find_fingerprint(self, fingerprint: str) -> str | None:
        """The version published from the same inputs and config, if any."""
        for version in reversed(self.versions()):
            try:
                if self.manifest(version).get("fingerprint") == fingerprint:
                    return version
            except (OSError, ValueError):
                continue
        return None

    def work_dir(self, key: str) -> Path:
        """The folder of a run's shards and cached task results, named by ``key``:
        a hash of what decides its contents."""
        return self.dir / ".work" / key[:16]

    def new_staging(self) -> Path:
        """A fresh staging folder, held until :meth:`publish` or :meth:`discard`.

        Its lock (``.staging-<id>.lock``) is taken before the folder exists, so a folder
        whose lock nobody holds is one whose run died: the kernel drops the locks of a
        dead process, whatever killed it.
        """
        path = self.dir / f"{STAGING}{uuid.uuid4().hex[:12]}"
        held = ExitStack()
        held.enter_context(_flock(path.with_name(path.name + ".lock"), remove=True))
        try:
            path.mkdir()
        except BaseException:
            held.close()
            raise
        _held_staging[path] = held
        return path

    def remove_stale(self) -> list[str]:
        """Delete the staging folders of runs that died while publishing (and lock files
        of runs that died before making theirs); the names of the folders removed.

        A live run's folder is never touched: its lock is held. Runs call this when they
        start, so a killed run's staging folder outlives it only until the next run.
        """
        if not self.dir.is_dir():
            return []
        names = {p.name.removesuffix(".lock") for p in self.dir.glob(f"{STAGING}*")}
        removed = []
        for name in sorted(names):
            with _try_flock(self.dir / f"{name}.lock") as free:
                if free and (self.dir / name).is_dir():
                    shutil.rmtree(self.dir / name, ignore_errors=True)
                    removed.append(name)
        return removed

    def remove_work(self, key: str) -> None:
        """Delete the work folder of ``key`` (its holder calls this, under :meth:`work_lock`)."""
        shutil.rmtree(self.work_dir(key), ignore_errors=True)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the dataset folder (advisory, ``flock``)."""
        with _flock(self.dir / ".lock"):
            yield

    @contextmanager
    def work_lock(self, key: str, on_wait: Callable[[], Any] | None = None) -> Iterator[None]:
        """Hold the work folder :meth:`work_dir` gives ``key`` for the length of a run.

        A second run of the same key blocks here until the first has published and
        removed the folder (or died: the kernel drops a dead process's lock), then
        finds that run's version, or resumes from its cached results. ``on_wait`` is
        called once, before blocking, when another run holds the folder.
        """
        with _flock(self.dir / ".work" / f"{key[:16]}.lock", on_wait, remove=True):
            yield

    def publish(
        self, staging: Path, manifest: dict, finish: Callable[[Path, dict], Any] | None = None
    ) -> tuple[str, Path]:
        """Give ``staging`` the next version number and make it visible.

        ``finish(staging, manifest)`` runs once the number is known (the report names
        its version); the manifest is written last inside the staging folder, then the
        folder is renamed into place and ``LATEST`` replaced, all under the lock.
        """
        with self.lock():
            versions = self.versions()
            version = f"v{int(versions[-1][1:]) + 1 if versions else 1:04d}"
            manifest = {**manifest, "version": version}
            if finish is not None:
                finish(staging, manifest)
            write_text(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            target = self.dir / version
            os.rename(staging, target)
            self._release(staging)
            write_text(self.dir / LATEST, version + "\n")
        return version, target

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        self._release(staging)

    def _release(self, staging: Path) -> None:
        held = _held_staging.pop(staging, None)
        if held is not None:
            held.close()


@contextmanager
def _flock(path: Path, on_wait: Callable[[], Any] | None = None, remove: bool = False) -> Iterator[None]:
    """An exclusive advisory lock on ``path``, created with its folder if missing.

    With ``remove``, the holder deletes the file before letting go, so that no lock
    file outlives its run. A process that was blocked on the deleted file then holds
    a lock nobody else can see: it notices (the path is gone or names another file)
    and locks again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(path, "a") as fh:  # closing the file releases the lock
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                fcntl.flock(fh, fcntl.LOCK_EX)
            if not _same_file(path, fh.fileno()):
                continue
            try:
                yield
            finally:
                if remove:
                    path.unlink()
            return


@contextmanager
def _try_flock(path: Path) -> Iterator[bool]:
    """:func:`_flock` with ``remove``, without waiting: yields whether the lock was free.

    False too when its holder let go and removed the file between our open and our
    lock: whatever the lock guarded is then that holder's business, done.
    """
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        if not _same_file(path, fh.fileno()):
            yield False
            return
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def staged_folder(parent: Path, name: str) -> Iterator[Path]:
    """A fresh hidden folder ``parent/.name.<id>`` to fill and then rename into place;
    removed if the block fails, so a crash leaves no half-written folder behind."""
    staging = parent / f".{name}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_writable(folder: Path, what: str) -> None:
    """Fail in one line if ``folder`` cannot take new files (or, if it does not exist
    yet, its nearest existing parent cannot take it): a file in its place or above it,
    a read-only file system, no permission. ``what`` names where the folder came from
    (``--output``). Checked before any work, so that a run does not find out at its
    first write, after its inputs were read and a server started; nothing is created."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise PipelineError(f"{what} {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise PipelineError(f"{what} {folder}: cannot write there: {exc.strerror or exc}") from None
