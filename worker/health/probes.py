"""Operational endpoints, served by `acs-transfer serve` and by each worker on WORKER_METRICS_PORT.

GET /metrics   Prometheus text format
GET /healthz   the process is up (200)
GET /readyz    the broker and the ledger answer (200), or which does not (503)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.config import Settings
from worker.health.checks import run_checks
from worker.ledger import Lane, Ledger, State, op_count_by_state, op_oldest_queued
from worker.ledger.dispatch import op_oldest_published
from worker.metrics import JOBS, LEDGER_LAG, QUEUE_OLDEST, set_queue_depths

READY_TIMEOUT = 3.0


async def refresh_ledger_gauges(ledger: Ledger) -> None:
    counts = await ledger.run(op_count_by_state, None)
    for state in State:
        JOBS.labels(state).set(counts.get(state, 0))
    oldest = await ledger.run(op_oldest_queued)
    now = time.time()
    LEDGER_LAG.set(0.0 if oldest is None else max(0.0, now - oldest))
    published = await ledger.run(op_oldest_published)
    for lane in Lane.ALL:
        QUEUE_OLDEST.labels(lane).set(max(0.0, now - published[lane]) if lane in published else 0.0)


def routes(
    settings: Settings, ledger: Ledger, queue_depths: Callable[[], dict[str, int | None]] | None = None
) -> list[web.RouteDef]:
    async def metrics(_: web.Request) -> web.Response:
        # A ledger outage must not hide the process's own metrics: its gauges just keep their last values.
        with contextlib.suppress(Exception):
            await refresh_ledger_gauges(ledger)
        if queue_depths is not None:
            with contextlib.suppress(Exception):
                set_queue_depths(await asyncio.wait_for(asyncio.to_thread(queue_depths), READY_TIMEOUT))
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        # Not the "acs" check: under Entra ID it fetches a token, too often at a probe's rate.
        checks = await asyncio.to_thread(run_checks, settings, READY_TIMEOUT, ("broker", "ledger"))
        ready = all(check.ok for check in checks)
        results = {check.name: {"ok": check.ok, "detail": check.detail} for check in checks}
        return web.json_response({"ready": ready, "checks": results}, status=200 if ready else 503)

    return [web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)]
