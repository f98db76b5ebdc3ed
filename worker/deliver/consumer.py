"""A Celery consumer that runs job messages on the process's event loop (`worker.deliver.strategy`) and records
messages it cannot run (undecodable, unknown task, malformed) as dead messages in the ledger before acknowledging
them, so a poison message is explained, never silently dropped."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed, DecodeError

from worker.deliver.messages import record_dead_message
from worker.deliver.runtime import get_runtime
from worker.deliver.strategy import JobMessages
from worker.logs import get_logger
from worker.queue.broker import TASK_NAME, broker_kind

log = get_logger(__name__)


def _record(message: Any, reason: str) -> None:
    try:
        headers = getattr(message, "headers", None)
        message_id = headers.get("id") if isinstance(headers, dict) else None
        body = getattr(message, "body", b"")
        payload = body.decode(errors="replace") if isinstance(body, bytes) else repr(body)
        runtime = get_runtime()
        # The id header is whatever the producer sent: record it as text, whatever its type.
        shown_id = None if message_id is None else message_id if isinstance(message_id, str) else repr(message_id)
        runtime.run(record_dead_message(runtime.context, shown_id, reason, payload[:100_000]))
    except Exception as error:
        log.error("message.dead_not_recorded", reason=reason, error=f"{type(error).__name__}: {error}")


#: Celery's native delayed delivery routes ETA tasks through topic exchanges it binds every queue to. Jobs never
#: travel as ETA tasks (a retry waits inside the worker that holds its message), and the lane queues sit behind
#: direct exchanges that raw producers publish to (docs/producers.md), so the step would only declare unused
#: exchanges and queues on RabbitMQ and warn at every start that each lane's exchange cannot use them.
_UNUSED_STEPS = ("celery.worker.consumer.delayed_delivery:DelayedDelivery",)


class RecordingConsumer(Consumer):
    # Built with type(): celery-types declares Consumer.Blueprint as a variable, which mypy will not subclass.
    Blueprint = type(
        "Blueprint",
        (Consumer.Blueprint,),
        {"default_steps": [step for step in Consumer.Blueprint.default_steps if step not in _UNUSED_STEPS]},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if broker_kind(str(self.app.conf.broker_url)) == "redis":
            # After Redis restarts, kombu's Redis channel acks or restores messages through a connection that is
            # gone and raises AttributeError (no connection parameters left). Celery treats that as fatal and
            # the worker process exits; it is a lost connection, so reconnect instead. The messages involved
            # died with the server, and the sweeper re-publishes their jobs.
            consumer: Any = self  # celery-types does not describe connection_errors
            consumer.connection_errors = (*consumer.connection_errors, AttributeError)

    def start(self) -> None:
        try:
            super().start()
        except Exception as error:
            # RabbitMQ gives each node name one exclusive remote-control queue: a second worker with the same name
            # (two `celery -A worker worker` on one host) cannot have it and would end in a long traceback.
            if type(error).__name__ == "ResourceLocked" and "pidbox" in str(error):
                sys.stderr.write(
                    f"acs-transfer worker: another worker already runs as {self.hostname}: each worker on a host "
                    "needs its own -n name, e.g. celery -A worker worker -n worker2@%h\n"
                )
                raise SystemExit(1) from None
            raise

    def update_strategies(self) -> None:
        super().update_strategies()
        strategies: Any = getattr(self, "strategies")  # noqa: B009 - not in celery-types
        for name in list(strategies):
            if name == TASK_NAME:
                strategies[name] = self._guarded(self._job_messages())
            else:
                # Celery's built-in tasks (celery.chord_unlock, celery.map, ...) are not ours to run for any
                # producer: a message naming one is an unknown task, recorded like any other.
                del strategies[name]

    def stop(self) -> None:
        """A warm shutdown: consuming stops, then every job under way finishes and its message is acknowledged
        (Celery closes the connection only after the hub has sent what is pending)."""
        super().stop()
        get_runtime().drain()

    def terminate(self) -> None:
        """A cold shutdown: no waiting; the messages of jobs under way go back to the broker."""
        super().stop()

    def _job_messages(self) -> JobMessages:
        consumer: Any = self  # celery-types does not describe these
        if not self.app.conf.worker_send_task_events:
            return JobMessages(get_runtime(), consumer.connection_errors)

        # Task events for Flower (TASK_EVENTS), sent from the consumer's thread like Celery's own. Through one
        # queue: the consumer runs its pending callbacks in no set order, and a task's events must keep theirs.
        pending: deque[tuple[str, dict[str, Any]]] = deque()

        def flush() -> None:
            eventer = consumer.event_dispatcher  # a new one after each reconnection
            while pending:
                kind, fields = pending.popleft()
                eventer.send(kind, **fields)

        def send(*events: tuple[str, dict[str, Any]]) -> None:
            pending.extend(events)
            consumer.call_soon(flush)

        return JobMessages(get_runtime(), consumer.connection_errors, send)

    def _guarded(self, strategy: Callable[..., Any]) -> Callable[..., Any]:
        """A strategy runs in the consumer itself: anything it raises on a message (a body that is not
        ``[args, kwargs, embed]``, such as ``[1]`` or ``"text"``) would kill the worker process, and the
        unacknowledged message the next worker too. It is an invalid task message."""

        def run(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return strategy(message, body, *args, **kwargs)
            except (InvalidTaskError, ContentDisallowed, DecodeError):
                raise  # Celery's own handling records these through the hooks below
            except Exception as error:
                return self.on_invalid_task(body, message, InvalidTaskError(f"{type(error).__name__}: {error}"))

        return run

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError as error:
            # The same kombu failure while closing the dead connection (giving back unacknowledged messages).
            log.warning("broker.close_failed", error=f"{type(error).__name__}: {error}", cause=repr(exc))

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
