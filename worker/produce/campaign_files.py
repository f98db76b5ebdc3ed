"""Reading campaign files, one row at a time, into the wire form of a transfer.

Two formats, both streamed (memory stays flat whatever the file's size):

- **CSV** with a header row whose columns are named as the wire form: ``callConnectionId``,
  ``targetParticipant``, ``transferee``, ``operationContext``, ``operationCallbackUri``,
  ``sourceCallerIdNumber`` (identifiers as raw ids such as ``4:+14255550123``), plus ``sip.<Header-Name>`` and
  ``voip.<name>`` for custom calling context. An empty cell means the field is absent. Quoted cells may span
  lines.
- **JSONL**: one wire-form object per line (as `worker.request.models.parse_transfer` takes it).

Either may carry a key column (CSV) or field (JSONL) that names the row for idempotency. Blank lines are
skipped; a UTF-8 byte order mark is ignored. A row that cannot be read becomes a `Row` with issues (and its
raw text), never an exception, also a line longer than `MAX_LINE_BYTES`; only a file that cannot be read at
all (bad header, no rows) raises `FileError`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from worker.errors import Issue, TransferError
from worker.request.names import key_problem
from worker.text import has_lone_surrogates

#: columns a CSV file may have besides sip.*, voip.* and its key column
WIRE_COLUMNS = (
    "callConnectionId",
    "targetParticipant",
    "transferee",
    "operationContext",
    "operationCallbackUri",
    "sourceCallerIdNumber",
)
REQUIRED_COLUMNS = ("callConnectionId", "targetParticipant")
SIP_PREFIX = "sip."
VOIP_PREFIX = "voip."
#: a longer physical line is a rejected row (only its start is kept, so memory stays bounded)
MAX_LINE_BYTES = 1024 * 1024
#: how much of an over-long line a reject shows
SHOWN_BYTES = 200
FORMATS = ("csv", "jsonl")


class FileError(TransferError):
    """The file cannot be read as a campaign at all (nothing after `line` was enqueued)."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}")


@dataclass(frozen=True)
class Row:
    """One record: where it starts, its text as in the file, and its wire form or why there is none."""

    line: int
    raw: str
    message: dict[str, Any] | None = None
    key: str | None = None
    issues: tuple[Issue, ...] = field(default=())


def detect_format(path: Path, given: str = "auto") -> str:
    if given != "auto":
        return given
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    raise ValueError(f"cannot tell the format of {path.name!r} from its name: use --format csv or --format jsonl")


def read_rows(
    path: Path, file_format: str, key_column: str | None = None, progress: Callable[[int], None] | None = None
) -> Iterator[Row]:
    """The file's rows in order; `progress` is told how many bytes each physical line took."""
    with path.open("rb") as handle:
        lines = _Lines(handle, progress or (lambda _: None))
        if file_format == "csv":
            yield from _csv_rows(lines, key_column)
        elif file_format == "jsonl":
            yield from _jsonl_rows(lines, key_column)
        else:
            raise ValueError(f"unknown format {file_format!r}: use one of {', '.join(FORMATS)}")


class _Lines:
    """Physical lines as text, numbered, remembered until taken so a record's raw text can be reported.

    Bytes that are not UTF-8 become lone surrogates (``surrogateescape``), which the row checks then reject:
    one bad row does not stop the file."""

    def __init__(self, handle: BinaryIO, progress: Callable[[int], None]) -> None:
        self._handle = handle
        self._progress = progress
        self.number = 0
        self._taken: list[str] = []
        self._first = 1
        #: over-long lines among those read since the last take: their record is rejected
        self.oversized: list[int] = []

    def __iter__(self) -> Iterator[str]:
        while True:
            data = self._handle.readline(MAX_LINE_BYTES + 1)
            if not data:
                return
            self.number += 1
            if not self._taken:
                self._first = self.number
            if len(data) > MAX_LINE_BYTES:
                # Read past the rest of it and hand the parser an empty line in its place.
                self._progress(len(data) + self._skip_line(data))
                self.oversized.append(self.number)
                self._taken.append(data[:SHOWN_BYTES].decode("utf-8", errors="replace") + "...\n")
                yield "\n"
                continue
            self._progress(len(data))
            text = data.decode("utf-8", errors="surrogateescape")
            if self.number == 1:
                text = text.removeprefix("\ufeff")
            self._taken.append(text)
            yield text

    def _skip_line(self, data: bytes) -> int:
        skipped = 0
        while not data.endswith(b"\n"):
            data = self._handle.readline(MAX_LINE_BYTES)
            if not data:
                break
            skipped += len(data)
        return skipped

    def take(self) -> tuple[int, str]:
        """(first line number, text) of the lines read since the last take."""
        raw = "".join(self._taken).rstrip("\r\n")
        self._taken.clear()
        return self._first, raw

    def take_oversized(self) -> Issue | None:
        """The issue of a record that spans an over-long line, if the last one did."""
        if not self.oversized:
            return None
        lines = ", ".join(map(str, self.oversized))
        self.oversized.clear()
        return Issue("(row)", f"line {lines} is longer than {MAX_LINE_BYTES} bytes")


