"""What the dispatcher reads and writes: paced campaigns' jobs that wait in the ledger to be published.

A paced campaign's job is written with no publish time (`op_create_jobs`); the dispatcher releases it, at the
campaign's rate, by giving it one and publishing its message. The sweeper never touches such a job.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.ledger.schema import State, campaigns, jobs, unindexed_state

_AWAITING = sa.and_(jobs.c.state == State.QUEUED, jobs.c.published_at.is_(None))


def op_paced_backlog(connection: Connection) -> list[tuple[str, float]]:
    """Paced campaigns that have jobs awaiting dispatch, as (name, rate per second)."""
    waiting = sa.exists().where(jobs.c.campaign == campaigns.c.name, _AWAITING)
    query = (
        sa.select(campaigns.c.name, campaigns.c.rate).where(campaigns.c.rate > 0, waiting).order_by(campaigns.c.name)
    )
    return [(str(name), float(rate)) for name, rate in connection.execute(query)]


def op_release(
    connection: Connection, campaign: str, count: int, in_queue_cap: int, now: float
) -> list[tuple[str, str]]:
    """Give up to `count` of the campaign's waiting jobs (oldest first) a publish time, keeping at most
    `in_queue_cap` of its jobs published but not yet taken by a worker; returns them as (id, lane)."""
    in_queue = sa.select(sa.func.count()).where(
        jobs.c.campaign == campaign, jobs.c.state == State.QUEUED, jobs.c.published_at.is_not(None)
    )
    room = min(count, in_queue_cap - int(connection.execute(in_queue).scalar() or 0))
    if room <= 0:
        return []
    query = (
        sa.select(jobs.c.id, jobs.c.lane)
        .where(jobs.c.campaign == campaign, _AWAITING)
        .order_by(jobs.c.created_at, jobs.c.id)
        .limit(room)
    )
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    released = [(str(row.id), str(row.lane)) for row in connection.execute(query)]
    if released:
        ids = [job_id for job_id, _ in released]
        connection.execute(
            jobs.update()
            .where(jobs.c.id.in_(ids), unindexed_state == State.QUEUED, jobs.c.published_at.is_(None))
            .values(published_at=now)
        )
    return released


def op_oldest_published(connection: Connection) -> dict[str, float]:
    """Per lane, when the oldest job published but not yet taken by a worker was published."""
    query = (
        sa.select(jobs.c.lane, sa.func.min(jobs.c.published_at))
        .where(jobs.c.state == State.QUEUED, jobs.c.published_at.is_not(None))
        .group_by(jobs.c.lane)
    )
    return {str(lane): float(at) for lane, at in connection.execute(query) if at is not None}
