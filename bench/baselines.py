"""The Celery tasks a user would write instead of running this project's worker, for `bench/throughput.py`.

    celery -A bench.baselines worker --pool threads --concurrency 64 --queues Q

Configured only from ``BENCH_*`` variables (set by the harness). Every task takes one keyword argument,
``call_connection_id``, and appends ``<id> <unix time> <status>`` to a file of its process under
``BENCH_DONE_DIR`` when it finishes, so the harness can tell when a run is over without asking the emulator.

The broker side is the worker's own (`worker.queue.broker.celery_config`: quorum queue, publisher confirms, late
acks, prefetch 2) without task events: the baselines differ from ours in what the task does, not in how the
queue delivers.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from azure.communication.callautomation import CallAutomationClient, PhoneNumberIdentifier
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from celery import Celery, signals

from bench.wire import BODY, TARGET, transfer_request
from worker.config import DEFAULT_API_VERSION, AcsCredentials, Settings
from worker.queue.broker import celery_config, transfer_queue

NOOP, NAIVE, SDK = "bench.noop", "bench.naive", "bench.sdk"


def make_app(broker_url: str, queue: str) -> Celery:
    """The app for one queue; the harness builds the same one to publish."""
    settings = Settings(broker_url=broker_url, queue=queue)
    config = celery_config(settings)
    # The baselines keep the delivery they were measured with: one queue, prefetch 2. (Ours has since moved to
    # two lanes and prefetch 1; a change on our side must not move the baselines.)
    config["task_queues"] = [transfer_queue(settings)]
    config["worker_prefetch_multiplier"] = 2
    # Ours records undecodable messages in its ledger; a baseline has none.
    config.pop("worker_consumer", None)
    # Celery's default, and what a user's task runs with: no task events. (With events on, the threads pool's
    # threads publish them over the consumer's own AMQP connection and the worker stalls until the broker drops it.)
    config["worker_send_task_events"] = False
    config["task_send_sent_event"] = False
    app = Celery("bench_baselines", set_as_current=False)
    app.config_from_object(config)
    return app


app = make_app(
    os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"), os.environ.get("BENCH_QUEUE", "bench")
)
_connection_string = os.environ.get("BENCH_ACS_CONNECTION_STRING", "")
_credentials = AcsCredentials.from_connection_string(_connection_string) if _connection_string else None
_done_dir = Path(os.environ.get("BENCH_DONE_DIR", "."))
_done_fd: tuple[int, int] | None = None  # (pid, fd): a prefork child must not write through its parent's fd
_local = threading.local()


def _done(call_connection_id: str, status: int) -> None:
    global _done_fd  # noqa: PLW0603 - one append-only file per process, opened after fork
    if _done_fd is None or _done_fd[0] != os.getpid():
        path = _done_dir / f"done-{os.getpid()}.log"
        _done_fd = (os.getpid(), os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    # One write per line on an O_APPEND file: lines from many threads never interleave.
    os.write(_done_fd[1], f"{call_connection_id} {time.time():.6f} {status}\n".encode())


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    (_done_dir / f"ready-{os.getpid()}").touch()


@app.task(name=NOOP, ignore_result=True)
def noop(call_connection_id: str) -> None:
    """Nothing but the queue: the ceiling every other mode is held against."""
    _done(call_connection_id, 0)


@app.task(name=NAIVE, ignore_result=True)
def naive(call_connection_id: str) -> None:
    """What most people write: a fresh event loop and a fresh session (so a fresh connection) per job."""
    status = asyncio.run(_post_once(call_connection_id))
    _done(call_connection_id, status)
    if status != 202:
        raise RuntimeError(f"ACS answered {status}")


async def _post_once(call_connection_id: str) -> int:
    assert _credentials is not None, "BENCH_ACS_CONNECTION_STRING is not set"
    url, headers = transfer_request(_credentials, call_connection_id)
    async with aiohttp.ClientSession() as session, session.post(url, data=BODY, headers=headers) as response:
        await response.read()
        return response.status


def _client() -> CallAutomationClient:
    # One client per thread: the SDK's requests session is not meant to be shared by threads, and a shared
    # one would overflow its 10-connection pool under the threads pool.
    client: CallAutomationClient | None = getattr(_local, "client", None)
    if client is None:
        assert _credentials is not None, "BENCH_ACS_CONNECTION_STRING is not set"
        key = AzureKeyCredential(base64.b64encode(_credentials.access_key).decode())
        client = CallAutomationClient(_credentials.endpoint, key, api_version=DEFAULT_API_VERSION)
        _local.client = client
    return client


@app.task(name=SDK, ignore_result=True)
def sdk(call_connection_id: str) -> None:
    """What an Azure user would pick: the official client, synchronous, one call per job."""
    try:
        _client().get_call_connection(call_connection_id).transfer_call_to_participant(PhoneNumberIdentifier(TARGET))
    except HttpResponseError as error:
        _done(call_connection_id, int(error.status_code or 0))
        raise
    _done(call_connection_id, 202)
