"""The ledger: the job store and the source of truth. The broker only delivers.

One code path for SQLite (embedded default) and PostgreSQL (production): each operation is a plain function
over a SQLAlchemy `Connection`, run directly by `SyncLedger` (producers, CLI) or through `run_sync` by
`Ledger` (the worker's event loop). Every state change is one transaction that also appends a row to
`job_events`, so a job's history is always complete.

Claiming is a conditional UPDATE: a job is taken only if it is queued, or if the worker that held it let its
lease run out (it died). Two deliveries of one message therefore never send concurrently.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from worker.errors import IdempotencyConflict, JobNotFound, LedgerSchemaError, ReplayRefused

P = ParamSpec("P")
R = TypeVar("R")


class State:
    """Job states. ``queued → sending → accepted``; side exits ``retry_wait``, ``failed``, ``unknown``, ``dead``."""

    QUEUED = "queued"
    SENDING = "sending"
    RETRY_WAIT = "retry_wait"
    ACCEPTED = "accepted"
    TRANSFERRED = "transferred"
    TRANSFER_FAILED = "transfer_failed"
    FAILED = "failed"
    UNKNOWN = "unknown"
    DEAD = "dead"

    ALL = (QUEUED, SENDING, RETRY_WAIT, ACCEPTED, TRANSFERRED, TRANSFER_FAILED, FAILED, UNKNOWN, DEAD)
    #: a worker holds the job (under a lease)
    HELD = (SENDING, RETRY_WAIT)
    #: no worker will touch the job again on its own
    SETTLED = (ACCEPTED, TRANSFERRED, TRANSFER_FAILED, FAILED, UNKNOWN, DEAD)
    #: the outcome is known for good: only an operator's replay starts anything new
    FINAL = (TRANSFERRED, TRANSFER_FAILED, FAILED, DEAD)
    #: states an outcome event may settle (it can arrive before the 202 is recorded, or after the job went dead)
    AWAITING_OUTCOME = (QUEUED, SENDING, RETRY_WAIT, ACCEPTED, UNKNOWN, DEAD)
    #: what an operator may replay
    REPLAYABLE = (FAILED, DEAD)


metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("idempotency_key", sa.String(512), unique=True),
    sa.Column("request_id", sa.String(36), nullable=False),
    sa.Column("campaign", sa.String(200), index=True),
    sa.Column("call_connection_id", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("body_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("first_sent", sa.BigInteger),
    sa.Column("lease_until", sa.Float),
    sa.Column("worker", sa.String(200)),
    sa.Column("published_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("accepted_at", sa.Float),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.String(200)),
    sa.Column("last_message", sa.Text),
    sa.Column("reason", sa.Text),
    # What ACS reported in the outcome event (resultInformation), and when the job reached a final state.
    sa.Column("operation_context", sa.Text),
    sa.Column("result_code", sa.Integer),
    sa.Column("result_subcode", sa.Integer),
    sa.Column("result_message", sa.Text),
    sa.Column("settled_at", sa.Float),
    # An operator's replay: the new job points at the original and the original at its replacement.
    sa.Column("replay_of", sa.String(64)),
    sa.Column("replayed_by", sa.String(64)),
    sa.Index("ix_jobs_state_published", "state", "published_at"),
    sa.Index("ix_jobs_call", "call_connection_id"),
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("from_state", sa.String(20)),
    sa.Column("to_state", sa.String(20), nullable=False),
    sa.Column("attempt", sa.Integer),
    sa.Column("status", sa.Integer),
    sa.Column("detail", sa.Text),
)

dead_messages = sa.Table(
    "dead_messages",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("message_id", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text),
)

callback_events = sa.Table(
    "callback_events",
    metadata,
    sa.Column("event_id", sa.String(200), primary_key=True),  # ACS may deliver an event more than once
    sa.Column("job_id", sa.String(64), index=True),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("until", sa.Float, nullable=False),
)

# A bulk campaign: its pacing (transfers per second, none when NULL), read by workers through a short cache.
campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("rate", sa.Float),
    sa.Column("source", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class Job:
    id: str
    idempotency_key: str | None
    request_id: str
    campaign: str | None
    call_connection_id: str
    body: str
    body_hash: str
    state: str
    attempts: int
    first_sent: int | None
    lease_until: float | None
    worker: str | None
    published_at: float | None
    created_at: float
    updated_at: float
    accepted_at: float | None
    last_status: int | None
    last_error: str | None
    last_message: str | None
    reason: str | None
    operation_context: str | None
    result_code: int | None
    result_subcode: int | None
    result_message: str | None
    settled_at: float | None
    replay_of: str | None
    replayed_by: str | None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Job:
        return cls(**row._asdict())

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Job:
        """A job from the values just inserted (every column not given is NULL)."""
        complete: dict[str, Any] = {name: values.get(name) for name in _JOB_FIELDS}
        return cls(**complete)


_JOB_FIELDS = tuple(column.name for column in jobs.columns)


@dataclass(frozen=True)
class NewJob:
    """A job to create: the frozen request and how to find it again."""

    id: str
    request_id: str
    call_connection_id: str
    body: bytes
    idempotency_key: str | None = None
    campaign: str | None = None
    operation_context: str | None = None
    replay_of: str | None = None


@dataclass(frozen=True)
class Event:
    at: float
    from_state: str | None
    to_state: str
    attempt: int | None
    status: int | None
    detail: str | None


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# --- operations: plain functions over a Connection, shared by both ledgers --------------------------------


def _insert_ignoring_conflicts(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], returning: sa.Column[Any]
) -> set[Any]:
    """Insert the rows that conflict with no unique key; return `returning` of those inserted."""
    dialect = connection.dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    result = connection.execute(insert.on_conflict_do_nothing().returning(returning), list(rows))
    return set(result.scalars().all())


# Hot-path statements are built once: building and cache-keying a statement costs more than running it.
_bp = sa.bindparam
_INSERT_EVENT = job_events.insert()
_SELECT_JOB = sa.select(jobs).where(jobs.c.id == _bp("p_id"))
_SELECT_STATE = sa.select(jobs.c.state).where(jobs.c.id == _bp("p_id"))
_CLAIM_QUEUED = (
    jobs.update()
    .where(jobs.c.id == _bp("p_id"), jobs.c.state == State.QUEUED)
    .values(state=State.SENDING, worker=_bp("p_worker"), lease_until=_bp("p_lease"), updated_at=_bp("p_now"))
    .returning(*jobs.c)
)
# A queued job's first attempt starts with its claim (First-Sent committed with it, before the request) unless
# its campaign is paced: a paced job must get its token before First-Sent is fixed.
_PACED_CAMPAIGN = sa.exists().where(campaigns.c.name == jobs.c.campaign, campaigns.c.rate > 0)
_CLAIM_QUEUED_AND_START = (
    jobs.update()
    .where(jobs.c.id == _bp("p_id"), jobs.c.state == State.QUEUED, ~_PACED_CAMPAIGN)
    .values(
        state=State.SENDING,
        worker=_bp("p_worker"),
        lease_until=_bp("p_lease"),
        updated_at=_bp("p_now"),
        attempts=1,
        first_sent=_bp("p_first_sent", type_=sa.BigInteger),
    )
    .returning(*jobs.c)
)
_CLAIM_ORPHAN = (
    jobs.update()
    .where(jobs.c.id == _bp("p_id"), jobs.c.state.in_(State.HELD), jobs.c.lease_until < _bp("p_now"))
    .values(state=State.SENDING, worker=_bp("p_worker"), lease_until=_bp("p_lease"), updated_at=_bp("p_now"))
    .returning(*jobs.c)
)
_START_ATTEMPT = (
    jobs.update()
    .where(
        jobs.c.id == _bp("p_id"),
        jobs.c.worker == _bp("p_worker"),
        jobs.c.state == _bp("p_from"),
        # Only a held job is sent: a settled one (an outcome event may settle it under its holder) never again.
        jobs.c.state.in_(State.HELD),
    )
    .values(
        state=State.SENDING,
        attempts=_bp("p_attempt"),
        first_sent=sa.func.coalesce(jobs.c.first_sent, _bp("p_first_sent", type_=sa.BigInteger)),
        lease_until=_bp("p_lease"),
        updated_at=_bp("p_now"),
    )
    .returning(*jobs.c)
)
_TRANSITION_VALUES = {
    "state": _bp("p_to"),
    "lease_until": _bp("p_lease", type_=sa.Float),
    "updated_at": _bp("p_now"),
    "last_status": sa.func.coalesce(_bp("p_status", type_=sa.Integer), jobs.c.last_status),
    "last_error": sa.func.coalesce(_bp("p_error", type_=sa.String), jobs.c.last_error),
    "last_message": sa.func.coalesce(_bp("p_message", type_=sa.Text), jobs.c.last_message),
    "accepted_at": sa.func.coalesce(_bp("p_accepted_at", type_=sa.Float), jobs.c.accepted_at),
    "reason": _bp("p_reason", type_=sa.Text),
    "settled_at": sa.func.coalesce(_bp("p_settled_at", type_=sa.Float), jobs.c.settled_at),
}
_TRANSITION = (
    jobs.update()
    .where(jobs.c.id == _bp("p_id"), jobs.c.state == _bp("p_from"))
    .values(**_TRANSITION_VALUES)
    .returning(*jobs.c)
)
_TRANSITION_HELD = (
    jobs.update()
    .where(jobs.c.id == _bp("p_id"), jobs.c.state == _bp("p_from"), jobs.c.worker == _bp("p_worker"))
    .values(**_TRANSITION_VALUES)
    .returning(*jobs.c)
)


def _event(
    connection: Connection,
    job_id: str,
    now: float,
    from_state: str | None,
    to_state: str,
    attempt: int | None = None,
    status: int | None = None,
    detail: str | None = None,
) -> None:
    row = {
        "job_id": job_id,
        "at": now,
        "from_state": from_state,
        "to_state": to_state,
        "attempt": attempt,
        "status": status,
        "detail": detail,
    }
    deferred = connection.info.get(_DEFERRED_EVENTS)
    if deferred is None:
        connection.execute(_INSERT_EVENT, row)
    else:
        deferred.append(row)


_DEFERRED_EVENTS = "acs_transfer_deferred_events"


def _in_one_transaction(connection: Connection, calls: Sequence[Callable[[Connection], R]]) -> list[R]:
    """Run operations in the caller's transaction, writing all their history rows in one statement at the end."""
    events: list[dict[str, Any]] = []
    connection.info[_DEFERRED_EVENTS] = events
    try:
        results = [call(connection) for call in calls]
    finally:
        del connection.info[_DEFERRED_EVENTS]
    if events:
        connection.execute(_INSERT_EVENT, events)
    return results


