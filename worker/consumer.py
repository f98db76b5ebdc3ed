"""A Celery consumer that records messages it cannot run (undecodable, unknown task, malformed) as dead
messages in the ledger before acknowledging them, so a poison message is explained, never silently dropped."""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer

from worker.logs import get_logger
from worker.messages import record_dead_message
from worker.runtime import get_runtime

log = get_logger(__name__)


def _record(message: Any, reason: str) -> None:
    try:
        headers = getattr(message, "headers", None) or {}
        body = getattr(message, "body", b"")
        payload = body.decode(errors="replace") if isinstance(body, bytes) else repr(body)
        runtime = get_runtime()
        runtime.run(record_dead_message(runtime.context, headers.get("id"), reason, payload[:100_000]))
    except Exception as error:
        log.error("message.dead_not_recorded", reason=reason, error=f"{type(error).__name__}: {error}")


class RecordingConsumer(Consumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        _record(message, f"cannot decode message ({message.content_type}): {exc}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _record(message, "not a task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        _record(message, f"unknown task: {exc}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        _record(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)
