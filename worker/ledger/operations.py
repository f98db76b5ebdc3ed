"""Operations on jobs: plain functions over a SQLAlchemy `Connection`, each run in a transaction by a store.

Claiming is a conditional UPDATE: a job is taken only if it is queued, or if the worker that held it let its
lease run out (it died). Two deliveries of one message therefore never send concurrently. Every state change
also appends a row to `job_events`, so a job's history is always complete.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from worker.errors import IdempotencyConflict
from worker.ledger.schema import (
    FINAL_STATES,
    HELD_STATES,
    Event,
    Job,
    NewJob,
    State,
    body_hash,
    callback_events,
    campaigns,
    dead_messages,
    job_events,
    jobs,
    leases,
    unindexed_state,
)

R = TypeVar("R")


def dialect_insert(connection: Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with the connection's dialect's ON CONFLICT clauses: the one place the two dialects differ here."""
    return (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(table)


def _rows_insert(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
) -> tuple[postgresql.Insert | sqlite.Insert, Any]:
    """An INSERT of `rows` (each with the same keys) and its parameters.

    On PostgreSQL the rows go as one JSON document that the server turns into rows of the table: one short
    statement and one parameter whatever the number of rows. A multi-row VALUES has a parameter per cell, and
    the driver parses it anew for each batch (a third of `submit`'s time at 1,000 rows a batch)."""
    if connection.dialect.name != "postgresql" or len(rows) < 2:
        return dialect_insert(connection, table), list(rows)
    return _json_insert(table, tuple(rows[0])), {"p_rows": list(rows)}


@functools.cache
def _json_insert(table: sa.Table, names: tuple[str, ...]) -> postgresql.Insert:
    rows = sa.bindparam("p_rows", type_=postgresql.JSON)
    source = sa.func.json_populate_recordset(sa.literal_column(f"NULL::{table.name}"), rows).table_valued(*names)
    return postgresql.insert(table).from_select(list(names), sa.select(*source.c))


def _insert_ignoring_conflicts(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], returning: sa.Column[Any]
) -> set[Any]:
    """Insert the rows that conflict with no unique key; return `returning` of those inserted."""
    insert, parameters = _rows_insert(connection, table, rows)
    result = connection.execute(insert.on_conflict_do_nothing().returning(returning), parameters)
    return set(result.scalars().all())


