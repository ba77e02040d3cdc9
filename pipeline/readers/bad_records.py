"""Records a reader cannot take, and what a dataset's ``on_bad_record`` does with them.

A big scraped or merged file often holds a few records that are broken: a line cut in
half, a conversation whose turns are not objects, a number where the prompt should be.
By default (``on_bad_record: error``) the first one stops the run with one line naming
the file and the line it starts on, so nothing is dropped behind anyone's back. Under
``on_bad_record: skip`` each such record leaves the data as a removed row instead, with
reason ``format:<problem>``, the error in ``detail`` and the record's own text, and the
run goes on: the ledger still accounts for every record of the input.

Only faults of one record are skippable. A file that cannot be read at all, a JSON
document whose structure breaks (after which no later record can be trusted), or a
column mapping that does not fit the file stay errors under either setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.schema import ROW_ID

STAGE = "read"
"""The ``stage`` of the removed rows a reader skipped, in ``removed.parquet`` and the
stage table."""
RAW = "record"
"""The removed row's column holding the record as the file had it (JSON text)."""
RAW_CHARS = 100_000
"""A skipped record's text is kept up to this many characters."""

PROBLEMS = ("invalid_json", "not_utf8", "not_an_object", "bad_id", "bad_conversation", "bad_value")


class BadRecordError(PipelineError):
    """A fault of one record, in one line naming its file and line.

    ``index`` is the record's row in the batch being built when the fault was found
    while laying out rows (None when the record never became a row, e.g. a line that is
    not JSON); ``raw`` is its text when the row is not there to rebuild it from.
    """

    def __init__(self, message: str, problem: str, index: int | None = None, raw: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem
        self.index = index
        self.raw = raw


@dataclass
class Rejects:
    """The records skipped under ``on_bad_record: skip``, as rows of the ledger."""

    rows: list[dict[str, str | None]] = field(default_factory=list)
    _order: list[tuple[int, int]] = field(default_factory=list)

    def add(self, row_id: str, error: BadRecordError, raw: str | None, file: int, line: int) -> None:
        """Set a record aside; ``file`` (the input's index) and ``line`` give its place,
        so the table lists the records in input order whatever order they were found in."""
        self._order.append((file, line))
        self.rows.append(
            {
                ROW_ID: row_id,
                "stage": STAGE,
                "reason": f"format:{error.problem}",
                "detail": json.dumps({"error": str(error)}, ensure_ascii=False),
                RAW: raw if raw is None or len(raw) <= RAW_CHARS else raw[:RAW_CHARS],
            }
        )

    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            reason = str(row["reason"])
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items()))

    def table(self) -> pa.Table:
        schema = pa.schema([(ROW_ID, pa.string()), ("stage", pa.string()), ("reason", pa.string()),
                            ("detail", pa.string()), (RAW, pa.string())])
        order = sorted(range(len(self.rows)), key=self._order.__getitem__)
        return pa.Table.from_pylist([self.rows[i] for i in order], schema=schema)
