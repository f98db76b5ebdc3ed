"""Fuzzing the message decoder: whatever a producer puts on the queue, a worker neither crashes nor stalls,
and a message it cannot use ends as a recorded dead message with the reason.

Two layers: property tests that call `handle_message` (arbitrary task ids, args and kwargs) and the consumer's
dead-message hook (arbitrary bodies and headers) directly on both ledgers; then a bounded random sample of raw
bytes and headers published on RabbitMQ and Redis to a real worker process, which must record every one of
them and still send the good job that follows.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.stack import Stack, celery_message
from worker.acs.client import Answer, Outcome, Reach
from worker.config import Settings
from worker.deliver import consumer
from worker.deliver.messages import handle_message
from worker.deliver.transfer import Context
from worker.ledger import Ledger, State, SyncLedger, op_dead_messages
from worker.queue.broker import TASK_NAME, transfer_queue
from worker.request.job import prepare_job
from worker.request.models import job_id_for_key, parse_transfer

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Accepting:
    """ACS that accepts everything: a message good enough to become a job is sent and settles."""

    def __init__(self) -> None:
        self.sent = 0

    async def transfer(self, call_connection_id: str, body: bytes, request_id: str, first_sent: str) -> Answer:
        self.sent += 1
        return Answer(Outcome.ACCEPTED, Reach.ANSWERED, 202, repeatability_result="accepted")


class _Harness:
    """A ledger and a send context on an event loop of their own, for synchronous hypothesis tests."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.ledger = self.loop.run_until_complete(Ledger.open(url))
        self.sync = SyncLedger(url)
        self.sender = _Accepting()
        settings_ = Settings(ledger_url=url, backoff_base=0.01, backoff_cap=0.02)
        self.context = Context(settings_, self.ledger, self.sender, "fuzz-worker")

    def dead_count(self) -> int:
        return len(self.sync.run(op_dead_messages, 1_000_000))

    def last_dead(self) -> dict[str, Any]:
        return self.sync.run(op_dead_messages, 1)[0]

    def close(self) -> None:
        self.loop.run_until_complete(self.ledger.close())
        self.loop.close()
        self.sync.close()


@pytest.fixture
def harness(ledger_url: str) -> Iterator[_Harness]:
    running = _Harness(ledger_url)
    yield running
    running.close()


# JSON values as a decoder hands them over: text may hold NUL, control characters and lone surrogates
# (JSON's "\ud800" decodes to one), numbers may be huge.
_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_known_key = st.sampled_from(["job_id", "request", "idempotency_key", "campaign"])
_near_request = st.fixed_dictionaries(
    {"callConnectionId": _text | st.just("call-fuzz"), "targetParticipant": _text | st.just("4:+15551234567")},
    optional={"operationContext": _text, "transferee": _json, "customCallingContext": _json},
)
_kwargs = st.dictionaries(_known_key | _text, _json, max_size=5) | st.fixed_dictionaries(
    {"request": _near_request},
    optional={"idempotency_key": _text, "campaign": _text, "job_id": _text},
)
_task_id = _text | st.uuids().map(str) | st.text(min_size=60, max_size=300)


@FUZZ
@given(task_id=_task_id, args=st.lists(_json, max_size=2).map(tuple), kwargs=_kwargs)
@example(
    task_id="t" * 65, args=(), kwargs={"request": {"callConnectionId": "c", "targetParticipant": "4:+15551234567"}}
)
@example(task_id=str(uuid.uuid4()), args=(), kwargs={"job_id": "no-such-job"})
@example(task_id=str(uuid.uuid4()), args=(), kwargs={"job_id": "nul\x00inside"})
@example(task_id="id\x00nul", args=(), kwargs={"\ud800": 1})
@example(task_id=str(uuid.uuid4()), args=(), kwargs={"request": {}, "campaign": "c" * 300})
@example(
    task_id=str(uuid.uuid4()),
    args=(),
    kwargs={"request": {"callConnectionId": "c", "targetParticipant": "4:+15551234567", "operationContext": "\x00"}},
)
@example(task_id=str(uuid.uuid4()), args=(), kwargs={"request": {}, "idempotency_key": "k\x00"})
def test_any_task_message_becomes_a_job_or_a_recorded_dead_message(
    harness: _Harness, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    before = harness.dead_count()
    job = harness.loop.run_until_complete(handle_message(harness.context, task_id, args, kwargs))
    if job is None:
        assert harness.dead_count() == before + 1, "a message was dropped without a dead-message record"
        assert harness.last_dead()["reason"]
    else:
        assert job.state == State.ACCEPTED
        assert harness.dead_count() == before


class _FakeMessage:
    def __init__(self, body: Any, headers: Any, content_type: str | None) -> None:
        self.body = body
        self.headers = headers
        self.content_type = content_type


class _FakeRuntime:
    def __init__(self, harness: _Harness) -> None:
        self.context = harness.context
        self._loop = harness.loop

    def run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)


