"""Shared fixtures. Prefect is made hermetic before anything imports it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
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


def canonical(**columns: list) -> pa.Table:
    """A small table in the canonical schema: ``row_id`` r0.., the given columns, ``changed_by``."""
    n = len(next(iter(columns.values())))
    data = {"row_id": [f"r{i}" for i in range(n)], **columns, "changed_by": [""] * n}
    return pa.table(data)
