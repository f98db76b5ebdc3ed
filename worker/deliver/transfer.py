"""The send logic: claim a job, send it until ACS gives a final answer or the repeatability window closes.

Async and free of Celery, so it is tested directly. The invariants it keeps:
- the request id, the body bytes and First-Sent of a job never change across attempts, workers or crashes;
- First-Sent is stored before the first request leaves (`op_start_attempt` commits before the POST);
- a retry starts only while the window since First-Sent (less a safety margin) is still open; past it, or on
  412, the job becomes ``unknown`` and is never re-sent under a new request id;
- a definite answer (202, 4xx) is written whatever happened meanwhile: retried through ledger blips, and
  recorded even if the job passed to another worker or went unknown; a 4xx after an attempt whose effect is
  unknown makes the job ``unknown``, not ``failed``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import structlog

from worker.acs.client import Answer, Outcome
from worker.acs.signing import http_date
from worker.config import Settings
from worker.deliver.ratelimit import Limiter, Turn, Unlimited
from worker.ledger import (
    HELD_STATES,
    LEDGER_ERRORS,
    Job,
    Ledger,
    State,
    op_claim,
    op_extend_lease,
    op_record_answer,
    op_start_attempt,
    op_transition,
)
from worker.logs import get_logger
from worker.metrics import ATTEMPTS, IN_FLIGHT, QUEUE_WAIT, RATE_LIMIT_WAIT, REQUEST_SECONDS, RETRIES, TRANSITIONS

log = get_logger(__name__)
T = TypeVar("T")


class Sender(Protocol):
    async def transfer(self, call_connection_id: str, body: bytes, request_id: str, first_sent: str) -> Answer: ...


async def _always_ready() -> None:
    return None


@dataclass
class Context:
    """What the send logic needs from its process: settings, ledger, ACS client, identity, clock."""

    settings: Settings
    ledger: Ledger
    sender: Sender
    worker_id: str
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    limiter: Limiter = field(default_factory=Unlimited)
    # Awaited before an attempt is recorded (so before First-Sent is fixed): raises when the request could not be
    # authenticated (no Entra ID token), leaving the job as it was for the message's retry.
    authorize: Callable[[], Awaitable[None]] = _always_ready


def backoff_delay(attempt: int, base: float, cap: float, server_hint: float | None, rng: random.Random) -> float:
    """Capped exponential backoff with jitter, never shorter than the server asked for."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return max(rng.uniform(ceiling / 2, ceiling), server_hint or 0.0)


async def send_job(job_id: str, ctx: Context) -> Job | None:
    """Take the job and drive it to a settled state (or leave it to the worker that holds it)."""
    await ctx.authorize()
    now = ctx.clock()
    settings = ctx.settings
    # A queued job that needs no rate-limit token is sent at once: its claim also starts its first attempt.
    may_start = not ctx.limiter.paces_every_job
    lease = now + settings.request_timeout + settings.claim_lease
    claimed = await ctx.ledger.run(op_claim, job_id, ctx.worker_id, now, lease, int(now) if may_start else None)
    if claimed is None:
        current = await ctx.ledger.find(job_id)
        _log_skip(job_id, current, now)
        return current
    job, before = claimed
    with structlog.contextvars.bound_contextvars(
        job_id=job.id, call_connection_id=job.call_connection_id, request_id=job.request_id
    ):
        if before == State.QUEUED and job.published_at is not None:
            QUEUE_WAIT.labels(job.lane).observe(max(0.0, now - job.published_at))
        detail = None if before == State.QUEUED else "taken over after the previous holder's lease expired"
        log.info("job.transition", from_state=before, to_state=State.SENDING, attempt=job.attempts, detail=detail)
        TRANSITIONS.labels(State.SENDING).inc()
        with IN_FLIGHT.track_inprogress():
            return await _drive(job, ctx, started=before == State.QUEUED and job.attempts > 0)


def _log_skip(job_id: str, job: Job | None, now: float) -> None:
    if job is None:
        log.warning("job.skipped", job_id=job_id, reason="no such job in the ledger")
    elif job.state in HELD_STATES:
        log.info(
            "job.skipped",
            job_id=job_id,
            reason=f"held by {job.worker} for {max(0.0, (job.lease_until or now) - now):.1f}s more",
        )
    else:
        log.info("job.skipped", job_id=job_id, reason=f"already {job.state}")


