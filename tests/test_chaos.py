"""Chaos: the whole system under worker kills, a broker restart, a ledger pause and emulator faults, audited
against the emulator's record of what took effect (bench/chaos.py does the work; docs/reliability.md has the
long runs). Plus the regressions those runs found, each pinned by a small deterministic test.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import ACCEPTED_EVENT, CallTruth, ChaosConfig, JobFacts, Verdict, judge_call, run_chaos
from tests.services import PrivateRedis
from tests.stack import Stack
from worker.acs.client import Answer, Outcome, Reach
from worker.config import Settings
from worker.deliver.transfer import Context, send_job
from worker.ledger import (
    SETTLED_STATES,
    EventOutcome,
    Ledger,
    State,
    SyncLedger,
    op_apply_outcome,
    op_claim,
    op_events,
    op_start_attempt,
)
from worker.request.job import prepare_job
from worker.request.models import parse_transfer


@pytest.mark.parametrize("broker", ["rabbitmq", "redis"])
def test_a_short_chaos_run_loses_nothing_and_doubles_nothing(broker: str, tmp_path: Path) -> None:
    """300 jobs fed at 6/s (a paced and an unpaced campaign) through 3 workers on a private broker and
    PostgreSQL, with 2 worker kills, a broker restart, a ledger pause, a kill of the workers' ledger
    connections, the emulator's mixed faults (before and after the effect), its outcome events through
    `acs-transfer serve` (early, late, twice, never, failed), and dead jobs replayed as they appear; then the
    strict audit of bench/chaos.py: no job lost, doubled or wrong against the emulator's record."""
    lines: list[str] = []
    config = ChaosConfig(
        jobs=300, broker=broker, seed=20261126, rate=6.0, kills=2, duration_limit=170, log_dir=tmp_path / "chaos"
    )
    result = run_chaos(config, out=lines.append)
    report = result.table() + "\n" + "\n".join(lines)
    # The run proves something only if the disruptions really happened.
    assert result.injected["worker kill -9"] == 2, report
    assert result.injected[f"{broker} restart"] == 1, report
    assert result.injected["ledger database pause"] == 1, report
    assert result.injected["ledger connection kill (pg_terminate_backend)"] == 1, report
    assert result.injected["ledger connection kill: worker backends terminated"] >= 1, report
    assert result.injected["emulator phase: ACS outage"] == 1, report
    assert result.replayed >= 1, report  # the outage's dead jobs, replayed while events still arrive
    emulator_faults = [kind for kind in result.injected if kind.startswith("emulator ") and "phase" not in kind]
    assert len(emulator_faults) >= 8, report
    assert any("after_5xx" in kind for kind in emulator_faults), report
    assert result.states[State.TRANSFERRED] > 200, report
    assert result.states[State.FAILED] >= 1, report  # the calls the emulator says no longer exist (404)
    assert result.states[State.TRANSFER_FAILED] >= 1, report
    # The strict audit.
    assert result.lost == [], report
    assert result.doubled == [], report
    assert result.wrong == [], report
    assert result.unexplained == [], report
    assert result.ok


def facts(job_id: str, state: str, request_id: str, **more: Any) -> JobFacts:
    return JobFacts(job_id, "call-x", request_id, state, more.pop("attempts", 2), "why", **more)