_header_value = _json | st.binary(max_size=20)


@FUZZ
@given(
    body=st.binary(max_size=300) | _text,
    headers=st.none() | st.dictionaries(st.just("id") | _text, _header_value, max_size=4),
    content_type=st.none() | st.sampled_from(["application/json", "application/x-python-serialize", "text/plain"]),
    hook=st.sampled_from(["on_decode_error", "on_unknown_message", "on_unknown_task", "on_invalid_task"]),
)
@example(body=b"\x00\xff", headers={"id": "x" * 500}, content_type="application/json", hook="on_decode_error")
@example(body="\x00", headers={"id": 7}, content_type=None, hook="on_unknown_message")
@example(body=b"{}", headers={"id": "nul\x00"}, content_type="application/json", hook="on_invalid_task")
def test_the_consumer_records_every_message_it_cannot_run(
    harness: _Harness,
    monkeypatch: pytest.MonkeyPatch,
    body: Any,
    headers: Any,
    content_type: str | None,
    hook: str,
) -> None:
    monkeypatch.setattr(consumer, "get_runtime", lambda: _FakeRuntime(harness))
    recorded: list[str] = []
    monkeypatch.setattr(consumer.log, "error", lambda event, **_: recorded.append(event))
    before = harness.dead_count()
    message = _FakeMessage(body, headers, content_type)
    hooks = consumer.RecordingConsumer.__new__(consumer.RecordingConsumer)
    reason = {"on_decode_error": ValueError("bad \x00 bytes \udcff")}.get(hook, KeyError("no.such.task"))
    # Only the recording half: Celery's own handling (reject/ack) needs a live connection.
    monkeypatch.setattr(consumer.Consumer, hook, lambda *_: None)
    if hook == "on_decode_error":
        hooks.on_decode_error(message, reason)
    elif hook == "on_unknown_message":
        hooks.on_unknown_message(body, message)
    elif hook == "on_unknown_task":
        hooks.on_unknown_task(body, message, reason)
    else:
        hooks.on_invalid_task(body, message, reason)
    assert "message.dead_not_recorded" not in recorded
    assert harness.dead_count() == before + 1


# --- a real worker on a real broker ---------------------------------------------------------------------

CONTENT_TYPES = ["application/json", "application/x-python-serialize", "application/x-yaml", "text/plain", ""]


def _raw_samples(rng: random.Random, count: int) -> list[tuple[str, bytes, dict[str, Any], str]]:
    """(id, body, headers, content type): garbage, near-misses of the Celery protocol, and a pickle that
    would run code if it were ever unpickled."""
    pickle_bomb = b"cos\nsystem\n(S'touch /tmp/acs-fuzz-pickle-ran'\ntR."
    samples = []
    for index in range(count):
        message_id = f"fuzz-{index}-{uuid.uuid4().hex[:6]}"
        kind = index % 6
        headers: dict[str, Any] = {"lang": "py", "task": TASK_NAME, "id": message_id}
        if kind == 0:
            body, content_type = rng.randbytes(rng.randrange(0, 200)), rng.choice(CONTENT_TYPES)
        elif kind == 1:
            body, content_type = pickle_bomb, "application/x-python-serialize"
        elif kind == 2:
            shape = rng.choice([{}, [], [1], [[], {}], "text", None, [[], [], {}], {"task": TASK_NAME}])
            body, content_type = json.dumps(shape).encode(), "application/json"
        elif kind == 3:
            garbage = {"job_id": rng.choice(["", "x" * 65, "nope", 5, None]), "surprise": rng.random()}
            body, headers = celery_message(message_id, garbage)
            content_type = "application/json"
        elif kind == 4:
            headers = {"lang": "py", "task": rng.choice(["no.such.task", "", "celery.chord_unlock"]), "id": message_id}
            body, content_type = json.dumps([[], {}, {}]).encode(), "application/json"
        else:
            request = {"callConnectionId": "c" * rng.randrange(0, 3), "targetParticipant": rng.choice(["4:1", 7, ""])}
            body, headers = celery_message(message_id, {"request": request})
            content_type = "application/json"
        samples.append((message_id, body, headers, content_type))
    return samples


def _publish_raw(settings_: Settings, samples: list[tuple[str, bytes, dict[str, Any], str]]) -> None:
    queue = transfer_queue(settings_)
    with kombu.Connection(settings_.broker_url) as connection:
        producer = connection.Producer()
        for _, body, headers, content_type in samples:
            producer.publish(
                body,
                headers=headers,
                content_type=content_type or None,
                content_encoding="binary" if content_type != "application/json" else "utf-8",
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
            )


