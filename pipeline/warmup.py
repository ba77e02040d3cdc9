"""Compile the numba kernels ahead of a run, in a process of their own.

Why: numba compiles a kernel the first time it is called and keeps the machine code
in its cache (``cache=True``); on a new install that compilation was 4.3 s of a
1,000-row run's 12.3 s, inside the flow, one kernel after another as the stages
reached them, while the other core sat mostly idle. ``python -m pipeline run`` starts
this module as a child process (:func:`start`) when this code's kernels were not
compiled on this machine before, next to Prefect's temporary server, so the compiling
overlaps the run's imports and the server's start, and the flow's calls find the
kernels cached (1,000 rows on a new install: median 9.2 s, 8.3-9.3, against 12.3;
``benchmarks/startup.py``).
The child compiles in the reverse of the order a run needs the kernels, so the two
meet in the middle: a kernel the flow reaches first it compiles itself, as before,
and waiting for the child instead was slower (9.7-10.8 s). Both processes may write
the same cache files; numba writes each aside and renames it.

The kernels are compiled by calling what the stages call, on a few rows, with the
same argument types: near_dedup's and split's summaries go through an Arrow file and
are read back memory-mapped (read-only arrays are a type of their own to numba).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numba

import pipeline

_ROWS = [
    # near copies (near_dedup's word shingles, split's characters), a Traditional
    # Chinese row (character shingles, the script fold) and an empty one
    "Compiled kernels are cached next to their module, so only the first run pays for them.",
    "Compiled kernels are cached next to their module, so only the first run pays for it.",
    "編譯後的核心會被快取，只有第一次執行需要等待。",
    "",
]


def _stamp() -> Path:
    """The file that says this code's kernels were compiled here, kept with numba's
    cache of them (``NUMBA_CACHE_DIR`` when set, else the ``__pycache__`` folder next
    to the kernels, or the user's cache where that cannot be written), so deleting the
    cache deletes it too. Its name is a digest of the package's sources (sizes and
    times), numba's version and Python's."""
    root = Path(pipeline.__file__).parent
    digest = hashlib.sha1(f"{numba.__version__} {sys.version}".encode())
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    name = f"warmed-{digest.hexdigest()}"
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / name
    beside = root / "dedup" / "__pycache__"
    if os.access(beside if beside.exists() else beside.parent, os.W_OK):
        return beside / name
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "curation-pipeline" / name


def compile_kernels() -> None:
    """Call every kernel a default run calls, through the stages that call them."""
    import pyarrow as pa

    from pipeline.files import read_arrow, write_arrow
    from pipeline.schema import DatasetInfo
    from pipeline.stages.near_dedup import NearDedupConfig, NearDedupStage
    from pipeline.stages.split import SplitConfig, SplitStage
    from pipeline.text.spaces import collapse_spaces

    table = pa.table({"row_id": [f"r{i}" for i in range(len(_ROWS))], "text": _ROWS, "changed_by": [None] * len(_ROWS)})
    info = DatasetInfo("text", ("text",))
    # In the reverse of the order a run reaches them: the run compiles what it needs
    # before this process gets there, this process what the run needs last.
    with tempfile.TemporaryDirectory(prefix="kernels-") as folder:
        for stage in (SplitStage(SplitConfig(), info), NearDedupStage(NearDedupConfig(), info)):
            path = Path(folder) / f"{stage.name}.arrow"
            write_arrow(stage.summarize(table), path)
            stage.decide([read_arrow(path)])
    collapse_spaces(table.column("text").combine_chunks(), wide=True)


def start() -> subprocess.Popen[bytes] | None:
    """Compile the kernels in a child process, unless this code's were compiled here
    before; the process is stopped at exit if the run ends first."""
    if _stamp().exists():
        return None
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.warmup"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    atexit.register(_stop, child)
    return child


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.kill()


def main() -> None:
    compile_kernels()
    stamp = _stamp()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()


if __name__ == "__main__":
    main()
