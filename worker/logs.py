"""Structured logs: JSON lines when not on a terminal, readable on one; secrets scrubbed from every event.

Events carry context bound with `structlog.contextvars` (job_id, call_connection_id, request_id, task_id),
so each line explains itself. Known secrets are registered with `register_secret` and replaced by ``***``
wherever they would appear, as a last line of defence: nothing logs headers or keys on purpose.
"""

from __future__ import annotations

import base64
import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_secrets: set[str] = set()
_lock = threading.Lock()
_MASK = "***"
_MIN_SECRET_LENGTH = 6


def register_secret(secret: str | bytes | None) -> None:
    """Never log this value (nor, for bytes, its base64 form)."""
    if not secret:
        return
    forms = {secret} if isinstance(secret, str) else {base64.b64encode(secret).decode(), secret.hex()}
    with _lock:
        _secrets.update(form for form in forms if len(form) >= _MIN_SECRET_LENGTH)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, _MASK)
        return value
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(item) for item in value)
    return value


def scrub_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _secrets:
        return event
    return {key: _scrub(value) for key, value in event.items()}


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for this process (idempotent)."""
    stream = stream or sys.stderr
    json_output = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping().get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        # Not cached: a process may reconfigure (tests, the CLI), and a lookup per event costs microseconds.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
