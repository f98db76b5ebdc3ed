"""Producers in any language: the wire format of docs/producers.md, published without Celery or kombu.

RabbitMQ with pika (a plain AMQP client) and Redis with raw redis-py commands; in both cases the worker must
create the job in the ledger (its id is the message's task id) and send it once, however often it arrives.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import redis

from tests.stack import Stack
from worker.ledger import Job, State, op_get
from worker.request.models import job_id_for_key

TASK = "acs_transfer.transfer"


def amqp_parameters(url: str) -> pika.ConnectionParameters:
    """pika reads the kombu-style ``amqp://host:5672//`` as an empty vhost: spell the default vhost out."""
    parts = urlsplit(url)
    return pika.ConnectionParameters(
        host=parts.hostname,
        port=parts.port or 5672,
        virtual_host=unquote(parts.path[1:]) or "/",
        credentials=pika.PlainCredentials(parts.username or "guest", parts.password or "guest"),
    )


async def settled(stack: Stack, job_id: str) -> Job:
    """The worker creates the job when the message arrives: wait for the row, then for it to settle."""
    await stack.wait_for(lambda: stack.producer.ledger.run(op_get, job_id) is not None, f"job {job_id} to exist")
    return await stack.settled(job_id)


def body_of(kwargs: dict[str, Any]) -> bytes:
    """Celery protocol 2 body: [args, kwargs, embed], JSON, UTF-8."""
    return json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


def transfer_kwargs(call: str, key: str) -> dict[str, Any]:
    return {
        "request": {
            "callConnectionId": call,
            "targetParticipant": "4:+14255550123",
            "operationContext": "raw-producer",
            "customCallingContext": {"sipHeaders": {"X-MS-Custom-Ticket": "4711"}},
        },
        "idempotency_key": key,
        "campaign": "raw",
    }


async def test_a_plain_amqp_client_enqueues_a_job_that_is_sent_once(make_stack: Callable[[str, str], Any]) -> None:
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    task_id = str(uuid.uuid4())
    connection = pika.BlockingConnection(amqp_parameters(stack.settings.broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        # Declared exactly as the workers declare it; any other arguments would be refused by RabbitMQ.
        channel.queue_declare(queue=stack.settings.queue, durable=True, arguments={"x-queue-type": "quorum"})
        properties = pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            correlation_id=task_id,
            headers={"task": TASK, "id": task_id},  # the two headers a worker needs
        )
        for _ in range(2):  # a producer that retries its publish: still one job, one effect
            channel.basic_publish(
                exchange="",
                routing_key=stack.settings.queue,
                body=body_of(transfer_kwargs("call-pika", "pika-1")),
                properties=properties,
                mandatory=True,
            )
    finally:
        connection.close()
    stack.start_worker()
    job = await settled(stack, job_id_for_key("pika-1"))  # the key names the job, as for every producer
    assert job.state == State.ACCEPTED, job.reason
    assert job.idempotency_key == "pika-1"
    assert job.campaign == "raw"
    await asyncio.sleep(1.0)
    (request,) = stack.requests_for("call-pika")
    assert request.request_id == job.request_id
    assert stack.emulator.state.effects.effects_for_call("call-pika") == 1
    (effect,) = [t for t in stack.emulator.state.effects.transfers if t.call_connection_id == "call-pika"]
    assert json.loads(job.body)["customCallingContext"] == {"sipHeaders": {"X-MS-Custom-Ticket": "4711"}}
    assert effect.request_id == job.request_id


def redis_envelope(task_id: str, queue: str, body: bytes) -> str:
    """What kombu's Redis transport keeps in the queue's list: the message as JSON, its body in base64."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": TASK, "id": task_id, "root_id": task_id, "parent_id": None},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


async def test_raw_redis_commands_enqueue_a_job_that_is_sent_once(make_stack: Callable[[str, str], Any]) -> None:
    stack: Stack = await make_stack("redis", "postgresql")
    task_id = str(uuid.uuid4())
    queue = stack.settings.queue
    client = redis.Redis.from_url(stack.settings.broker_url)
    try:
        body = json.dumps([[], transfer_kwargs("call-redis", "redis-1"), {}]).encode()  # an empty embed is fine
        for _ in range(2):  # pushed twice (a retried push): still one job, one effect
            client.lpush(queue, redis_envelope(task_id, queue, body))
    finally:
        client.close()
    stack.start_worker()
    job = await settled(stack, job_id_for_key("redis-1"))
    assert job.state == State.ACCEPTED, job.reason
    assert job.idempotency_key == "redis-1"
    await asyncio.sleep(1.0)
    assert len(stack.requests_for("call-redis")) == 1
    assert stack.emulator.state.effects.effects_for_call("call-redis") == 1
