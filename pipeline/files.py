"""Files the pipeline writes and hashes: every write is atomic, every hash the same.

Each file is written to a temporary name in its own folder and renamed over its
target, so a run killed mid-write leaves no half file behind for a resumed run, a
reader or a checksum to pick up. Shards and reports are Parquet; global stages'
per-shard summaries are uncompressed Arrow IPC files, which :func:`read_arrow` maps
into memory without decoding.

A write that fails because the disk (or the user's quota) is full is told apart by
:func:`disk_full`, so that the run can say so in one line and give the space back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_MESSAGES = tuple(os.strerror(code) for code in DISK_FULL_ERRNOS)
"""How a full disk reads in a message that kept no exception (Prefect's state lines)."""


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or while handling, is a full
    disk or quota. The chain is followed because Prefect, Dask and pyarrow re-raise a
    failed write as their own exception (pyarrow's ``OSError`` keeps the errno)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary name in the same folder (created if missing), then
    rename over ``path``, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_table(table: pa.Table, path: Path) -> None:
    """Write Parquet atomically."""
    write_atomically(path, lambda tmp: pq.write_table(table, tmp))


def write_arrow(table: pa.Table, path: Path) -> None:
    """Write an uncompressed Arrow IPC file atomically, as one record batch.

    Global stages' summaries use this format rather than Parquet because
    :func:`read_arrow` maps it into memory without decoding: a decide step over many
    shards then holds only the pages it touches, and the OS can drop them again
    (that is what keeps ``near_dedup`` within its memory budget).
    """
    table = table.combine_chunks()

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(table.num_rows, 1))

    write_atomically(path, write)


def read_arrow(path: str | Path) -> pa.Table:
    """A table written by :func:`write_arrow`, memory-mapped (zero copy)."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents) for ``hf`` inputs."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
