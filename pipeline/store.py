"""The versioned store: one folder per dataset, one immutable folder per version.

::

    out/<dataset>/
      LATEST                  name of the newest version, replaced atomically
      v0001/                  data/*.parquet, reports/*.parquet, manifest.json, README.md
      .staging-<id>/          a version being written; never read
      .work/<fingerprint>/    shards and cached task results of a run in progress

A version is written in full to a staging folder, then published under a lock by one
``rename``: a crash at any point leaves either no new version or a complete one, never
half of one. Version numbers are allocated under the same lock, so two runs on one
output folder cannot take the same number.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
LATEST = "LATEST"


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

    def work_dir(self, fingerprint: str) -> Path:
        return self.dir / ".work" / fingerprint[:16]

    def new_staging(self) -> Path:
        path = self.dir / f".staging-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        return path

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the dataset folder (advisory, ``flock``)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

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
            write_text_atomic(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            target = self.dir / version
            os.rename(staging, target)
            write_text_atomic(self.dir / LATEST, version + "\n")
        return version, target

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary name beside ``path`` and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
