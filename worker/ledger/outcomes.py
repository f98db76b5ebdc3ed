"""Operations for outcome events and operators: dedupe an event, settle a job from it, find unknown jobs, replay."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.errors import JobNotFound, ReplayRefused
from worker.ledger.operations import _event, _insert_ignoring_conflicts, op_create_jobs, op_get
from worker.ledger.schema import Job, NewJob, Outcome, State, callback_events, jobs


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
