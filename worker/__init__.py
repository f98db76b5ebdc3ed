"""acs-transfer: idempotent Azure Communication Services call transfers through a message queue.

Producers call `enqueue_transfer` (or use `Producer`); workers run `celery -A worker worker`.

One subpackage per stage of the data; a module imports only from the stages below its own (import-linter
checks it, see docs/architecture.md):

    cli/ · emulator/        the command line, the demo, and the local ACS (top)
    serve/                  HTTP intake, OpenAPI, the outcome-event receiver and its token check
    produce/ | deliver/     producer API, replay, campaigns, reports | task, message → job, runtime, send loop,
                            pacing, dispatcher, sweeper, poison-message consumer (the two never import each other)
    health/                 health checks and the /metrics /healthz /readyz probes
    queue/ | acs/           Celery app, broker config, publishing | HMAC signing, Entra ID tokens, the ACS client
    request/                identifiers, the transfer request, building a job from it
    ledger/                 every SQL statement: schema, operations, stores, campaigns
    config · effective_config · errors · logs · redact · metrics · processes · text · version   (bottom)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.errors import ConfigError, IdempotencyConflict, JobNotFound, TransferError, ValidationError
from worker.request.models import TransferRequest, parse_transfer
from worker.version import __version__ as __version__

if TYPE_CHECKING:
    from celery import Celery

    from worker.produce.producer import Producer, enqueue_transfer

__all__ = [
    "ConfigError",
    "IdempotencyConflict",
    "JobNotFound",
    "Producer",
    "TransferError",
    "TransferRequest",
    "ValidationError",
    "app",
    "enqueue_transfer",
    "parse_transfer",
]


def __getattr__(name: str) -> Any:
    # Imported on first use so `import worker` stays cheap and `celery -A worker` finds `worker.app`.
    if name == "app":
        from worker.queue.app import app  # noqa: PLC0415

        celery_app: Celery = app
        return celery_app
    if name in {"Producer", "enqueue_transfer"}:
        from worker.produce import producer  # noqa: PLC0415

        return getattr(producer, name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
