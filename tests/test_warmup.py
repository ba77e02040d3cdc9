"""The numba kernels compiled ahead of a run (``pipeline/warmup.py``): after the
warm-up, a default run on real text compiles none itself; the warm-up starts only
where this code's kernels were not compiled before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import warmup
from tests.conftest import REPO
from tests.test_memory import man_paragraphs

# Counts the numba compilations of the pipeline's own functions in a run of the CLI.
_COUNTING_RUN = """
import runpy, sys
from numba.core import event
compiled = []
class Count(event.Listener):
    def on_start(self, e):
        function = e.data["dispatcher"].py_func
        if function.__module__.startswith("pipeline"):
            compiled.append(function.__module__ + "." + function.__name__)
    def on_end(self, e):
        pass
event.register("numba:compile", Count())
sys.argv = ["pipeline", "run", "-q", "--input", sys.argv[1], "--output", sys.argv[2]]
try:
    runpy.run_module("pipeline", run_name="__main__")
except SystemExit as done:
    assert not done.code, done.code
print("COMPILED", sorted(set(compiled)))
"""


def _man_page_rows(path: Path, rows: int) -> Path:
    """``rows`` JSON Lines rows of English man-page paragraphs, and the first tenth again."""
    texts = man_paragraphs(rows)
    if len(texts) < rows:
        pytest.skip(f"fewer than {rows} paragraphs in the English man pages of /usr/share/man/man1")
    texts += texts[: rows // 10]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.mark.flow
def test_a_run_after_the_warmup_compiles_no_kernel_itself(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PYTHONPATH": str(REPO), "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "pipeline.warmup"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "numba").glob("warmed-*"))) == 1, "the stamp of this code, beside the cache"
    assert len(list((tmp_path / "numba").rglob("*.nbi"))) >= 10

    data = _man_page_rows(tmp_path / "man.jsonl", 400)
    run = subprocess.run(
        [sys.executable, "-c", _COUNTING_RUN, str(data), str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "COMPILED []" in run.stdout, run.stdout[-2000:]
    removed = json.loads(next((tmp_path / "out").glob("*/v0001/manifest.json")).read_text())["counts"]
    assert removed["input_rows"] == 440 and removed["kept_rows"] <= 400, "the copies went: the dedup kernels ran"


def test_the_warmup_starts_only_where_this_code_was_not_compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    stamp = warmup._stamp()
    assert stamp.parent == tmp_path / "numba"
    child = warmup.start()
    assert child is not None
    child.kill()
    child.wait()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    assert warmup.start() is None
