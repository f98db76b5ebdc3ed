"""The send logic against the emulator over real HTTP, with a real ledger, without Celery."""

from __future__ import annotations

import asyncio
import base64
import random
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import structlog

from tests.stack import KEY
from worker.acs.client import AcsClient
from worker.acs.signing import http_date
from worker.config import Settings
from worker.deliver.transfer import Context, backoff_delay, send_job
from worker.emulator import Emulator, EmulatorConfig, start_emulator
from worker.ledger import Job, Ledger, State, SyncLedger, op_events
from worker.request.job import prepare_job
from worker.request.models import parse_transfer


@pytest.fixture
def settings(emulator: Emulator, ledger_url: str) -> Settings:
    return Settings(
        acs_connection_string=f"endpoint={emulator.url}/;accesskey={base64.b64encode(KEY).decode()}",
        ledger_url=ledger_url,
        request_timeout=1.0,
        backoff_base=0.05,
        backoff_cap=0.2,
    )


@pytest.fixture
async def context(settings: Settings) -> AsyncIterator[Context]:
    ledger = await Ledger.open(settings.ledger_url)
    client = AcsClient(settings.acs, settings.api_version, 1.0, settings.request_timeout, 10)
    yield Context(settings, ledger, client, "test-worker")
    await client.close()
    await ledger.close()


async def set_faults(emulator: Emulator, plan: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session, session.put(f"{emulator.url}/_emulator/faults", json=plan) as r:
        assert r.status == 200, await r.text()


def create_job(settings: Settings, call: str, key: str | None = None, **fields: Any) -> Job:
    request = parse_transfer({"callConnectionId": call, "targetParticipant": "4:+15551234567", **fields})
    ledger = SyncLedger(settings.ledger_url)
    ((job, created),) = ledger.create_jobs([prepare_job(request, idempotency_key=key)])
    ledger.close()
    assert created
    return job


def requests_for(emulator: Emulator, call: str) -> list[Any]:
    return [entry for entry in emulator.state.requests if entry.call_connection_id == call]


async def test_accepted_on_the_first_attempt_logs_every_step(
    emulator: Emulator, settings: Settings, context: Context
) -> None:
    job = create_job(settings, "call-ok", operationContext="ctx-1")
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        done = await send_job(job.id, context)
    assert done is not None
    assert done.state == State.ACCEPTED
    assert done.attempts == 1
    assert done.last_status == 202
    assert emulator.state.effects.effects_for("call-ok", job.request_id) == 1
    attempts = [entry for entry in logs if entry["event"] == "acs.attempt"]
    assert len(attempts) == 1
    for field in ("job_id", "call_connection_id", "request_id", "attempt", "status", "duration_ms"):
        assert field in attempts[0], field
    assert attempts[0]["status"] == 202
    assert attempts[0]["request_id"] == job.request_id
    transitions = [(e["from_state"], e["to_state"]) for e in logs if e["event"] == "job.transition"]
    assert transitions == [(State.QUEUED, State.SENDING), (State.SENDING, State.ACCEPTED)]


async def test_503_after_effect_then_429_then_202_is_one_effect_with_one_id_and_first_sent(
    emulator: Emulator, settings: Settings, context: Context
) -> None:
    call = "call-retry"
    await set_faults(
        emulator,
        {
            "by_call": {
                call: [
                    {"kind": "status", "status": 503, "stage": "after"},
                    {"kind": "status", "status": 429, "stage": "before", "retry_after": 0.6},
                ]
            }
        },
    )
    job = create_job(settings, call)
    done = await send_job(job.id, context)
    assert done is not None
    assert done.state == State.ACCEPTED
    assert done.attempts == 3
    seen = requests_for(emulator, call)
    assert [entry.status for entry in seen] == [503, 429, 202]
    assert {entry.request_id for entry in seen} == {job.request_id}
    assert {entry.first_sent for entry in seen} == {http_date(done.first_sent or 0)}
    assert seen[2].at - seen[1].at >= 0.6  # the retry honoured Retry-After
    assert emulator.state.effects.effects_for_call(call) == 1
    events = await context.ledger.run(op_events, job.id)
    assert [e.to_state for e in events] == [
        State.QUEUED,
        State.SENDING,
        State.RETRY_WAIT,
        State.SENDING,
        State.RETRY_WAIT,
        State.SENDING,
        State.ACCEPTED,
    ]
    assert [e.status for e in events if e.to_state == State.RETRY_WAIT] == [503, 429]


@pytest.mark.parametrize("header", ["retry-after-ms", "x-ms-retry-after-ms"])
async def test_millisecond_retry_hints_are_honoured(
    emulator: Emulator, settings: Settings, context: Context, header: str
) -> None:
    call = f"call-{header}"
    fault = {"kind": "status", "status": 429, "stage": "before", "retry_after": 0.5, "retry_after_header": header}
    await set_faults(emulator, {"by_call": {call: [fault]}})
    job = create_job(settings, call)
    done = await send_job(job.id, context)
    assert done is not None
    assert done.state == State.ACCEPTED
    first, second = requests_for(emulator, call)
    assert second.at - first.at >= 0.5


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "drop", "stage": "after"},
        {"kind": "drop", "stage": "before"},
        {"kind": "timeout", "stage": "after", "seconds": 2},
        {"kind": "timeout", "stage": "before", "seconds": 2},
        {"kind": "status", "status": 500, "stage": "answer"},
        {"kind": "status", "status": 502, "stage": "before"},
    ],
)
async def test_transient_faults_end_in_exactly_one_effect(
    emulator: Emulator, settings: Settings, context: Context, fault: dict[str, Any]
) -> None:
    call = f"call-{fault['kind']}-{fault['stage']}"
    await set_faults(emulator, {"latency_ms": 10, "by_call": {call: [fault]}})
    job = create_job(settings, call)
    done = await send_job(job.id, context)
    assert done is not None
    assert done.state == State.ACCEPTED
    assert done.attempts == 2
    assert emulator.state.effects.effects_for_call(call) == 1
    assert {entry.request_id for entry in requests_for(emulator, call)} == {job.request_id}


