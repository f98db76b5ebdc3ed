"""The producer API: validate, write the job to the ledger, publish its message. Nothing of the worker's
task code is imported here; messages go out by task name.

    from worker import enqueue_transfer
    job_id = enqueue_transfer(call_connection_id="...", target="4:+15551234567", idempotency_key="crm-123")

A job exists once its ledger row is written; if publishing then fails, the sweeper publishes it later.
Enqueueing the same idempotency key again for the same transfer returns the existing job and sends nothing
again; the key with another call or request raises `IdempotencyConflict`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery

from worker.config import Settings
from worker.errors import ValidationError
from worker.ledger import Job, Lane, NewJob, SyncLedger
from worker.logs import get_logger
from worker.produce.group_commit import GroupCommit
from worker.queue.app import create_app
from worker.queue.bulk import BatchPublisher
from worker.queue.publisher import Publisher
from worker.request.job import prepare_job
from worker.request.models import TransferRequest, parse_transfer
from worker.request.names import name_issues

log = get_logger(__name__)


@dataclass(frozen=True)
class Enqueued:
    job: Job
    created: bool
    #: False when the broker did not take the message: the job waits for a worker's sweeper to publish it
    published: bool = True

    @property
    def job_id(self) -> str:
        return self.job.id


class Producer:
    """Enqueues transfers for one configuration. Thread-safe; reuse one per process.

    Concurrent `enqueue` calls share their durable writes (group commit): the jobs that arrive while one batch is
    written go into the ledger in one transaction, then to the broker with one wait for all their confirms. Each
    call still returns only once its own job is committed and its message confirmed."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = (settings or Settings.from_env()).check()
        self.ledger = SyncLedger(self.settings.ledger_url)
        app = app or create_app(self.settings)
        self.publisher = Publisher(app, self.settings)  # for each lane's queue depth (queue_depths)
        # Used only by the group's writer, one thread at a time.
        self._publishers = {lane: BatchPublisher(app, self.settings, lane=lane) for lane in Lane.ALL}
        self._group: GroupCommit[NewJob, Enqueued] = GroupCommit(self._enqueue_batch)

    def enqueue(
        self,
        request: TransferRequest | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        campaign: str | None = None,
        lane: str = Lane.LIVE,
    ) -> Enqueued:
        issues = name_issues(idempotency_key, campaign)
        if issues:
            raise ValidationError(issues)
        if not isinstance(request, TransferRequest):
            request = parse_transfer(request)
        new_job = prepare_job(
            request,
            idempotency_key=idempotency_key,
            campaign=campaign,
            callback_base_url=self.settings.callback_base_url,
            lane=lane,
        )
        enqueued = self._group.submit(new_job)
        if not enqueued.created:
            job = enqueued.job
            log.info("job.exists", job_id=job.id, idempotency_key=idempotency_key, state=job.state)
        return enqueued

    def _enqueue_batch(self, new_jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Write a batch in one transaction, then publish its due jobs with one wait for their confirms."""
        saved = self.ledger.create_jobs(new_jobs)
        # A paced campaign's jobs are not due yet: the dispatcher publishes them at the campaign's rate.
        due: dict[str, list[str]] = {}
        for job, created in saved:
            if created and job.published_at is not None:
                due.setdefault(job.lane, []).append(job.id)
        published = {lane: self._publish(lane, job_ids) for lane, job_ids in due.items()}
        return [Enqueued(job, created, published.get(job.lane, True) if created else True) for job, created in saved]

    def _publish(self, lane: str, job_ids: list[str]) -> bool:
        """False if the broker did not take the messages: logged, not raised, since the jobs exist and a worker's
        sweeper publishes them once the broker is back. A second try on a new connection covers a connection
        that died since the last batch (a broker restart)."""
        for last_try in (False, True):
            try:
                self._publishers[lane].publish(job_ids)
                return True
            except Exception as error:
                if last_try:
                    log.warning(
                        "job.publish_deferred",
                        jobs=len(job_ids),
                        first=job_ids[0],
                        error=f"{type(error).__name__}: {error}",
                    )
        return False

    def close(self) -> None:
        for publisher in self._publishers.values():
            publisher.close()
        self.ledger.close()


_default: Producer | None = None
_default_lock = threading.Lock()


def default_producer() -> Producer:
    global _default  # noqa: PLW0603 - one lazily built producer per process
    with _default_lock:
        if _default is None:
            _default = Producer()
        return _default


def transfer_message(
    call_connection_id: str,
    target: str | Mapping[str, Any],
    *,
    transferee: str | Mapping[str, Any] | None = None,
    operation_context: str | None = None,
    callback_uri: str | None = None,
    source_caller_id: str | None = None,
    sip_headers: Mapping[str, str] | None = None,
    voip_headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The wire form of a transfer from keyword arguments (not yet validated)."""
    message: dict[str, Any] = {"callConnectionId": call_connection_id, "targetParticipant": target}
    optional = {
        "transferee": transferee,
        "operationContext": operation_context,
        "operationCallbackUri": callback_uri,
        "sourceCallerIdNumber": source_caller_id,
    }
    message.update({key: value for key, value in optional.items() if value is not None})
    if sip_headers or voip_headers:
        context = {"sipHeaders": sip_headers, "voipHeaders": voip_headers}
        message["customCallingContext"] = {key: dict(value) for key, value in context.items() if value}
    return message


def enqueue_transfer(
    call_connection_id: str,
    target: str | Mapping[str, Any],
    *,
    transferee: str | Mapping[str, Any] | None = None,
    operation_context: str | None = None,
    callback_uri: str | None = None,
    source_caller_id: str | None = None,
    sip_headers: Mapping[str, str] | None = None,
    voip_headers: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
    campaign: str | None = None,
    lane: str = Lane.LIVE,
) -> str:
    """Validate and enqueue one transfer; returns the job id. Raises `ValidationError` naming each bad field.

    `lane`: ``"live"`` (a caller waits for this transfer; the default) or ``"bulk"`` (it may wait behind live work)."""
    message = transfer_message(
        call_connection_id,
        target,
        transferee=transferee,
        operation_context=operation_context,
        callback_uri=callback_uri,
        source_caller_id=source_caller_id,
        sip_headers=sip_headers,
        voip_headers=voip_headers,
    )
    producer = default_producer()
    return producer.enqueue(message, idempotency_key=idempotency_key, campaign=campaign, lane=lane).job_id
