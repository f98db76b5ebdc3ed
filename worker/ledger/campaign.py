"""Campaigns in the ledger: their record (name, pacing), their progress by state, and how fast they settle.

Plain functions over a SQLAlchemy `Connection`, like the ledger's own operations, so producers run them through
`SyncLedger.run` and workers through `Ledger.run`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.ledger import FINAL_STATES, Job, State, campaigns, job_events, jobs
from worker.ledger.operations import dialect_insert

#: the states a job can still leave on its own; a campaign with none of them is settled
ACTIVE = (State.QUEUED, State.SENDING, State.RETRY_WAIT)
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$", re.IGNORECASE)
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """``20``, ``20/s``, ``600/min`` or ``3600/h`` as transfers per second."""
    match = _RATE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate such as 20/s, 600/min or 3600/h")
    unit = (match.group(2) or "s").lower()[0]
    return float(match.group(1)) / _PER[unit]


@dataclass(frozen=True)
class Campaign:
    name: str
    rate: float | None
    source: str | None
    created_at: float
    updated_at: float


def op_save_campaign(connection: Connection, name: str, rate: float | None, source: str | None, now: float) -> Campaign:
    """Create the campaign, or update it: a given rate replaces the stored one, no rate keeps it."""
    insert = dialect_insert(connection, campaigns)
    row = {"name": name, "rate": rate, "source": source, "created_at": now, "updated_at": now}
    connection.execute(insert.on_conflict_do_nothing(), [row])
    changes: dict[str, Any] = {"updated_at": now, "source": source}
    if rate is not None:
        changes["rate"] = rate
    connection.execute(campaigns.update().where(campaigns.c.name == name).values(**changes))
    found = op_get_campaign(connection, name)
    assert found is not None
    return found


def op_get_campaign(connection: Connection, name: str) -> Campaign | None:
    row = connection.execute(sa.select(campaigns).where(campaigns.c.name == name)).first()
    return Campaign(**row._asdict()) if row is not None else None


def op_campaign_rate(connection: Connection, name: str) -> float | None:
    """The campaign's pacing in transfers per second, or None (unpaced, or no such campaign)."""
    rate = connection.execute(sa.select(campaigns.c.rate).where(campaigns.c.name == name)).scalar()
    return float(rate) if rate else None


@dataclass(frozen=True)
class Progress:
    """A campaign's jobs by state, and how many settled in the last `window` seconds."""

    counts: dict[str, int]
    settled_recently: int
    window: float
    #: of the queued jobs, those a paced campaign keeps in the ledger until the dispatcher releases them
    awaiting_dispatch: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def active(self) -> int:
        return sum(self.counts.get(state, 0) for state in ACTIVE)

    @property
    def settled(self) -> int:
        """Jobs the workers are done with (accepted and unknown ones included)."""
        return self.total - self.active

    @property
    def awaiting_outcome(self) -> int:
        """Accepted or unknown: sent, and waiting for the outcome event that makes them final."""
        return self.counts.get(State.ACCEPTED, 0) + self.counts.get(State.UNKNOWN, 0)

    @property
    def final(self) -> int:
        return sum(self.counts.get(state, 0) for state in FINAL_STATES)

    @property
    def rate(self) -> float:
        """Jobs settled per second over the window."""
        return self.settled_recently / self.window if self.window > 0 else 0.0


def op_progress(connection: Connection, name: str, now: float, window: float) -> Progress:
    query = sa.select(jobs.c.state, sa.func.count()).where(jobs.c.campaign == name).group_by(jobs.c.state)
    counts = {str(state): int(count) for state, count in connection.execute(query)}
    # A job settles once: its first move from an active state to any other (later moves, such as an outcome
    # event turning accepted into transferred, are not a second settlement).
    recent = (
        sa.select(sa.func.count(sa.distinct(job_events.c.job_id)))
        .select_from(job_events.join(jobs, jobs.c.id == job_events.c.job_id))
        .where(
            jobs.c.campaign == name,
            job_events.c.at >= now - window,
            job_events.c.from_state.in_(ACTIVE),
            job_events.c.to_state.not_in(ACTIVE),
        )
    )
    awaiting = sa.select(sa.func.count()).where(
        jobs.c.campaign == name, jobs.c.state == State.QUEUED, jobs.c.published_at.is_(None)
    )
    return Progress(
        counts, int(connection.execute(recent).scalar() or 0), window, int(connection.execute(awaiting).scalar() or 0)
    )


def op_campaign_jobs_after(
    connection: Connection, campaign: str, after: tuple[float, str] | None, limit: int
) -> list[Job]:
    """Up to `limit` of a campaign's jobs in creation order, after the (created_at, id) of the last one read."""
    query = sa.select(jobs).where(jobs.c.campaign == campaign)
    if after is not None:
        query = query.where(sa.tuple_(jobs.c.created_at, jobs.c.id) > sa.tuple_(*after))
    query = query.order_by(jobs.c.created_at, jobs.c.id).limit(limit)
    return [Job.from_row(row) for row in connection.execute(query)]
