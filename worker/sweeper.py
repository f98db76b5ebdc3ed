"""The sweeper: re-publishes jobs whose message may have been lost, so no broker loss loses a job.

Two cases: a job held by a worker whose lease ran out (the worker died mid-job; its message may have been
acknowledged, dropped or redelivered while the lease was still live), and a job still queued long after it
was published while the queue is empty (the broker lost the message). One worker sweeps at a time, under a
lease in the ledger; a re-published job that turns out to be alive is skipped by the claim.

The same pass reconciles: a job whose outcome became unknown (the repeatability window closed without a final
answer, or 412) and for which no outcome event arrived within `reconcile_after` goes to ``dead`` for an
operator, who may replay it. Nothing is re-sent on its own. With JOB_RETENTION_DAYS set, it also deletes
finished jobs older than that, a batch at a time, so the ledger does not grow without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from worker.ledger import (
    State,
    op_due_for_publish,
    op_prune,
    op_take_lease,
    op_transition,
    op_unknown_older_than,
)
from worker.logs import get_logger
from worker.transfer import Context

log = get_logger(__name__)
SWEEP_LEASE = "sweeper"
BATCH = 1000


async def sweep_once(
    ctx: Context,
    publish: Callable[[Iterable[str]], int],
    queue_depth: Callable[[], int | None],
) -> int:
    """One pass; returns how many jobs were re-published."""
    settings = ctx.settings
    now = ctx.clock()
    if not await ctx.ledger.run(op_take_lease, SWEEP_LEASE, ctx.worker_id, now, now + 3 * settings.sweep_interval):
        return 0
    depth = await asyncio.to_thread(queue_depth)
    # With messages still waiting, a queued job is most likely among them: re-publish only held jobs then.
    include_queued = depth == 0
    due = await ctx.ledger.run(op_due_for_publish, now, now - settings.republish_after, include_queued, BATCH)
    if due:
        await asyncio.to_thread(publish, [job_id for job_id, _ in due])
        held = sum(1 for _, state in due if state != State.QUEUED)
        log.warning(
            "sweeper.republished", jobs=len(due), expired_leases=held, queued=len(due) - held, queue_depth=depth
        )
    await reconcile_unknown(ctx)
    if settings.job_retention_days > 0:
        pruned = await ctx.ledger.run(op_prune, now - settings.job_retention_days * 86400, BATCH)
        if pruned:
            log.info("sweeper.pruned", jobs=pruned, older_than_days=settings.job_retention_days)
    return len(due)


async def reconcile_unknown(ctx: Context) -> int:
    """Move unknown jobs that waited `reconcile_after` without an outcome event to dead; returns how many."""
    now = ctx.clock()
    waited = ctx.settings.reconcile_after
    expired = await ctx.ledger.run(op_unknown_older_than, now - waited, BATCH)
    detail = (
        f"outcome unknown and no outcome event within {waited:.0f}s: needs an operator "
        "(`acs-transfer dead show`, then `dead replay` if the transfer did not happen)"
    )
    for job_id in expired:
        moved = await ctx.ledger.run(op_transition, job_id, None, State.UNKNOWN, State.DEAD, now, detail=detail)
        if moved is not None:
            log.warning("job.transition", job_id=job_id, from_state=State.UNKNOWN, to_state=State.DEAD, detail=detail)
    return len(expired)


async def run_sweeper(
    ctx: Context,
    publish: Callable[[Iterable[str]], int],
    queue_depth: Callable[[], int | None],
) -> None:
    """Sweep every `sweep_interval` seconds until cancelled; errors are logged, never fatal."""
    while True:
        try:
            swept = await sweep_once(ctx, publish, queue_depth)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.error("sweeper.failed", error=f"{type(error).__name__}: {error}")
            swept = 0
        await asyncio.sleep(0 if swept == BATCH else ctx.settings.sweep_interval)
