"""An operator's replay against the truth: one replacement however many replays overlap, and an outcome event
for the original that stops (or flags) its replacement. Outcome events forwarded without a job id settle only
a job that was sent, and only when one job fits. On the ledger itself, both backends; races on PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from structlog.testing import capture_logs

from worker.callbacks import Received, TransferEvent, _log_result, op_receive, parse_event
from worker.campaign import op_progress
from worker.cli import main
from worker.emulator.callbacks import transfer_event
from worker.errors import ReplayRefused
from worker.ledger import (
    Job,
    NewJob,
    State,
    SyncLedger,
    jobs,
    op_claim,
    op_count_by_state,
    op_events,
    op_replay,
    op_replays_sent_twice,
    op_start_attempt,
    op_transition,
)
from worker.models import parse_transfer
from worker.producer import prepare_job
from worker.reports import write_report


def _request(call: str, context: str | None = None) -> dict[str, Any]:
    request = {"callConnectionId": call, "targetParticipant": "4:+15551234567"}
    return request if context is None else {**request, "operationContext": context}


def _queued(ledger: SyncLedger, call: str, context: str | None = None) -> Job:
    new = prepare_job(parse_transfer(_request(call, context)), campaign="replays")
    ((job, _),) = ledger.create_jobs([new])
    return job


def _sent(ledger: SyncLedger, job_id: str) -> Job:
    """The job's first attempt started (First-Sent committed): it may have reached ACS."""
    now = time.time()
    claimed = ledger.run(op_claim, job_id, "worker-1", now, now + 30, int(now))
    assert claimed is not None
    return claimed[0]


def _dead(ledger: SyncLedger, call: str = "call-R") -> Job:
    job = _sent(ledger, _queued(ledger, call).id)
    dead = ledger.run(
        op_transition, job.id, "worker-1", State.SENDING, State.DEAD, time.time(), detail="no answer in the window"
    )
    assert dead is not None
    return dead


def _replay(ledger: SyncLedger, original: Job) -> Job:
    created: Job = ledger.run(op_replay, original.id, _new_replacement(original), "operator replay", time.time())
    return created


def _event(job: Job, failed: bool = False) -> TransferEvent:
    failure = {"code": 487, "subCode": 0, "message": "no answer"}
    parsed = parse_event(transfer_event(json.loads(job.body), job.call_connection_id, failed, failure))
    assert isinstance(parsed, TransferEvent)
    return parsed


def _receive(ledger: SyncLedger, event: TransferEvent, path_job_id: str | None) -> Received:
    received: Received = ledger.run(op_receive, event, path_job_id, time.time())
    return received


def test_overlapping_replays_of_one_job_make_one_replacement(postgres_url: str) -> None:
    """Replay A holds its transaction open while replay B of the same job runs: B must wait for A and then be
    refused, not create a second replacement (a second transfer under a new request id)."""
    ledger = SyncLedger(postgres_url)
    original = _dead(ledger)
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    first = _replay_in(engine, original)
    outcome: dict[str, object] = {}

    def second() -> None:
        try:
            with engine.begin() as connection:
                outcome["created"] = op_replay(
                    connection, original.id, _new_replacement(original), "again", time.time()
                )
        except ReplayRefused as refused:
            outcome["refused"] = refused

    racer = threading.Thread(target=second)
    racer.start()
    _wait_until_blocked_or_done(engine, racer)
    first.commit()
    first.close()
    racer.join(timeout=30)
    assert not racer.is_alive()
    replacements = ledger.run(lambda c: c.execute(sa.select(jobs.c.id).where(jobs.c.replay_of == original.id)).all())
    assert len(replacements) == 1
    assert "already replayed" in str(outcome.get("refused"))
    assert ledger.get(original.id).replayed_by == replacements[0].id
    engine.dispose()
    ledger.close()


def _new_replacement(original: Job) -> NewJob:
    request = parse_transfer({"callConnectionId": original.call_connection_id, **json.loads(original.body)})
    return prepare_job(request, campaign=original.campaign, replay_of=original.id)


def _replay_in(engine: sa.Engine, original: Job) -> sa.Connection:
    """Replay A, its transaction left open (the caller commits it)."""
    connection = engine.connect()
    connection.begin()
    op_replay(connection, original.id, _new_replacement(original), "first", time.time())
    return connection