def op_create_jobs(connection: Connection, new_jobs: Sequence[NewJob], now: float) -> list[tuple[Job, bool]]:
    """Insert jobs that do not exist yet (by id or idempotency key); return each job and whether it is new."""
    rows = [
        {
            "id": job.id,
            "idempotency_key": job.idempotency_key,
            "request_id": job.request_id,
            "campaign": job.campaign,
            "call_connection_id": job.call_connection_id,
            "body": job.body.decode(),
            "body_hash": body_hash(job.body),
            "state": State.QUEUED,
            "attempts": 0,
            "operation_context": job.operation_context,
            "replay_of": job.replay_of,
            "published_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for job in new_jobs
    ]
    if not rows:
        return []
    inserted = _insert_ignoring_conflicts(connection, jobs, rows, jobs.c.id)
    # What was inserted is known without reading it back; only the others (conflicts) are looked up.
    by_id = {row["id"]: Job.from_values(row) for row in rows if row["id"] in inserted}
    others = [job for job in new_jobs if job.id not in inserted]
    if others:
        keys = [job.idempotency_key for job in others if job.idempotency_key is not None]
        condition: sa.ColumnElement[bool] = jobs.c.id.in_([job.id for job in others])
        if keys:
            condition = sa.or_(condition, jobs.c.idempotency_key.in_(keys))
        for row in connection.execute(sa.select(jobs).where(condition)):
            by_id.setdefault(row.id, Job.from_row(row))
    by_key = {job.idempotency_key: job for job in by_id.values() if job.idempotency_key is not None}
    results: list[tuple[Job, bool]] = []
    created_ids: list[str] = []
    for new in new_jobs:
        existing = by_key.get(new.idempotency_key) if new.idempotency_key is not None else None
        job = existing or by_id[new.id]
        if job.body_hash != body_hash(new.body):
            key = new.idempotency_key or new.id
            raise IdempotencyConflict(
                f"idempotency key {key!r} already names job {job.id} with a different request; "
                "use a new key for a new transfer"
            )
        created = job.id == new.id and job.id in inserted and job.id not in created_ids
        if created:
            created_ids.append(job.id)
        results.append((job, created))
    for job_id in created_ids:
        _event(connection, job_id, now, None, State.QUEUED)
    return results


def op_get(connection: Connection, job_id: str) -> Job | None:
    row = connection.execute(_SELECT_JOB, {"p_id": job_id}).first()
    return Job.from_row(row) if row is not None else None


def op_events(connection: Connection, job_id: str) -> list[Event]:
    query = (
        sa.select(
            job_events.c.at,
            job_events.c.from_state,
            job_events.c.to_state,
            job_events.c.attempt,
            job_events.c.status,
            job_events.c.detail,
        )
        .where(job_events.c.job_id == job_id)
        .order_by(job_events.c.id)
    )
    return [Event(*row) for row in connection.execute(query)]


def op_claim(
    connection: Connection,
    job_id: str,
    worker: str,
    now: float,
    lease_until: float,
    first_sent: int | None = None,
) -> tuple[Job, str] | None:
    """Take the job if it is queued or its holder's lease ran out: (job, its state before), or None if another
    worker holds it, it is settled, or it does not exist. With `first_sent`, a queued job of no paced campaign
    starts its first attempt in the same write (attempts 1, First-Sent fixed)."""
    params = {"p_id": job_id, "p_worker": worker, "p_now": now, "p_lease": lease_until, "p_first_sent": first_sent}
    row = None if first_sent is None else connection.execute(_CLAIM_QUEUED_AND_START, params).first()
    if row is None:
        row = connection.execute(_CLAIM_QUEUED, params).first()
    before: str | None = State.QUEUED
    if row is None:
        before = connection.execute(_SELECT_STATE, {"p_id": job_id}).scalar()
        if before not in State.HELD:
            return None
        row = connection.execute(_CLAIM_ORPHAN, params).first()
        if row is None:
            return None
    job = Job.from_row(row)
    detail = None if before == State.QUEUED else f"taken over from an expired lease ({before})"
    _event(connection, job_id, now, before, State.SENDING, job.attempts or None, detail=detail)
    return job, str(before)


def op_start_attempt(
    connection: Connection,
    job_id: str,
    worker: str,
    from_state: str,
    attempt: int,
    first_sent: int,
    now: float,
    lease_until: float,
) -> Job | None:
    """Record attempt N before it leaves; First-Sent is set only by the first attempt and never changed."""
    params = {
        "p_id": job_id,
        "p_worker": worker,
        "p_from": from_state,
        "p_attempt": attempt,
        "p_first_sent": first_sent,
        "p_lease": lease_until,
        "p_now": now,
    }
    row = connection.execute(_START_ATTEMPT, params).first()
    if row is None:
        return None
    if from_state != State.SENDING:
        _event(connection, job_id, now, from_state, State.SENDING, attempt)
    return Job.from_row(row)


def op_transition(
    connection: Connection,
    job_id: str,
    worker: str | None,
    from_state: str,
    to_state: str,
    now: float,
    *,
    lease_until: float | None = None,
    status: int | None = None,
    error: str | None = None,
    message: str | None = None,
    detail: str | None = None,
) -> Job | None:
    """Move a job from `from_state` to `to_state`, only if it is still there (and held by `worker`, if given).
    The last answer (status, error, message) is kept unless new values are given; `detail` says why the job
    is where it is now and is kept as its reason."""
    params = {
        "p_id": job_id,
        "p_from": from_state,
        "p_worker": worker,
        "p_to": to_state,
        "p_lease": lease_until,
        "p_now": now,
        "p_status": status,
        "p_error": error,
        "p_message": message,
        "p_accepted_at": now if to_state == State.ACCEPTED else None,
        "p_reason": detail or message,
        "p_settled_at": now if to_state in State.FINAL else None,
    }
    row = connection.execute(_TRANSITION if worker is None else _TRANSITION_HELD, params).first()
    if row is None:
        return None
    job = Job.from_row(row)
    _event(connection, job_id, now, from_state, to_state, job.attempts, status, detail or message)
    return job


@dataclass(frozen=True)
class Outcome:
    """What an outcome event means for a job: the final state and ACS's resultInformation."""

    state: str
    code: int | None
    subcode: int | None
    message: str | None


def op_record_event(
    connection: Connection, event_id: str, event_type: str, job_id: str | None, payload: str, now: float
) -> bool:
    """Remember an event by id; False when it was seen before (ACS may deliver an event twice)."""
    row = {"event_id": event_id, "job_id": job_id, "type": event_type, "received_at": now, "payload": payload}
    return bool(_insert_ignoring_conflicts(connection, callback_events, [row], callback_events.c.event_id))


def op_find_job_for_event(connection: Connection, call_connection_id: str, operation_context: str | None) -> str | None:
    """The most recent job on this call still waiting for an outcome (matching the operation context if given)."""
    query = sa.select(jobs.c.id).where(
        jobs.c.call_connection_id == call_connection_id, jobs.c.state.in_(State.AWAITING_OUTCOME)
    )
    if operation_context is not None:
        query = query.where(jobs.c.operation_context == operation_context)
    return connection.execute(query.order_by(jobs.c.created_at.desc()).limit(1)).scalar()


def op_apply_outcome(connection: Connection, job_id: str, outcome: Outcome, detail: str, now: float) -> Job | None:
    """Settle a job from an outcome event if it is still waiting for one; None otherwise (already settled)."""
    query = sa.select(jobs.c.state).where(jobs.c.id == job_id)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    before = connection.execute(query).scalar()
    if before not in State.AWAITING_OUTCOME:
        return None
    row = connection.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.state == before)
        .values(
            state=outcome.state,
            result_code=outcome.code,
            result_subcode=outcome.subcode,
            result_message=outcome.message,
            settled_at=now,
            lease_until=None,
            updated_at=now,
            reason=detail,
        )
        .returning(*jobs.c)
    ).first()
    if row is None:
        return None
    job = Job.from_row(row)
    _event(connection, job_id, now, before, outcome.state, job.attempts, outcome.code, detail)
    return job


