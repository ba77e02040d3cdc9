"""Shared fixtures. Prefect is made hermetic before anything imports it."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="pipeline-tests-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@contextmanager
def tmpfs(folder: Path, options: str, what: str) -> Iterator[Path]:
    """``folder`` as a tmpfs mounted with ``options`` (a full or read-only disk for
    real); mounting needs root, so the test is skipped, saying so, where it is refused."""
    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount {what} here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def canonical(**columns: list) -> pa.Table:
    """A small table in the canonical schema: ``row_id`` r0.., the given columns, ``changed_by``."""
    n = len(next(iter(columns.values())))
    data = {"row_id": [f"r{i}" for i in range(n)], **columns, "changed_by": [""] * n}
    return pa.table(data)


def clean_sample_rows() -> dict[str, list[tuple[str, str]]]:
    """The sample's classification rows with no planted problem: real fortunes, texts
    by label, ``(id, text)`` in file order."""
    import json

    planted = json.loads((REPO / "sample_data" / "planted.json").read_text())["files"]["classification"]["problems"]
    dirty = {i for problem in planted.values() for i in problem["ids"]}
    by_label: dict[str, list[tuple[str, str]]] = {}
    with open(REPO / "sample_data" / "classification.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            if row["id"] not in dirty:
                by_label.setdefault(row["label"], []).append((row["id"], row["text"]))
    return by_label
