"""Real worker processes (`celery -A worker worker`) on real brokers and ledgers, sending to the emulator.

Each test builds its own stack: a fresh ledger (SQLite file or PostgreSQL database), a queue of its own on the
broker, the emulator in this process, and one or more worker child processes that it kills at will.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kombu
import pytest

from worker.broker import TASK_NAME, transfer_queue
from worker.config import Settings
from worker.emulator import Emulator, EmulatorConfig, start_emulator
from worker.errors import ValidationError
from worker.ledger import Job, State, op_count_by_state, op_dead_messages
from worker.processes import child_env, kill, spawn_worker, stop
from worker.producer import Producer

KEY = secrets.token_bytes(32)


@dataclass
class Stack:
    settings: Settings
    emulator: Emulator
    log_dir: Path
    producer: Producer
    workers: list[Any] = field(default_factory=list)

    def start_worker(self) -> Any:
        env = child_env({**self.settings.to_env(), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
        process = spawn_worker(env, self.log_dir / f"worker-{len(self.workers)}.log", concurrency=16)
        self.workers.append(process)
        return process

    def enqueue(self, call: str, **fields: Any) -> str:
        message = {"callConnectionId": call, "targetParticipant": "4:+15551234567", **fields}
        return self.producer.enqueue(message).job_id

    def job(self, job_id: str) -> Job:
        return self.producer.ledger.get(job_id)

    async def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; worker logs in {self.log_dir}")
            await asyncio.sleep(0.1)

    async def settled(self, job_id: str, timeout: float = 45.0) -> Job:
        await self.wait_for(lambda: self.job(job_id).state in State.SETTLED, f"job {job_id} to settle", timeout)
        return self.job(job_id)

    def requests_for(self, call: str) -> list[Any]:
        return [entry for entry in self.emulator.state.requests if entry.call_connection_id == call]

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.log_dir.glob("worker-*.log")))


def _broker_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "filesystem":
        return "filesystem://"
    return str(request.getfixturevalue(f"{kind}_url"))


def celery_message(task_id: str, kwargs: dict[str, Any], task: str = TASK_NAME) -> tuple[bytes, dict[str, Any]]:
    """A Celery protocol 2 message as any AMQP client can build it: headers plus a JSON body."""
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "retries": 0}
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return json.dumps(body).encode(), headers


def publish_raw(settings: Settings, messages: list[tuple[bytes, dict[str, Any]]]) -> None:
    """Publish with plain kombu, no Celery involved."""
    queue = transfer_queue(settings)
    with kombu.Connection(settings.broker_url) as connection:
        producer = connection.Producer()
        for body, headers in messages:
            producer.publish(
                body,
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
            )


def _delete_queue(settings: Settings) -> None:
    if settings.broker_url.startswith("amqp"):
        with kombu.Connection(settings.broker_url) as connection:
            transfer_queue(settings)(connection.default_channel).delete()


@pytest.fixture
async def make_stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Callable[[str, str], Any]]:
    stacks: list[Stack] = []
    emulators: list[Emulator] = []

    async def build(broker: str, ledger: str) -> Stack:
        emulator = await start_emulator(EmulatorConfig(access_key=KEY))
        emulators.append(emulator)
        ledger_url = (
            f"sqlite:///{tmp_path / 'ledger.db'}" if ledger == "sqlite" else request.getfixturevalue("postgres_url")
        )
        settings = Settings(
            home=tmp_path / "home",
            acs_connection_string=f"endpoint={emulator.url}/;accesskey={base64.b64encode(KEY).decode()}",
            broker_url=_broker_url(broker, request),
            ledger_url=ledger_url,
            queue=f"acs-test-{uuid.uuid4().hex[:10]}",
            request_timeout=3.0,
            backoff_base=0.05,
            backoff_cap=0.5,
            claim_lease=1.0,
            sweep_interval=0.5,
            republish_after=1.5,
            worker_concurrency=16,
        )
        stack = Stack(settings, emulator, tmp_path, Producer(settings))
        stacks.append(stack)
        return stack

    yield build

    for stack in stacks:
        for process in stack.workers:
            stop(process)
        stack.producer.close()
        _delete_queue(stack.settings)
    for emulator in emulators:
        await emulator.close()


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
    async with aiohttp.ClientSession() as session:
        await session.put(f"{stack.emulator.url}/_emulator/faults", json={"latency_ms": 1500})
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
    job = await stack.settled(task_id)
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