@pytest.mark.parametrize(
    ("group", "truth", "expected"),
    [
        # 503 after the effect, then the re-execution meets the moved call: 404 -> failed. Wrong.
        (
            [facts("j1", State.FAILED, "r1", last_status=404, definite=True)],
            CallTruth(effects={"r1": 1}, delivered={"r1": {ACCEPTED_EVENT}}),
            {"wrong": "failed although the call was transferred"},
        ),
        (
            [facts("j1", State.DEAD, "r1")],
            CallTruth(effects={"r1": 1}, never_posted={"r1"}),
            {"wrong": "dead although the call was transferred"},
        ),
        # A replay of a dead job whose call had moved: the pair took effect twice.
        (
            [facts("j1", State.DEAD, "r1"), facts("j2", State.TRANSFERRED, "r2", replay_of="j1")],
            CallTruth(effects={"r1": 1, "r2": 1}),
            {"doubled": "took effect 2x", "wrong": "dead although the call was transferred"},
        ),
        # A replay of a dead job that never took effect: one effect across the pair is right.
        (
            [facts("j1", State.DEAD, "r1"), facts("j2", State.TRANSFERRED, "r2", replay_of="j1")],
            CallTruth(effects={"r2": 1}),
            {"dead_unanswered": "dead, no attempt answered"},
        ),
        (
            [facts("j1", State.DEAD, "r1", last_status=404, definite=True)],
            CallTruth(),
            {"wrong": "dead after a definite answer"},
        ),
        (
            [facts("j1", State.ACCEPTED, "r1")],
            CallTruth(effects={"r1": 1}, never_posted={"r1"}),
            {"accepted_event_never_posted": "accepted; its outcome event was never posted"},
        ),
        (
            [facts("j1", State.ACCEPTED, "r1")],
            CallTruth(effects={"r1": 1}, delivered={"r1": {ACCEPTED_EVENT}}),
            {"lost": "accepted although its CallTransferAccepted was delivered"},
        ),
        ([facts("j1", State.RETRY_WAIT, "r1")], CallTruth(), {"lost": "still retry_wait"}),
        ([facts("j1", State.TRANSFERRED, "r1")], CallTruth(), {"wrong": "transferred but the call never moved"}),
        ([facts("j1", State.TRANSFERRED, "r1")], CallTruth(effects={"r1": 1}), {}),
        ([facts("j1", State.TRANSFER_FAILED, "r1", result_code=487)], CallTruth(failed={"r1"}), {}),
        ([facts("j1", State.FAILED, "r1", last_status=404, definite=True)], CallTruth(), {}),
    ],
)
def test_the_audit_judges_each_job_against_what_acs_did(
    group: list[JobFacts], truth: CallTruth, expected: dict[str, str]
) -> None:
    verdict = judge_call("call-x", group, truth)
    found = {name: getattr(verdict, name) for name in Verdict.__dataclass_fields__ if getattr(verdict, name)}
    assert set(found) == set(expected), found
    for name, reason in expected.items():
        assert len(found[name]) == 1, found[name]
        assert found[name][0].reason.startswith(reason), found[name][0].reason


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.remove()


async def test_workers_survive_a_redis_restart_with_jobs_in_flight(
    make_stack: Callable[..., Any], private_redis: PrivateRedis
) -> None:
    """Found by the chaos run (Redis, seed 3): after Redis restarted, kombu's channel close raised
    AttributeError while giving back unacknowledged messages, Celery took it as unrecoverable and two of three
    workers exited. They now reconnect; the jobs whose messages Redis lost are re-published by the sweeper."""
    stack: Stack = await make_stack("redis", "postgresql", broker_url=private_redis.url)
    await stack.set_faults({"latency_ms": 300})
    workers = [stack.start_worker() for _ in range(3)]
    calls = [f"call-redis-{index}" for index in range(90)]
    job_ids = [stack.enqueue(call) for call in calls]
    effects = stack.emulator.state.effects
    await stack.wait_for(lambda: effects.total_effects >= 10, "the workers to be busy")
    await asyncio.to_thread(private_redis.stop)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(private_redis.start)
    for job_id in job_ids:
        job = await stack.settled(job_id, timeout=90)
        assert job.state == State.ACCEPTED, (job.id, job.state, job.reason)
    assert [worker.poll() for worker in workers] == [None, None, None], stack.logs()[-3000:]
    assert "Unrecoverable error" not in stack.logs()
    assert effects.calls_with_more_than_one_effect() == []
    assert all(effects.effects_for_call(call) == 1 for call in calls)


class _EventOvertakesTimeout:
    """ACS takes the transfer and its outcome event settles the job while the worker's request times out."""

    def __init__(self, ledger: Ledger, job_id: str) -> None:
        self.ledger = ledger
        self.job_id = job_id
        self.attempts = 0

    async def transfer(self, call_connection_id: str, body: bytes, request_id: str, first_sent: str) -> Answer:
        self.attempts += 1
        if self.attempts == 1:
            outcome = EventOutcome(State.TRANSFERRED, 200, 7015, "The transfer operation completed successfully.")
            settled = await self.ledger.run(op_apply_outcome, self.job_id, outcome, "CallTransferAccepted", time.time())
            assert settled is not None
            return Answer(Outcome.TRANSIENT, Reach.NO_ANSWER, None, "timeout", "no answer within the request timeout")
        return Answer(Outcome.ACCEPTED, Reach.ANSWERED, 202, repeatability_result="accepted")


async def test_an_outcome_event_during_a_timed_out_attempt_is_final(ledger_url: str) -> None:
    """Found by the chaos run (seed 2, RabbitMQ): the event settled the job as transferred while the attempt
    timed out; the worker's move to retry_wait found it settled, yet carried on with the settled job, re-sent
    it and overwrote `transferred` with `accepted`: the outcome was lost. A settled job is never sent again."""
    settings = Settings(ledger_url=ledger_url, backoff_base=0.01, backoff_cap=0.02)
    request = parse_transfer({"callConnectionId": "call-overtaken", "targetParticipant": "4:+15551234567"})
    sync = SyncLedger(ledger_url)
    ((job, _),) = sync.create_jobs([prepare_job(request)])
    ledger = await Ledger.open(ledger_url)
    sender = _EventOvertakesTimeout(ledger, job.id)
    try:
        done = await send_job(job.id, Context(settings, ledger, sender, "worker-a"))
    finally:
        await ledger.close()
    assert sender.attempts == 1, "a transferred job was sent again"
    assert done is not None
    assert done.state == State.TRANSFERRED
    final = sync.get(job.id)
    assert final.state == State.TRANSFERRED
    assert final.result_code == 200
    assert [event.to_state for event in sync.run(op_events, job.id)][-1] == State.TRANSFERRED
    sync.close()


