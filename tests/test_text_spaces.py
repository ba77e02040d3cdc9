"""pipeline.text.spaces: the compiled space collapse gives what the RE2 expressions it
replaces give, on real text of every kind the pipeline meets."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.text.spaces import collapse_spaces


def real_texts() -> list[str]:
    """Man pages (tabs, runs of spaces), licences, Chinese fortunes (ideographic
    spaces), and rows made of what the regexes treat differently."""
    texts: list[str] = []
    for path in sorted(Path("/usr/share/man/man1").glob("*.1.gz"))[:40]:
        texts += gzip.decompress(path.read_bytes()).decode("utf-8", "replace").split("\n.SH")
    for path in sorted(Path("/usr/share/common-licenses").glob("*"))[:5]:
        if path.is_file():
            texts += path.read_text(encoding="utf-8", errors="replace").split("\n\n\n")
    chinese = Path("/usr/share/games/fortunes/chinese")
    if chinese.exists():
        texts += re.split(r"(?m)^%\n", chinese.read_text(encoding="utf-8"))[:300]
    if len(texts) < 100:
        pytest.skip("man pages, licences and fortunes-zh are needed (Debian packages manpages, fortunes-zh)")
    return texts + [
        "", " ", "\t\r\n\f ", "a\vb", "a\u00a0\u00a0b", "\u3000x\u3000\u3000", "x \u2003 y", "\u00a0", "a\u3000", "\u3001\u300c",
    ]


@pytest.mark.parametrize("wide", [False, True])
def test_collapse_is_the_regex_replace(wide: bool) -> None:
    texts = real_texts()
    arr = pa.array(texts + [None])
    pattern = r"[\s\x{a0}\x{3000}]+" if wide else r"\s+"
    want = pc.replace_substring_regex(arr, pattern, " ")
    got = collapse_spaces(arr, wide=wide)
    assert got.to_pylist() == want.to_pylist()
    assert sum(a != b for a, b in zip(texts, got.to_pylist()[:-1])) > len(texts) // 4
    # a slice (non-zero offset) and a chunked array give the same
    assert collapse_spaces(arr.slice(7, 50), wide=wide).to_pylist() == want.to_pylist()[7:57]
    assert collapse_spaces(pa.chunked_array([arr.slice(0, 9), arr.slice(9)]), wide=wide).to_pylist() == want.to_pylist()
