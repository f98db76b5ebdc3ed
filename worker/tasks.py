"""The Celery layer, kept thin: bind log context, hand the message to the process's event loop, wait.

Infrastructure failures (ledger or broker unreachable) retry the message later instead of acknowledging it
away; everything about the job itself is decided in `worker.transfer`.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task, signals
from sqlalchemy.exc import DBAPIError

from worker.broker import TASK_NAME
from worker.celery_app import app
from worker.config import Settings
from worker.ledger import Lane
from worker.logs import configure, get_logger
from worker.messages import handle_message
from worker.runtime import get_runtime, stop_runtime

log = get_logger(__name__)
_MAX_INFRA_BACKOFF = 60


@signals.worker_init.connect
def _configure_logging(**_: Any) -> None:
    settings = Settings.from_env()
    configure(settings.log_level, settings.log_format)


@signals.worker_ready.connect
def _start_runtime(**_: Any) -> None:
    get_runtime()


@signals.worker_shutdown.connect
def _stop_runtime(**_: Any) -> None:
    stop_runtime()


@signals.task_prerun.connect
def _bind_task_context(task_id: str | None = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id)


@app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def transfer(self: Task[Any, Any], *args: Any, **kwargs: Any) -> str | None:
    runtime = get_runtime()
    task_id = str(self.request.id)
    arrived_on = (self.request.delivery_info or {}).get("routing_key")
    lane = Lane.BULK if arrived_on == runtime.settings.bulk_queue != runtime.settings.queue else Lane.LIVE
    try:
        job = runtime.run(handle_message(runtime.context, task_id, args, kwargs, lane))
    except (DBAPIError, OSError) as error:
        retries = int(self.request.retries or 0)
        countdown = min(_MAX_INFRA_BACKOFF, 2**retries)
        log.error("task.infrastructure_error", error=f"{type(error).__name__}: {error}", retry_in=countdown)
        raise self.retry(exc=error, countdown=countdown, max_retries=None) from error
    return job.state if job is not None else None
