"""Fuzzing what validation lets through against what the ledger can store: a request that `parse_transfer`
accepts becomes a job row on PostgreSQL (and SQLite) without a database error, whatever its text holds.

tests/test_models.py covers the request model itself (any input gives a schema-valid body or a clear
`ValidationError`); this closes the gap it left: "valid" must also mean "storable". An operationContext
holding NUL passed validation and failed the insert on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker.errors import ValidationError
from worker.ledger import SyncLedger
from worker.request.job import prepare_job
from worker.request.models import parse_transfer

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Any code point, NUL and unpaired surrogates included (JSON can carry both).
_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
_phone = st.integers(10**7, 10**14).map(lambda n: f"4:+{n}")


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[SyncLedger]:
    opened = SyncLedger(ledger_url)
    yield opened
    opened.close()


@FUZZ
@given(
    call=_text | st.just("call-1"),
    target=_text | _phone,
    context=st.none() | _text,
    sip=st.none() | st.dictionaries(_text.map(lambda key: f"X-MS-Custom-{key}"), _text, max_size=3),
    voip=st.none() | st.dictionaries(_text, _text, max_size=3),
)
@example(call="call-1", target="4:+14255550123", context="a\x00b", sip=None, voip=None)
def test_every_valid_request_can_be_stored(
    ledger: SyncLedger,
    call: str,
    target: str,
    context: str | None,
    sip: dict[str, str] | None,
    voip: dict[str, str] | None,
) -> None:
    data: dict[str, Any] = {"callConnectionId": call, "targetParticipant": target}
    if context is not None:
        data["operationContext"] = context
    headers = {name: value for name, value in (("sipHeaders", sip), ("voipHeaders", voip)) if value}
    if headers:
        data["customCallingContext"] = headers
    try:
        request = parse_transfer(data)
    except ValidationError as error:
        problems = error.issues
        assert problems
        return
    new_job = prepare_job(request)
    ((job, _),) = ledger.create_jobs([new_job])
    assert ledger.get(job.id).body == new_job.body.decode()
