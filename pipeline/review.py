"""The label review loop: export the worst label issues, import a person's decisions.

``label_issues`` ranks rows by how likely their label is wrong; a model cannot be sure,
so the top of that ranking goes to a person. ``export`` writes it to a CSV (or JSONL)
with two blank columns, ``decision`` (``keep``, ``drop`` or ``relabel``) and
``label`` (pre-filled with the suggestion, used by ``relabel``). ``import`` checks
every filled-in row against the version it came from and merges the decisions into
the dataset's store, ``<output>/<dataset>/review/decisions.jsonl``. The next run hands
that file to ``label_issues``, which applies the decisions over the model's, hashes
it into the version's fingerprint (changed decisions make a new version) and records
it in the manifest.

A later import wins over an earlier one for the same row; a row whose decision is
left blank keeps whatever was decided before.

The edited file comes back from whatever program the person used, so it is read as
spreadsheet programs write it: UTF-8 with or without a byte-order mark, UTF-16 with
one, else Windows-1252 (Latin-1's superset); commas, semicolons or tabs. Every problem
names its line, counted from 1 as an editor shows it, and the file's ``dataset`` must
be a folder of the store, never a path out of it.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.files import write_text
from pipeline.inspect import VersionRef, load_version
from pipeline.schema import ROW_ID
from pipeline.store import Store

DECISIONS = ("keep", "drop", "relabel")
REPORT = "label_issues.parquet"
COLUMNS = (
    "dataset", "version", ROW_ID, "given_label", "suggested_label", "label_quality", "action", "text",
    "decision", "label",
)


def decisions_path(store: Store) -> Path:
    """Where a dataset's imported review decisions live."""
    return store.dir / "review" / "decisions.jsonl"


def _report(ref: VersionRef) -> Any:
    path = ref.path / "reports" / REPORT
    if not path.is_file():
        raise PipelineError(
            f"{ref.label} has no reports/{REPORT}: the label_issues stage did not run on it "
            "(it needs a dataset with a label)"
        )
    return pq.read_table(path)


