"""Reading campaign files: CSV and JSONL edge cases, each bad row reported with its line, field and rule."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from worker.ledger.campaign import parse_rate
from worker.ledger.limits import IDEMPOTENCY_KEY
from worker.produce.campaign_files import FileError, Row, detect_format, read_rows
from worker.produce.campaign_submit import idempotency_key
from worker.request.models import parse_transfer
from worker.request.names import campaign_problem

HEADER = "callConnectionId,targetParticipant,operationContext\n"


def rows(tmp_path: Path, content: str | bytes, file_format: str = "csv", key: str | None = None) -> list[Row]:
    path = tmp_path / f"campaign.{file_format}"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return list(read_rows(path, file_format, key))


def issues(row: Row) -> list[tuple[str, str]]:
    return [(issue.field, issue.rule) for issue in row.issues]


def test_csv_columns_become_the_wire_form(tmp_path: Path) -> None:
    content = (
        "callConnectionId,targetParticipant,transferee,operationCallbackUri,sourceCallerIdNumber,"
        "sip.X-MS-Custom-Ticket,sip.User-To-User,voip.team,operationContext\n"
        "call-1,4:+14255550101,8:acs:agent-1,https://cb.example/x,+14255550100,T-1,uui,blue,\n"
    )
    (row,) = rows(tmp_path, content)
    assert row.line == 2
    assert row.issues == ()
    assert row.message == {
        "callConnectionId": "call-1",
        "targetParticipant": "4:+14255550101",
        "transferee": "8:acs:agent-1",
        "operationCallbackUri": "https://cb.example/x",
        "sourceCallerIdNumber": "+14255550100",
        "customCallingContext": {
            "sipHeaders": {"X-MS-Custom-Ticket": "T-1", "User-To-User": "uui"},
            "voipHeaders": {"team": "blue"},
        },
    }  # the empty operationContext cell is absent, not ""
    parse_transfer(row.message)


def test_csv_bom_crlf_blank_lines_and_quoted_newlines(tmp_path: Path) -> None:
    content = (
        "\ufeffcallConnectionId,targetParticipant,operationContext\r\n"
        "\r\n"
        'call-1,4:+14255550101,"two\r\nlines, and a comma"\r\n'
        "   \r\n"
        ",,\r\n"
        "call-2,4:+14255550102,plain\r\n"
    )
    read = rows(tmp_path, content)
    assert [row.line for row in read] == [3, 7]  # a record is numbered by the line it starts on
    assert read[0].message is not None
    assert read[0].message["operationContext"] == "two\r\nlines, and a comma"
    assert read[0].raw == 'call-1,4:+14255550101,"two\r\nlines, and a comma"'
    assert read[1].message == {
        "callConnectionId": "call-2",
        "targetParticipant": "4:+14255550102",
        "operationContext": "plain",
    }


def test_csv_bad_rows_do_not_stop_the_file(tmp_path: Path) -> None:
    content = (
        HEADER.encode()
        + b"call-1,4:+14255550101\n"  # too few cells
        + b'call-2,4:+14255550102,"unclosed"quote\n'  # not valid CSV
        + b"call-3,4:+14255550103,caf\xe9\n"  # latin-1, not UTF-8
        + b"call-4,4:+14255550104,fine\n"
    )
    read = rows(tmp_path, content)
    assert [row.line for row in read] == [2, 3, 4, 5]
    assert issues(read[0]) == [("(row)", "has 2 cells where the header has 3 columns")]
    assert read[1].issues[0].rule.startswith("is not valid CSV")
    assert issues(read[2]) == [("(row)", "is not valid UTF-8")]
    assert read[3].issues == ()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("callConnectionId,target,operationContext", "line 1: unknown column 'target'"),
        ("callConnectionId,operationContext", "lacks the required column ['targetParticipant']"),
        ("callConnectionId,targetParticipant,,x", "column 3 of the header has no name"),
        ("callConnectionId,targetParticipant,callConnectionId", "names 'callConnectionId' more than once"),
        ("callConnectionId,targetParticipant,customCallingContext", "unknown column 'customCallingContext'"),
        ("callConnectionId,targetParticipant,sip.", "unknown column 'sip.'"),
    ],
)
def test_csv_header_problems_stop_before_any_row(tmp_path: Path, header: str, message: str) -> None:
    with pytest.raises(FileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rows(tmp_path, header + "\ncall-1,4:+14255550101,x\n")


def test_csv_header_after_blank_lines_and_with_spaces(tmp_path: Path) -> None:
    (row,) = rows(tmp_path, "\n\n callConnectionId , targetParticipant\ncall-1,4:+14255550101\n")
    assert row.line == 4
    assert row.message == {"callConnectionId": "call-1", "targetParticipant": "4:+14255550101"}


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="no header"):
        rows(tmp_path, "\n\n")


def test_csv_key_column(tmp_path: Path) -> None:
    content = "ticket,callConnectionId,targetParticipant\nT-1,call-1,4:+14255550101\n,call-2,4:+14255550102\n"
    first, second = rows(tmp_path, content, key="ticket")
    assert first.key == "T-1"
    assert first.message == {"callConnectionId": "call-1", "targetParticipant": "4:+14255550101"}
    assert issues(second) == [("ticket", "the key is empty: every row needs one")]
    with pytest.raises(FileError, match="key column 'ticket' is not in the header"):
        rows(tmp_path, HEADER + "call-1,4:+14255550101,x\n", key="ticket")
    # A wire column may double as the key.
    (row,) = rows(tmp_path, HEADER + "call-1,4:+14255550101,op-1\n", key="operationContext")
    assert row.key == "op-1"
    assert row.message is not None
    assert row.message["operationContext"] == "op-1"


def test_jsonl_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"callConnectionId": "call-1", "targetParticipant": "4:+14255550101", "id": "k1"}),
        "",
        "{not json",
        "[1, 2]",
        json.dumps({"callConnectionId": "call-2", "targetParticipant": 42, "id": 7}),
        json.dumps({"callConnectionId": "call-3", "targetParticipant": "4:+14255550103"}),
        json.dumps({"callConnectionId": "call-4", "targetParticipant": "4:+14255550104", "id": True}),
    ]
    read = rows(tmp_path, "\ufeff" + "\n".join(lines) + "\n", "jsonl", key="id")
    assert [row.line for row in read] == [1, 3, 4, 5, 6, 7]
    assert read[0].key == "k1"
    assert read[0].message == {"callConnectionId": "call-1", "targetParticipant": "4:+14255550101"}
    expected = "is not valid JSON: Expecting property name enclosed in double quotes at column 2"
    assert issues(read[1]) == [("(line)", expected)]
    assert issues(read[2]) == [("(line)", "must be a JSON object, not list")]
    assert read[3].key == "7"  # an integer key is fine
    assert issues(read[4]) == [("id", "the key is missing: every row needs one")]
    assert issues(read[5]) == [("id", "the key must be a string or an integer")]
    # Wrong types inside a row are the validator's to name, with the field.
    assert read[3].message is not None
    with pytest.raises(ValueError, match="targetParticipant"):
        parse_transfer(read[3].message, where="line 6")


def test_jsonl_invalid_utf8_is_one_bad_line(tmp_path: Path) -> None:
    good = json.dumps({"callConnectionId": "call-1", "targetParticipant": "4:+14255550101"}).encode()
    read = rows(tmp_path, b'{"callConnectionId": "caf\xe9"}\n' + good + b"\n", "jsonl")
    assert issues(read[0]) == [("(line)", "is not valid UTF-8")]
    assert read[1].issues == ()


@pytest.mark.parametrize("file_format", ["csv", "jsonl"])
def test_a_line_too_long_is_a_rejected_row_between_good_ones(tmp_path: Path, file_format: str) -> None:
    good = ["call-1,4:+14255550101,a\n", "call-2,4:+14255550102,b\n"]
    if file_format == "jsonl":
        good = [
            json.dumps({"callConnectionId": f"call-{n}", "targetParticipant": "4:+14255550101"}) + "\n" for n in (1, 2)
        ]
    header = HEADER if file_format == "csv" else ""
    read = rows(tmp_path, header + good[0] + "x" * (3 * 1024 * 1024) + "\n" + good[1], file_format)
    assert [row.issues == () for row in read] == [True, False, True]
    first = 2 if file_format == "csv" else 1
    assert [row.line for row in read] == [first, first + 1, first + 2]
    assert issues(read[1]) == [("(row)", f"line {first + 1} is longer than 1048576 bytes")]
    assert len(read[1].raw) < 300  # only its start is kept


def test_a_file_without_rows_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="a header but no rows"):
        rows(tmp_path, HEADER + "\n")
    with pytest.raises(FileError, match="no rows"):
        rows(tmp_path, "\n\n", "jsonl")


def test_reading_streams_in_flat_memory(tmp_path: Path) -> None:
    """Peak memory while reading 20,000 rows stays far below the file's size: rows are never all held."""
    path = tmp_path / "big.csv"
    with path.open("w") as handle:
        handle.write(HEADER)
        for index in range(20_000):
            handle.write(f"call-{index},4:+1425555{index:04d},{'context-' * 10}{index}\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_rows(path, "csv"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < size / 10, (peak, size)


def test_format_from_the_file_name() -> None:
    assert detect_format(Path("a.CSV")) == "csv"
    assert detect_format(Path("a.ndjson")) == "jsonl"
    assert detect_format(Path("a.txt"), "jsonl") == "jsonl"
    with pytest.raises(ValueError, match="--format"):
        detect_format(Path("a.txt"))


def test_keys_are_stable_and_never_collide_across_campaigns() -> None:
    request = parse_transfer({"callConnectionId": "c", "targetParticipant": "4:+14255550101"})
    same = parse_transfer({"callConnectionId": "c", "targetParticipant": {"phoneNumber": {"value": "+14255550101"}}})
    assert idempotency_key("a", None, request) == idempotency_key("a", None, same)  # one transfer, two spellings
    assert idempotency_key("a", None, request) != idempotency_key("b", None, request)
    assert idempotency_key("a:key:b", "c", request) != idempotency_key("a", "b:key:c", request)
    assert idempotency_key("a", "k", request) == idempotency_key("a", "k", same)


def test_rates_and_names() -> None:
    assert parse_rate("20") == 20
    assert parse_rate("20/s") == 20
    assert parse_rate("600/min") == 10
    assert parse_rate("1.5 / m") == pytest.approx(0.025)
    assert parse_rate("3600/h") == 1
    for bad in ("0", "-1/s", "fast", "10/d", ""):
        with pytest.raises(ValueError, match="not a rate"):
            parse_rate(bad)
    assert campaign_problem("spring-2025") is None
    for bad in ("", " x", "a\nb", "x" * 201):
        assert campaign_problem(bad) is not None


def test_a_rows_key_has_the_ledgers_limit_as_every_other_way_in(tmp_path: Path) -> None:
    longest, too_long = "k" * IDEMPOTENCY_KEY, "k" * (IDEMPOTENCY_KEY + 1)
    content = f"ticket,callConnectionId,targetParticipant\n{longest},call-1,4:+1425555010\n{too_long},call-2,4:+1\n"
    first, second = rows(tmp_path, content, key="ticket")
    assert first.key == longest
    assert issues(second) == [("ticket", f"the key must be at most {IDEMPOTENCY_KEY} characters")]
    (tabbed,) = rows(tmp_path, "ticket,callConnectionId,targetParticipant\nT\t1,call-1,4:+1\n", key="ticket")
    assert issues(tabbed) == [("ticket", "the key must not contain control characters or lone surrogates")]
