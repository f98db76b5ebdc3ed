"""Publishing many job messages at once, as a campaign submit does.

`Publisher` publishes over the app's pooled connection with ``confirm_publish`` on RabbitMQ, so each message
waits for the broker's confirm before the next: right for one job, slow for a hundred thousand, since a RabbitMQ
quorum queue writes a message to disk on a majority of nodes before it confirms it. `BatchPublisher` keeps one
connection whose channel is in confirm mode, publishes a whole batch, then waits once for all of its confirms:
the same guarantee (every message of a batch that returns is on the queue), one wait per batch. Both send
Celery's own message, built once by `MessageTemplate` with each job's id put in, not through ``send_task``, so
neither publishes a task-sent event (Flower sees each task from when a worker takes it). Other brokers go
through `Publisher`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

import kombu
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from worker.config import Settings
from worker.ledger import Lane
from worker.queue.broker import broker_kind, transfer_queue
from worker.queue.publisher import MessageTemplate, Publisher


class BatchPublisher:
    """Job messages by the batch, each batch confirmed as a whole. Not thread-safe; `close()` when done."""

    def __init__(self, app: Celery, settings: Settings, confirm_timeout: float = 60.0, lane: str = Lane.BULK) -> None:
        self._app = app
        self._settings = settings
        self._lane = lane
        self._queue = transfer_queue(settings, lane)
        self._confirm_timeout = confirm_timeout
        self._one_by_one = None if broker_kind(settings.broker_url) == "rabbitmq" else Publisher(app, settings)
        self._connection: kombu.Connection | None = None
        self._channel: Any = None
        self._producer: kombu.Producer | None = None
        self._sent = 0  # delivery tags on the channel run 1, 2, ... in confirm mode
        self._unconfirmed: set[int] = set()
        self._refused = 0
        self._template = MessageTemplate(app)

    def publish(self, job_ids: Iterable[str]) -> int:
        if self._one_by_one is not None:
            return self._one_by_one.publish(job_ids, self._lane)
        try:
            return self._publish_confirmed(job_ids)
        except Exception:
            self.close()  # a failed connection or channel is not reused
            raise

    def _publish_confirmed(self, job_ids: Iterable[str]) -> int:
        producer = self._open()
        count = 0
        for job_id in job_ids:
            producer.publish(**self._template.message(job_id, self._queue.name), retry=False)
            count += 1
        self._wait_for_confirms()
        return count

    def _open(self) -> kombu.Producer:
        if self._producer is None:
            # No confirm_publish here: it would make the channel wait after every message.
            self._connection = kombu.Connection(self._settings.broker_url)
            self._channel = self._connection.channel()
            self._channel.confirm_select()
            self._channel.events["basic_ack"].add(self._on_ack)
            self._channel.events["basic_nack"].add(self._on_nack)
            # Confirms number every publish on the channel: count them where they are made.
            publish = self._channel.basic_publish

            def counted(*args: Any, **kwargs: Any) -> Any:
                self._sent += 1
                self._unconfirmed.add(self._sent)
                return publish(*args, **kwargs)

            self._channel.basic_publish = counted
            self._queue(self._channel).declare()
            self._producer = kombu.Producer(self._channel)
            self._sent = 0
            self._unconfirmed.clear()
        return self._producer

    def _settle(self, tag: int, multiple: bool) -> int:
        settled = {t for t in self._unconfirmed if t <= tag} if multiple else {tag} & self._unconfirmed
        self._unconfirmed -= settled
        return len(settled)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._refused += self._settle(tag, multiple)

    def _wait_for_confirms(self) -> None:
        assert self._connection is not None
        deadline = time.monotonic() + self._confirm_timeout
        while self._unconfirmed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(f"{len(self._unconfirmed)} messages not confirmed by the broker in time")
            try:
                self._connection.drain_events(timeout=remaining)
            except TimeoutError:
                continue
        if self._refused:
            refused, self._refused = self._refused, 0
            raise BrokerError(f"the broker refused {refused} messages")

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # closing a connection that may already have failed
                self._connection.close()
        self._connection = self._channel = self._producer = None