def op_unknown_older_than(connection: Connection, cutoff: float, limit: int) -> list[str]:
    query = (
        sa.select(jobs.c.id)
        .where(jobs.c.state == State.UNKNOWN, jobs.c.updated_at < cutoff)
        .order_by(jobs.c.updated_at)
        .limit(limit)
    )
    return list(connection.execute(query).scalars())


def op_replay(connection: Connection, original_id: str, new_job: NewJob, reason: str, now: float) -> Job:
    """Create `new_job` as an operator's replay of a failed or dead job, linking the two both ways."""
    original = op_get(connection, original_id)
    if original is None:
        raise JobNotFound(f"no job {original_id!r}")
    if original.state not in State.REPLAYABLE or original.replayed_by is not None:
        replayed = f" (already replayed as {original.replayed_by})" if original.replayed_by else ""
        raise ReplayRefused(f"job {original_id} is {original.state}{replayed}: only failed or dead jobs are replayed")
    ((created, _),) = op_create_jobs(connection, [new_job], now)
    detail = f"replayed as {created.id}: {reason}"
    connection.execute(
        jobs.update().where(jobs.c.id == original_id).values(replayed_by=created.id, reason=detail, updated_at=now)
    )
    _event(connection, original_id, now, original.state, original.state, original.attempts, None, detail)
    return created


