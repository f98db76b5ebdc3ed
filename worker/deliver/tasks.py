"""The Celery layer, kept thin: the job task's registration, and the runtime started and stopped with the worker.

The worker never runs the task through Celery's pool: its consumer runs every job message on the process's event
loop (`worker.deliver.strategy`); everything about the job itself is decided in `worker.deliver.transfer`.
"""

from __future__ import annotations

from typing import Any

from celery import Task, signals

from worker.deliver import startup  # noqa: F401 - connects the start-up gate to the worker's signals
from worker.deliver.runtime import get_runtime, stop_runtime
from worker.deliver.strategy import TaskMessage, run_message
from worker.ledger import Lane
from worker.queue.app import app
from worker.queue.broker import TASK_NAME


@signals.worker_ready.connect
def _start_runtime(**_: Any) -> None:
    get_runtime()


@signals.worker_shutdown.connect
def _stop_runtime(**_: Any) -> None:
    stop_runtime()


@app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def transfer(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
    """The job task: registered so that the consumer has its strategy to replace; called in-process, it runs the
    message as the worker would."""
    runtime = get_runtime()
    runtime.run(run_message(runtime, TaskMessage(str(self.request.id), list(args), kwargs), Lane.LIVE))
