"""JSON and JSON Lines records, each with the line it starts on (counted from 1).

JSON Lines is read line by line, so a line of any length reads and a bad line is
named by its number. A ``.json`` file is one of: an array of records
(``alpaca_data.json``), an object whose one list holds the records
(``{"version": 1, "data": [...]}``), or JSON Lines under a ``.json`` name, as many
datasets on the Hub are. An array or object is parsed element by element from a
growing text buffer, never whole, so a large file costs the memory of one record at a
time and every record knows its line.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.readers.bad_records import BadRecordError
from pipeline.readers.columns import json_kind

Opener = Callable[[], pa.NativeFile]
Record = tuple[int, dict[str, Any]]
OnBad = Callable[[BadRecordError, int], None] | None
"""Called with a bad record's error and line, to skip it, instead of raising (see
:mod:`pipeline.readers.bad_records`)."""

CHUNK = 1 << 20
CONVERSATION_KEYS = ("messages", "conversations")
"""An object whose list is under one of these keys is one conversation, not a file of
records."""
_NON_SPACE = re.compile(r"\S")
_DECODER = json.JSONDecoder()
log = logging.getLogger("pipeline")


def jsonl_records(open_stream: Opener, source: str, on_bad: OnBad = None) -> Iterator[Record]:
    """One record per non-blank line; anything but a JSON object is refused (or handed
    to ``on_bad`` and skipped)."""
    with open_stream() as stream:
        for number, line in enumerate(io.BufferedReader(stream, CHUNK), start=1):
            if not line.strip():
                continue
            try:
                yield number, _record(_parse_line(line, number, source), number, source)
            except BadRecordError as exc:
                if on_bad is None:
                    raise
                on_bad(exc, number)


def _parse_line(line: bytes, number: int, source: str) -> Any:
    raw = line.rstrip(b"\r\n")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        text = raw.decode("utf-8", errors="replace")
        message = f"{source} line {number}: not valid JSON ({exc.msg}: column {exc.colno})"
        raise BadRecordError(message, "invalid_json", raw=text) from exc
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", errors="replace")
        raise BadRecordError(f"{source} line {number}: not UTF-8 text ({exc.reason})", "not_utf8", raw=text) from exc


def _record(value: Any, line: int, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        message = f"{source} line {line}: a record must be a JSON object, found {json_kind(value)}"
        raise BadRecordError(message, "not_an_object", raw=json.dumps(value, ensure_ascii=False))
    return value


def json_records(open_stream: Opener, source: str, on_bad: OnBad = None) -> Iterator[Record]:
    """The records of a ``.json`` file: an array, an object holding one list of
    records, or JSON Lines. ``on_bad`` skips an element that is not an object; a
    document whose JSON breaks is an error whatever it says."""
    if _is_json_lines(open_stream):
        yield from jsonl_records(open_stream, source, on_bad)
        return
    with open_stream() as stream:
        text = _Text(stream, source)
        first = text.peek()
        if first is None:
            return
        if first == "[":
            yield from _array(text, on_bad)
        elif first == "{":
            yield from _object(text, on_bad)
        else:
            value, line = text.value()
            _record(value, line, source)
        if text.peek() is not None:
            raise PipelineError(f"{source} line {text.line}: more JSON after the end of the document")


def _is_json_lines(open_stream: Opener) -> bool:
    """Is the first non-blank line a whole JSON object with more lines after it?
    (A document's first line is ``[`` or ``{`` and does not parse on its own; a
    one-line document has nothing after it.) A file that starts with anything but
    ``{`` is told from its first bytes, so a one-line array is not read twice."""
    with open_stream() as stream:
        reader = io.BufferedReader(stream, CHUNK)
        head = reader.peek(CHUNK).lstrip(b"\xef\xbb\xbf \t\r\n")
        if head and not head.startswith(b"{"):
            return False
        lines = (line for line in reader if line.strip())
        first = next(lines, None)
        if first is None or not first.lstrip(b"\xef\xbb\xbf \t").startswith(b"{"):
            return False
        try:
            json.loads(first)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return next(lines, None) is not None


def _array(text: _Text, on_bad: OnBad) -> Iterator[Record]:
    for value, line in text.elements():
        try:
            yield line, _record(value, line, text.source)
        except BadRecordError as exc:
            if on_bad is None:
                raise
            on_bad(exc, line)


def _object(text: _Text, on_bad: OnBad) -> Iterator[Record]:
    """Records of an object document: the elements of its one list of objects, or the
    object itself when it holds none (or holds a conversation)."""
    start = text.line
    fields: dict[str, Any] = {}
    records_key: str | None = None
    for key in text.object_keys():
        if key not in CONVERSATION_KEYS and text.peek() == "[" and text.list_of_objects():
            if records_key is not None:
                raise PipelineError(
                    f"{text.source} line {text.line}: two lists of records, {records_key!r} and {key!r}; "
                    "keep one list per file"
                )
            records_key = key
            yield from _array(text, on_bad)
        else:
            fields[key] = text.value()[0]
    if records_key is None:
        yield start, fields
    elif fields:
        log.warning(
            "%s: the records are the list %r; the other top-level keys (%s) describe the file and are not carried",
            text.source, records_key, ", ".join(fields),
        )


class _Text:
    """A JSON text read in chunks, parsed value by value, knowing its line.

    ``buf[pos:]`` is what is left to parse; ``line`` is the line ``pos`` is on. A value
    cut by the end of the buffer fails to parse, and is parsed again once more text is
    read (twice as much each time, so a huge value costs a few tries, not one per chunk).
    """

    def __init__(self, stream: pa.NativeFile, source: str) -> None:
        self.stream = stream
        self.source = source
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.eof = False

    def _read(self) -> bool:
        """Append more text; False at the end of the file."""
        if self.eof:
            return False
        data = self.stream.read(max(CHUNK, len(self.buf) - self.pos))
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise PipelineError(f"{self.source} line {self.line}: not UTF-8 text ({exc.reason})") from exc
        self.eof = not data
        self.buf = self.buf[self.pos:] + text
        self.pos = 0
        return True

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str | None:
        """The next character that is not white space, None at the end."""
        while True:
            match = _NON_SPACE.search(self.buf, self.pos)
            if match:
                self._advance(match.start())
                return self.buf[self.pos]
            self._advance(len(self.buf))
            if not self._read():
                return None

    def expect(self, char: str) -> None:
        found = self.peek()
        if found != char:
            what = "the end of the file" if found is None else repr(found)
            raise PipelineError(f"{self.source} line {self.line}: not valid JSON (expected {char!r}, found {what})")
        self._advance(self.pos + 1)

    def value(self) -> tuple[Any, int]:
        """The next JSON value and the line it starts on."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self._read():
                    continue
                line = self.line + self.buf.count("\n", self.pos, exc.pos)
                raise PipelineError(f"{self.source} line {line}: not valid JSON ({exc.msg})") from exc
            if end == len(self.buf) and self._read():
                continue  # a number may go on in the next chunk
            line = self.line
            self._advance(end)
            return value, line

    def elements(self) -> Iterator[tuple[Any, int]]:
        """The values of the array that starts here."""
        self.expect("[")
        if self.peek() == "]":
            self._advance(self.pos + 1)
            return
        while True:
            yield self.value()
            if self.peek() == "]":
                self._advance(self.pos + 1)
                return
            self.expect(",")

    def object_keys(self) -> Iterator[str]:
        """The keys of the object that starts here, each followed by its value, which
        the caller reads."""
        self.expect("{")
        if self.peek() == "}":
            self._advance(self.pos + 1)
            return
        while True:
            key, line = self.value()
            if not isinstance(key, str):
                raise PipelineError(f"{self.source} line {line}: not valid JSON (an object key must be a string)")
            self.expect(":")
            yield key
            if self.peek() == "}":
                self._advance(self.pos + 1)
                return
            self.expect(",")

    def list_of_objects(self) -> bool:
        """Does the list that starts here (at ``[``) hold objects, or nothing? Reads
        ahead without moving on."""
        while True:
            match = _NON_SPACE.search(self.buf, self.pos + 1)
            if match:
                return self.buf[match.start()] in "{]"
            if not self._read():
                return False
