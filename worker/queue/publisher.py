"""Publishing job messages: by task name, so producers never import worker code.

A message carries the job id (which is also the Celery task id) and nothing else the worker must trust:
the job itself is in the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.exceptions import OperationalError as BrokerError

from worker.config import Settings
from worker.ledger.schema import Job, Lane
from worker.logs import get_logger
from worker.queue.broker import TASK_NAME, broker_kind, transfer_queue

log = get_logger(__name__)


class MessageTemplate:
    """Celery's own message for a job, built once by Celery; each job's message is that one with its id.

    Celery builds a message field by field on every ``send_task``; a job message differs from the next only in
    its id, so building it once takes that cost off every enqueue."""

    def __init__(self, app: Celery) -> None:
        message = app.amqp.as_task_v2("template", TASK_NAME, args=(), kwargs={}, ignore_result=True)
        self._headers = dict(message.headers)
        self._embed = message.body[2]

    def message(self, job_id: str, queue: str) -> dict[str, Any]:
        """Arguments for `kombu.Producer.publish`: the job's message, persistent, to `queue`.

        Through the default exchange, which routes by queue name on every broker (Celery publishes that way too).
        """
        headers = {**self._headers, "id": job_id, "root_id": job_id, "kwargsrepr": repr({"job_id": job_id})}
        return {
            "body": json.dumps([[], {"job_id": job_id}, self._embed]),
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "headers": headers,
            "correlation_id": job_id,
            "delivery_mode": 2,
            "exchange": "",
            "routing_key": queue,
        }


class Publisher:
    """Sends job messages over the app's pooled broker connection (confirmed one by one on RabbitMQ), each to
    its lane's queue."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._queues = {lane: transfer_queue(settings, lane) for lane in Lane.ALL}
        self._kind = broker_kind(settings.broker_url)
        self.template = MessageTemplate(app)

    def publish(self, job_ids: Iterable[str], lane: str = Lane.LIVE) -> int:
        queue = self._queues[lane]
        count = 0
        with self._app.producer_or_acquire() as producer:
            for job_id in job_ids:
                producer.publish(**self.template.message(job_id, queue.name), declare=[queue], retry=True)
                count += 1
        return count

    def publish_jobs(self, jobs: Iterable[tuple[str, str]]) -> int:
        """Publish (job id, lane) pairs, each into its lane."""
        by_lane: dict[str, list[str]] = {}
        for job_id, lane in jobs:
            by_lane.setdefault(lane, []).append(job_id)
        return sum(self.publish(job_ids, lane) for lane, job_ids in by_lane.items())

    def publish_saved(self, jobs: Iterable[Job]) -> bool:
        """Publish jobs just written to the ledger, except a paced campaign's (the dispatcher publishes those at
        the campaign's rate); False if the broker did not take them. A broker failure is logged, not raised: the
        jobs exist, and the sweeper publishes them once the broker is back."""
        due = [(job.id, job.lane) for job in jobs if job.published_at is not None]
        if not due:
            return True
        try:
            self.publish_jobs(due)
        except Exception as error:
            log.warning(
                "job.publish_deferred", jobs=len(due), first=due[0][0], error=f"{type(error).__name__}: {error}"
            )
            return False
        return True

    def queue_depths(self) -> dict[str, int | None]:
        """Messages ready in each lane's queue (None where the broker cannot tell)."""
        return {lane: self.queue_depth(lane) for lane in Lane.ALL}

    def queue_depth(self, lane: str = Lane.LIVE) -> int | None:
        """Messages ready in a lane's queue, or None when the broker cannot tell."""
        queue = self._queues[lane]
        try:
            with self._app.connection_for_write() as connection:
                channel: Any = connection.default_channel
                declared = channel.queue_declare(queue=queue.name, passive=True, arguments=queue.queue_arguments)
                return int(declared.message_count)
        except BrokerError:
            return None
        except ChannelError as error:
            if self._kind == "redis" or getattr(error, "code", None) == 404:
                # No such queue: nothing waits in it (a message published to it was dropped). Redis keeps a
                # queue as a list and drops an empty list, so it says so of any empty queue.
                return 0
            log.debug("broker.queue_depth_unknown", error=str(error))
            return None
        except Exception as error:
            log.debug("broker.queue_depth_unknown", error=str(error))
            return None
