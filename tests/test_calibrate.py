"""dedup-calibrate: reference pairs, recall per banding, a recommendation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline.calibrate import calibrate
from pipeline.cli import main
from pipeline.config import load_config

WORDS = (
    "river mountain quiet garden letter window morning silver harbour winter candle market station "
    "orchard meadow lantern bridge village thunder copper island forest valley ribbon engine pocket"
).split()


def write_corpus(tmp_path: Path, docs: int = 400, copies: int = 40) -> Path:
    rng = random.Random(7)
    texts = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(docs)]
    for i in range(copies):  # near copies: the last word changed
        words = texts[i].split()
        words[-1] = "zebra"
        texts.append(" ".join(words))
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_reference_recall_and_recommendation(tmp_path: Path) -> None:
    config = load_config(None, inputs=[str(write_corpus(tmp_path))])
    [cal] = calibrate(config, sample_rows=10_000)
    assert cal.rows == 440 and cal.reference_pairs == 40
    assert cal.current.recall(cal.reference_pairs) == 1.0 and cal.current.precision == 1.0
    assert (cal.current.bands, cal.current.rows) == (14, 9)
    assert cal.recommended is not None and cal.recommended.recall(40) >= 0.99
    # Looser bandings make more candidates, never fewer.
    candidates = [o.candidates for o in cal.options]
    assert candidates == sorted(candidates, reverse=True)


def test_sample_limits_the_rows(tmp_path: Path) -> None:
    config = load_config(None, inputs=[str(write_corpus(tmp_path))], overrides=["shard_rows=100"])
    [cal] = calibrate(config, sample_rows=250)
    assert cal.rows == 250


def test_cli_prints_the_table_and_a_recommendation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dedup-calibrate", "--input", str(write_corpus(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "40 pairs at Jaccard >= 0.8" in out and "recommended: --set stages.near_dedup.bands=" in out


def test_a_header_only_csv_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("id,text\n")
    assert main(["dedup-calibrate", "--input", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"error: dataset empty: the inputs hold no rows ({empty})"


@pytest.mark.parametrize(
    ("flag", "value"), [("--sample", "0"), ("--sample", "-5"), ("--target-recall", "7"), ("--target-recall", "0")]
)
def test_out_of_range_settings_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, value: str
) -> None:
    assert main(["dedup-calibrate", "--input", str(write_corpus(tmp_path)), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag} {value}: expected ")
