"""The ledger on both backends: idempotent creation, exclusive claims, leases, transitions with history."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import uuid
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.errors import IdempotencyConflict, JobNotFound, LedgerSchemaError
from worker.ledger import (
    Ledger,
    NewJob,
    State,
    SyncLedger,
    jobs,
    op_claim,
    op_count_by_state,
    op_due_for_publish,
    op_events,
    op_get,
    op_prune,
    op_record_answer,
    op_start_attempt,
    op_take_lease,
    op_transition,
)
from worker.request.job import prepare_job
from worker.request.models import parse_transfer


def _job(call: str = "call-1", key: str | None = None, target: str = "4:+15551230000") -> NewJob:
    request = parse_transfer({"callConnectionId": call, "targetParticipant": target})
    return prepare_job(request, idempotency_key=key)


def test_create_is_idempotent_on_key_and_keeps_the_body(ledger_url: str) -> None:
    ledger = SyncLedger(ledger_url)
    first = _job(key="crm-1")
    ((job, created),) = ledger.create_jobs([first])
    assert created
    assert job.state == State.QUEUED
    assert job.body.encode() == first.body
    again = _job(key="crm-1")  # a new job id, the same key
    ((existing, created_again),) = ledger.create_jobs([again])
    assert not created_again
    assert existing.id == job.id
    assert existing.request_id == job.request_id == first.request_id
    assert ledger.run(op_count_by_state, None) == {State.QUEUED: 1}
    ledger.close()


def test_a_batch_of_jobs_is_stored_exactly_as_returned(ledger_url: str) -> None:
    # A batch is written in one statement (on PostgreSQL, its rows as one JSON document) and the jobs it returns
    # are not read back: every value must arrive unchanged, and each job gets its one history row.
    contexts = ['quote " backslash \\ slash /', "accents é ß, CJK 中文, emoji 😀", '{"json": [1, 2]}', "x" * 5000]
    new_jobs = []
    for index, context in enumerate(contexts):
        request = {"callConnectionId": f"call-{index}", "targetParticipant": "4:+15551230000"}
        headers = {"sipHeaders": {"X-MS-Custom-T": context[:256]}}
        request |= {"operationContext": context, "customCallingContext": headers}
        new_jobs.append(prepare_job(parse_transfer(request), idempotency_key=f"key-{index}-{context[:20]}"))
    ledger = SyncLedger(ledger_url)
    returned = ledger.create_jobs(new_jobs)
    assert [created for _, created in returned] == [True] * len(contexts)
    for (job, _), new in zip(returned, new_jobs, strict=True):
        assert ledger.get(job.id) == job
        assert job.body.encode() == new.body
        assert job.operation_context == new.operation_context
        assert [(event.from_state, event.to_state) for event in ledger.events(job.id)] == [(None, State.QUEUED)]
    ledger.close()


def test_same_key_with_a_different_request_is_a_conflict(ledger_url: str) -> None:
    ledger = SyncLedger(ledger_url)
    ledger.create_jobs([_job(key="crm-2")])
    with pytest.raises(IdempotencyConflict, match="crm-2"):
        ledger.create_jobs([_job(key="crm-2", target="4:+15559990000")])
    assert ledger.run(op_count_by_state, None) == {State.QUEUED: 1}
    ledger.close()


def test_same_key_for_another_call_is_a_conflict(ledger_url: str) -> None:
    # The call is not in the body (it is in the URL): the key must still name one transfer, not one body.
    ledger = SyncLedger(ledger_url)
    ((first, _),) = ledger.create_jobs([_job("call-A", key="k1")])
    with pytest.raises(IdempotencyConflict, match=r"'k1' already names job .* for another call"):
        ledger.create_jobs([_job("call-B", key="k1")])
    with pytest.raises(IdempotencyConflict, match="k2"):
        ledger.create_jobs([_job("call-A", key="k2"), _job("call-B", key="k2")])  # both in one batch
    assert ledger.run(op_count_by_state, None) == {State.QUEUED: 1}
    assert ledger.get(first.id).call_connection_id == "call-A"
    ledger.close()


def test_a_row_written_before_the_call_was_compared_is_still_matched(ledger_url: str) -> None:
    # body_hash has always covered the body alone; the call is compared from its own column, so a ledger
    # written by an earlier release needs no migration and its jobs still match their own key.
    ledger = SyncLedger(ledger_url)
    new = _job("call-A", key="old-1")
    ((job, _),) = ledger.create_jobs([new])
    assert job.body_hash == hashlib.sha256(new.body).hexdigest()
    ((again, created),) = ledger.create_jobs([_job("call-A", key="old-1")])
    assert (again.id, created) == (job.id, False)
    ledger.close()


def test_batch_create_reports_which_rows_are_new(ledger_url: str) -> None:
    ledger = SyncLedger(ledger_url)
    ledger.create_jobs([_job("a", key="k-a")])
    results = ledger.create_jobs([_job("a", key="k-a"), _job("b", key="k-b"), _job("c")])
    assert [created for _, created in results] == [False, True, True]
    assert len({job.id for job, _ in results}) == 3
    ledger.close()


async def test_both_stores_find_none_and_get_raises_for_a_missing_job(ledger_url: str) -> None:
    missing = str(uuid.uuid4())
    sync = SyncLedger(ledger_url)
    ((job, _),) = sync.create_jobs([_job()])
    ledger = await Ledger.open(ledger_url)
    try:
        assert sync.find(missing) is None
        assert await ledger.find(missing) is None
        with pytest.raises(JobNotFound):
            sync.get(missing)
        with pytest.raises(JobNotFound):
            await ledger.get(missing)
        assert sync.get(job.id) == sync.find(job.id) == await ledger.get(job.id) == await ledger.find(job.id)
    finally:
        await ledger.close()
        sync.close()


async def test_claim_is_exclusive_until_the_lease_expires(ledger_url: str) -> None:
    sync = SyncLedger(ledger_url)
    ((job, _),) = sync.create_jobs([_job()])
    ledger = await Ledger.open(ledger_url)
    now = 1_000_000.0
    results = await asyncio.gather(*(ledger.run(op_claim, job.id, f"w{index}", now, now + 30) for index in range(8)))
    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    claimed, before = winners[0]
    assert before == State.QUEUED
    assert claimed.state == State.SENDING
    # Still leased: nobody else can take it.
    assert await ledger.run(op_claim, job.id, "late", now + 29, now + 60) is None
    # Lease ran out (the holder died): another worker takes over.
    taken = await ledger.run(op_claim, job.id, "rescuer", now + 31, now + 61)
    assert taken is not None
    assert taken[0].worker == "rescuer"
    await ledger.close()
    sync.close()


async def test_first_sent_is_fixed_by_the_first_attempt(ledger_url: str) -> None:
    sync = SyncLedger(ledger_url)
    ((job, _),) = sync.create_jobs([_job()])
    ledger = await Ledger.open(ledger_url)
    await ledger.run(op_claim, job.id, "w", 100.0, 130.0)
    first = await ledger.run(op_start_attempt, job.id, "w", State.SENDING, 1, 100, 100.0, 140.0)
    assert first is not None
    assert first.first_sent == 100
    assert first.attempts == 1
    second = await ledger.run(op_start_attempt, job.id, "w", State.SENDING, 2, 175, 175.0, 215.0)
    assert second is not None
    assert second.first_sent == 100
    assert second.attempts == 2
    # A worker that lost the job cannot start an attempt on it.
    assert await ledger.run(op_start_attempt, job.id, "other", State.SENDING, 3, 180, 180.0, 220.0) is None
    await ledger.close()
    sync.close()


async def test_every_transition_is_recorded_once(ledger_url: str) -> None:
    sync = SyncLedger(ledger_url)
    ((job, _),) = sync.create_jobs([_job()])
    ledger = await Ledger.open(ledger_url)
    await ledger.run(op_claim, job.id, "w", 10.0, 40.0)
    await ledger.run(op_start_attempt, job.id, "w", State.SENDING, 1, 10, 10.0, 50.0)
    await ledger.run(
        op_transition, job.id, "w", State.SENDING, State.RETRY_WAIT, 11.0, lease_until=60.0, status=503, error="x"
    )
    await ledger.run(op_start_attempt, job.id, "w", State.RETRY_WAIT, 2, 12, 12.0, 50.0)
    done = await ledger.run(op_transition, job.id, "w", State.SENDING, State.ACCEPTED, 13.0, status=202)
    assert done is not None
    assert done.state == State.ACCEPTED
    assert done.accepted_at == 13.0
    # A settled job cannot be moved by a stale holder.
    assert await ledger.run(op_transition, job.id, "w", State.SENDING, State.FAILED, 14.0) is None
    events = await ledger.run(op_events, job.id)
    assert [(e.from_state, e.to_state) for e in events] == [
        (None, State.QUEUED),
        (State.QUEUED, State.SENDING),
        (State.SENDING, State.RETRY_WAIT),
        (State.RETRY_WAIT, State.SENDING),
        (State.SENDING, State.ACCEPTED),
    ]
    assert events[2].status == 503
    await ledger.close()
    sync.close()


async def test_a_job_a_worker_claims_between_two_sweeps_is_not_published_again(ledger_url: str) -> None:
    # Its queue is empty, but its message was at a worker: the first sweep only suspects it, and by the second the
    # worker has claimed it. Re-publishing on the first sight would put a second message behind every in-flight job.
    sync = SyncLedger(ledger_url)
    ((job, _),) = sync.create_jobs([_job("in-flight")])
    ledger = await Ledger.open(ledger_url)
    later = job.created_at + 100
    empty = [(("live",), 0), (("bulk",), 0)]
    assert await ledger.run(op_due_for_publish, later, later - 30, empty, 100) == ([], [job.id])
    assert await ledger.run(op_claim, job.id, "worker", later, later + 30) is not None
    assert await ledger.run(op_due_for_publish, later + 1, later - 29, empty, 100, {job.id}) == ([], [])
    await ledger.close()
    sync.close()


async def test_sweep_finds_orphans_and_lost_messages_once(ledger_url: str) -> None:
    sync = SyncLedger(ledger_url)
    results = sync.create_jobs([_job("held"), _job("queued"), _job("fresh")])
    held, queued, fresh = (job for job, _ in results)
    ledger = await Ledger.open(ledger_url)
    created = held.created_at
    await ledger.run(op_claim, held.id, "dead-worker", created, created + 5)
    later = created + 100
    # A recent publish time protects "fresh": pretend it was re-published just now.

    def touch(connection: Connection, job_id: str, at: float) -> None:
        connection.execute(jobs.update().where(jobs.c.id == job_id).values(published_at=at))

    await ledger.run(touch, fresh.id, later - 1)
    # Two queued jobs ("queued", "fresh"), and the live queue holds two messages: none is missing.
    busy = [(("live",), 2), (("bulk",), 0)]
    only_held, suspects = await ledger.run(op_due_for_publish, later, later - 30, busy, 100)
    assert ([job_id for job_id, _, _ in only_held], suspects) == ([held.id], [])
    unknown = [(("live", "bulk"), None)]  # the broker cannot tell: no queued job is taken for lost
    assert await ledger.run(op_due_for_publish, later + 40, later - 30, unknown, 100) == ([], [])
    short = [(("live", "bulk"), 1)]  # one message for two queued jobs: the older is missing
    # Its message may be at a worker that has not claimed it yet: a suspect, not yet due.
    assert await ledger.run(op_due_for_publish, later, later - 30, short, 100) == ([], [queued.id])
    # Still missing on the next pass: due ("held" was just re-published).
    with_queued = await ledger.run(op_due_for_publish, later, later - 30, short, 100, {queued.id})
    assert with_queued == ([(queued.id, State.QUEUED, "live")], [])
    empty = [(("live",), 0), (("bulk",), 0)]
    assert await ledger.run(op_due_for_publish, later + 1, later - 30, empty, 100, {queued.id}) == ([], [])
    job = await ledger.run(op_get, queued.id)
    assert job is not None
    assert job.published_at == later
    await ledger.close()
    sync.close()


async def test_named_lease_has_one_holder(ledger_url: str) -> None:
    ledger = await Ledger.open(ledger_url)
    assert await ledger.run(op_take_lease, "sweeper", "a", 0.0, 10.0)
    assert not await ledger.run(op_take_lease, "sweeper", "b", 5.0, 15.0)
    assert await ledger.run(op_take_lease, "sweeper", "a", 6.0, 16.0)  # renewal
    assert await ledger.run(op_take_lease, "sweeper", "b", 17.0, 27.0)  # expired: taken over
    await ledger.close()


def test_a_ledger_from_an_older_release_is_named_as_such(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE jobs (id VARCHAR(64) PRIMARY KEY, state VARCHAR(20))")
    old.close()
    with pytest.raises(LedgerSchemaError, match=r"jobs table lacks .*request_id"):
        SyncLedger(sqlite_url)


def test_prune_deletes_only_old_finished_jobs_with_their_history(ledger_url: str) -> None:
    ledger = SyncLedger(ledger_url)
    results = ledger.create_jobs([_job(f"call-{name}") for name in ("old-done", "new-done", "old-queued")])
    old_done, new_done, old_queued = (job for job, _ in results)
    for job, at in ((old_done, 1_000.0), (new_done, 9_000.0)):
        ledger.run(op_transition, job.id, None, State.QUEUED, State.FAILED, at, status=404, error="NotFound")

    def age(connection: Connection, job_id: str, at: float) -> None:
        connection.execute(jobs.update().where(jobs.c.id == job_id).values(updated_at=at))

    ledger.run(age, old_queued.id, 1_000.0)
    assert ledger.run(op_prune, 5_000.0, 100) == 1
    assert ledger.run(op_get, old_done.id) is None
    assert ledger.events(old_done.id) == []
    assert ledger.get(new_done.id).state == State.FAILED
    assert ledger.get(old_queued.id).state == State.QUEUED  # never pruned before it finished
    assert ledger.run(op_prune, 5_000.0, 100) == 0
    ledger.close()


def test_statements_by_id_find_their_job_by_primary_key_in_any_plan(postgres_url: str) -> None:
    """PostgreSQL keeps a generic plan per prepared statement (the worker's driver prepares each one), made while
    the table may be nearly empty and kept until ANALYZE. Planned so, a claim once scanned every job in its state,
    O(backlog) per claim: each statement that finds a job by id must use the primary key whatever the planner
    knows. The statements are the ones the operations really send, captured on their way to the server."""
    ledger = SyncLedger(postgres_url)  # a fresh ledger: tables never analyzed
    sent: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "WHERE jobs.id = " in statement and statement not in sent:
            sent.append(statement)

    engine = ledger._engine
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        (job,) = (created for created, _ in ledger.create_jobs([_job("by-id")]))
        claimed = ledger.run(op_claim, job.id, "w", 1.0, 2.0, 1)
        assert claimed is not None
        ledger.run(op_transition, job.id, "w", State.SENDING, State.RETRY_WAIT, 1.0, lease_until=2.0)
        ledger.run(op_start_attempt, job.id, "w", State.RETRY_WAIT, 2, 1, 1.0, 2.0)
        ledger.run(op_claim, job.id, "v", 3.0, 4.0)  # the lease ran out: the orphan claim
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert len(sent) >= 4
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("SET plan_cache_mode = force_generic_plan")
        for statement in sent:
            numbered, names = _numbered(statement)
            connection.execute(f"PREPARE probe AS {numbered}")
            try:
                values = ", ".join("NULL" for _ in names)
                plan = "\n".join(row[0] for row in connection.execute(f"EXPLAIN EXECUTE probe ({values})"))
            finally:
                connection.execute("DEALLOCATE probe")
            assert "jobs_pkey" in plan, f"{statement}\n{plan}"
    ledger.close()


def test_an_answer_to_its_sender_is_written_without_reading_the_job_first(postgres_url: str) -> None:
    """The common answer (the sender still holds the job) is one conditional UPDATE: no row lock taken by a read
    first. Any other answer still reads the job under its lock and gets the general rules (here: a late 202 for
    a job another worker took over is recorded, with who held it)."""
    ledger = SyncLedger(postgres_url)
    sent: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    sa.event.listen(ledger._engine, "before_cursor_execute", capture)
    try:
        mine, taken_over = (job for job, _ in ledger.create_jobs([_job("answer-1"), _job("answer-2")]))
        for job in (mine, taken_over):
            assert ledger.run(op_claim, job.id, "w", 1.0, 2.0, 1) is not None
        assert ledger.run(op_claim, taken_over.id, "v", 3.0, 4.0) is not None  # w's lease ran out
        sent.clear()
        recorded = ledger.run(
            op_record_answer,
            mine.id,
            mine.request_id,
            "w",
            State.ACCEPTED,
            3.0,
            status=202,
            error=None,
            message="202 Accepted",
            detail="accepted by ACS",
        )
        assert recorded is not None
        assert recorded[1] == State.SENDING
        assert recorded[0].state == State.ACCEPTED
        assert recorded[0].accepted_at == 3.0
        assert (recorded[0].reason, recorded[0].last_status, recorded[0].settled_at) == ("accepted by ACS", 202, None)
        assert not [statement for statement in sent if "FOR UPDATE" in statement], sent
        sent.clear()
        late = ledger.run(
            op_record_answer,
            taken_over.id,
            taken_over.request_id,
            "w",
            State.ACCEPTED,
            5.0,
            status=202,
            error=None,
            message="202 Accepted",
            detail="accepted by ACS",
        )
        assert [statement for statement in sent if "FOR UPDATE" in statement]
        assert late is not None
        assert late[0].state == State.ACCEPTED
        assert "after the job was sending held by v" in (late[0].reason or "")
        last = ledger.events(mine.id)[-1]
        assert (last.from_state, last.to_state, last.status, last.detail) == (
            State.SENDING,
            State.ACCEPTED,
            202,
            "accepted by ACS",
        )
    finally:
        sa.event.remove(ledger._engine, "before_cursor_execute", capture)
        ledger.close()


def _numbered(statement: str) -> tuple[str, list[str]]:
    """psycopg's %(name)s placeholders as PostgreSQL's $n, and the names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"%\((\w+)\)s", number, statement), names