# Hot-path statements are built once: building and cache-keying a statement costs more than running it.
_bp = sa.bindparam
_INSERT_EVENT = job_events.insert()
_SELECT_JOB = sa.select(jobs).where(jobs.c.id == _bp("p_id"))
_SELECT_STATE = sa.select(jobs.c.state).where(jobs.c.id == _bp("p_id"))
_CLAIM_QUEUED = (
    jobs.update()
    .where(jobs.c.id == _bp("p_id"), unindexed_state == State.QUEUED)
    .values(state=State.SENDING, worker=_bp("p_worker"), lease_until=_bp("p_lease"), updated_at=_bp("p_now"))
    .returning(*jobs.c)
)
# A queued job's first attempt starts with its claim (First-Sent committed with it, before the request) when no
# global rate-limit token is needed (a campaign's pace was kept before its job was published).
_CLAIM_QUEUED_AND_START = (
    jobs.update()
    .where(jobs.c.id == _bp("p_id"), unindexed_state == State.QUEUED)
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
# A holder whose lease expired while `sending` had started an attempt whose answer nobody recorded: its effect
# is unknown from now on (SET sees the row as it was).
_UNANSWERED_ATTEMPT = sa.case(
    (
        sa.and_(jobs.c.state == State.SENDING, jobs.c.attempts > 0),
        "attempt " + sa.cast(jobs.c.attempts, sa.Text) + " got no recorded answer before its worker's lease expired",
    ),
)
_CLAIM_ORPHAN = (
    jobs.update()
    .where(jobs.c.id == _bp("p_id"), unindexed_state.in_(HELD_STATES), jobs.c.lease_until < _bp("p_now"))
    .values(
        state=State.SENDING,
        worker=_bp("p_worker"),
        lease_until=_bp("p_lease"),
        updated_at=_bp("p_now"),
        effect_unknown=sa.func.coalesce(jobs.c.effect_unknown, _UNANSWERED_ATTEMPT),
    )
    .returning(*jobs.c)
)
_START_ATTEMPT = (
    jobs.update()
    .where(
        jobs.c.id == _bp("p_id"),
        jobs.c.worker == _bp("p_worker"),
        unindexed_state == _bp("p_from"),
        # Only a held job is sent: a settled one (an outcome event may settle it under its holder) never again.
        unindexed_state.in_(HELD_STATES),
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
    "effect_unknown": sa.func.coalesce(jobs.c.effect_unknown, _bp("p_effect_unknown", type_=sa.Text)),
}
_TRANSITION = (
    jobs.update()
    .where(jobs.c.id == _bp("p_id"), unindexed_state == _bp("p_from"))
    .values(**_TRANSITION_VALUES)
    .returning(*jobs.c)
)
_TRANSITION_HELD = (
    jobs.update()
    .where(jobs.c.id == _bp("p_id"), unindexed_state == _bp("p_from"), jobs.c.worker == _bp("p_worker"))
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
    # Taken once, while the connection is alive: the cleanup must not touch a connection that dropped (that
    # raises PendingRollbackError over the real disconnect, which callers would not know to retry).
    info = connection.info
    info[_DEFERRED_EVENTS] = events
    try:
        results = [call(connection) for call in calls]
    finally:
        info.pop(_DEFERRED_EVENTS, None)
    if events:
        connection.execute(*_rows_insert(connection, job_events, events))
    return results


def op_create_jobs(connection: Connection, new_jobs: Sequence[NewJob], now: float) -> list[tuple[Job, bool]]:
    """Insert jobs that do not exist yet (by id or idempotency key); return each job and whether it is new."""
    held = _paced_campaigns(connection, {job.campaign for job in new_jobs if job.campaign is not None})
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
            "lane": job.lane,
            # A paced campaign's job is published by the dispatcher, at the campaign's rate: not yet.
            "published_at": None if job.campaign in held else now,
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
        if job.identity != new.identity:
            key = new.idempotency_key or new.id
            what = "another call" if job.call_connection_id != new.call_connection_id else "a different request"
            raise IdempotencyConflict(
                f"idempotency key {key!r} already names job {job.id} for {what}; use a new key for a new transfer"
            )
        created = job.id == new.id and job.id in inserted and job.id not in created_ids
        if created:
            created_ids.append(job.id)
        results.append((job, created))
    for job_id in created_ids:
        _event(connection, job_id, now, None, State.QUEUED)
    return results


def _paced_campaigns(connection: Connection, names: set[str]) -> set[str]:
    if not names:
        return set()
    query = sa.select(campaigns.c.name).where(campaigns.c.name.in_(names), campaigns.c.rate > 0)
    return set(connection.execute(query).scalars())


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
    worker holds it, it is settled, or it does not exist. With `first_sent`, a queued job
    starts its first attempt in the same write (attempts 1, First-Sent fixed)."""
    params = {"p_id": job_id, "p_worker": worker, "p_now": now, "p_lease": lease_until, "p_first_sent": first_sent}
    row = None if first_sent is None else connection.execute(_CLAIM_QUEUED_AND_START, params).first()
    if row is None:
        row = connection.execute(_CLAIM_QUEUED, params).first()
    before: str | None = State.QUEUED
    if row is None:
        before = connection.execute(_SELECT_STATE, {"p_id": job_id}).scalar()
        if before not in HELD_STATES:
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


def _transition_params(
    job_id: str,
    to_state: str,
    now: float,
    lease_until: float | None,
    status: int | None,
    error: str | None,
    message: str | None,
    detail: str | None,
    effect_unknown: str | None,
) -> dict[str, Any]:
    """The values of `_TRANSITION_VALUES` for a move to `to_state`."""
    return {
        "p_id": job_id,
        "p_to": to_state,
        "p_lease": lease_until,
        "p_now": now,
        "p_status": status,
        "p_error": error,
        "p_message": message,
        "p_accepted_at": now if to_state == State.ACCEPTED else None,
        "p_reason": detail or message,
        "p_settled_at": now if to_state in FINAL_STATES else None,
        "p_effect_unknown": effect_unknown,
    }


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
    effect_unknown: str | None = None,
) -> Job | None:
    """Move a job from `from_state` to `to_state`, only if it is still there (and held by `worker`, if given).
    The last answer (status, error, message) is kept unless new values are given; `detail` says why the job
    is where it is now and is kept as its reason. `effect_unknown` names an answer that left the attempt's
    effect unknown (the first one is kept)."""
    params = _transition_params(job_id, to_state, now, lease_until, status, error, message, detail, effect_unknown)
    params.update(p_from=from_state, p_worker=worker)
    row = connection.execute(_TRANSITION if worker is None else _TRANSITION_HELD, params).first()
    if row is None:
        return None
    job = Job.from_row(row)
    _event(connection, job_id, now, from_state, to_state, job.attempts, status, detail or message)
    return job


_SELECT_JOB_FOR_ANSWER = (
    sa.select(jobs).where(jobs.c.id == _bp("p_id"), jobs.c.request_id == _bp("p_request_id")).with_for_update()
)
#: states a definite answer may still settle: held (by its worker, or by another after that one stalled past its
#: lease), or given up on as unknown or dead. Never accepted or final.
_ANSWERABLE = HELD_STATES | {State.UNKNOWN, State.DEAD}
# The common case in one statement: the answer reached the worker that sent it, which still holds the job, and a
# 4xx follows no attempt of unknown effect. It moves the job as the general path below would, without reading
# it first.
_ANSWER_TO_SENDER = (
    jobs.update()
    .where(
        jobs.c.id == _bp("p_id"),
        jobs.c.request_id == _bp("p_request_id"),
        jobs.c.worker == _bp("p_worker"),
        unindexed_state == State.SENDING,
        jobs.c.settled_at.is_(None),  # never true of a held job; if it were, the general path clears it
    )
    .values(**_TRANSITION_VALUES)
    .returning(*jobs.c)
)
_DEFINITE_ANSWER_TO_SENDER = _ANSWER_TO_SENDER.where(jobs.c.effect_unknown.is_(None))


def op_record_answer(
    connection: Connection,
    job_id: str,
    request_id: str,
    worker: str,
    to_state: str,
    now: float,
    *,
    status: int | None,
    error: str | None,
    message: str,
    detail: str,
) -> tuple[Job, str | None] | None:
    """Write a definite answer (202: accepted, 4xx: failed) to the job's own request: (the job, the state it
    left, or None when it stayed), or None when there is no such job.

    What ACS answered is true whoever holds the job now: it settles a job another worker took over after this
    one stalled past its lease, and an unknown or dead job; an accepted or final job keeps its state. A 4xx after
    an attempt whose effect is unknown proves nothing (ACS executes a request again after a 5xx, and a call that
    already moved answers 404): the job becomes unknown with both answers in its reason (an unknown or dead job
    stays as it is, the answer added to its history)."""
    if to_state in (State.ACCEPTED, State.FAILED):
        params = _transition_params(job_id, to_state, now, None, status, error, message, detail, None)
        params.update(p_request_id=request_id, p_worker=worker)
        statement = _ANSWER_TO_SENDER if to_state == State.ACCEPTED else _DEFINITE_ANSWER_TO_SENDER
        row = connection.execute(statement, params).first()
        if row is not None:
            job = Job.from_row(row)
            _event(connection, job_id, now, State.SENDING, to_state, job.attempts, status, detail or message)
            return job, State.SENDING
    row = connection.execute(_SELECT_JOB_FOR_ANSWER, {"p_id": job_id, "p_request_id": request_id}).first()
    if row is None:
        return None
    job = Job.from_row(row)
    if job.state not in _ANSWERABLE:
        return job, None
    state, why = to_state, detail
    if to_state == State.FAILED and job.effect_unknown is not None:
        state = State.UNKNOWN
        why = (
            f"{message} after an earlier attempt whose effect is unknown ({job.effect_unknown}): ACS executes a "
            "request again after a 5xx, so the transfer may have happened; an outcome event settles it"
        )
        if job.state in (State.UNKNOWN, State.DEAD):
            _event(connection, job_id, now, job.state, job.state, job.attempts, status, why)
            return job, None
    if job.state not in HELD_STATES or job.worker != worker:
        holder = f" held by {job.worker}" if job.state in HELD_STATES else ""
        why = f"{why}; the answer reached {worker} after the job was {job.state}{holder}"
    moved = op_transition(
        connection, job_id, None, job.state, state, now, status=status, error=error, message=message, detail=why
    )
    if moved is None:
        return job, None
    if moved.settled_at is not None and state not in FINAL_STATES:
        # A dead job accepted after all: it is waiting for its outcome again, not settled.
        row = connection.execute(
            jobs.update().where(jobs.c.id == job_id).values(settled_at=None).returning(*jobs.c)
        ).one()
        moved = Job.from_row(row)
    return moved, job.state


def op_extend_lease(
    connection: Connection, job_id: str, worker: str, state: str, lease_until: float, now: float
) -> Job | None:
    """Keep holding a job while it waits (for a rate-limit token), without a state change; None if lost."""
    row = connection.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.worker == worker, unindexed_state == state)
        .values(lease_until=lease_until, updated_at=now)
        .returning(*jobs.c)
    ).first()
    return Job.from_row(row) if row is not None else None


def op_due_for_publish(
    connection: Connection,
    now: float,
    published_before: float,
    backlogs: Sequence[tuple[Sequence[str], int | None]],
    limit: int,
    suspects: Collection[str] = (),
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Jobs whose message may be lost, oldest first, as (id, state, lane), and the new suspects.

    Held jobs whose lease ran out are due at once. A queued job published before `published_before` is missing
    when its queue holds fewer messages than its lanes have queued jobs: `backlogs` gives, per queue, its lanes
    and the messages waiting in it (None: the broker cannot tell, so none of its queued jobs is taken for lost),
    and only the shortfall is taken (the oldest), so a deep backlog is never published twice over. A message a
    worker has received but not yet claimed is not waiting either, so a missing job is due only if it was
    among the `suspects` (the previous pass's missing jobs); the others are returned as the next suspects. Jobs
    awaiting their dispatch (never published) are the dispatcher's. Due jobs' publish time is bumped so one
    sweep takes each."""
    orphaned = sa.and_(jobs.c.state.in_(HELD_STATES), jobs.c.lease_until < now, jobs.c.published_at < published_before)
    due = [(row.id, row.state, row.lane) for row in connection.execute(_oldest(connection, orphaned, limit))]
    new_suspects: list[str] = []
    for lanes, depth in backlogs:
        room = limit - len(due)
        if depth is None or room <= 0:
            continue
        in_lanes = sa.and_(jobs.c.state == State.QUEUED, jobs.c.lane.in_(lanes))
        if depth > 0:
            queued = connection.execute(
                sa.select(sa.func.count()).where(in_lanes, jobs.c.published_at.is_not(None))
            ).scalar_one()
            room = min(room, queued - depth)
        if room > 0:
            waiting = sa.and_(in_lanes, jobs.c.published_at < published_before)
            for row in connection.execute(_oldest(connection, waiting, room)):
                if row.id in suspects:
                    due.append((row.id, row.state, row.lane))
                else:
                    new_suspects.append(row.id)
    if due:
        connection.execute(jobs.update().where(jobs.c.id.in_([i for i, _, _ in due])).values(published_at=now))
    return due, new_suspects


def _oldest(connection: Connection, where: sa.ColumnElement[bool], limit: int) -> sa.Select[Any]:
    query = sa.select(jobs.c.id, jobs.c.state, jobs.c.lane).where(where).order_by(jobs.c.published_at).limit(limit)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return query


def op_record_dead_message(
    connection: Connection, message_id: str | None, reason: str, payload: str | None, now: float
) -> None:
    connection.execute(dead_messages.insert().values(at=now, message_id=message_id, reason=reason, payload=payload))


def op_dead_messages(connection: Connection, limit: int) -> list[dict[str, Any]]:
    query = sa.select(dead_messages).order_by(dead_messages.c.id.desc()).limit(limit)
    return [row._asdict() for row in connection.execute(query)]


def op_dead_message(connection: Connection, message_id: int) -> dict[str, Any] | None:
    row = connection.execute(sa.select(dead_messages).where(dead_messages.c.id == message_id)).first()
    return row._asdict() if row is not None else None


def op_take_lease(connection: Connection, name: str, holder: str, now: float, until: float) -> bool:
    """Hold a named lease (e.g. the sweeper's) if it is free, expired, or already ours."""
    _insert_ignoring_conflicts(connection, leases, [{"name": name, "holder": holder, "until": until}], leases.c.name)
    result = connection.execute(
        leases.update()
        .where(leases.c.name == name, sa.or_(leases.c.holder == holder, leases.c.until < now))
        .values(holder=holder, until=until)
    )
    return bool(result.rowcount)


#: jobs nothing will happen to any more without an operator (accepted: no outcome event came in time)
PRUNABLE = FINAL_STATES | {State.ACCEPTED}


def op_prune(connection: Connection, before: float, limit: int) -> int:
    """Delete up to `limit` finished jobs last changed before `before`, with their history and events."""
    old = (
        sa.select(jobs.c.id)
        .where(jobs.c.state.in_(PRUNABLE), jobs.c.updated_at < before)
        .order_by(jobs.c.updated_at, jobs.c.id)
        .limit(limit)
    )
    # Lock the rows first (PostgreSQL; SQLite's writer lock does the same) so that a late outcome event cannot
    # move one of them while the deletes below select them again. The deletes take the selection as a subquery,
    # not a list of ids: one statement text whatever the count, so prepared-statement caches hold one entry.
    pruned = len(connection.execute(old.with_for_update()).all())
    if pruned:
        connection.execute(job_events.delete().where(job_events.c.job_id.in_(old)))
        connection.execute(callback_events.delete().where(callback_events.c.job_id.in_(old)))
        connection.execute(jobs.delete().where(jobs.c.id.in_(old)))
    connection.execute(dead_messages.delete().where(dead_messages.c.at < before))
    return pruned


def op_jobs_in_states(connection: Connection, states: Collection[str], campaign: str | None, limit: int) -> list[Job]:
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