async def test_permanent_failure_keeps_the_acs_error(emulator: Emulator, settings: Settings, context: Context) -> None:
    call = "call-gone"
    await set_faults(emulator, {"by_call": {call: [{"kind": "status", "status": 404, "stage": "answer"}]}})
    job = create_job(settings, call)
    done = await send_job(job.id, context)
    assert done is not None
    assert done.state == State.FAILED
    assert done.attempts == 1
    assert done.last_status == 404
    assert done.last_error == "NotFound"
    assert done.last_message is not None
    assert "404" in done.last_message
    assert emulator.state.effects.effects_for_call(call) == 0


async def test_window_closing_makes_the_outcome_unknown_without_a_new_request_id(
    emulator: Emulator, settings: Settings, ledger_url: str
) -> None:
    call = "call-window"
    fault = {"kind": "status", "status": 503, "stage": "before"}
    await set_faults(emulator, {"by_call": {call: [fault] * 100}})
    # First-Sent has one-second resolution (rounded down), so the deadline is 1 to 2 s after the first attempt.
    short = replace(settings, repeatability_window=3.0, window_safety_margin=1.0, backoff_base=0.1, backoff_cap=0.2)
    ledger = await Ledger.open(ledger_url)
    client = AcsClient(short.acs, short.api_version, 1.0, 1.0, 10)
    job = create_job(settings, call)
    done = await send_job(job.id, Context(short, ledger, client, "w"))
    await client.close()
    await ledger.close()
    assert done is not None
    assert done.state == State.UNKNOWN
    assert done.attempts >= 2
    # Either the last retry would have fallen past the deadline, or its sleep ran past it (timers overshoot).
    assert re.search(r"outside the repeatability window|repeatability window closed before attempt", done.reason or "")
    assert done.last_status == 503
    seen = requests_for(emulator, call)
    assert len(seen) == done.attempts
    assert {entry.request_id for entry in seen} == {job.request_id}
    first_sent = done.first_sent or 0
    # An attempt starts before the send deadline; the safety margin covers its way to ACS (a ledger write and the
    # request), so every request arrives inside ACS' window, and retries went on until close to the deadline.
    assert all(entry.at < first_sent + short.repeatability_window for entry in seen)
    assert seen[-1].at > first_sent + short.send_deadline - 1.0


async def test_412_from_acs_makes_the_outcome_unknown(settings: Settings, ledger_url: str) -> None:
    # An ACS whose window is shorter than ours: First-Sent is already too old on the second attempt.
    async with await start_emulator(EmulatorConfig(access_key=KEY, window=1.0)) as short_emulator:
        await set_faults(
            short_emulator,
            {"by_call": {"call-412": [{"kind": "status", "status": 503, "stage": "before", "retry_after": 1.2}]}},
        )
        local = replace(
            settings,
            acs_connection_string=f"endpoint={short_emulator.url}/;accesskey={base64.b64encode(KEY).decode()}",
        )
        ledger = await Ledger.open(ledger_url)
        client = AcsClient(local.acs, local.api_version, 1.0, 1.0, 10)
        job = create_job(local, "call-412")
        done = await send_job(job.id, Context(local, ledger, client, "w"))
        await client.close()
        await ledger.close()
        assert done is not None
        assert done.state == State.UNKNOWN
        assert done.last_status == 412
        assert [entry.status for entry in short_emulator.state.requests] == [503, 412]


async def test_a_second_delivery_while_the_first_is_sending_sends_nothing(
    emulator: Emulator, settings: Settings, context: Context
) -> None:
    await set_faults(emulator, {"latency_ms": 300})
    job = create_job(settings, "call-twice")
    first, second = await asyncio.gather(send_job(job.id, context), send_job(job.id, context))
    states = sorted(result.state for result in (first, second) if result is not None)
    assert State.ACCEPTED in states
    assert len(requests_for(emulator, "call-twice")) == 1
    assert emulator.state.effects.effects_for_call("call-twice") == 1


async def test_a_settled_job_is_not_sent_again(emulator: Emulator, settings: Settings, context: Context) -> None:
    job = create_job(settings, "call-once")
    await send_job(job.id, context)
    again = await send_job(job.id, context)
    assert again is not None
    assert again.state == State.ACCEPTED
    assert len(requests_for(emulator, "call-once")) == 1


def test_backoff_grows_is_capped_and_respects_the_server() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 0.5, 4.0, None, rng) for attempt in range(1, 9)]
    assert 0.25 <= delays[0] <= 0.5
    assert 0.5 <= delays[1] <= 1.0
    assert all(2.0 <= delay <= 4.0 for delay in delays[3:])  # capped
    assert len(set(delays)) == len(delays)  # jittered
    assert backoff_delay(1, 0.5, 4.0, 7.5, rng) == 7.5  # the server's delay wins