async def _drive(job: Job, ctx: Context, started: bool) -> Job | None:
    """Send until a final answer; `started`: the claim already started the first attempt."""
    settings = ctx.settings
    body = job.body.encode()
    while True:
        if started:
            started = False
        else:
            begun = await _start_attempt(job, ctx)
            if isinstance(begun, _Stopped):
                return begun.job
            job = begun
        attempt = job.attempts
        assert job.first_sent is not None
        deadline = job.first_sent + settings.send_deadline
        answer = await ctx.sender.transfer(job.call_connection_id, body, job.request_id, http_date(job.first_sent))
        ATTEMPTS.labels(answer.outcome.value, str(answer.status or answer.reach.value)).inc()
        REQUEST_SECONDS.observe(answer.duration_ms / 1000)
        log.info(
            "acs.attempt",
            attempt=attempt,
            status=answer.status,
            outcome=answer.outcome.value,
            reach=answer.reach.value,
            duration_ms=round(answer.duration_ms, 1),
            repeatability_result=answer.repeatability_result,
            error=answer.error_code,
            retry_after=answer.retry_after,
        )
        if answer.status == 429 and ctx.limiter.enabled:
            await ctx.limiter.throttled(answer.retry_after)
        if answer.outcome is Outcome.ACCEPTED:
            return await _record_answer(job, ctx, State.ACCEPTED, answer, "accepted by ACS")
        if answer.outcome is Outcome.PERMANENT:
            return await _record_answer(job, ctx, State.FAILED, answer, f"rejected by ACS: {answer.summary}")
        if answer.outcome is Outcome.STALE:
            detail = (
                f"ACS says the repeatability window has passed ({answer.summary}); earlier attempts' effect unknown"
            )
            return await _settle(job, ctx, State.UNKNOWN, answer, detail)
        delay = backoff_delay(attempt, settings.backoff_base, settings.backoff_cap, answer.retry_after, ctx.rng)
        resume_at = ctx.clock() + delay
        if resume_at >= deadline:
            detail = f"a retry in {delay:.1f}s would fall outside the repeatability window; last: {answer.summary}"
            return await _settle(job, ctx, State.UNKNOWN, answer, detail)
        RETRIES.inc()
        waiting = await _transition(
            job, ctx, State.RETRY_WAIT, answer, f"retry in {delay:.2f}s after {answer.summary}", resume_at
        )
        if waiting is None or waiting.state != State.RETRY_WAIT:
            # Lost, or an outcome event settled the job while this attempt failed: never send it again.
            return waiting
        job = waiting
        await ctx.sleep(delay)


async def _start_attempt(job: Job, ctx: Context) -> Job | _Stopped:
    """Take a rate-limit token if pacing, check the window, and record the attempt before it leaves."""
    if ctx.limiter.enabled:
        paced = await _take_token(job, ctx)
        if isinstance(paced, _Stopped):
            return paced
        job = paced
    await ctx.authorize()
    now = ctx.clock()
    first_sent = job.first_sent if job.first_sent is not None else int(now)
    if now >= first_sent + ctx.settings.send_deadline:
        detail = f"repeatability window closed before attempt {job.attempts + 1}; last answer: {job.last_message}"
        return _Stopped(await _settle(job, ctx, State.UNKNOWN, None, detail))
    attempt = job.attempts + 1
    lease_until = now + ctx.settings.request_timeout + ctx.settings.claim_lease
    started = await ctx.ledger.run(
        op_start_attempt, job.id, ctx.worker_id, job.state, attempt, first_sent, now, lease_until
    )
    if started is None:
        log.warning("job.lost_claim", attempt=attempt, reason="another worker took the job over")
        return _Stopped(None)
    return started


@dataclass(frozen=True)
class _Stopped:
    """Pacing ended the job's turn: it settled (or was lost, None) instead of getting a token."""

    job: Job | None


async def _take_token(job: Job, ctx: Context) -> Job | _Stopped:
    """Wait for this attempt's global rate-limit token (a campaign's pace is kept by the dispatcher, before the
    job's message is published). A first attempt waits before First-Sent is fixed, so the wait costs none of the
    repeatability window; a retry goes before first attempts, and one that could get no token before the window
    closes is not sent. The lease is stretched over a long wait so the sweeper does not hand the job to another
    worker."""
    held = job
    deadline = None if job.first_sent is None else job.first_sent + ctx.settings.send_deadline

    async def wait(seconds: float) -> bool:
        nonlocal held
        now = ctx.clock()
        if now + seconds + ctx.settings.claim_lease / 2 > (held.lease_until or now):
            lease_until = now + seconds + ctx.settings.claim_lease
            extended = await ctx.ledger.run(op_extend_lease, held.id, ctx.worker_id, held.state, lease_until, now)
            if extended is None:
                return False
            held = extended
        log.debug("job.paced", wait=round(seconds, 3), campaign=held.campaign)
        RATE_LIMIT_WAIT.observe(seconds)
        await ctx.sleep(seconds)
        return True

    now = ctx.clock()
    if deadline is not None and now >= deadline:
        return job  # the window check that follows settles it
    turn = await ctx.limiter.acquire(deadline is not None, None if deadline is None else deadline - now, wait)
    if turn is Turn.ABANDONED:
        log.warning("job.lost_claim", reason="another worker took the job over while it waited for a token")
        return _Stopped(None)
    if turn is Turn.TOO_LATE:
        detail = (
            f"no rate-limit token before the repeatability window closes (attempt {held.attempts + 1}); "
            f"last answer: {held.last_message}"
        )
        return _Stopped(await _settle(held, ctx, State.UNKNOWN, None, detail))
    return held


