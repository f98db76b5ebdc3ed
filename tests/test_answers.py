"""Outcome truth in the send loop: what one answer proves, and that an answer in hand is always written.

- a 4xx after an attempt whose effect is unknown (no answer, 5xx, a takeover of an unanswered attempt) settles
  the job `unknown`, never `failed` (ACS executes a request again after a 5xx; a call that already moved answers
  404), and an outcome event or a replay's warning still treats it as unknown;
- a definite answer (202, 4xx) is written through a ledger outage and after the job passed to another worker
  or went unknown or dead; never over a job already final.

Interleavings are forced: the emulator's scripted faults, a sender that moves the job while its request is
out, a sleep that crashes the worker or restarts the database.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from click.testing import CliRunner

from tests.services import PrivatePostgres
from tests.stack import KEY
from worker.acs.client import AcsClient, Answer, Outcome, classify
from worker.cli import main
from worker.config import Settings
from worker.deliver.transfer import Context, send_job
from worker.emulator import Emulator
from worker.ledger import (
    EventOutcome,
    Job,
    Ledger,
    State,
    SyncLedger,
    op_apply_outcome,
    op_claim,
    op_events,
    op_transition,
)
from worker.request.job import prepare_job
from worker.request.models import parse_transfer


@pytest.fixture
def settings(emulator: Emulator, ledger_url: str, tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        acs_connection_string=f"endpoint={emulator.url}/;accesskey={base64.b64encode(KEY).decode()}",
        ledger_url=ledger_url,
        request_timeout=1.0,
        backoff_base=0.05,
        backoff_cap=0.2,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AcsClient]:
    acs = AcsClient(settings.acs, settings.api_version, 1.0, settings.request_timeout, 10)
    yield acs
    await acs.close()


@pytest.fixture
async def ledger(settings: Settings) -> AsyncIterator[Ledger]:
    opened = await Ledger.open(settings.ledger_url)
    yield opened
    await opened.close()


async def set_faults(emulator: Emulator, plan: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session, session.put(f"{emulator.url}/_emulator/faults", json=plan) as r:
        assert r.status == 200, await r.text()


def create_job(ledger_url: str, call: str) -> Job:
    request = parse_transfer({"callConnectionId": call, "targetParticipant": "4:+15551234567"})
    ledger = SyncLedger(ledger_url)
    ((job, _),) = ledger.create_jobs([prepare_job(request)])
    ledger.close()
    return job


def statuses(emulator: Emulator, call: str) -> list[int | None]:
    return [entry.status for entry in emulator.state.requests if entry.call_connection_id == call]


class _Crash(Exception):
    """The worker process dies here."""


async def _crash(_: float) -> None:
    raise _Crash


# ---- a 4xx after an attempt whose effect is unknown -------------------------------------------------------------

EFFECT_THEN_NO_ANSWER = [
    pytest.param({"kind": "drop", "stage": "after"}, "no answer", id="dropped-after-the-effect"),
    pytest.param({"kind": "timeout", "stage": "after", "seconds": 2}, "no answer", id="timeout-after-the-effect"),
    pytest.param({"kind": "status", "status": 503, "stage": "after"}, "503", id="503-after-the-effect"),
    pytest.param({"kind": "status", "status": 500, "stage": "before"}, "500", id="500-before"),
]


@pytest.mark.parametrize(("first", "uncertain"), EFFECT_THEN_NO_ANSWER)
async def test_a_404_after_an_attempt_whose_effect_is_unknown_is_unknown_not_failed(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient, first: dict[str, Any], uncertain: str
) -> None:
    call = "call-moved"
    await set_faults(emulator, {"by_call": {call: [first, {"kind": "status", "status": 404, "stage": "before"}]}})
    job = create_job(settings.ledger_url, call)
    done = await send_job(job.id, Context(settings, ledger, client, "w"))
    assert done is not None
    assert done.state == State.UNKNOWN, done.reason
    assert done.last_status == 404
    reason = done.reason or ""
    assert uncertain in reason, reason  # the uncertain answer ...
    assert "404" in reason  # ... and the 4xx, both explained
    assert statuses(emulator, call)[-1] == 404
    # The unknown job still takes its outcome event: the transfer did happen.
    outcome = EventOutcome(State.TRANSFERRED, 0, 0, "transferred")
    settled = await ledger.run(op_apply_outcome, job.id, outcome, "CallTransferAccepted", time.time())
    assert settled is not None
    assert settled.state == State.TRANSFERRED


async def test_an_outcome_event_settles_a_dead_job_left_unknown_by_a_late_404(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient
) -> None:
    call = "call-dead-then-event"
    faults = [{"kind": "status", "status": 502, "stage": "after"}, {"kind": "status", "status": 404, "stage": "before"}]
    await set_faults(emulator, {"by_call": {call: faults}})
    job = create_job(settings.ledger_url, call)
    await send_job(job.id, Context(settings, ledger, client, "w"))
    assert await ledger.run(op_transition, job.id, None, State.UNKNOWN, State.DEAD, time.time()) is not None
    outcome = EventOutcome(State.TRANSFERRED, 0, 0, "transferred")
    settled = await ledger.run(op_apply_outcome, job.id, outcome, "CallTransferAccepted", time.time())
    assert settled is not None
    assert settled.state == State.TRANSFERRED


async def test_a_404_after_only_definite_answers_fails(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient
) -> None:
    call = "call-throttled-then-gone"
    faults = [
        {"kind": "status", "status": 429, "stage": "before"},
        {"kind": "status", "status": 404, "stage": "before"},
    ]
    await set_faults(emulator, {"by_call": {call: faults}})
    job = create_job(settings.ledger_url, call)
    done = await send_job(job.id, Context(settings, ledger, client, "w"))
    assert done is not None
    assert done.state == State.FAILED  # a 429 executed nothing: the 404 is the truth
    assert done.effect_unknown is None


async def test_an_unknown_effect_survives_a_crash_and_a_takeover(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient
) -> None:
    call = "call-crash-between"
    faults = [{"kind": "status", "status": 503, "stage": "after"}, {"kind": "status", "status": 404, "stage": "before"}]
    await set_faults(emulator, {"by_call": {call: faults}})
    job = create_job(settings.ledger_url, call)
    # Worker a records the 503 (retry_wait) and dies in its back-off.
    with pytest.raises(_Crash):
        await send_job(job.id, Context(settings, ledger, client, "a", sleep=_crash))
    # Worker b, once a's lease ran out, takes over and meets the call already moved.
    later = Context(settings, ledger, client, "b", clock=lambda: time.time() + settings.claim_lease + 5)
    done = await send_job(job.id, later)
    assert done is not None
    assert done.worker == "b"
    assert done.state == State.UNKNOWN, done.reason
    assert "attempt 1: 503" in (done.reason or "")
    assert emulator.state.effects.effects_for_call(call) == 1


async def test_a_404_after_taking_over_an_unanswered_attempt_is_unknown(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient
) -> None:
    call = "call-orphan"
    await set_faults(emulator, {"by_call": {call: [{"kind": "status", "status": 404, "stage": "before"}]}})
    job = create_job(settings.ledger_url, call)
    now = time.time()
    # A worker claimed the job, started attempt 1 (First-Sent stored) and died before recording any answer.
    assert await ledger.run(op_claim, job.id, "died", now - 60, now - 50, int(now - 60)) is not None
    done = await send_job(job.id, Context(settings, ledger, client, "w"))
    assert done is not None
    assert done.state == State.UNKNOWN, done.reason
    assert "attempt 1 got no recorded answer" in (done.reason or "")


async def test_a_404_after_taking_over_a_job_waiting_on_a_429_fails(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient
) -> None:
    call = "call-orphan-429"
    await set_faults(emulator, {"by_call": {call: [{"kind": "status", "status": 404, "stage": "before"}]}})
    job = create_job(settings.ledger_url, call)
    now = time.time()
    await ledger.run(op_claim, job.id, "died", now - 60, now - 50, int(now - 60))
    # Its answer was recorded, and it was definite: nothing was executed.
    waiting = await ledger.run(
        op_transition, job.id, "died", State.SENDING, State.RETRY_WAIT, now - 59, lease_until=now - 50, status=429
    )
    assert waiting is not None
    done = await send_job(job.id, Context(settings, ledger, client, "w"))
    assert done is not None
    assert done.state == State.FAILED, done.reason


@pytest.mark.parametrize("value", ["accepted", "Accepted", "ACCEPTED"])
def test_409_in_progress_is_transient_whatever_the_header_case(value: str) -> None:
    answer = classify(409, b'{"error": {"code": "Conflict"}}', {"repeatability-result": value}, 1.0)
    assert answer.outcome is Outcome.TRANSIENT
    assert answer.effect_unknown


def test_only_answers_that_may_hide_an_effect_are_uncertain() -> None:
    assert classify(503, b"", {}, 1.0).effect_unknown
    assert classify(408, b"", {}, 1.0).effect_unknown
    assert not classify(429, b"", {}, 1.0).effect_unknown
    assert not classify(404, b"", {}, 1.0).effect_unknown
    assert not classify(409, b"", {"Repeatability-Result": "rejected"}, 1.0).effect_unknown


async def test_replaying_a_dead_job_left_unknown_by_a_late_404_warns(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient
) -> None:
    call = "call-dead-after-404"
    faults = [{"kind": "drop", "stage": "after"}, {"kind": "status", "status": 404, "stage": "before"}]
    await set_faults(emulator, {"by_call": {call: faults}})
    job = create_job(settings.ledger_url, call)
    done = await send_job(job.id, Context(settings, ledger, client, "w"))
    assert done is not None
    assert done.state == State.UNKNOWN
    dead = await ledger.run(op_transition, job.id, None, State.UNKNOWN, State.DEAD, time.time(), detail="no event")
    assert dead is not None
    env = {**settings.to_env(), "LOG_LEVEL": "WARNING"}
    result = CliRunner().invoke(main, ["dead", "replay", job.id], env=env)
    assert result.exit_code == 0, result.output
    assert "outcome was unknown" in result.stderr


# ---- an answer in hand is never thrown away ---------------------------------------------------------------------


@dataclass
class MovesTheJobWhileSending:
    """Sends for real, then, before the worker sees the answer, lets `move` change the job in the ledger."""

    sender: AcsClient
    move: Callable[[], Awaitable[None]]

    async def transfer(self, call_connection_id: str, body: bytes, request_id: str, first_sent: str) -> Answer:
        answer = await self.sender.transfer(call_connection_id, body, request_id, first_sent)
        await self.move()
        return answer


async def _take_over(ledger: Ledger, job_id: str) -> None:
    later = time.time() + 3600  # the stalled worker's lease is long gone
    assert await ledger.run(op_claim, job_id, "rescuer", later, later + 30) is not None


async def _to(ledger: Ledger, job_id: str, *states: str) -> None:
    await _take_over(ledger, job_id)
    for before, after in zip((State.SENDING, *states), states, strict=False):
        moved = await ledger.run(op_transition, job_id, None, before, after, time.time(), detail=f"test: {after}")
        assert moved is not None


async def _transferred(ledger: Ledger, job_id: str) -> None:
    outcome = EventOutcome(State.TRANSFERRED, 0, 0, "ok")
    assert await ledger.run(op_apply_outcome, job_id, outcome, "CallTransferAccepted", time.time()) is not None


MOVES: dict[str, Callable[[Ledger, str], Awaitable[None]]] = {
    "taken-over": _take_over,
    "unknown": lambda ledger, job_id: _to(ledger, job_id, State.UNKNOWN),
    "dead": lambda ledger, job_id: _to(ledger, job_id, State.UNKNOWN, State.DEAD),
}


@pytest.mark.parametrize("meanwhile", list(MOVES))
async def test_a_stalled_workers_202_settles_the_job_whoever_holds_it(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient, meanwhile: str
) -> None:
    job = create_job(settings.ledger_url, f"call-stalled-{meanwhile}")
    sender = MovesTheJobWhileSending(client, lambda: MOVES[meanwhile](ledger, job.id))
    done = await send_job(job.id, Context(settings, ledger, sender, "stalled"))
    assert done is not None
    assert done.state == State.ACCEPTED
    assert "the answer reached stalled after the job was" in (done.reason or "")
    assert done.settled_at is None  # waiting for its outcome event
    assert [e.to_state for e in await ledger.run(op_events, job.id)][-1] == State.ACCEPTED


@pytest.mark.parametrize("final", [State.TRANSFERRED, State.FAILED])
async def test_a_stalled_workers_answer_never_overwrites_a_final_state(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient, final: str
) -> None:
    job = create_job(settings.ledger_url, f"call-final-{final}")

    async def settle() -> None:
        if final == State.TRANSFERRED:
            await _transferred(ledger, job.id)
        else:
            await _to(ledger, job.id, State.FAILED)

    done = await send_job(job.id, Context(settings, ledger, MovesTheJobWhileSending(client, settle), "stalled"))
    assert done is not None
    assert done.state == final


async def test_a_stalled_workers_404_leaves_a_taken_over_job_unknown(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient
) -> None:
    # The takeover makes the stalled attempt's effect unknown, so its late 404 cannot prove a failure.
    call = "call-stalled-404"
    await set_faults(emulator, {"by_call": {call: [{"kind": "status", "status": 404, "stage": "before"}]}})
    job = create_job(settings.ledger_url, call)
    sender = MovesTheJobWhileSending(client, lambda: _take_over(ledger, job.id))
    done = await send_job(job.id, Context(settings, ledger, sender, "stalled"))
    assert done is not None
    assert done.state == State.UNKNOWN, done.reason


async def test_a_stalled_workers_404_on_an_unknown_job_goes_into_its_history(
    emulator: Emulator, settings: Settings, ledger: Ledger, client: AcsClient
) -> None:
    call = "call-stalled-404-unknown"
    await set_faults(emulator, {"by_call": {call: [{"kind": "status", "status": 404, "stage": "before"}]}})
    job = create_job(settings.ledger_url, call)
    sender = MovesTheJobWhileSending(client, lambda: _to(ledger, job.id, State.UNKNOWN))
    done = await send_job(job.id, Context(settings, ledger, sender, "stalled"))
    assert done is not None
    assert done.state == State.UNKNOWN
    last = (await ledger.run(op_events, job.id))[-1]
    assert (last.from_state, last.to_state, last.status) == (State.UNKNOWN, State.UNKNOWN, 404)
    assert "effect is unknown" in (last.detail or "")


@dataclass
class Answers:
    """An ACS whose error body the emulator cannot produce: the answer is classified from these exact bytes."""

    status: int
    body: bytes

    async def transfer(self, call_connection_id: str, body: bytes, request_id: str, first_sent: str) -> Answer:
        return classify(self.status, self.body, {}, 1.0)


async def test_an_error_body_no_ledger_could_store_as_is_is_still_written(settings: Settings, ledger: Ledger) -> None:
    job = create_job(settings.ledger_url, "call-odd-error")
    odd = b'{"error": {"code": "' + b"C" * 300 + rb'", "message": "call gone\u0000 \ud800 for good"}}'

    async def never(_: float) -> None:
        raise AssertionError("writing the answer failed")

    done = await send_job(job.id, Context(settings, ledger, Answers(404, odd), "w", sleep=never))
    assert done is not None
    assert done.state == State.FAILED
    assert done.last_error == "C" * 200
    assert "call gone" in (done.last_message or "")


async def test_a_202_in_hand_is_written_through_a_ledger_outage(emulator: Emulator, tmp_path: Path) -> None:
    database = PrivatePostgres()
    try:
        database.start()
        settings = Settings(
            home=tmp_path,
            acs_connection_string=f"endpoint={emulator.url}/;accesskey={base64.b64encode(KEY).decode()}",
            ledger_url=database.url,
            request_timeout=1.0,
            backoff_base=0.05,
            backoff_cap=0.2,
        )
        job = create_job(settings.ledger_url, "call-outage")
        ledger = await Ledger.open(settings.ledger_url)
        client = AcsClient(settings.acs, settings.api_version, 1.0, settings.request_timeout, 10)
        restarts: list[float] = []

        async def go_down() -> None:
            database.stop()  # the 202 is out; the ledger is not

        async def sleep(seconds: float) -> None:
            if not restarts:  # the first back-off of the answer's write: the database comes back
                restarts.append(seconds)
                database.start()

        sender = MovesTheJobWhileSending(client, go_down)
        with structlog.testing.capture_logs() as logs:
            done = await send_job(job.id, replace(Context(settings, ledger, sender, "w"), sleep=sleep))
        await client.close()
        await ledger.close()
        assert done is not None
        assert done.state == State.ACCEPTED
        assert restarts, "the write never failed: the outage was not injected"
        assert any(entry["event"] == "job.answer_not_written" for entry in logs)
        assert emulator.state.effects.effects_for_call("call-outage") == 1
    finally:
        database.remove()