def _check_key(value: object, column: str, issues: list[Issue]) -> str | None:
    if value is None:
        issues.append(Issue(column, "the key is missing: every row needs one"))
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        issues.append(Issue(column, "the key must be a string or an integer"))
        return None
    key = str(value)
    if not key.strip():
        issues.append(Issue(column, "the key is empty: every row needs one"))
        return None
    problem = key_problem(key)
    if problem is not None:
        issues.append(Issue(column, f"the key {problem}"))
        return None
    return key


# --- CSV -------------------------------------------------------------------------------------------------


def _check_header(cells: list[str], line: int, key_column: str | None) -> list[str]:
    header = [cell.strip() for cell in cells]
    for index, name in enumerate(header, 1):
        if not name:
            raise FileError(line, f"column {index} of the header has no name")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise FileError(line, f"the header names {', '.join(map(repr, duplicates))} more than once")
    unknown = [
        name
        for name in header
        if name not in WIRE_COLUMNS
        and name != key_column
        and not (name.startswith((SIP_PREFIX, VOIP_PREFIX)) and name.partition(".")[2])
    ]
    if unknown:
        raise FileError(
            line,
            f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: columns are "
            f"{', '.join(WIRE_COLUMNS)}, sip.<Header-Name>, voip.<name>"
            + (f" and the key column {key_column!r}" if key_column else " (and a key column named by --key-column)"),
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise FileError(line, f"the header lacks the required column{'s' if len(missing) > 1 else ''} {missing}")
    if key_column is not None and key_column not in header:
        raise FileError(line, f"the key column {key_column!r} is not in the header")
    return header


def _csv_rows(lines: _Lines, key_column: str | None) -> Iterator[Row]:
    reader = csv.reader(iter(lines), strict=True)
    header: list[str] | None = None
    any_row = False
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            line, raw = lines.take()
            if header is None:
                raise FileError(line, f"the header is not valid CSV: {error}") from None
            any_row = True
            yield Row(line, raw, issues=(lines.take_oversized() or Issue("(row)", f"is not valid CSV: {error}"),))
            continue
        line, raw = lines.take()
        too_long = lines.take_oversized()
        if too_long is not None:
            if header is None:
                raise FileError(line, f"the header: {too_long.rule}: not a campaign file?")
            yield Row(line, raw, issues=(too_long,))
            continue
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        if header is None:
            if has_lone_surrogates(raw):
                raise FileError(line, "the header is not valid UTF-8")
            header = _check_header(cells, line, key_column)
            continue
        any_row = True
        yield _csv_row(header, cells, line, raw, key_column)
    if header is None:
        raise FileError(lines.number, "the file has no header row (and no rows)")
    if not any_row:
        raise FileError(lines.number, "the file has a header but no rows: nothing to enqueue")


def _csv_row(header: list[str], cells: list[str], line: int, raw: str, key_column: str | None) -> Row:
    if len(cells) != len(header):
        issue = Issue("(row)", f"has {len(cells)} cells where the header has {len(header)} columns")
        return Row(line, raw, issues=(issue,))
    if has_lone_surrogates(raw):
        return Row(line, raw, issues=(Issue("(row)", "is not valid UTF-8"),))
    message: dict[str, Any] = {}
    sip: dict[str, str] = {}
    voip: dict[str, str] = {}
    issues: list[Issue] = []
    key = None
    for column, cell in zip(header, cells, strict=True):
        if column == key_column:
            key = _check_key(cell, column, issues)
            if column not in WIRE_COLUMNS:
                continue
        if cell == "":
            continue
        if column.startswith(SIP_PREFIX):
            sip[column.removeprefix(SIP_PREFIX)] = cell
        elif column.startswith(VOIP_PREFIX):
            voip[column.removeprefix(VOIP_PREFIX)] = cell
        else:
            message[column] = cell
    if sip or voip:
        context = {"sipHeaders": sip, "voipHeaders": voip}
        message["customCallingContext"] = {name: headers for name, headers in context.items() if headers}
    return Row(line, raw, message, key, tuple(issues))


# --- JSONL -----------------------------------------------------------------------------------------------


def _jsonl_rows(lines: _Lines, key_column: str | None) -> Iterator[Row]:
    any_row = False
    for text in lines:
        line, raw = lines.take()
        too_long = lines.take_oversized()
        if too_long is not None:
            any_row = True
            yield Row(line, raw, issues=(too_long,))
            continue
        if not text.strip():
            continue
        any_row = True
        if has_lone_surrogates(text):
            yield Row(line, raw, issues=(Issue("(line)", "is not valid UTF-8"),))
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            yield Row(line, raw, issues=(Issue("(line)", f"is not valid JSON: {error.msg} at column {error.colno}"),))
            continue
        except RecursionError:
            # Python's decoder recurses once per nesting level: a line of "[[[[..." exhausts the stack.
            yield Row(line, raw, issues=(Issue("(line)", "is not a transfer: JSON nested too deeply"),))
            continue
        if not isinstance(data, dict):
            yield Row(line, raw, issues=(Issue("(line)", f"must be a JSON object, not {type(data).__name__}"),))
            continue
        issues: list[Issue] = []
        key = None
        if key_column is not None:
            value = data.get(key_column) if key_column in WIRE_COLUMNS else data.pop(key_column, None)
            key = _check_key(value, key_column, issues)
        yield Row(line, raw, data, key, tuple(issues))
    if not any_row:
        raise FileError(lines.number, "the file has no rows: nothing to enqueue")
