"""The ledger's tables and the values read from them: job states, jobs, history rows, outcomes."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


class State(enum.StrEnum):
    """Job states. ``queued → sending → accepted``; side exits ``retry_wait``, ``failed``, ``unknown``, ``dead``,
    and ``superseded``: a replay never sent because its original turned out transferred after all.
    Iterating `State` gives every state in this order."""

    QUEUED = "queued"
    SENDING = "sending"
    RETRY_WAIT = "retry_wait"
    ACCEPTED = "accepted"
    TRANSFERRED = "transferred"
    TRANSFER_FAILED = "transfer_failed"
    FAILED = "failed"
    UNKNOWN = "unknown"
    DEAD = "dead"
    SUPERSEDED = "superseded"


def _group(*states: State) -> frozenset[str]:
    # Module-level frozensets of plain `str`: the hot path asks `job.state in HELD_STATES` for every job, with the
    # `str` read from a row. On Python 3.11 an attribute of an enum class costs ~0.1 µs (EnumType.__getattr__),
    # and a set of exact `str` answers a `str` faster than a set of members does.
    return frozenset(state.value for state in states)


#: a worker holds the job (under a lease)
HELD_STATES = _group(State.SENDING, State.RETRY_WAIT)
#: no worker will touch the job again on its own
SETTLED_STATES = _group(
    State.ACCEPTED, State.TRANSFERRED, State.TRANSFER_FAILED, State.FAILED, State.UNKNOWN, State.DEAD, State.SUPERSEDED
)
#: the outcome is known for good: only an operator's replay starts anything new
FINAL_STATES = _group(State.TRANSFERRED, State.TRANSFER_FAILED, State.FAILED, State.DEAD, State.SUPERSEDED)
#: states an outcome event may settle (it can arrive before the 202 is recorded, or after the job went dead)
AWAITING_OUTCOME_STATES = _group(
    State.QUEUED, State.SENDING, State.RETRY_WAIT, State.ACCEPTED, State.UNKNOWN, State.DEAD
)
#: what an operator may replay
REPLAYABLE_STATES = _group(State.FAILED, State.DEAD)


class Lane:
    """The two lanes a job travels in: live work (one transfer a caller waits for) goes before bulk work."""

    LIVE = "live"
    BULK = "bulk"

    ALL = (LIVE, BULK)


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
    # The first answer (or takeover) that left an attempt's effect unknown; NULL while every answer was definite.
    # A later 4xx then proves nothing (ACS executes a request again after a 5xx): the job becomes unknown.
    sa.Column("effect_unknown", sa.Text),
    # What ACS reported in the outcome event (resultInformation), and when the job reached a final state.
    sa.Column("operation_context", sa.Text),
    sa.Column("result_code", sa.Integer),
    sa.Column("result_subcode", sa.Integer),
    sa.Column("result_message", sa.Text),
    sa.Column("settled_at", sa.Float),
    # An operator's replay: the new job points at the original and the original at its replacement.
    sa.Column("replay_of", sa.String(64)),
    sa.Column("replayed_by", sa.String(64)),
    # The lane the job's messages go to; published_at is NULL while a paced campaign's job awaits its dispatch.
    sa.Column("lane", sa.String(10), nullable=False, server_default=Lane.LIVE),
    sa.Index("ix_jobs_state_published", "state", "published_at"),
    sa.Index("ix_jobs_campaign_state", "campaign", "state", "published_at"),
    sa.Index("ix_jobs_call", "call_connection_id"),
)

#: A job's state as statements that find jobs by id (or call) compare it: an expression, so no index on state can
#: serve them. PostgreSQL keeps a generic plan per prepared statement (asyncpg prepares each one), replanned only
#: after ANALYZE; planned while the table was near empty, a claim found its job by scanning every job in its
#: state: a 100,000-row campaign's claims read 4.6 billion index entries with autovacuum off.
unindexed_state = jobs.c.state.concat(sa.literal_column("''"))

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
    effect_unknown: str | None
    operation_context: str | None
    result_code: int | None
    result_subcode: int | None
    result_message: str | None
    settled_at: float | None
    replay_of: str | None
    replayed_by: str | None
    lane: str = Lane.LIVE

    @property
    def identity(self) -> tuple[str, str]:
        """What the job asks for: the call and the exact body (see `NewJob.identity`)."""
        return self.call_connection_id, self.body_hash

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Job:
        """A job from a row of `jobs`, which has every field. Filled directly: the frozen `__init__` sets its 27
        fields one `object.__setattr__` at a time, and the worker reads several jobs per transfer."""
        job = object.__new__(cls)
        job.__dict__.update(row._mapping)
        return job

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
    lane: str = Lane.LIVE

    @property
    def identity(self) -> tuple[str, str]:
        """What the job asks for: the call (not part of the body: it is in the URL) and the exact body. An
        idempotency key names one transfer, so the same key with another identity is a conflict."""
        return self.call_connection_id, body_hash(self.body)


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


@dataclass(frozen=True)
class EventOutcome:
    """What an outcome event means for a job: the final state and ACS's resultInformation."""

    state: str
    code: int | None
    subcode: int | None
    message: str | None
