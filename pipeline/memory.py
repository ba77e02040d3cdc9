"""Freed memory goes back to the system between shard steps.

Why: the flow's process runs one shard step per core, each in a thread. glibc gives
threads malloc arenas of their own (up to eight per core) and keeps what a step freed
in its arena for the next allocation there; Arrow's allocator (mimalloc) keeps freed
pages too. Over a run those retained pages, not live rows, set the process's peak
RSS: at 200,000 rows of the scale benchmark, two arenas in place of glibc's default
took the peak from 1.89 to 1.44 GiB before ``near_dedup``. Both calls are cheap
(milliseconds) next to a step, and do nothing where there is no glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

import pyarrow as pa

T = TypeVar("T")

M_ARENA_MAX = -8
"""``mallopt`` parameter: the most arenas glibc's malloc creates (``malloc.h``)."""


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """glibc, or None (musl, macOS: neither call below exists or matters there)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def limit_arenas(threads: int) -> bool:
    """At most one malloc arena per step thread (and the main thread's); arenas made
    before stay. True where glibc took the setting."""
    libc = _libc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, max(1, threads) + 1))


def release_unused() -> None:
    """Hand the pages freed by a finished step back to the system: glibc's arenas
    (``malloc_trim``) and Arrow's memory pool."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    pa.default_memory_pool().release_unused()


def releasing(step: Callable[..., T], *args: object) -> T:
    """``step(*args)``, then the memory it freed handed back, in the process that ran
    it: the flow's for ingest, decide and local shard steps, a Dask worker's for the
    steps sent there (where a 10,000-row shard's steps otherwise left the worker 250 MB
    above its imports)."""
    try:
        return step(*args)
    finally:
        release_unused()
