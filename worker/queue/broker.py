"""Celery configuration derived from settings: the broker, its queue, and how messages are acknowledged.

Three brokers are supported: the embedded file-backed kombu transport (default; one machine, nothing to
install), RabbitMQ (quorum queue, publisher confirms) and Redis. Whatever the broker, the ledger is the source
of truth: a message the broker loses is re-published by the sweeper.

Two lanes, two queues: live work (TRANSFER_QUEUE) and bulk work (BULK_QUEUE, campaigns). Every worker consumes
both, live first: Redis asks the live queue first on every fetch; RabbitMQ delivers to each queue's consumer
as soon as it has a free prefetch slot, and bulk jobs never hold a slot for long (pacing happens before a
message is published, see `worker.deliver.dispatcher`); the embedded transport alternates between the two.
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from worker.config import Settings
from worker.ledger.schema import Lane

TASK_NAME = "acs_transfer.transfer"


def broker_kind(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith(("amqp", "pyamqp")):
        return "rabbitmq"
    if scheme in {"redis", "rediss"}:
        return "redis"
    if scheme == "filesystem":
        return "filesystem"
    return scheme


def transport_options(settings: Settings) -> dict[str, Any]:
    kind = broker_kind(settings.broker_url)
    if kind == "filesystem":
        folder = settings.broker_folder
        for part in ("queue", "control", "processed"):
            (folder / part).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "polling_interval": 0.05,
        }
    if kind == "rabbitmq":
        return {"confirm_publish": True}
    if kind == "redis":
        # Unacknowledged messages come back after this long; a job may legitimately run for the whole
        # repeatability window, so stay well above it. "priority": the live queue is always asked first
        # (kombu's default round robin would let the bulk queue take every other turn).
        return {"visibility_timeout": int(settings.repeatability_window * 2 + 60), "queue_order_strategy": "priority"}
    return {}


def queue_name(settings: Settings, lane: str = Lane.LIVE) -> str:
    """The queue of a lane: TRANSFER_QUEUE for live work (what a raw producer publishes to), BULK_QUEUE for bulk."""
    return settings.bulk_queue if lane == Lane.BULK else settings.queue


def transfer_queue(settings: Settings, lane: str = Lane.LIVE) -> Queue:
    arguments = {"x-queue-type": "quorum"} if broker_kind(settings.broker_url) == "rabbitmq" else None
    name = queue_name(settings, lane)
    return Queue(name, routing_key=name, queue_arguments=arguments)


def lane_queues(settings: Settings) -> list[Queue]:
    """Every lane's queue, live first (one queue when BULK_QUEUE names the live queue)."""
    queues = [transfer_queue(settings, Lane.LIVE)]
    if settings.bulk_queue != settings.queue:
        queues.append(transfer_queue(settings, Lane.BULK))
    return queues


def celery_broker_url(settings: Settings) -> str:
    """The broker URL as Celery is given it. The file transport has no host; naming the default one keeps kombu
    from warning, on every connection, that none was given."""
    return "filesystem://localhost//" if broker_kind(settings.broker_url) == "filesystem" else settings.broker_url


def celery_config(settings: Settings) -> dict[str, Any]:
    """Everything `celeryconfig.py` sets, for the given settings."""
    embedded = broker_kind(settings.broker_url) == "filesystem"
    return {
        "broker_url": celery_broker_url(settings),
        "broker_transport_options": transport_options(settings),
        "broker_connection_retry_on_startup": True,
        # JSON only: a producer must never be able to make a worker unpickle code.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # Late acks: a message is acknowledged once its job is settled, so work lost with a worker is redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "result_backend": None,
        # Job messages run on the process's event loop (worker.deliver.strategy), not in the pool: the prefetch
        # (concurrency x 1: per lane queue on RabbitMQ, per channel elsewhere) is how many are in flight.
        "worker_pool": "threads",
        "worker_concurrency": settings.worker_concurrency,
        "worker_prefetch_multiplier": 1,
        "worker_consumer": "worker.deliver.consumer:RecordingConsumer",
        # The file-backed transport has no broadcast worth polling for; remote control needs a real broker.
        "worker_enable_remote_control": not embedded,
        # Task events let Flower show every task, at a price: three more messages per task, each waiting for the
        # broker's confirm under the event dispatcher's lock, from the consumer's thread. Off unless asked for.
        "worker_send_task_events": settings.task_events and not embedded,
        "task_send_sent_event": settings.task_events and not embedded,
        "task_default_queue": settings.queue,
        "task_queues": lane_queues(settings),
        "task_routes": {TASK_NAME: {"queue": settings.queue}},
    }
