"""Prometheus metrics, one set per process (each worker process and the server expose their own).

Counters and histograms are updated where things happen; job counts by state and the ledger's lag are read
from the ledger when scraped (`refresh_ledger_gauges`), so they are right whichever process is asked.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from worker.ledger import Lane, Ledger, State, op_count_by_state, op_oldest_queued
from worker.ledger.dispatch import op_oldest_published

ATTEMPTS = Counter(
    "acs_transfer_attempts_total", "HTTP attempts to ACS by classified outcome and status", ["outcome", "status"]
)
REQUEST_SECONDS = Histogram(
    "acs_transfer_request_seconds",
    "Duration of one HTTP attempt to ACS",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRANSITIONS = Counter("acs_transfer_transitions_total", "Job state changes made by this process", ["to_state"])
RETRIES = Counter("acs_transfer_retries_total", "Attempts scheduled again after a transient answer")
RATE_LIMIT_WAIT = Histogram(
    "acs_transfer_rate_limit_wait_seconds",
    "Time jobs waited for a rate-limit token",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("acs_transfer_in_flight", "Jobs this process is driving right now (sending or waiting to retry)")
CALLBACKS = Counter("acs_transfer_callback_events_total", "Outcome events received, by what they did", ["result"])
INTAKE = Counter("acs_transfer_intake_requests_total", "Intake API requests by route and status", ["route", "status"])
JOBS = Gauge("acs_transfer_jobs", "Jobs in the ledger by state", ["state"])
LEDGER_LAG = Gauge("acs_transfer_ledger_lag_seconds", "Age of the oldest job still queued (0 when none)")
QUEUE_DEPTH = Gauge(
    "acs_transfer_queue_depth", "Messages ready in each lane's queue, as the broker reports it", ["lane"]
)
QUEUE_WAIT = Histogram(
    "acs_transfer_queue_wait_seconds",
    "From a job's publish to a worker taking it, per lane",
    ["lane"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
QUEUE_OLDEST = Gauge(
    "acs_transfer_queue_oldest_seconds", "Age of the oldest published job no worker has taken yet, per lane", ["lane"]
)


async def refresh_ledger_gauges(ledger: Ledger) -> None:
    counts = await ledger.run(op_count_by_state, None)
    for state in State.ALL:
        JOBS.labels(state).set(counts.get(state, 0))
    oldest = await ledger.run(op_oldest_queued)
    now = time.time()
    LEDGER_LAG.set(0.0 if oldest is None else max(0.0, now - oldest))
    published = await ledger.run(op_oldest_published)
    for lane in Lane.ALL:
        QUEUE_OLDEST.labels(lane).set(max(0.0, now - published[lane]) if lane in published else 0.0)


def set_queue_depths(depths: dict[str, int | None]) -> None:
    for lane, depth in depths.items():
        if depth is not None:
            QUEUE_DEPTH.labels(lane).set(depth)