def _wait_until_blocked_or_done(engine: sa.Engine, thread: threading.Thread) -> None:
    """Until the other transaction waits on a row lock (or finished without one): a barrier, not a sleep."""
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 30
    with engine.connect() as watcher:
        while thread.is_alive() and time.monotonic() < deadline:
            if watcher.execute(waiting).scalar():
                return
            watcher.rollback()
            time.sleep(0.01)


@pytest.mark.parametrize("first", ["event", "claim"])
def test_an_event_for_the_original_and_a_claim_of_the_replacement_cannot_both_win(
    postgres_url: str, first: str
) -> None:
    """The outcome event for the original and a worker's claim (which starts the replacement's first attempt)
    race: whichever commits first, the replacement is either superseded and never started, or started and
    flagged; never started and superseded, never neither."""
    ledger = SyncLedger(postgres_url)
    original = _dead(ledger)
    replacement = _replay(ledger, original)
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    now = time.time()
    steps = {
        "event": lambda connection: op_receive(connection, _event(original), original.id, now),
        "claim": lambda connection: op_claim(connection, replacement.id, "worker-2", now, now + 30, int(now)),
    }
    second = "claim" if first == "event" else "event"
    held = engine.connect()
    held.begin()
    results: dict[str, Any] = {first: steps[first](held)}

    def run_second() -> None:
        with engine.begin() as connection:
            results[second] = steps[second](connection)

    racer = threading.Thread(target=run_second)
    racer.start()
    _wait_until_blocked_or_done(engine, racer)
    held.commit()
    held.close()
    racer.join(timeout=30)
    assert not racer.is_alive()
    final = ledger.get(replacement.id)
    if first == "event":
        assert results["claim"] is None
        assert (final.state, final.attempts) == (State.SUPERSEDED, 0)
    else:
        assert results["event"].replacement[0] == "both_sent"
        assert (final.state, final.attempts) == (State.SENDING, 1)
        assert [job.id for job in ledger.run(op_replays_sent_twice, None, 10)] == [original.id]
    engine.dispose()
    ledger.close()


def test_a_replayed_original_that_turns_out_transferred_supersedes_its_unsent_replacement(
    ledger_url: str, tmp_path: Path
) -> None:
    ledger = SyncLedger(ledger_url)
    original = _dead(ledger)
    replacement = _replay(ledger, original)
    received = _receive(ledger, _event(original), original.id)
    assert received.result == "applied"
    assert ledger.get(original.id).state == State.TRANSFERRED
    stopped = ledger.get(replacement.id)
    assert stopped.state == State.SUPERSEDED
    assert stopped.reason is not None
    assert original.id in stopped.reason
    assert "CallTransferAccepted" in stopped.reason  # the original's outcome, in the replacement's reason
    assert stopped.settled_at is not None
    now = time.time()
    assert ledger.run(op_claim, replacement.id, "worker-2", now, now + 30, int(now)) is None  # never sent
    assert ledger.run(op_count_by_state, None) == {State.TRANSFERRED: 1, State.SUPERSEDED: 1}
    assert [e.to_state for e in ledger.run(op_events, replacement.id)] == [State.QUEUED, State.SUPERSEDED]
    assert ledger.run(op_replays_sent_twice, None, 10) == []
    progress = ledger.run(op_progress, "replays", time.time(), 60.0)
    assert (progress.counts[State.SUPERSEDED], progress.active) == (1, 0)  # settled: the campaign is done
    report = write_report(ledger, "replays", tmp_path / "report.csv")
    assert report.states == {State.TRANSFERRED: 1, State.SUPERSEDED: 1}
    ledger.close()


def test_a_paced_replacement_held_for_a_token_is_superseded_and_never_starts(ledger_url: str) -> None:
    ledger = SyncLedger(ledger_url)
    original = _dead(ledger)
    replacement = _replay(ledger, original)
    now = time.time()
    claimed = ledger.run(op_claim, replacement.id, "worker-2", now, now + 30)  # held, no attempt yet (paced)
    assert claimed is not None
    assert claimed[0].attempts == 0
    assert _receive(ledger, _event(original), original.id).replacement is not None
    assert ledger.get(replacement.id).state == State.SUPERSEDED
    started = ledger.run(op_start_attempt, replacement.id, "worker-2", State.SENDING, 1, int(now), now, now + 30)
    assert started is None
    ledger.close()


