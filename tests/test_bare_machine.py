"""The README's main command on a machine without WordNet: `python -m pipeline run` on
sample_data/ and the default pipeline.yaml (whose classification dataset turns augment
on) still publishes, and says which operations it skipped and why. The same run shows
the defaults of the language stage on the sample: fastText, languages chosen from the
data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.flow
def test_the_sample_runs_without_wordnet_and_says_what_it_skipped(tmp_path: Path) -> None:
    nowhere = tmp_path / "no-wordnet"
    nowhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PYTHONPATH": str(REPO), "PIPELINE_WORDNET_DIR": str(nowhere), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--output", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr

    why = f"no WordNet found in {nowhere} (no index.noun there)"
    manifest = json.loads((out / "classification" / "v0001" / "manifest.json").read_text())
    augment = next(s for s in manifest["stages"] if s["stage"] == "augment")
    assert augment["enabled"] and augment["decision"]["thesaurus"] is None
    assert augment["decision"]["skipped"] == {"synonym": why, "insert": why}
    assert augment["decision"]["operations"] == ["swap", "delete"]
    assert manifest["counts"]["origins"]["augmented"] > 0, "the other operations still made copies"
    assert result.stderr.count("WARNING") == 1
    warning = f"WARNING augment: {why}: the synonym and insert operations are skipped, copies are made by swap, delete"
    assert "".join(warning.split()) in "".join(result.stderr.split()), "the log wraps long lines, even within a word"

    language = next(s for s in manifest["stages"] if s["stage"] == "language")["decision"]
    assert language["chosen_by"] == "data" and language["kept"] == ["en"]
    assert 0 < language["languages"]["de"] < language["min_share"] < language["languages"]["en"]
    assert manifest["config"]["stages"]["language"]["backend"] == "fasttext"
    page = (out / "classification" / "v0001" / "report.html").read_text()
    assert "allowed: en (chosen from the data: each at least 5% of the rows, or the most frequent)" in page
