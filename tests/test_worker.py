"""Real worker processes (`celery -A worker worker`) on real brokers and ledgers, sending to the emulator.

Each test builds its own stack: a fresh ledger (SQLite file or PostgreSQL database), a queue of its own on the
broker, the emulator in this process, and one or more worker child processes that it kills at will.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.stack import Stack, celery_message, publish_raw
from worker.errors import ValidationError
from worker.ledger import State, op_count_by_state, op_dead_messages, op_get
from worker.processes import kill
from worker.queue.app import create_app
from worker.queue.broker import TASK_NAME
from worker.request.models import job_id_for_key


@pytest.mark.parametrize(
    ("broker", "ledger"),
    [("filesystem", "sqlite"), ("rabbitmq", "postgresql"), ("redis", "postgresql"), ("rabbitmq", "sqlite")],
)
async def test_jobs_are_sent_once_through_a_real_worker(
    make_stack: Callable[[str, str], Any], broker: str, ledger: str
) -> None:
    stack: Stack = await make_stack(broker, ledger)
    stack.start_worker()
    job_ids = [stack.enqueue(f"call-{index}", operationContext=f"op-{index}") for index in range(20)]
    for job_id in job_ids:
        job = await stack.settled(job_id)
        assert job.state == State.ACCEPTED, (job.reason, stack.logs()[-3000:])
    effects = stack.emulator.state.effects
    assert effects.total_effects == 20
    assert effects.calls_with_more_than_one_effect() == []
    assert {transfer.request_id for transfer in effects.transfers} == {stack.job(j).request_id for j in job_ids}
    # Every attempt is a JSON log line naming its job, call, request id, status and duration.
    attempts = [json.loads(line) for line in stack.logs().splitlines() if '"acs.attempt"' in line]
    assert len(attempts) == 20
    assert all({"job_id", "call_connection_id", "request_id", "status", "duration_ms"} <= set(a) for a in attempts)


@pytest.mark.parametrize(("broker", "ledger"), [("rabbitmq", "postgresql"), ("filesystem", "sqlite")])
async def test_kill_9_mid_request_resends_the_same_request_and_takes_effect_once(
    make_stack: Callable[[str, str], Any], broker: str, ledger: str
) -> None:
    stack: Stack = await make_stack(broker, ledger)
    await stack.set_faults({"latency_ms": 1500})
    first = stack.start_worker()
    job_id = stack.enqueue("call-crash")
    await stack.wait_for(lambda: len(stack.requests_for("call-crash")) == 1, "the first request to arrive")
    kill(first)  # SIGKILL while ACS is still processing the request
    before = stack.job(job_id)
    assert before.state == State.SENDING
    assert before.first_sent is not None
    stack.start_worker()
    job = await stack.settled(job_id)
    assert job.state == State.ACCEPTED, job.reason
    assert job.attempts == 2
    assert job.first_sent == before.first_sent
    seen = stack.requests_for("call-crash")
    assert len(seen) == 2
    assert {entry.request_id for entry in seen} == {job.request_id}
    assert len({entry.first_sent for entry in seen}) == 1
    assert stack.emulator.state.effects.effects_for_call("call-crash") == 1


async def test_malformed_messages_are_recorded_and_the_worker_carries_on(
    make_stack: Callable[[str, str], Any],
) -> None:
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    stack.start_worker()
    bad_request = {"request": {"callConnectionId": "call-x", "targetParticipant": "4:12345"}}
    publish_raw(
        stack.settings,
        [
            (b"{not json", {"lang": "py", "task": TASK_NAME, "id": "poison-json"}),
            celery_message("poison-task", {}, task="no.such.task"),
            celery_message("poison-fields", {"job_id": "x", "surprise": 1}),
            celery_message("poison-request", bad_request),
        ],
    )
    good = stack.enqueue("call-after-poison")
    job = await stack.settled(good)
    assert job.state == State.ACCEPTED

    def dead() -> list[dict[str, Any]]:
        return stack.producer.ledger.run(op_dead_messages, 100)

    await stack.wait_for(lambda: len(dead()) == 4, "four dead messages")
    reasons = {row["message_id"]: row["reason"] for row in dead()}
    assert "decode" in reasons["poison-json"]
    assert "unknown task" in reasons["poison-task"]
    assert "surprise" in reasons["poison-fields"]
    assert "targetParticipant" in reasons["poison-request"]
    assert "E.164" in reasons["poison-request"]
    assert all(process.poll() is None for process in stack.workers)


async def test_a_raw_message_without_a_ledger_row_becomes_a_job(make_stack: Callable[[str, str], Any]) -> None:
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    stack.start_worker()
    task_id = str(uuid.uuid4())
    kwargs = {
        "request": {"callConnectionId": "call-raw", "targetParticipant": "8:acs:agent-7"},
        "idempotency_key": "raw-1",
    }
    publish_raw(stack.settings, [celery_message(task_id, kwargs)] * 2)  # the same message twice
    await stack.wait_for(lambda: stack.emulator.state.effects.effects_for_call("call-raw") == 1, "the raw job")
    job = await stack.settled(job_id_for_key("raw-1"))  # the key names the job, as for every producer
    assert job.state == State.ACCEPTED
    assert job.idempotency_key == "raw-1"
    await asyncio.sleep(1.0)
    assert stack.emulator.state.effects.effects_for_call("call-raw") == 1
    assert len(stack.requests_for("call-raw")) == 1


async def test_enqueue_validation_errors_write_nothing(make_stack: Callable[[str, str], Any]) -> None:
    stack: Stack = await make_stack("filesystem", "sqlite")
    with pytest.raises(ValidationError) as caught:
        stack.enqueue("call-bad", targetParticipant="4:555", sourceCallerIdNumber="nope")
    fields = {issue.field for issue in caught.value.issues}
    assert fields == {"targetParticipant", "sourceCallerIdNumber"}
    assert stack.producer.ledger.run(op_count_by_state, None) == {}
    queue_folder = stack.settings.broker_folder / "queue"
    assert not list(queue_folder.glob("*.msg"))


async def test_retention_prunes_finished_jobs_and_keeps_waiting_ones(make_stack: Callable[..., Any]) -> None:
    stack: Stack = await make_stack("rabbitmq", "postgresql", sweep_interval=0.5, job_retention_days=1.0 / 86400)
    # One call ACS keeps refusing with a retry delay, so its job waits (not finished) while the others are pruned.
    await stack.set_faults({"by_call": {"call-waiting": [{"kind": "status", "status": 503, "retry_after": 30}] * 5}})
    stack.start_worker()
    waiting = stack.enqueue("call-waiting")
    finished = [stack.enqueue(f"call-{index}") for index in range(10)]
    await stack.wait_for(
        lambda: all(stack.producer.ledger.run(op_get, job_id) is None for job_id in finished), "finished jobs pruned"
    )
    assert stack.job(waiting).state == State.RETRY_WAIT
    assert stack.emulator.state.effects.total_effects == 10
    assert '"sweeper.pruned"' in stack.logs()


async def test_task_events_show_every_job_message_to_flower(make_stack: Callable[..., Any]) -> None:
    stack: Stack = await make_stack("rabbitmq", "postgresql", task_events=True)
    app = create_app(stack.settings)
    seen: list[dict[str, Any]] = []
    connection = app.connection_for_read()
    receiver = app.events.Receiver(connection, handlers={"*": seen.append})

    def receive() -> None:
        receiver.capture(limit=None, timeout=None, wakeup=False)  # until should_stop

    listener = threading.Thread(target=receive, daemon=True)
    listener.start()
    stack.start_worker()
    await stack.wait_for(lambda: any(e["type"].startswith("worker-") for e in seen), "the worker's first event")
    job_ids = [stack.enqueue(f"call-event-{index}") for index in range(3)]
    for job_id in job_ids:
        assert (await stack.settled(job_id)).state == State.ACCEPTED

    def kinds(job_id: str) -> list[str]:
        return [e["type"] for e in seen if e.get("uuid") == job_id]

    try:
        await stack.wait_for(lambda: all("task-succeeded" in kinds(j) for j in job_ids), "every task's events")
    finally:
        receiver.should_stop = True
        await asyncio.to_thread(listener.join, 10)
        connection.release()
    for job_id in job_ids:
        assert kinds(job_id) == ["task-received", "task-started", "task-succeeded"], kinds(job_id)
    assert all(e["name"] == TASK_NAME for e in seen if e["type"] == "task-received")


async def test_a_message_s_eta_is_waited_for_and_an_expired_message_is_a_dead_message(
    make_stack: Callable[..., Any],
) -> None:
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    stack.start_worker()
    later, expired = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC)
    messages = []
    for task_id, call, header, moment in (
        (later, "call-eta", "eta", now + timedelta(seconds=3)),
        (expired, "call-expired", "expires", now - timedelta(seconds=1)),
    ):
        body, headers = celery_message(task_id, {"request": {"callConnectionId": call, "targetParticipant": "8:acs:x"}})
        messages.append((body, {**headers, header: moment.isoformat()}))
    publish_raw(stack.settings, messages)
    # The job is created from its message, so only once the message runs.
    await stack.wait_for(lambda: stack.producer.ledger.run(op_get, later) is not None, "the job to exist")
    job = await stack.settled(later)
    assert job.state == State.ACCEPTED
    (request,) = stack.requests_for("call-eta")
    assert request.at >= now.timestamp() + 3 - 0.05, "the job went out before its eta"

    def dead() -> list[Any]:
        return [m for m in stack.producer.ledger.run(op_dead_messages, 10) if m["message_id"] == expired]

    await stack.wait_for(lambda: bool(dead()), "the expired message to be recorded")
    assert "expired at" in dead()[0]["reason"]
    assert stack.requests_for("call-expired") == []
    assert stack.producer.ledger.run(op_get, expired) is None
