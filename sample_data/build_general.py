"""Build ``general.jsonl``: a small general-purpose instruction set for the rehearsal sample.

    python sample_data/build_general.py

The ``instruction`` sample is narrow (chatbot small talk and fortunes). Its rehearsal
stage (``pipeline.yaml``) mixes in rows of a different, general kind so that a
fine-tuned model keeps them: "what is this software for?" questions answered by the
Debian package descriptions of this machine (``/var/lib/dpkg/status``; each package's
own licence, descriptions written by its maintainers). The output is sorted by package
name and capped, so the same package set gives the same file byte for byte.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

STATUS = Path("/var/lib/dpkg/status")
OUT = Path(__file__).with_name("general.jsonl")
MAX_ROWS = 400
MIN_WORDS, MAX_WORDS = 15, 90


def descriptions(status: str) -> dict[str, str]:
    """Package name -> "<synopsis>. <first paragraph of the long description>"."""
    found: dict[str, str] = {}
    for record in status.split("\n\n"):
        name = re.search(r"^Package: (\S+)$", record, re.M)
        desc = re.search(r"^Description: (.*)\n((?: .*\n?)*)", record, re.M)
        if not name or not desc:
            continue
        lines = [line[1:] for line in desc.group(2).splitlines()]
        first = " ".join(lines[: lines.index(".")] if "." in lines else lines).strip()
        words = first.split()
        if not MIN_WORDS <= len(words) <= MAX_WORDS or not first.endswith("."):
            continue
        synopsis = desc.group(1).strip().rstrip(".")
        found.setdefault(name.group(1), f"{synopsis[0].upper()}{synopsis[1:]}. {' '.join(words)}")
    return found


def qa_row(row_id: str, package: str, answer: str) -> dict[str, str]:
    """One row as ``general.jsonl`` has it: the question about ``package``, its description
    as the answer (``benchmarks/selection_effect.py`` builds its rows with it too)."""
    return {"id": row_id, "instruction": f"What is the {package} package for?", "input": "", "output": answer}


def main() -> None:
    rows = sorted(descriptions(STATUS.read_text(encoding="utf-8")).items())[:MAX_ROWS]
    with OUT.open("w", encoding="utf-8") as fh:
        for i, (package, answer) in enumerate(rows, 1):
            fh.write(json.dumps(qa_row(f"gen-{i:06d}", package, answer), ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(rows)} rows")


if __name__ == "__main__":
    main()
