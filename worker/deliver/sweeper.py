"""The sweeper: re-publishes jobs whose message may have been lost, so no broker loss loses a job.

Two cases: a job held by a worker whose lease ran out (the worker died mid-job; its message may have been
acknowledged, dropped or redelivered while the lease was still live), and a job still queued REPUBLISH_AFTER
after it was published (the broker lost the message). A queue still holding messages may hold every queued
job's, so only its shortfall is taken: its lane's queued jobs less the messages waiting, the oldest first.
Re-publishing every job of a deep backlog after a fixed wait would double it, and then double the rest again.
The broker does not count the messages workers have received and not yet claimed, so a queued job counts as
lost only when two passes in a row find it missing.
Each job goes back into its own lane. A paced campaign's job not yet dispatched is the dispatcher's. One
worker sweeps at a time, under a lease in the ledger; a re-published job that turns out to be alive is skipped
by the claim.

The same pass reconciles: a job whose outcome became unknown (the repeatability window closed without a final
answer, or 412) and for which no outcome event arrived within `reconcile_after` goes to ``dead`` for an
operator, who may replay it. Nothing is re-sent on its own. With JOB_RETENTION_DAYS set, it also deletes
finished jobs older than that, so the ledger does not grow without bound: every tenth of the retention (at
most hourly, since each pass scans the finished jobs), and on every pass while a backlog remains.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from worker.config import Settings
from worker.deliver.transfer import Context
from worker.ledger import (
    Lane,
    State,
    op_due_for_publish,
    op_prune,
    op_take_lease,
    op_transition,
    op_unknown_older_than,
)
from worker.logs import get_logger
from worker.queue.broker import queue_name

log = get_logger(__name__)
SWEEP_LEASE = "sweeper"
BATCH = 1000
PRUNE_BATCHES = 10  # per pass: 10,000 rows, each batch its own short transaction


async def sweep_once(
    ctx: Context,
    publish: Callable[[Iterable[tuple[str, str]]], int],
    queue_depths: Callable[[], dict[str, int | None]],
    prune: bool = False,
    suspects: set[str] | None = None,
) -> tuple[int, bool]:
    """One pass; returns how many jobs were re-published, and whether finished jobs remain to be pruned.

    `suspects`, kept from pass to pass, holds the queued jobs the last pass found missing (updated here)."""
    settings = ctx.settings
    now = ctx.clock()
    if not await ctx.ledger.run(op_take_lease, SWEEP_LEASE, ctx.worker_id, now, now + 3 * settings.sweep_interval):
        return 0, False
    depths = await asyncio.to_thread(queue_depths)
    published_before = now - settings.republish_after
    suspects = set() if suspects is None else suspects
    due, missing = await ctx.ledger.run(
        op_due_for_publish, now, published_before, backlogs(settings, depths), BATCH, suspects
    )
    suspects.clear()
    suspects.update(missing)
    if due:
        await asyncio.to_thread(publish, [(job_id, lane) for job_id, _, lane in due])
        held = sum(1 for _, state, _ in due if state != State.QUEUED)
        log.warning(
            "sweeper.republished", jobs=len(due), expired_leases=held, queued=len(due) - held, queue_depths=depths
        )
    await reconcile_unknown(ctx)
    backlog = prune and await prune_finished(ctx)
    return len(due), backlog


def backlogs(settings: Settings, depths: dict[str, int | None]) -> list[tuple[tuple[str, ...], int | None]]:
    """Per queue: the lanes that share it (both, when BULK_QUEUE names the live queue) and its depth."""
    by_queue: dict[str, list[str]] = {}
    for lane in Lane.ALL:
        by_queue.setdefault(queue_name(settings, lane), []).append(lane)
    return [(tuple(lanes), depths.get(lanes[0])) for lanes in by_queue.values()]


async def prune_finished(ctx: Context) -> bool:
    """Delete finished jobs older than the retention, a batch per transaction; True if some are left."""
    days = ctx.settings.job_retention_days
    cutoff = ctx.clock() - days * 86400
    total = 0
    for _ in range(PRUNE_BATCHES):
        pruned = await ctx.ledger.run(op_prune, cutoff, BATCH)
        total += pruned
        if pruned < BATCH:
            break
    if total:
        log.info("sweeper.pruned", jobs=total, older_than_days=days)
    return pruned == BATCH


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
    publish: Callable[[Iterable[tuple[str, str]]], int],
    queue_depths: Callable[[], dict[str, int | None]],
) -> None:
    """Sweep every `sweep_interval` seconds until cancelled; errors are logged, never fatal."""
    retention = ctx.settings.job_retention_days * 86400
    next_prune = 0.0 if retention > 0 else float("inf")
    suspects: set[str] = set()
    while True:
        started = time.monotonic()
        prune = started >= next_prune
        try:
            swept, backlog = await sweep_once(ctx, publish, queue_depths, prune, suspects)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.error("sweeper.failed", error=f"{type(error).__name__}: {error}")
            swept, backlog = 0, False
        if prune and not backlog:
            next_prune = started + min(retention / 10, 3600.0)
        await asyncio.sleep(0 if swept == BATCH else ctx.settings.sweep_interval)
