"""Chaos: the whole system under worker kills, a broker restart, a ledger pause and emulator faults, audited
against the emulator's record of what took effect (bench/chaos.py does the work; docs/reliability.md has the
long runs). Plus the regressions those runs found, each pinned by a small deterministic test.
"""

from __future__ import annotations

import time

from worker.acs import Answer, Outcome, Reach
from worker.config import Settings
from worker.ledger import (
    Ledger,
    State,
    SyncLedger,
    op_apply_outcome,
    op_claim,
    op_events,
    op_start_attempt,
)
from worker.ledger import Outcome as EventOutcome
from worker.models import parse_transfer
from worker.producer import prepare_job
from worker.transfer import Context, send_job


class _EventOvertakesTimeout:
    """ACS takes the transfer and its outcome event settles the job while the worker's request times out."""

    def __init__(self, ledger: Ledger, job_id: str) -> None:
        self.ledger = ledger
        self.job_id = job_id
        self.attempts = 0

    async def transfer(self, call_connection_id: str, body: bytes, request_id: str, first_sent: str) -> Answer:
        self.attempts += 1
        if self.attempts == 1:
            outcome = EventOutcome(State.TRANSFERRED, 200, 7015, "The transfer operation completed successfully.")
            settled = await self.ledger.run(op_apply_outcome, self.job_id, outcome, "CallTransferAccepted", time.time())
            assert settled is not None
            return Answer(Outcome.TRANSIENT, Reach.NO_ANSWER, None, "timeout", "no answer within the request timeout")
        return Answer(Outcome.ACCEPTED, Reach.ANSWERED, 202, repeatability_result="accepted")


async def test_an_outcome_event_during_a_timed_out_attempt_is_final(ledger_url: str) -> None:
    """Found by the chaos run (seed 2, RabbitMQ): the event settled the job as transferred while the attempt
    timed out; the worker's move to retry_wait found it settled, yet carried on with the settled job, re-sent
    it and overwrote `transferred` with `accepted`: the outcome was lost. A settled job is never sent again."""
    settings = Settings(ledger_url=ledger_url, backoff_base=0.01, backoff_cap=0.02)
    request = parse_transfer({"callConnectionId": "call-overtaken", "targetParticipant": "4:+15551234567"})
    sync = SyncLedger(ledger_url)
    ((job, _),) = sync.create_jobs([prepare_job(request)])
    ledger = await Ledger.open(ledger_url)
    sender = _EventOvertakesTimeout(ledger, job.id)
    try:
        done = await send_job(job.id, Context(settings, ledger, sender, "worker-a"))
    finally:
        await ledger.close()
    assert sender.attempts == 1, "a transferred job was sent again"
    assert done is not None
    assert done.state == State.TRANSFERRED
    final = sync.get(job.id)
    assert final.state == State.TRANSFERRED
    assert final.result_code == 200
    assert [event.to_state for event in sync.run(op_events, job.id)][-1] == State.TRANSFERRED
    sync.close()


def test_a_settled_job_cannot_start_an_attempt_even_for_its_last_holder(ledger_url: str) -> None:
    """The ledger's own guard behind the fix above: an attempt starts only from a held state."""
    request = parse_transfer({"callConnectionId": "call-guard", "targetParticipant": "4:+15551234567"})
    sync = SyncLedger(ledger_url)
    ((job, _),) = sync.create_jobs([prepare_job(request)])
    now = time.time()
    assert sync.run(op_claim, job.id, "worker-a", now, now + 30) is not None
    outcome = EventOutcome(State.TRANSFERRED, 200, 7015, "done")
    assert sync.run(op_apply_outcome, job.id, outcome, "CallTransferAccepted", now) is not None
    for state in State.SETTLED:
        assert sync.run(op_start_attempt, job.id, "worker-a", state, 2, int(now), now, now + 30) is None
    assert sync.get(job.id).state == State.TRANSFERRED
    sync.close()
