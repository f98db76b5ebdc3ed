"""The ledger: the job store and the source of truth. The broker only delivers.

    schema      job states, tables, and the values read from them
    operations  what happens to jobs: create, claim, start an attempt, move, sweep, count
    outcomes    outcome events, unknown jobs, an operator's replay
    stores      `SyncLedger` (producers, CLI) and `Ledger` (the worker's loop, group commit) that run them
    campaign    campaigns: their record, pacing, progress, and their jobs in order for reports
    readiness   whether a ledger is there and set up, looked at read-only (the health check)

One code path for SQLite (embedded default) and PostgreSQL (production): each operation is a plain function
over a SQLAlchemy `Connection`, run in a transaction by either store.
"""

from worker.ledger.operations import (
    op_claim,
    op_count_by_state,
    op_create_jobs,
    op_dead_messages,
    op_due_for_publish,
    op_events,
    op_extend_lease,
    op_get,
    op_jobs_in_states,
    op_oldest_queued,
    op_prune,
    op_record_answer,
    op_record_dead_message,
    op_start_attempt,
    op_take_lease,
    op_transition,
)
from worker.ledger.outcomes import (
    op_apply_outcome,
    op_find_job_for_event,
    op_record_event,
    op_replay,
    op_replays_sent_twice,
    op_stop_replacement,
    op_unknown_older_than,
)
from worker.ledger.schema import (
    AWAITING_OUTCOME_STATES,
    FINAL_STATES,
    HELD_STATES,
    REPLAYABLE_STATES,
    SETTLED_STATES,
    Event,
    EventOutcome,
    Job,
    Lane,
    NewJob,
    State,
    body_hash,
    callback_events,
    campaigns,
    dead_messages,
    job_events,
    jobs,
    leases,
    metadata,
)
from worker.ledger.stores import LEDGER_ERRORS, Ledger, SyncLedger

__all__ = [
    "AWAITING_OUTCOME_STATES",
    "FINAL_STATES",
    "HELD_STATES",
    "LEDGER_ERRORS",
    "REPLAYABLE_STATES",
    "SETTLED_STATES",
    "Event",
    "EventOutcome",
    "Job",
    "Lane",
    "Ledger",
    "NewJob",
    "State",
    "SyncLedger",
    "body_hash",
    "callback_events",
    "campaigns",
    "dead_messages",
    "job_events",
    "jobs",
    "leases",
    "metadata",
    "op_apply_outcome",
    "op_claim",
    "op_count_by_state",
    "op_create_jobs",
    "op_dead_messages",
    "op_due_for_publish",
    "op_events",
    "op_extend_lease",
    "op_find_job_for_event",
    "op_get",
    "op_jobs_in_states",
    "op_oldest_queued",
    "op_prune",
    "op_record_answer",
    "op_record_dead_message",
    "op_record_event",
    "op_replay",
    "op_replays_sent_twice",
    "op_start_attempt",
    "op_stop_replacement",
    "op_take_lease",
    "op_transition",
    "op_unknown_older_than",
]
