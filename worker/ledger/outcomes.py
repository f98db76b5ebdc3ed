"""Operations for outcome events and operators: dedupe an event, settle a job from it, find unknown jobs, replay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.errors import JobNotFound, ReplayRefused
from worker.ledger.limits import JOB_ID
from worker.ledger.operations import _event, _insert_ignoring_conflicts, op_create_jobs, op_get
from worker.ledger.schema import (
    AWAITING_OUTCOME_STATES,
    REPLAYABLE_STATES,
    EventOutcome,
    Job,
    NewJob,
    State,
    callback_events,
    jobs,
    unindexed_state,
)
from worker.text import can_store


def op_record_event(
    connection: Connection, event_id: str, event_type: str, job_id: str | None, payload: str, now: float
) -> bool:
    """Remember an event by id; False when it was seen before (ACS may deliver an event twice)."""
    row = {"event_id": event_id, "job_id": job_id, "type": event_type, "received_at": now, "payload": payload}
    return bool(_insert_ignoring_conflicts(connection, callback_events, [row], callback_events.c.event_id))


def op_find_job_for_event(
    connection: Connection, call_connection_id: str, operation_context: str | None
) -> tuple[str | None, str | None]:
    """The one job on this call that was sent and still waits for an outcome (matching the operation context if
    given): (its id, None), or (None, why the event matches no job). A job never sent cannot have caused the
    event, and settling it would stop it from ever being sent; between two candidates nothing tells which."""
    query = sa.select(jobs.c.id).where(
        jobs.c.call_connection_id == call_connection_id,
        unindexed_state.in_(AWAITING_OUTCOME_STATES),
        jobs.c.attempts > 0,
    )
    where = f"call {call_connection_id!r}"
    if operation_context is not None:
        query = query.where(jobs.c.operation_context == operation_context)
        where += f" with operation context {operation_context!r}"
    found = list(connection.execute(query.order_by(jobs.c.created_at.desc()).limit(2)).scalars())
    if len(found) == 1:
        return found[0], None
    if not found:
        return None, f"no job sent on {where} is waiting for an outcome"
    return None, f"more than one job sent on {where} is waiting for an outcome; nothing tells which one this is"


def op_apply_outcome(connection: Connection, job_id: str, outcome: EventOutcome, detail: str, now: float) -> Job | None:
    """Settle a job from an outcome event if it is still waiting for one; None otherwise (already settled)."""
    query = sa.select(jobs.c.state).where(jobs.c.id == job_id)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    before = connection.execute(query).scalar()
    if before not in AWAITING_OUTCOME_STATES:
        return None
    row = connection.execute(
        jobs.update()
        .where(jobs.c.id == job_id, unindexed_state == before)
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
    """Create `new_job` as an operator's replay of a failed or dead job, linking the two both ways. The original
    is locked and linked only if it has no replacement yet, in the transaction that creates this one: two
    overlapping replays of one job make one replacement, and the other is refused."""
    query = sa.select(jobs).where(jobs.c.id == original_id)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    row = connection.execute(query).first()
    if row is None:
        raise JobNotFound(f"no job {original_id!r}")
    original = Job.from_row(row)
    if original.state not in REPLAYABLE_STATES or original.replayed_by is not None:
        _refuse_replay(original)
    ((created, _),) = op_create_jobs(connection, [new_job], now)
    detail = f"replayed as {created.id}: {reason}"
    linked = connection.execute(
        jobs.update()
        .where(jobs.c.id == original_id, unindexed_state == original.state, jobs.c.replayed_by.is_(None))
        .values(replayed_by=created.id, reason=detail, updated_at=now)
        .returning(*jobs.c)
    ).first()
    if linked is None:  # moved since it was read: not under the lock, but the link is never overwritten
        _refuse_replay(op_get(connection, original_id) or original)
    _event(connection, original_id, now, original.state, original.state, original.attempts, None, detail)
    return created


def _refuse_replay(original: Job) -> NoReturn:
    replayed = f" (already replayed as {original.replayed_by})" if original.replayed_by else ""
    raise ReplayRefused(f"job {original.id} is {original.state}{replayed}: only failed or dead jobs are replayed")


#: a replacement in these states with no attempt has sent nothing yet (a paced one may hold it, waiting for a
#: token; its attempt starts only from a held state, so moving it stops it)
_UNSENT = (State.QUEUED, State.SENDING)


def op_stop_replacement(connection: Connection, original: Job, now: float) -> tuple[str, Job] | None:
    """After a replayed original turned out transferred: stop its replacement if it sent nothing yet
    (``superseded``), or, if it was sent, flag both jobs for an operator (the call may be transferred twice).
    Returns ("superseded" or "both_sent", the replacement), or None when there is nothing to do.

    A replayed original that turned out ``transfer_failed`` keeps its replacement: that retry is what the
    operator asked for, and the original did not transfer the call."""
    if original.replayed_by is None or original.state != State.TRANSFERRED:
        return None
    replacement = op_get(connection, original.replayed_by)
    if replacement is not None and replacement.attempts == 0 and replacement.state in _UNSENT:
        reason = f"superseded: its original {original.id} turned out transferred after the replay ({original.reason})"
        # Conditional on "nothing sent yet": a worker's claim (which starts the first attempt) and this cannot
        # both win; if the claim did, the replacement was sent and is flagged below.
        row = connection.execute(
            jobs.update()
            .where(jobs.c.id == replacement.id, unindexed_state == replacement.state, jobs.c.attempts == 0)
            .values(state=State.SUPERSEDED, reason=reason, settled_at=now, lease_until=None, updated_at=now)
            .returning(*jobs.c)
        ).first()
        if row is not None:
            _event(connection, replacement.id, now, replacement.state, State.SUPERSEDED, 0, None, reason)
            return "superseded", Job.from_row(row)
        replacement = op_get(connection, replacement.id)
    if replacement is None or replacement.attempts == 0:
        return None  # pruned, or settled some other way without ever being sent: nothing can be doubled
    flag = (
        f"needs an operator: {original.id} turned out transferred after its replay {replacement.id} was sent; "
        "the call may have been transferred twice"
    )
    connection.execute(
        jobs.update().where(jobs.c.id == original.id).values(reason=f"{original.reason}; {flag}", updated_at=now)
    )
    for job in (original, replacement):
        _event(connection, job.id, now, job.state, job.state, job.attempts, None, flag)
    return "both_sent", replacement


def op_replays_sent_twice(connection: Connection, campaign: str | None, limit: int) -> list[Job]:
    """Replayed originals that turned out transferred although their replacement was sent: an operator must
    check whether the call was transferred twice. Derived from the jobs themselves, so no flag can go stale."""
    replacement = jobs.alias("replacement")
    query = sa.select(jobs).where(
        jobs.c.state == State.TRANSFERRED,
        sa.exists().where(replacement.c.id == jobs.c.replayed_by, replacement.c.attempts > 0),
    )
    if campaign is not None:
        query = query.where(jobs.c.campaign == campaign)
    query = query.order_by(jobs.c.updated_at.desc()).limit(limit)
    return [Job.from_row(row) for row in connection.execute(query)]


class JobTiming(NamedTuple):
    call_connection_id: str
    state: str
    attempts: int
    created_at: float
    accepted_at: float | None


def op_job_timings(connection: Connection) -> list[JobTiming]:
    """Every job's call, state, attempts, creation and acceptance time: what the demo checks against ACS."""
    query = sa.select(jobs.c.call_connection_id, jobs.c.state, jobs.c.attempts, jobs.c.created_at, jobs.c.accepted_at)
    return [JobTiming(*row) for row in connection.execute(query)]