def test_a_replayed_original_that_turns_out_transferred_after_its_replacement_was_sent_flags_both(
    ledger_url: str,
) -> None:
    ledger = SyncLedger(ledger_url)
    original = _dead(ledger)
    replacement = _sent(ledger, _replay(ledger, original).id)
    event = _event(original)
    received = _receive(ledger, event, original.id)
    assert received.replacement is not None
    assert received.replacement[0] == "both_sent"
    with capture_logs() as logs:
        _log_result(received, event, original.id)
    warnings = [line for line in logs if line["event"] == "replay.both_sent"]
    assert [line["log_level"] for line in warnings] == ["warning"]
    assert warnings[0]["replacement"] == replacement.id
    settled = ledger.get(original.id)
    assert settled.state == State.TRANSFERRED
    assert settled.reason is not None
    assert "needs an operator" in settled.reason
    assert replacement.id in settled.reason
    assert ledger.get(replacement.id).state == State.SENDING  # sent: its own answer settles it
    for job_id in (original.id, replacement.id):
        assert any("needs an operator" in (e.detail or "") for e in ledger.run(op_events, job_id))
    assert [job.id for job in ledger.run(op_replays_sent_twice, None, 10)] == [original.id]
    ledger.close()


def test_a_replayed_original_that_turns_out_transfer_failed_keeps_its_replacement(ledger_url: str) -> None:
    ledger = SyncLedger(ledger_url)
    original = _dead(ledger)
    replacement = _replay(ledger, original)
    received = _receive(ledger, _event(original, failed=True), original.id)
    assert received.result == "applied"
    assert received.replacement is None
    assert ledger.get(original.id).state == State.TRANSFER_FAILED
    assert ledger.get(replacement.id).state == State.QUEUED  # the retry the operator asked for still goes
    ledger.close()


def test_dead_list_shows_a_replay_sent_although_its_original_was_transferred(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = SyncLedger(url)
    original = _dead(ledger, "call-twice")
    replacement = _sent(ledger, _replay(ledger, original).id)
    _receive(ledger, _event(original), original.id)
    ledger.close()
    env = {
        "ACS_TRANSFER_HOME": str(tmp_path / "home"),
        "CELERY_BROKER_URL": "filesystem://",
        "LEDGER_URL": url,
        "LOG_LEVEL": "WARNING",
    }
    shown = CliRunner().invoke(main, ["dead", "list"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "transferred twice" in shown.stdout
    (line,) = [line for line in shown.stdout.splitlines() if line.startswith(original.id)]
    assert f"replayed as {replacement.id}" in line
    assert "needs an operator" in line


def test_an_event_without_a_job_id_never_settles_a_job_that_was_not_sent(ledger_url: str) -> None:
    ledger = SyncLedger(ledger_url)
    queued = _queued(ledger, "call-fwd")
    received = _receive(ledger, _event(queued), None)
    assert received.result == "unmatched"
    assert received.unmatched_because is not None
    assert "no job sent on call 'call-fwd'" in received.unmatched_because
    assert ledger.get(queued.id).state == State.QUEUED  # still to be sent
    _sent(ledger, queued.id)
    assert _receive(ledger, _event(queued), None).result == "applied"
    assert ledger.get(queued.id).state == State.TRANSFERRED
    ledger.close()


def test_an_event_without_a_job_id_that_fits_two_sent_jobs_settles_neither(ledger_url: str) -> None:
    ledger = SyncLedger(ledger_url)
    first = _sent(ledger, _queued(ledger, "call-two", "ctx-1").id)
    second = _sent(ledger, _queued(ledger, "call-two", "ctx-1").id)
    other = _sent(ledger, _queued(ledger, "call-two", "ctx-2").id)
    received = _receive(ledger, _event(first), None)
    assert received.result == "unmatched"
    assert received.unmatched_because is not None
    assert "more than one job" in received.unmatched_because
    with capture_logs() as logs:
        _log_result(received, _event(first), None)
    assert [(line["event"], line["log_level"]) for line in logs] == [("callback.unmatched", "warning")]
    assert logs[0]["reason"] == received.unmatched_because
    assert {ledger.get(job.id).state for job in (first, second)} == {State.SENDING}
    assert _receive(ledger, _event(other), None).result == "applied"  # its operation context tells it apart
    assert ledger.get(other.id).state == State.TRANSFERRED
    ledger.close()


def test_a_job_named_by_its_uri_is_settled_even_before_its_attempt_is_recorded(ledger_url: str) -> None:
    # The rule above is for events that name no job: one whose URI names the job still settles it.
    ledger = SyncLedger(ledger_url)
    queued = _queued(ledger, "call-uri")
    assert _receive(ledger, _event(queued), queued.id).result == "applied"
    ledger.close()
