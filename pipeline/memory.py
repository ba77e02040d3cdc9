"""Freed memory goes back to the system between shard steps, and read file pages leave the process.

Why: the flow's process runs one shard step per core, each in a thread. glibc gives
threads malloc arenas of their own (up to eight per core) and keeps what a step freed
in its arena for the next allocation there; Arrow's allocator (mimalloc) keeps freed
pages too. Over a run those retained pages, not live rows, set the process's peak
RSS: at 200,000 rows of the scale benchmark, two arenas in place of glibc's default
took the peak from 1.89 to 1.44 GiB before ``near_dedup``. Both calls are cheap
(milliseconds) next to a step, and do nothing where there is no glibc.

The pages of memory-mapped summary files count too, once read: :class:`MappedPages`
drops them from the process as a decide step leaves each part behind.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import mmap
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
from numpy.lib.array_utils import byte_bounds

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


MADV_DONTNEED = 4
"""``madvise`` advice (Linux): drop these pages from the process; a file-backed page is
read again from the page cache (or the file) when next touched."""
PAGE = mmap.PAGESIZE


def _file_backed_read_only() -> list[tuple[int, int]]:
    """``(start, end)`` of this process's mappings that are files mapped without write
    access, sorted; empty where there is no ``/proc`` (not Linux)."""
    spans = []
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[1][1] != "-" or fields[4] == "0" or not fields[5].startswith("/"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        spans.append((start, end))
    return spans


def _address_span(memory: np.ndarray | pa.Buffer) -> tuple[int, int]:
    if isinstance(memory, pa.Buffer):
        return memory.address, memory.address + memory.size
    return byte_bounds(memory)


class MappedPages:
    """The pages of memory-mapped files under some arrays, which this process may
    drop once it has read them.

    Why: a global stage's decide step reads its summaries memory-mapped
    (``pipeline.files.read_arrow``) and visits them part by part, band after band.
    Pages of a mapped file that a process has touched count in its resident memory
    until the mapping goes, so at two million rows the decide steps, having touched
    every page of 2-3 GB of summaries, peaked at 3.8-3.9 GiB, nearly all of it file
    pages. ``madvise(MADV_DONTNEED)`` drops such pages from the process; they stay in
    the page cache, and touching them again reads them back (a minor fault, no disk).

    Only read-only mappings of files are ever advised: on anonymous or written memory
    the same call would zero the data. Each part's spans are checked against
    ``/proc/self/maps`` once, here, and the arrays are held, so their mappings outlive
    this object. Where memory is not mapped from a file (summaries held in memory, as
    in tests), or on a system without ``/proc``, :meth:`release` does nothing.
    """

    def __init__(self, parts: Sequence[Sequence[np.ndarray | pa.Buffer]]) -> None:
        self._held = [list(p) for p in parts]
        mapped = _file_backed_read_only()
        starts = [s for s, _ in mapped]
        self._spans: list[list[tuple[int, int]]] = []
        for memory in self._held:
            spans = []
            for m in memory:
                lo, hi = _address_span(m)
                i = bisect.bisect_right(starts, lo) - 1
                if hi > lo and i >= 0 and hi <= mapped[i][1]:
                    # whole pages: a page shared with other data of the same file only reads again
                    spans.append((lo - lo % PAGE, min(-(-hi // PAGE) * PAGE, mapped[i][1])))
            self._spans.append(spans)

    @property
    def mapped_bytes(self) -> int:
        """Bytes of file pages the parts cover (whole pages)."""
        return sum(hi - lo for spans in self._spans for lo, hi in spans)

    def release(self, part: int) -> None:
        """Drop the resident pages of one part from this process."""
        advise = _madvise()
        if advise is None:
            return
        for lo, hi in self._spans[part]:
            advise(lo, hi - lo, MADV_DONTNEED)



@lru_cache(maxsize=1)
def _madvise() -> Callable[[int, int, int], int] | None:
    libc = _libc()
    advise = getattr(libc, "madvise", None) if libc is not None else None
    if advise is None:
        return None
    advise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advise.restype = ctypes.c_int
    return advise
