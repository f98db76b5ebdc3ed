"""The Celery layer, kept thin: bind log context, hand the message to the process's event loop, wait.

Infrastructure failures (any ledger error, the network, no Entra ID token for ACS) retry the message later,
with Celery's capped exponential backoff and full jitter (so workers do not retry in lockstep after an outage),
never acknowledging it away; everything about the job itself is decided in `worker.deliver.transfer`.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task, signals

from worker.acs.entra import TokenUnavailable
from worker.deliver import startup  # noqa: F401 - connects the start-up gate to the worker's signals
from worker.deliver.messages import handle_message
from worker.deliver.runtime import get_runtime, stop_runtime
from worker.ledger import LEDGER_ERRORS, Lane
from worker.logs import get_logger
from worker.queue.app import app
from worker.queue.broker import TASK_NAME

log = get_logger(__name__)
_MAX_INFRA_BACKOFF = 60


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


@signals.task_retry.connect
def _log_retry(request: Any = None, reason: object = None, **_: Any) -> None:
    first_line = str(reason).partition("\n")[0]  # a database error goes on with the whole statement
    log.error("task.infrastructure_error", error=f"{type(reason).__name__}: {first_line}", retries=request.retries)


@app.task(
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(*LEDGER_ERRORS, TokenUnavailable),
    max_retries=None,
    retry_backoff=True,
    retry_backoff_max=_MAX_INFRA_BACKOFF,
    retry_jitter=True,
)
def transfer(self: Task[Any, Any], *args: Any, **kwargs: Any) -> str | None:
    runtime = get_runtime()
    task_id = str(self.request.id)
    arrived_on = (self.request.delivery_info or {}).get("routing_key")
    lane = Lane.BULK if arrived_on == runtime.settings.bulk_queue != runtime.settings.queue else Lane.LIVE
    job = runtime.run(handle_message(runtime.context, task_id, args, kwargs, lane))
    return job.state if job is not None else None