def op_extend_lease(
    connection: Connection, job_id: str, worker: str, state: str, lease_until: float, now: float
) -> Job | None:
    """Keep holding a job while it waits (for a rate-limit token), without a state change; None if lost."""
    row = connection.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.state == state)
        .values(lease_until=lease_until, updated_at=now)
        .returning(*jobs.c)
    ).first()
    return Job.from_row(row) if row is not None else None


def op_due_for_publish(
    connection: Connection, now: float, republish_before: float, include_queued: bool, limit: int
) -> list[tuple[str, str]]:
    """Jobs whose message may be lost, as (id, state); their publish time is bumped so one sweep takes each."""
    orphaned = sa.and_(jobs.c.state.in_(State.HELD), jobs.c.lease_until < now)
    condition = sa.or_(jobs.c.state == State.QUEUED, orphaned) if include_queued else orphaned
    query = (
        sa.select(jobs.c.id, jobs.c.state)
        .where(condition, sa.or_(jobs.c.published_at.is_(None), jobs.c.published_at < republish_before))
        .order_by(jobs.c.published_at)
        .limit(limit)
    )
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    due = [(row.id, row.state) for row in connection.execute(query)]
    if due:
        connection.execute(jobs.update().where(jobs.c.id.in_([i for i, _ in due])).values(published_at=now))
    return due


