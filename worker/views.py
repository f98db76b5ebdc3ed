"""How a job is shown to people and to API clients: one flat document of JSON primitives.

The same view backs `acs-transfer status`, `dead show`, campaign reports and `GET /v1/transfers/{id}`, so
all of them say the same thing about a job.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.ledger import Event, Job
from worker.signing import http_date


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _millis(start: float | None, end: float | None) -> int | None:
    return None if start is None or end is None else round((end - start) * 1000)


def job_view(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "state": job.state,
        "reason": job.reason,
        "call_connection_id": job.call_connection_id,
        "operation_context": job.operation_context,
        "campaign": job.campaign,
        "lane": job.lane,
        "idempotency_key": job.idempotency_key,
        "request_id": job.request_id,
        "first_sent": http_date(job.first_sent) if job.first_sent is not None else None,
        "attempts": job.attempts,
        "last_status": job.last_status,
        "last_error": job.last_error,
        "last_message": job.last_message,
        "result_code": job.result_code,
        "result_subcode": job.result_subcode,
        "result_message": job.result_message,
        "created_at": iso(job.created_at),
        "accepted_at": iso(job.accepted_at),
        "settled_at": iso(job.settled_at),
        "ms_to_accepted": _millis(job.created_at, job.accepted_at),
        "ms_to_outcome": _millis(job.created_at, job.settled_at),
        "replay_of": job.replay_of,
        "replayed_by": job.replayed_by,
    }


def history_view(events: list[Event]) -> list[dict[str, Any]]:
    return [
        {
            "at": iso(event.at),
            "from": event.from_state,
            "to": event.to_state,
            "attempt": event.attempt,
            "status": event.status,
            "detail": event.detail,
        }
        for event in events
    ]