def test_a_settled_job_cannot_start_an_attempt_even_for_its_last_holder(ledger_url: str) -> None:
    """The ledger's own guard behind the fix above: an attempt starts only from a held state."""
    request = parse_transfer({"callConnectionId": "call-guard", "targetParticipant": "4:+15551234567"})
    sync = SyncLedger(ledger_url)
    ((job, _),) = sync.create_jobs([prepare_job(request)])
    now = time.time()
    assert sync.run(op_claim, job.id, "worker-a", now, now + 30) is not None
    outcome = EventOutcome(State.TRANSFERRED, 200, 7015, "done")
    assert sync.run(op_apply_outcome, job.id, outcome, "CallTransferAccepted", now) is not None
    for state in SETTLED_STATES:
        assert sync.run(op_start_attempt, job.id, "worker-a", state, 2, int(now), now, now + 30) is None
    assert sync.get(job.id).state == State.TRANSFERRED
    sync.close()


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
async def test_a_queued_job_whose_message_was_lost_is_published_again(
    make_stack: Callable[..., Any], broker: str
) -> None:
    """Found by the chaos run (Redis, seed 3): jobs whose messages a Redis restart lost stayed queued for
    good. The sweeper re-publishes queued jobs only when the queue is empty, and on Redis an empty queue
    answered "no such queue" (Redis drops an empty list), which read as "depth unknown"."""
    stack: Stack = await make_stack(broker, "postgresql")
    request = parse_transfer({"callConnectionId": "call-lost-message", "targetParticipant": "4:+15551234567"})
    # The job is written but its message never reaches the broker: what a broker restart does to a message.
    ((job, created),) = stack.producer.ledger.create_jobs([prepare_job(request)])
    assert created
    stack.start_worker()
    done = await stack.settled(job.id, timeout=60)
    assert done.state == State.ACCEPTED, done.reason
    assert stack.emulator.state.effects.effects_for_call("call-lost-message") == 1


def test_every_test_docs_reliability_names_exists() -> None:
    """The failure matrix in docs/reliability.md names real tests; a renamed or removed one fails here."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "reliability.md").read_text()
    named = re.findall(r"(tests/[\w/]+\.py)((?:::\w+)?)", text)
    # "`::name`" right after a full reference names another test of the same file.
    named += [(file, f"::{name}") for file, name in re.findall(r"(tests/\w+\.py)::\w+(?:\[\w+\])?`, `::(\w+)", text)]
    assert len(named) > 30
    for file, test in named:
        source = (root / file).read_text()
        if test:
            assert re.search(rf"^(async )?def {test[2:]}\(", source, re.MULTILINE), f"{file}{test} does not exist"


def test_a_4xx_that_made_a_job_unknown_is_not_a_definite_answer_to_the_audit(tmp_path: Path) -> None:
    # Timeout, then 404: ACS may have moved the call and met it gone on re-execution, or replayed a 404 the worker
    # never received. The worker says unknown (then dead); the audit must accept that, and still count a 404
    # that failed a job outright, or a 202, as definite.
    from bench.chaos import CAMPAIGN, _definite_job_ids  # noqa: PLC0415

    ledger = SyncLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    request = parse_transfer({"callConnectionId": "call-a", "targetParticipant": "4:+14255550100"})
    histories = {
        "ambiguous": [
            (None, State.QUEUED, None),
            (State.SENDING, State.RETRY_WAIT, None),
            (State.SENDING, State.UNKNOWN, 404),
            (State.UNKNOWN, State.DEAD, None),
        ],
        "failed": [(None, State.QUEUED, None), (State.SENDING, State.FAILED, 404)],
        "accepted": [(None, State.QUEUED, None), (State.SENDING, State.ACCEPTED, 202)],
    }
    try:
        ledger.create_jobs([prepare_job(request, job_id=job_id, campaign=CAMPAIGN) for job_id in histories])

        def definite(connection: Any) -> set[str]:
            from worker.ledger import job_events  # noqa: PLC0415

            for job_id, rows in histories.items():
                for from_state, to_state, status in rows:
                    connection.execute(
                        job_events.insert().values(
                            job_id=job_id, at=1.0, from_state=from_state, to_state=to_state, status=status
                        )
                    )
            return _definite_job_ids(connection)

        assert ledger.run(definite) == {"failed", "accepted"}
    finally:
        ledger.close()