def op_record_dead_message(
    connection: Connection, message_id: str | None, reason: str, payload: str | None, now: float
) -> None:
    connection.execute(dead_messages.insert().values(at=now, message_id=message_id, reason=reason, payload=payload))


def op_dead_messages(connection: Connection, limit: int) -> list[dict[str, Any]]:
    query = sa.select(dead_messages).order_by(dead_messages.c.id.desc()).limit(limit)
    return [row._asdict() for row in connection.execute(query)]


def op_take_lease(connection: Connection, name: str, holder: str, now: float, until: float) -> bool:
    """Hold a named lease (e.g. the sweeper's) if it is free, expired, or already ours."""
    _insert_ignoring_conflicts(connection, leases, [{"name": name, "holder": holder, "until": until}], leases.c.name)
    result = connection.execute(
        leases.update()
        .where(leases.c.name == name, sa.or_(leases.c.holder == holder, leases.c.until < now))
        .values(holder=holder, until=until)
    )
    return bool(result.rowcount)


def op_jobs_in_states(connection: Connection, states: Sequence[str], campaign: str | None, limit: int) -> list[Job]:
    query = sa.select(jobs).where(jobs.c.state.in_(states))
    if campaign is not None:
        query = query.where(jobs.c.campaign == campaign)
    query = query.order_by(jobs.c.updated_at.desc()).limit(limit)
    return [Job.from_row(row) for row in connection.execute(query)]