@dataclass(frozen=True)
class TransferEvent:
    """The parts of a transfer outcome event the ledger needs."""

    id: str
    type: str
    call_connection_id: str
    operation_context: str | None
    outcome: EventOutcome
    payload: str


@dataclass(frozen=True)
class Received:
    """What one event did: its result, the job it settled or found settled, why it matched no job, and what
    became of a replayed original's replacement ("superseded" or "both_sent")."""

    result: str
    job: Job | None = None
    unmatched_because: str | None = None
    replacement: tuple[str, Job] | None = None


def op_receive(connection: Connection, event: TransferEvent, path_job_id: str | None, now: float) -> Received:
    """Dedupe, correlate and apply one event in one transaction."""
    job_id, unmatched_because = path_job_id, None
    if job_id is not None and (len(job_id) > JOB_ID or not can_store(job_id)):
        job_id, unmatched_because = None, "the URI names no job"  # no job has such an id
    elif job_id is not None:
        job = op_get(connection, job_id)
        if job is None or job.call_connection_id != event.call_connection_id:
            # A URI naming another job (or none): correlate nothing rather than the wrong job.
            job_id, unmatched_because = None, f"the URI names no job on call {event.call_connection_id!r}"
    else:
        job_id, unmatched_because = op_find_job_for_event(connection, event.call_connection_id, event.operation_context)
    if not op_record_event(connection, event.id, event.type, job_id, event.payload, now):
        return Received("duplicate")
    if job_id is None:
        return Received("unmatched", unmatched_because=unmatched_because)
    code = f" (code {event.outcome.code}, subCode {event.outcome.subcode})" if event.outcome.code is not None else ""
    detail = f"{event.type.rsplit('.', 1)[-1]}{code}: {event.outcome.message or 'no message'}"
    settled = op_apply_outcome(connection, job_id, event.outcome, detail, now)
    if settled is None:
        return Received("already_settled", op_get(connection, job_id))
    replacement = op_stop_replacement(connection, settled, now)
    return Received("applied", op_get(connection, job_id) if replacement else settled, replacement=replacement)