async def _record_answer(job: Job, ctx: Context, state: str, answer: Answer, detail: str) -> Job | None:
    """Write a definite answer (see `op_record_answer`), through ledger blips."""

    async def write() -> tuple[Job, str | None] | None:
        return await ctx.ledger.run(
            op_record_answer,
            job.id,
            job.request_id,
            ctx.worker_id,
            state,
            ctx.clock(),
            status=answer.status,
            error=answer.error_code,
            message=answer.summary,
            detail=detail,
        )

    recorded = await _through_ledger_blips(ctx, answer, write)
    if recorded is None:
        log.warning("job.lost", wanted=state, reason="the job is no longer in the ledger")
        return None
    current, before = recorded
    if before is None:
        log.info("job.settled_meanwhile", state=current.state, wanted=state)
        return current
    if current.replayed_by is not None:
        # An operator replayed the job while its answer was on the way: the replacement may transfer it twice.
        log.error("job.answer_after_replay", state=current.state, replayed_by=current.replayed_by)
    TRANSITIONS.labels(current.state).inc()
    log_method = log.info if current.state == State.ACCEPTED else log.warning
    log_method(
        "job.transition", from_state=before, to_state=current.state, attempt=current.attempts, detail=current.reason
    )
    return current


async def _through_ledger_blips(ctx: Context, answer: Answer, write: Callable[[], Awaitable[T]]) -> T:
    """Run the write of an answer until it commits, retrying a failover or a dropped connection with capped
    backoff for up to RECONCILE_AFTER (when an operator would be asked about the job anyway); past that the
    answer is logged as an error and the task retries the message (tasks.py)."""
    settings = ctx.settings
    give_up = ctx.clock() + max(settings.reconcile_after, settings.repeatability_window)
    failures = 0
    while True:
        try:
            return await write()
        except LEDGER_ERRORS as error:
            failures += 1
            delay = backoff_delay(failures, settings.backoff_base, settings.backoff_cap, None, ctx.rng)
            first_line = str(error).partition("\n")[0]  # a database error goes on with the whole statement
            fields = {"answer": answer.summary, "failures": failures, "error": f"{type(error).__name__}: {first_line}"}
            if ctx.clock() + delay > give_up:
                log.error("job.answer_not_written", gave_up=True, **fields)
                raise
            log.warning("job.answer_not_written", retry_in=round(delay, 2), **fields)
            await ctx.sleep(delay)


async def _settle(job: Job, ctx: Context, state: str, answer: Answer | None, detail: str) -> Job | None:
    return await _transition(job, ctx, state, answer, detail, None)


async def _transition(
    job: Job, ctx: Context, state: str, answer: Answer | None, detail: str, resume_at: float | None
) -> Job | None:
    now = ctx.clock()
    lease_until = None if resume_at is None else resume_at + ctx.settings.claim_lease
    moved = await ctx.ledger.run(
        op_transition,
        job.id,
        ctx.worker_id,
        job.state,
        state,
        now,
        lease_until=lease_until,
        status=answer.status if answer else None,
        error=answer.error_code if answer else "window_closed",
        message=answer.summary if answer else detail,
        detail=detail,
        effect_unknown=f"attempt {job.attempts}: {answer.summary}" if answer and answer.effect_unknown else None,
    )
    if moved is None:
        current = await ctx.ledger.find(job.id)
        if current is not None and current.state not in HELD_STATES:
            # An outcome event, or a stalled worker's answer, overtook this one: nothing left to do.
            log.info("job.settled_meanwhile", state=current.state, wanted=state)
            return current
        log.warning("job.lost_claim", to_state=state, reason="another worker took the job over")
        return None
    TRANSITIONS.labels(state).inc()
    log_method = log.info if state in {State.ACCEPTED, State.RETRY_WAIT} else log.warning
    log_method("job.transition", from_state=job.state, to_state=state, attempt=job.attempts, detail=detail)
    return moved