def op_oldest_queued(connection: Connection) -> float | None:
    """When the oldest job still waiting for a worker was created (None when nothing waits)."""
    query = sa.select(sa.func.min(jobs.c.created_at)).where(jobs.c.state == State.QUEUED)
    value = connection.execute(query).scalar()
    return float(value) if value is not None else None


def op_count_by_state(connection: Connection, campaign: str | None) -> dict[str, int]:
    query = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
    if campaign is not None:
        query = query.where(jobs.c.campaign == campaign)
    return {state: int(count) for state, count in connection.execute(query)}


# --- engines --------------------------------------------------------------------------------------------


def _urls(url: str) -> tuple[str, str]:
    """(sync URL, async URL) for a LEDGER_URL such as ``sqlite:///x.db`` or ``postgresql://u@h/db``."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return (
            parsed.set(drivername="sqlite").render_as_string(hide_password=False),
            parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False),
        )
    if backend == "postgresql":
        return (
            parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False),
            parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False),
        )
    raise ValueError(f"LEDGER_URL must be sqlite:///PATH or postgresql://..., not {backend!r}")


def _tune_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers, a busy timeout for concurrent writers, and BEGIN IMMEDIATE so a
    transaction that will write takes the write lock up front instead of failing to upgrade later."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _create_schema(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several processes may start at once; serialise DDL on an advisory lock.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(7247736865)"))
    metadata.create_all(connection, checkfirst=True)
    # create_all adds missing tables but never columns: a ledger made by an older release must be named as
    # such here, not fail later on the first statement that needs a new column.
    inspector = sa.inspect(connection)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in present]
        if missing:
            raise LedgerSchemaError(
                f"the ledger's {table.name} table lacks {', '.join(missing)}: it was created by an older release. "
                "Point LEDGER_URL at a new database (or add the columns) and start again."
            )


def _ensure_sqlite_folder(url: str) -> None:
    database = sa.make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


class SyncLedger:
    """The ledger for synchronous callers: producers, the CLI, reports."""

    def __init__(self, url: str) -> None:
        sync_url, _ = _urls(url)
        self.dialect = sa.make_url(sync_url).get_backend_name()
        if self.dialect == "sqlite":
            _ensure_sqlite_folder(sync_url)
        self._engine = sa.create_engine(sync_url)
        if self.dialect == "sqlite":
            _tune_sqlite(self._engine)
        with self._engine.begin() as connection:
            _create_schema(connection)

    def __repr__(self) -> str:
        return f"SyncLedger({self._engine.url.render_as_string(hide_password=True)!r})"

    def run(self, operation: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        def call(connection: Connection) -> R:
            return operation(connection, *args, **kwargs)

        return self.run_all([call])[0]

    def run_all(self, calls: Sequence[Callable[[Connection], R]]) -> list[R]:
        """Run operations in one transaction. A connection found dead (the server restarted since it was pooled)
        is replaced and the transaction tried once more: no pre-ping round trips on every call."""
        try:
            with self._engine.begin() as connection:
                return _in_one_transaction(connection, calls)
        except sa.exc.DBAPIError as error:
            if not error.connection_invalidated:
                raise
        with self._engine.begin() as connection:
            return _in_one_transaction(connection, calls)

    def create_jobs(self, new_jobs: Sequence[NewJob]) -> list[tuple[Job, bool]]:
        return self.run(op_create_jobs, new_jobs, time.time())

    def get(self, job_id: str) -> Job:
        job = self.run(op_get, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def events(self, job_id: str) -> list[Event]:
        return self.run(op_events, job_id)

    def close(self) -> None:
        self._engine.dispose()


Call = Callable[[Connection], Any]


class Ledger:
    """The ledger for the worker's event loop, with group commit.

    Operations submitted while the loop runs other jobs are gathered and run in ONE transaction (at most
    `MAX_BATCH`, at most `FLUSHES` transactions at a time), each awaiting its own result: begin, commit and the
    round trips around them are paid once per batch instead of once per job. Operations never see each other's
    failures: if any operation in a batch raises (a conflict, a deadlock with another process), the batch is
    rolled back and each operation runs again alone.

    PostgreSQL runs on asyncpg. SQLite runs its synchronous driver on one dedicated thread: SQLite has a single
    writer anyway, and one thread hop per transaction is far cheaper than aiosqlite's hop per call.
    """

    MAX_BATCH = 200
    FLUSHES = 2

    def __init__(self, engine: AsyncEngine | None = None, sync: SyncLedger | None = None) -> None:
        self._engine = engine
        self._sync = sync
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger") if sync else None
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flushing = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, url: str, pool_size: int = FLUSHES + 2) -> Ledger:
        _, async_url = _urls(url)
        if sa.make_url(async_url).get_backend_name() == "sqlite":
            return cls(sync=await asyncio.to_thread(SyncLedger, url))
        # No pre-ping: it costs three round trips per transaction; a connection that died with the server fails
        # its batch, is discarded by the pool, and the task retries (worker.tasks).
        engine = create_async_engine(async_url, pool_size=pool_size, max_overflow=2)
        async with engine.begin() as connection:
            await connection.run_sync(_create_schema)
        return cls(engine=engine)

    def __repr__(self) -> str:
        target = self._engine.url if self._engine is not None else self._sync
        return f"Ledger({target!r})"

    async def run(self, operation: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one operation in a transaction (shared with whatever else is submitted meanwhile)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()

        def call(connection: Connection) -> R:
            return operation(connection, *args, **kwargs)

        self._pending.append((call, future))
        if len(self._pending) == 1:
            loop.call_soon(self._start_flush)  # after this tick: operations submitted in it join the batch
        return await future

    def _start_flush(self) -> None:
        while self._pending and self._flushing < self.FLUSHES:
            batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
            self._flushing += 1
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        calls = [call for call, _ in batch]
        try:
            outcomes = await self._transaction(calls)
        except Exception:
            outcomes = [await self._alone(call) for call in calls]
        finally:
            self._flushing -= 1
            self._start_flush()
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    async def _alone(self, call: Call) -> tuple[bool, Any]:
        try:
            ((_, value),) = await self._transaction([call])
        except Exception as error:
            return False, error
        return True, value

    async def _transaction(self, calls: list[Call]) -> list[tuple[bool, Any]]:
        if self._sync is not None:
            job = functools.partial(self._sync.run_all, calls)
            results = await asyncio.get_running_loop().run_in_executor(self._thread, job)
        else:
            assert self._engine is not None
            async with self._engine.begin() as connection:
                results = await connection.run_sync(_in_one_transaction, calls)
        return [(True, result) for result in results]

    async def get(self, job_id: str) -> Job | None:
        return await self.run(op_get, job_id)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._engine is not None:
            await self._engine.dispose()
        if self._sync is not None and self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._sync.close)
            self._thread.shutdown(wait=False)