def export_issues(ref: VersionRef, out: Path, top: int, everything: bool = False) -> int:
    """Write the ``top`` worst rows flagged as label issues (or, with ``everything``,
    the ``top`` lowest label quality whatever the flag) to ``out`` (.csv or .jsonl);
    return how many rows were written."""
    table = _report(ref)
    if not everything:
        table = table.filter(table.column("is_issue"))
    table = table.sort_by([("label_quality", "ascending"), (ROW_ID, "ascending")])
    if top > 0:
        table = table.slice(0, top)
    rows = [
        {
            "dataset": ref.dataset,
            "version": ref.version,
            ROW_ID: r[ROW_ID],
            "given_label": r["given_label"],
            "suggested_label": r["suggested_label"],
            "label_quality": round(float(r["label_quality"]), 4),
            "action": r["action"],
            "text": r["text"],
            "decision": "",
            "label": r["suggested_label"],
        }
        for r in table.select([ROW_ID, "given_label", "suggested_label", "label_quality", "action", "text"]).to_pylist()
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    elif out.suffix == ".jsonl":
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        raise PipelineError(f"{out}: write the review to a .csv or a .jsonl file")
    return len(rows)


BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
DELIMITERS = (",", ";", "\t")
"""What spreadsheet programs separate CSV fields with (``;`` where ``,`` is the decimal mark)."""


def _decode(path: Path) -> str:
    """The text of an edited file: by its byte-order mark, else UTF-8, else Windows-1252
    (which a spreadsheet program on Windows writes; Latin-1 where cp1252 has no character)."""
    raw = path.read_bytes()
    for bom, encoding in BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise PipelineError(f"{path}: not valid {encoding} after its byte-order mark ({exc.reason})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_csv(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of each record that is not blank, the line where the record starts;
    the delimiter is the one the header line uses most. Strict, so that a quote left
    open is an error at its line rather than one field that swallows the rest."""
    header = text.split("\n", 1)[0]
    delimiter = max(DELIMITERS, key=header.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, dict[str, Any]]] = []
    columns: list[str] | None = None
    while True:
        line = reader.line_num + 1  # where the next record starts: a quoted field may span lines
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise PipelineError(f"{path}:{line}: not valid CSV ({exc}; a quote opened here and not closed?)") from None
        if columns is None:
            columns = [c.strip() for c in record]
            missing = {ROW_ID, "decision", "label", "dataset", "version"} - set(columns)
            if missing:
                raise PipelineError(f"{path}:1: missing column(s) {', '.join(sorted(missing))}; export a fresh file")
        elif any(field.strip() for field in record):
            rows.append((line, dict(zip(columns, record))))
    return rows


def _read_jsonl(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of each line that is not blank. Split on ``\\n`` only: the export
    writes texts unescaped, and one may hold a character ``str.splitlines`` breaks at."""
    rows = []
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise PipelineError(f"{path}:{i}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise PipelineError(f"{path}:{i}: expected a JSON object (the row's columns), got {type(row).__name__}")
        rows.append((i, row))
    return rows


def _read_edited(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of an edited review file."""
    if not path.is_file():
        raise PipelineError(f"review file {path} not found")
    if path.suffix not in (".csv", ".jsonl"):
        raise PipelineError(f"{path}: expected the .csv or .jsonl file that `review export` wrote")
    text = _decode(path)
    return _read_csv(path, text) if path.suffix == ".csv" else _read_jsonl(path, text)


def _target(edited: Path, rows: list[tuple[int, dict[str, Any]]], root: Path) -> tuple[Store, str]:
    """The store and version every row of ``edited`` names; the first line that names
    another, or a dataset that is not a folder of ``root``, is an error."""
    first_line, first = rows[0]
    dataset, version = str(first.get("dataset")), str(first.get("version"))
    for line, row in rows:
        if (str(row.get("dataset")), str(row.get("version"))) != (dataset, version):
            raise PipelineError(
                f"{edited}:{line}: dataset/version {row.get('dataset')}/{row.get('version')} differs from line "
                f"{first_line}'s {dataset}/{version}; import one export at a time"
            )
    if dataset in ("", ".", "..") or dataset != Path(dataset).name or dataset.startswith(".") or "\\" in dataset:
        raise PipelineError(f"{edited}:{first_line}: dataset {dataset!r} is not the name of a dataset of {root}")
    store = Store(root, dataset)
    if version not in store.versions():
        raise PipelineError(f"{edited}:{first_line}: version {dataset}/{version} is not in {root}")
    return store, version


@dataclass
class Imported:
    path: Path
    counts: dict[str, int]
    blank: int
    total: int
    """Decisions in the store's file after the merge."""


def import_decisions(edited: Path, root: Path) -> Imported:
    """Check the decisions in ``edited`` and merge them into the dataset's store under
    ``root``. Nothing is written unless every filled-in row is valid."""
    rows = _read_edited(edited)
    if not rows:
        raise PipelineError(f"{edited}: no rows")
    store, version = _target(edited, rows, root)
    dataset = store.dataset
    report = _report(load_version(store.dir / version))
    known_rows = set(report.column(ROW_ID).to_pylist())
    classes = pc.unique(pc.drop_null(report.column("given_label"))).to_pylist()
    by_text = {str(c): c for c in classes}
    decided: dict[str, dict[str, Any]] = {}
    blank = 0
    for line, row in rows:
        where = f"{edited}:{line} (row_id {row.get(ROW_ID)})"
        decision = str(row.get("decision") or "").strip().lower()
        if not decision:
            blank += 1
            continue
        if decision not in DECISIONS:
            raise PipelineError(f"{where}: decision {decision!r} is not one of {', '.join(DECISIONS)}")
        if row.get(ROW_ID) not in known_rows:
            raise PipelineError(f"{where}: no such row in {dataset}/{version}")
        entry: dict[str, Any] = {ROW_ID: row[ROW_ID], "decision": decision}
        if decision == "relabel":
            label = row.get("label")
            if label is None or str(label).strip() == "" or str(label) not in by_text:
                known = ", ".join(sorted(by_text))
                raise PipelineError(f"{where}: relabel needs a label, one of the known classes ({known}); got {label!r}")
            entry["label"] = by_text[str(label)]
        decided[row[ROW_ID]] = entry
    target = decisions_path(store)
    merged = _read_store(target)
    merged.update(decided)
    lines = (json.dumps(merged[k], ensure_ascii=False, sort_keys=True) + "\n" for k in sorted(merged))
    try:
        write_text(target, "".join(lines))
    except OSError as exc:
        raise PipelineError(f"{target}: cannot write the decisions there: {exc.strerror or exc}") from None
    counts = {d: sum(1 for e in decided.values() if e["decision"] == d) for d in DECISIONS}
    return Imported(target, counts, blank, len(merged))


def _read_store(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    entries = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {e[ROW_ID]: e for e in entries}

