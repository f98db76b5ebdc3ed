"""Decoding a job message from the queue, whoever published it.

Two forms are accepted as task kwargs (JSON only):
- ``{"job_id": "..."}`` from this package's producers: the job is already in the ledger;
- ``{"request": {...wire form...}, "idempotency_key": "...", "campaign": "...", "lane": "live"|"bulk"}`` from any
  other producer: the worker creates the job itself, idempotently: its id is derived from the idempotency key
  when the message carries one (as every producer derives it, so one key is one job whichever way it came in),
  else it is the message's task id, so a redelivery finds it. A key that already names another transfer makes
  a dead message. The job goes in the lane named, else the lane of the queue the message came from.
Anything else is recorded as a dead message with the reason, and the worker carries on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from worker.deliver.transfer import Context, send_job
from worker.errors import IdempotencyConflict, TransferError, ValidationError
from worker.ledger import Job, Lane, State, op_create_jobs, op_record_dead_message
from worker.ledger.limits import JOB_ID, MESSAGE_ID
from worker.logs import get_logger
from worker.request.job import prepare_job
from worker.request.models import job_id_for_key, parse_transfer
from worker.request.names import name_issues
from worker.text import is_printable, storable

log = get_logger(__name__)
_KNOWN = {"job_id", "request", "idempotency_key", "campaign", "lane"}
_MAX_REASON = 2000
_MAX_PAYLOAD = 100_000


class BadMessage(TransferError):
    """The message cannot become a job."""


def _is_job_id(value: object) -> bool:
    # What the ledger can key a job by: a longer id would fail the insert on PostgreSQL each time it came back.
    return isinstance(value, str) and bool(value.strip()) and len(value) <= JOB_ID and is_printable(value)


async def record_dead_message(ctx: Context, message_id: str | None, reason: str, payload: object) -> None:
    text = payload if isinstance(payload, str) else json.dumps(payload, default=repr)
    message_id = None if message_id is None else storable(message_id, MESSAGE_ID)
    reason = storable(reason, _MAX_REASON)
    await ctx.ledger.run(op_record_dead_message, message_id, reason, storable(text, _MAX_PAYLOAD), ctx.clock())
    log.error("message.dead", message_id=message_id, reason=reason)


def _job_from_kwargs(task_id: str, kwargs: Mapping[str, Any]) -> tuple[str, Any]:
    unknown = sorted(set(kwargs) - _KNOWN)
    if unknown:
        raise BadMessage(f"unknown message fields: {', '.join(map(repr, unknown))}")
    job_id = kwargs.get("job_id")
    if job_id is not None and not _is_job_id(job_id):
        raise BadMessage(f"job_id must be a non-empty string of at most {JOB_ID} printable characters")
    issues = name_issues(kwargs.get("idempotency_key"), kwargs.get("campaign"))
    if issues:
        raise BadMessage("; ".join(map(str, issues)))
    if kwargs.get("lane", Lane.LIVE) not in Lane.ALL:
        raise BadMessage(f"lane must be one of {', '.join(Lane.ALL)}")
    if job_id is None and "request" not in kwargs:
        raise BadMessage("message carries neither job_id nor request")
    key = kwargs.get("idempotency_key")
    if job_id is None and key is not None:
        # The key names the job as it does for every producer: one key, one job, whichever way it came in.
        return job_id_for_key(key), kwargs.get("request")
    if job_id is None and not _is_job_id(task_id):
        # The task id becomes the job's id: it must fit the ledger as a job_id would.
        raise BadMessage(f"the message's task id must be 1 to {JOB_ID} printable characters")
    return job_id or task_id, kwargs.get("request")


async def handle_message(
    ctx: Context, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], lane: str = Lane.LIVE
) -> Job | None:
    """Turn one task message into a sent job; a bad message becomes a dead-message record, never an exception.

    A job created from a message goes in the message's ``lane``, else in the lane of the queue it came from."""
    try:
        if args:
            raise BadMessage("positional arguments are not accepted; send keyword arguments")
        job_id, request = _job_from_kwargs(task_id, kwargs)
        if request is not None:
            parsed = parse_transfer(request, where="message request")
            new_job = prepare_job(
                parsed,
                job_id=job_id,
                idempotency_key=kwargs.get("idempotency_key"),
                campaign=kwargs.get("campaign"),
                callback_base_url=ctx.settings.callback_base_url,
                lane=kwargs.get("lane", lane),
            )
            ((job, created),) = await ctx.ledger.run(op_create_jobs, [new_job], ctx.clock())
            if created:
                log.info("job.created_from_message", job_id=job.id, message_id=task_id)
            if job.state == State.QUEUED and job.published_at is None:
                return job  # a paced campaign's: the dispatcher publishes it at the campaign's rate
            job_id = job.id
    except (BadMessage, ValidationError, IdempotencyConflict) as error:
        await record_dead_message(ctx, task_id, str(error), {"args": list(args), "kwargs": dict(kwargs)})
        return None
    sent = await send_job(job_id, ctx)
    if sent is None and request is None and await ctx.ledger.find(job_id) is None:
        # A message for a job this ledger never had (another deployment's queue, a lost ledger): explain it.
        await record_dead_message(ctx, task_id, f"no job {job_id!r} in the ledger", {"kwargs": dict(kwargs)})
    return sent