@pytest.mark.parametrize("broker", ["rabbitmq", "redis"])
async def test_raw_garbage_on_the_queue_is_recorded_and_the_worker_carries_on(
    make_stack: Callable[..., Any], broker: str
) -> None:
    stack: Stack = await make_stack(broker, "postgresql")
    worker = stack.start_worker()
    samples = _raw_samples(random.Random(5), 36)
    await asyncio.to_thread(_publish_raw, stack.settings, samples)
    good = stack.enqueue("call-after-garbage")
    job = await stack.settled(good, timeout=60)
    assert job.state == State.ACCEPTED

    def recorded() -> set[str]:
        return {row["message_id"] for row in stack.producer.ledger.run(op_dead_messages, 1000)}

    wanted = {message_id for message_id, *_ in samples}
    await stack.wait_for(lambda: wanted <= recorded(), "every raw message to be recorded", timeout=60)
    assert worker.poll() is None, "the worker died"
    rows = {row["message_id"]: row for row in stack.producer.ledger.run(op_dead_messages, 1000)}
    assert all(rows[message_id]["reason"] for message_id in wanted)
    pickled = [message_id for message_id, _, _, ct in samples if ct == "application/x-python-serialize"]
    # JSON only: a pickle is refused before anything unpickles it (nor did its payload run).
    assert pickled
    assert all("untrusted content of type pickle" in rows[message_id]["reason"] for message_id in pickled)
    assert not Path("/tmp/acs-fuzz-pickle-ran").exists()
    # Each was recorded once: none came back to be redelivered in a loop.
    await asyncio.sleep(1.0)
    counts = Counter(row["message_id"] for row in stack.producer.ledger.run(op_dead_messages, 1000))
    assert all(counts[message_id] == 1 for message_id in wanted), counts


async def test_a_task_message_with_a_malformed_body_does_not_kill_the_worker(
    make_stack: Callable[..., Any],
) -> None:
    """Found by the raw-message fuzzing: a message naming our task whose body is not ``[args, kwargs, embed]``
    made Celery's consumer raise ValueError, the worker process exited, and the message (never acknowledged)
    went to the next worker and killed it too. Celery's built-in tasks ran for any producer as well."""
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    worker = stack.start_worker()
    bodies = [[1], "text", {}, [[], {}], [[], [], {}, {}], None]
    samples = [
        (f"bad-body-{index}", json.dumps(body).encode(), {"lang": "py", "task": TASK_NAME, "id": f"bad-body-{index}"})
        for index, body in enumerate(bodies)
    ]
    samples.append(("builtin", json.dumps([[], {}, {}]).encode(), {"task": "celery.chord_unlock", "id": "builtin"}))
    await asyncio.to_thread(
        _publish_raw, stack.settings, [(i, body, headers, "application/json") for i, body, headers in samples]
    )
    job = await stack.settled(stack.enqueue("call-after-bad-bodies"), timeout=60)
    assert job.state == State.ACCEPTED
    assert worker.poll() is None, stack.logs()[-2000:]

    def reasons() -> dict[str, str]:
        return {row["message_id"]: row["reason"] for row in stack.producer.ledger.run(op_dead_messages, 100)}

    await stack.wait_for(lambda: len(reasons()) == len(samples), "every bad message to be recorded")
    assert all("invalid task message" in reasons()[f"bad-body-{index}"] for index in range(len(bodies)))
    assert "unknown task" in reasons()["builtin"]
    assert "Unrecoverable error" not in stack.logs()


def test_a_raw_message_with_a_key_is_the_job_every_producer_makes_for_that_key(harness: _Harness) -> None:
    """Its job id comes from the key, not the task id: a job a producer made for the key is this job, and a key
    that already names a transfer on another call makes a dead message with the reason."""
    request = {"callConnectionId": "call-A", "targetParticipant": "4:+15551234567"}
    made = prepare_job(parse_transfer(request), idempotency_key="raw-1")
    harness.sync.create_jobs([made])
    run = harness.loop.run_until_complete
    job = run(handle_message(harness.context, str(uuid.uuid4()), (), {"request": request, "idempotency_key": "raw-1"}))
    assert job is not None
    assert job.id == made.id == job_id_for_key("raw-1")
    # A redelivery, or the same key from another producer: the same job, sent once.
    run(handle_message(harness.context, str(uuid.uuid4()), (), {"request": request, "idempotency_key": "raw-1"}))
    assert harness.sender.sent == 1
    fresh = run(handle_message(harness.context, "task-9", (), {"request": request, "idempotency_key": "raw-2"}))
    assert fresh is not None
    assert fresh.id == job_id_for_key("raw-2")
    before = harness.dead_count()
    other_call = {**request, "callConnectionId": "call-B"}
    task_id = str(uuid.uuid4())
    assert (
        run(handle_message(harness.context, task_id, (), {"request": other_call, "idempotency_key": "raw-1"})) is None
    )
    assert harness.dead_count() == before + 1
    dead = harness.last_dead()
    assert dead["message_id"] == task_id
    assert "'raw-1' already names job" in dead["reason"]
    assert harness.sync.get(made.id).call_connection_id == "call-A"
