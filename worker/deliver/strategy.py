"""How a worker runs a job message: straight on its process's event loop, not through Celery's pool.

Through the pool, each message would become a Celery request traced in a thread that hands the job to the loop
and blocks until it is done: a thread hop each way and, with one thread per job in flight, GIL contention, most
of a worker's CPU beyond the job's own work (docs/performance.md). Instead the consumer's strategy for the job
task decodes the message and schedules its job on the loop; the message is acknowledged once the job's turn
ends (late, as before). The broker's prefetch (WORKER_CONCURRENCY: per lane queue on RabbitMQ, for both lanes
together on Redis and the embedded transport) bounds how many run at once.

An infrastructure failure (any ledger error, the network, no Entra ID token for ACS) is waited out in the worker
with capped exponential backoff and full jitter, so that workers do not retry in lockstep after an outage; the
message stays unacknowledged meanwhile and is never acknowledged away. A warm shutdown lets every job under way
finish (retry back-offs included) and gives the messages still waiting on an outage back to the broker.

A message's Celery ``eta`` (a producer's countdown) is waited for in the worker, its ``expires`` honoured: one
that expired before it ran becomes a dead message saying so. Celery's remote control does not see these jobs
(`inspect active`, `revoke`): the ledger does (`acs-transfer status`, `acs-transfer dead`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from celery.exceptions import InvalidTaskError
from celery.utils.time import get_exponential_backoff_interval

from worker.acs.entra import TokenUnavailable
from worker.deliver.messages import handle_message, record_dead_message
from worker.deliver.runtime import Runtime
from worker.ledger import LEDGER_ERRORS, Lane
from worker.logs import get_logger
from worker.queue.broker import TASK_NAME

log = get_logger(__name__)
#: what an infrastructure failure raises: the message waits and runs again, never acknowledged away
INFRASTRUCTURE_ERRORS: tuple[type[Exception], ...] = (*LEDGER_ERRORS, TokenUnavailable)
#: the longest wait between two tries of a message through an outage, seconds
MAX_INFRA_BACKOFF = 60
_ack_log = logging.getLogger("celery.worker")


class _GivenBack(Exception):
    """The worker is stopping while the message waits on an outage: leave it unacknowledged for another worker."""


@dataclass(frozen=True)
class TaskMessage:
    task_id: str
    args: list[Any]
    kwargs: Mapping[str, Any]
    #: when the producer asked for it to run (Celery's countdown or eta), and when it stops being wanted
    eta: float | None = None
    expires: float | None = None


async def _wait_or_give_back(runtime: Runtime, seconds: float) -> None:
    try:
        await asyncio.wait_for(runtime.stopping.wait(), seconds)
    except TimeoutError:
        return
    raise _GivenBack


async def run_message(runtime: Runtime, message: TaskMessage, lane: str) -> None:
    """Run one job message until its job's turn ends, waiting out infrastructure failures."""
    structlog.contextvars.clear_contextvars()  # this task's own copy, taken from the consumer's thread
    structlog.contextvars.bind_contextvars(task_id=message.task_id)
    task_id, args, kwargs = message.task_id, tuple(message.args), message.kwargs
    ctx = runtime.context
    if message.eta is not None and message.eta > ctx.clock():
        await _wait_or_give_back(runtime, message.eta - ctx.clock())
    expired = message.expires is not None and message.expires <= ctx.clock()
    retries = 0
    while True:
        try:
            if expired:
                moment = datetime.fromtimestamp(message.expires or 0, UTC).isoformat()
                reason = f"the message expired at {moment} before a worker ran it"
                await record_dead_message(ctx, task_id, reason, {"args": list(args), "kwargs": dict(kwargs)})
            else:
                await handle_message(ctx, task_id, args, kwargs, lane)
            return
        except INFRASTRUCTURE_ERRORS as error:
            retries += 1
            first_line = str(error).partition("\n")[0]  # a database error goes on with the whole statement
            log.error("task.infrastructure_error", error=f"{type(error).__name__}: {first_line}", retries=retries)
            delay = get_exponential_backoff_interval(1, retries, MAX_INFRA_BACKOFF, full_jitter=True)
            await _wait_or_give_back(runtime, delay)


def _moment(headers: Mapping[str, Any], name: str) -> float | None:
    """An ISO 8601 time header (``eta``, ``expires``) as seconds since the epoch; without a zone, UTC."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidTaskError(f"the {name} header is not an ISO 8601 time: {value!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _decode(message: Any) -> TaskMessage:
    """A task message (protocol 2, JSON); InvalidTaskError for anything else."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id = headers.get("id")
    body = message.decode()
    if not isinstance(task_id, str):
        raise InvalidTaskError("the message's headers carry no task id")
    if not (isinstance(body, list) and len(body) == 3 and isinstance(body[0], list) and isinstance(body[1], dict)):
        raise InvalidTaskError("the body is not [args, kwargs, embed] with a list and an object")
    return TaskMessage(task_id, body[0], body[1], _moment(headers, "eta"), _moment(headers, "expires"))


class JobMessages:
    """The consumer's strategy for the job task: each message decoded, its job started on the runtime's loop, the
    message acknowledged when the job's turn ends."""

    def __init__(
        self,
        runtime: Runtime,
        connection_errors: tuple[type[BaseException], ...],
        send_events: Callable[..., Any] | None = None,
    ) -> None:
        self._runtime = runtime
        self._connection_errors = connection_errors
        #: sends (type, fields) task events in the order given
        self._send_events = send_events
        settings = runtime.settings
        self._bulk_queue = settings.bulk_queue if settings.bulk_queue != settings.queue else None

    def __call__(self, message: Any, _body: Any, ack: Callable[..., Any], _reject: Any, _callbacks: Any) -> None:
        decoded = _decode(message)
        task_id = decoded.task_id
        arrived_on = (message.delivery_info or {}).get("routing_key")
        lane = Lane.BULK if arrived_on is not None and arrived_on == self._bulk_queue else Lane.LIVE
        runtime = self._runtime
        started = time.monotonic()
        if self._send_events is not None:
            fields = {
                "uuid": task_id,
                "name": TASK_NAME,
                "args": repr(decoded.args),
                "kwargs": repr(decoded.kwargs),
                "retries": 0,
            }
            self._send_events(("task-received", fields), ("task-started", {"uuid": task_id}))
        runtime.start_job(self._turn(decoded, lane, ack, started))

    async def _turn(self, message: TaskMessage, lane: str, ack: Callable[..., Any], started: float) -> None:
        # The acknowledgement is queued before the job's future completes: a warm shutdown that waits for the
        # futures then flushes every one of them (a future's done-callbacks run only after its waiters wake).
        error: Exception | None = None
        try:
            await run_message(self._runtime, message, lane)
        except _GivenBack:
            return  # unacknowledged: the broker gives it to the next worker
        except Exception as failure:
            # A fault of this worker, not of the job: logged whole; the job stays in the ledger, where the sweeper
            # finds it once its lease runs out.
            error = failure
            log.error("task.failed", task_id=message.task_id, error=f"{type(error).__name__}: {error}", exc_info=error)
        ack(_ack_log, self._connection_errors)
        if self._send_events is not None:
            runtime = time.monotonic() - started
            outcome = {"result": "None"} if error is None else {"exception": repr(error)}
            kind = "task-succeeded" if error is None else "task-failed"
            self._send_events((kind, {"uuid": message.task_id, "runtime": runtime, **outcome}))
