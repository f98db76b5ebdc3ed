"""Structured logs, one stream: JSON lines when not on a terminal, readable on one; secrets scrubbed from every line.

The project's events go straight from structlog to the stream (the per-job path stays as cheap as it was);
everything else that logs through `logging` (Celery, kombu, aiohttp, SQLAlchemy, Python warnings) goes through
one root handler with structlog's `ProcessorFormatter`, which ends in the same scrubber and renderer, and writes
through the same locked writer, so lines from both never interleave.

Events carry context bound with `structlog.contextvars` (job_id, call_connection_id, request_id, task_id),
so each line explains itself. Known secrets are registered (`configure(secrets=...)`, `register_secret`) and
replaced by ``***`` wherever they would appear, as a last line of defence: nothing logs headers or keys on purpose.
"""

from __future__ import annotations

import base64
import logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from worker.redact import MASK

#: longest first, so a connection string is masked whole before the key inside it
_secrets: tuple[str, ...] = ()
_lock = threading.Lock()
_MIN_SECRET_LENGTH = 6


def register_secret(secret: str | bytes | None) -> None:
    """Never log this value (nor, for bytes, its base64 and hex forms)."""
    if not secret:
        return
    global _secrets  # noqa: PLW0603 - one registry per process, read on every line without a lock
    forms = {secret} if isinstance(secret, str) else {base64.b64encode(secret).decode(), secret.hex()}
    with _lock:
        known = {*_secrets, *(form for form in forms if len(form) >= _MIN_SECRET_LENGTH)}
        _secrets = tuple(sorted(known, key=len, reverse=True))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(item) for item in value)
    return value


def scrub_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The one scrubber: every line, the project's or a library's, passes it just before it is rendered."""
    if not _secrets:
        return event
    return {key: _scrub(value) for key, value in event.items()}


class _Handler(logging.Handler):
    """Writes a library's formatted record through structlog's writer for the stream (and so under its lock)."""

    def __init__(self, writer: structlog.WriteLogger) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.msg(self.format(record))
        except Exception:  # logging must never take the process down; `logging` reports it
            self.handleError(record)


def configure(
    level: str = "INFO",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    library_level: str | int = logging.WARNING,
    secrets: Iterable[str | bytes | None] = (),
) -> bool:
    """Set up this process's logging (idempotent): the project's lines at `level`, every other library's (and
    Python's warnings) at `library_level`, all rendered as `fmt` to `stream`, all scrubbed of `secrets`.
    True when the lines are JSON."""
    for secret in secrets:
        register_secret(secret)
    stream = stream or sys.stderr
    json_output = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    prepare: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    finish: list[structlog.typing.Processor] = [structlog.processors.format_exc_info, scrub_secrets, renderer]
    writer = structlog.WriteLogger(stream)
    structlog.configure(
        processors=[*prepare, *finish],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping().get(level, logging.INFO)),
        logger_factory=lambda *_: writer,
        # Not cached: a process may reconfigure (tests, the CLI), and a lookup per event costs microseconds.
        cache_logger_on_first_use=False,
    )
    handler = _Handler(writer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*prepare, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
        )
    )
    root = logging.getLogger()
    root.handlers = [existing for existing in root.handlers if not isinstance(existing, _Handler)] + [handler]
    root.setLevel(library_level)
    logging.captureWarnings(True)
    return json_output


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
