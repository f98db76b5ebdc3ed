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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery

from worker.config import Settings
from worker.errors import ValidationError
from worker.ledger import Job, Lane, SyncLedger
from worker.logs import get_logger
from worker.queue.app import create_app
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
    """Enqueues transfers for one configuration. Thread-safe; reuse one per process."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = (settings or Settings.from_env()).check()
        self.ledger = SyncLedger(self.settings.ledger_url)
        self.publisher = Publisher(app or create_app(self.settings), self.settings)

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
        ((job, created),) = self.ledger.create_jobs([new_job])
        if created:
            return Enqueued(job, created, self.publisher.publish_saved([job]))
        log.info("job.exists", job_id=job.id, idempotency_key=idempotency_key, state=job.state)
        return Enqueued(job, created)

    def close(self) -> None:
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
