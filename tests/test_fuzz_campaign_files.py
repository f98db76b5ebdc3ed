"""Fuzzing the campaign reader: any bytes in a CSV or JSONL file become rows (a wire form, or issues saying why
not) or one clear `FileError`; never another exception. Each row's wire form then validates or is refused with
a `ValidationError`, as the submitter expects.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker.errors import ValidationError
from worker.produce.campaign_files import WIRE_COLUMNS, FileError, Row, read_rows
from worker.request.models import parse_transfer

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_all(data: bytes, file_format: str, key_column: str | None) -> list[Row] | FileError:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"campaign.{file_format}"
        path.write_bytes(data)
        try:
            return list(read_rows(path, file_format, key_column))
        except FileError as error:
            return error


def check(result: list[Row] | FileError) -> None:
    if isinstance(result, FileError):
        assert str(result).startswith(f"line {result.line}: ")
        return
    for row in result:
        assert row.line >= 1
        assert isinstance(row.raw, str)
        if row.message is None:
            assert row.issues, "a row without a wire form must say why"
            continue
        try:
            parse_transfer(row.message, where=f"line {row.line}")
        except ValidationError as error:
            problems = error.issues
            assert problems


_key_column = st.none() | st.sampled_from(["ticket", "operationContext", "callConnectionId"])


@FUZZ
@given(data=st.binary(max_size=2000), file_format=st.sampled_from(["csv", "jsonl"]), key_column=_key_column)
@example(data=b"\xef\xbb\xbf", file_format="csv", key_column=None)
@example(data=b'callConnectionId,targetParticipant\n"unterminated', file_format="csv", key_column=None)
@example(data=b"callConnectionId,targetParticipant\n\x00,\xff\n", file_format="csv", key_column=None)
@example(data=b"[" * 100_000, file_format="jsonl", key_column=None)
@example(data=b'{"callConnectionId": "c", "ticket": {}}\n', file_format="jsonl", key_column="ticket")
@example(data=b"1e999999\nnull\n[]\n", file_format="jsonl", key_column="ticket")
def test_arbitrary_bytes_become_rows_or_a_file_error(data: bytes, file_format: str, key_column: str | None) -> None:
    check(read_all(data, file_format, key_column))


_cell = st.text(max_size=30)
_column = st.sampled_from([*WIRE_COLUMNS, "sip.X-MS-Custom-A", "voip.k", "ticket"])


@FUZZ
@given(
    header=st.lists(_column, min_size=1, max_size=8),
    rows=st.lists(st.lists(_cell, max_size=9), max_size=10),
    key_column=_key_column,
    line_end=st.sampled_from(["\n", "\r\n"]),
)
def test_csv_near_misses_become_rows_or_a_file_error(
    header: list[str], rows: list[list[str]], key_column: str | None, line_end: str
) -> None:
    """Real CSV (quoting done right) with valid and invalid headers, ragged rows and odd cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=line_end)
    writer.writerow(header)
    writer.writerows(rows)
    check(read_all(buffer.getvalue().encode("utf-8", "surrogatepass"), "csv", key_column))


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(
    lines=st.lists(
        st.dictionaries(st.sampled_from([*WIRE_COLUMNS, "ticket", "customCallingContext"]), _json_value, max_size=6)
        | _json_value,
        max_size=10,
    ),
    key_column=_key_column,
)
def test_jsonl_near_misses_become_rows_or_a_file_error(lines: list[object], key_column: str | None) -> None:
    data = "\n".join(json.dumps(line) for line in lines).encode()
    check(read_all(data, "jsonl", key_column))
