"""Prometheus metrics, one set per process (each worker process and the server expose their own).

Counters and histograms are updated where things happen; job counts by state and the ledger's lag are read
from the ledger when scraped (`worker.health.probes`), so they are right whichever process is asked. Nothing
here imports the rest of the package, so every stage can count what it does.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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


def set_queue_depths(depths: dict[str, int | None]) -> None:
    for lane, depth in depths.items():
        if depth is not None:
            QUEUE_DEPTH.labels(lane).set(depth)
