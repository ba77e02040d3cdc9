"""Find the version to train on and verify it before any model is loaded.

Training reads a published version, never the raw input, and a run records the
version and the hash of its manifest. That record is only worth something if the
files trained on are the files the manifest describes, so a version is refused
unless it verifies:

* ``manifest.json`` parses and holds ``dataset``, ``version``, ``fingerprint``,
  ``kind``, ``roles`` and ``counts``; the folder is named after its ``version``;
* every data file is named ``<split>-<fingerprint[:12]>-NNNNN-of-MMMMM.parquet`` with
  the manifest's fingerprint, and each split has all its ``MMMMM`` files;
* the rows of each split (from the Parquet footers) equal ``counts.splits``;
* where the manifest lists ``data_files`` (``{"data/<name>": {"sha256", "rows"}}``),
  the data folder holds exactly those files, with those hashes.

The last check is the one that catches an edited row; versions published before
manifests listed their files get the others, and the run records which were made.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.files import file_sha256
from pipeline.inspect import datasets_in, resolve_version
from pipeline.store import MANIFEST, Store

REQUIRED_KEYS = ("dataset", "version", "fingerprint", "kind", "roles", "counts")
TRAINABLE_KINDS = ("classification", "instruction")
_DATA_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<fp>[0-9a-f]{12})-(?P<i>\d{5})-of-(?P<n>\d{5})\.parquet$")


@dataclass(frozen=True)
class VerifiedVersion:
    """A version folder whose files match its manifest."""

    path: Path
    dataset: str
    version: str
    fingerprint: str
    kind: str
    roles: tuple[str, ...]
    manifest_sha256: str
    files: dict[str, list[Path]]
    """split -> its data files, in order."""
    checks: tuple[str, ...]
    """What was verified: ``names``, ``counts`` and, when the manifest lists them, ``sha256``."""
    manifest: dict[str, Any] = field(repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        """What a run folder keeps about the data it trained on."""
        return {
            "dataset": self.dataset,
            "version": self.version,
            "path": str(self.path.resolve()),
            "fingerprint": self.fingerprint,
            "manifest_sha256": self.manifest_sha256,
            "kind": self.kind,
            "verified": list(self.checks),
            "counts": self.manifest["counts"],
        }


def find_version(spec: str | None, root: Path | None) -> Path:
    """The folder of the version to train on.

    ``spec`` is what ``pipeline.inspect.resolve_version`` takes (a folder,
    ``DATASET/vNNNN`` or ``DATASET`` for its latest). Without one, the latest version
    of the store's dataset, and with several datasets the first classification one
    by name (the quick task, and the one with a test accuracy), else the first one of
    a kind that can be trained.
    """
    if spec is not None:
        return resolve_version(spec, root).path
    if root is None:
        raise PipelineError("no version to train on: pass VERSION, or --output DIR (the store), "
                            "or run where pipeline.yaml names its output")
    kinds: dict[str, str] = {}
    for name in datasets_in(root):
        store = Store(root, name)
        kinds[name] = store.manifest(store.versions()[-1]).get("kind", "")
    choice = next((n for n, k in kinds.items() if k == "classification"), None)
    choice = choice or next((n for n, k in kinds.items() if k in TRAINABLE_KINDS), None)
    if choice is None:
        found = ", ".join(f"{n} ({k})" for n, k in kinds.items()) or "none"
        raise PipelineError(f"no dataset in {root} can be trained (classification or instruction); datasets: {found}")
    return resolve_version(choice, root).path


def verify_version(path: Path) -> VerifiedVersion:
    """``path`` as a :class:`VerifiedVersion`, or a ``PipelineError`` that says what
    does not match (see the module docstring for the checks)."""
    path = Path(path)
    raw = _read_manifest(path)
    manifest = json.loads(raw)
    where = f"refusing to train on {path}"
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise PipelineError(f"{where}: {MANIFEST} has no {', '.join(missing)}")
    if manifest["version"] != path.name:
        raise PipelineError(f"{where}: {MANIFEST} says version {manifest['version']}, the folder is {path.name}")
    if manifest["kind"] not in TRAINABLE_KINDS:
        raise PipelineError(f"{where}: kind {manifest['kind']!r} has no training task (classification or instruction)")
    files = _data_files(path, manifest["fingerprint"], where)
    splits = manifest["counts"].get("splits", {})
    rows = {split: sum(pq.ParquetFile(f).metadata.num_rows for f in paths) for split, paths in files.items()}
    if not any(rows.values()) and not any(splits.values()):  # published before empty versions were refused
        raise PipelineError(f"{where}: it has no rows (every input row was removed: see its reports/removed.parquet)")
    if rows != {s: n for s, n in splits.items() if n}:
        raise PipelineError(f"{where}: rows per split {rows} differ from the manifest's counts.splits {splits}")
    checks = ["names", "counts"]
    if "data_files" in manifest:
        _check_hashes(path, manifest["data_files"], files, where)
        checks.append("sha256")
    return VerifiedVersion(
        path=path,
        dataset=manifest["dataset"],
        version=manifest["version"],
        fingerprint=manifest["fingerprint"],
        kind=manifest["kind"],
        roles=tuple(manifest["roles"]),
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        files=files,
        checks=tuple(checks),
        manifest=manifest,
    )


def _read_manifest(path: Path) -> bytes:
    try:
        raw = (path / MANIFEST).read_bytes()
        manifest = json.loads(raw)
    except FileNotFoundError:
        raise PipelineError(f"refusing to train on {path}: no {MANIFEST} (not a published version)") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"refusing to train on {path}: {MANIFEST} cannot be read: {exc}") from None
    if not isinstance(manifest, dict):
        raise PipelineError(f"refusing to train on {path}: {MANIFEST} cannot be read: not a JSON object")
    return raw


def _data_files(path: Path, fingerprint: str, where: str) -> dict[str, list[Path]]:
    """Data files by split, each split complete (all of its ``-of-N`` parts)."""
    parts: dict[str, dict[int, Path]] = defaultdict(dict)
    totals: dict[str, set[int]] = defaultdict(set)
    for file in sorted((path / "data").glob("*.parquet")):
        match = _DATA_FILE.match(file.name)
        if match is None or match["fp"] != fingerprint[:12]:
            raise PipelineError(f"{where}: data/{file.name} is not a file of fingerprint {fingerprint[:12]}")
        parts[match["split"]][int(match["i"])] = file
        totals[match["split"]].add(int(match["n"]))
    if not parts:
        raise PipelineError(f"{where}: no data/*.parquet")
    for split, found in parts.items():
        expected = totals[split].pop() if len(totals[split]) == 1 else -1
        if sorted(found) != list(range(expected)):
            raise PipelineError(f"{where}: split {split} lacks some of its data files (has {len(found)})")
    return {split: [found[i] for i in sorted(found)] for split, found in parts.items()}


def _check_hashes(path: Path, listed: dict[str, Any], files: dict[str, list[Path]], where: str) -> None:
    present = {f.relative_to(path).as_posix(): f for paths in files.values() for f in paths}
    if set(present) != set(listed):
        extra, lost = sorted(set(present) - set(listed)), sorted(set(listed) - set(present))
        raise PipelineError(f"{where}: data files differ from the manifest's data_files (extra: {extra}, missing: {lost})")
    for name, file in present.items():
        if file_sha256(file) != listed[name]["sha256"]:
            raise PipelineError(f"{where}: {name} does not match its sha256 in the manifest")
