"""The rows a training run's ``max_length`` would cut, as the ``tokens`` stage counted them.

A row longer than ``max_length`` loses its end: the assistant's last reply and its
end-of-turn token, so the model learns to ramble on. The curation run that made the
version may have counted every row in tokens (``stages.tokens``): its per-row counts are
in the version's ``reports/tokens.parquet`` and its settings in the manifest. Before
a model is loaded, :func:`cut_rows_warning` compares them with the run's ``max_length``
and says how many rows of each split would be cut. Without the stage's report it says
nothing (the stage is opt-in).
"""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.train.manifest import VerifiedVersion

TOKENS_REPORT = "reports/tokens.parquet"


def _tokens_stage(manifest: dict[str, Any]) -> dict[str, Any] | None:
    for stage in manifest.get("stages") or []:
        if stage.get("stage") == "tokens" and stage.get("enabled") and stage.get("decision"):
            return stage
    return None


def cut_rows_warning(version: VerifiedVersion, max_length: int) -> str | None:
    """One line naming the rows longer than ``max_length`` per split, with the longest
    and what to do, or None when no counted row is longer (or nothing was counted)."""
    stage = _tokens_stage(version.manifest)
    path = version.path / TOKENS_REPORT
    if stage is None or not path.is_file():
        return None
    decision = stage["decision"]
    report = pq.read_table(path, columns=["split", "tokens", "too_long"])
    if decision.get("on_too_long") == "drop":
        report = report.filter(pc.invert(report.column("too_long")))  # removed by the stage: not in the data
    if report.num_rows == 0:
        return None
    longest = int(pc.max(report.column("tokens")).as_py())
    if longest <= max_length:
        return None
    over = report.filter(pc.greater(report.column("tokens"), max_length))
    splits = over.column("split").fill_null("all").to_pylist()
    counts = {s: splits.count(s) for s in sorted(set(splits), key=lambda s: (s != "train", s))}
    per_split = ", ".join(f"{n:,} {s}" for s, n in counts.items())
    return (
        f"warning: max_length {max_length} cuts {over.num_rows:,} of {report.num_rows:,} rows ({per_split}), "
        f"counted in {decision.get('tokenizer')} tokens by the tokens stage (longest {longest:,}): their last reply "
        f"and its end-of-turn token are lost; raise max_length to {longest}, or curate again with "
        f"stages.tokens.max_tokens: {max_length} to drop them"
    )
