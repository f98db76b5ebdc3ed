"""The per-process runtime: one event loop thread, one aiohttp session, one ledger pool, one sweeper and one
dispatcher (each doing work only while it holds its lease in the ledger).

Every job message runs on this loop (`worker.deliver.strategy`), so one process keeps many requests in flight
over one connection pool. Created lazily after fork, never per message.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future, wait
from typing import Any, TypeVar

from aiohttp import web

from worker.acs.client import AcsClient
from worker.acs.entra import AccessTokens, default_credential
from worker.config import AcsCredentials, Settings
from worker.deliver.dispatcher import Dispatcher
from worker.deliver.ratelimit import Limiter, build_limiter
from worker.deliver.sweeper import run_sweeper
from worker.deliver.transfer import Context
from worker.health import probes
from worker.ledger import Ledger
from worker.logs import get_logger, register_secret
from worker.queue.app import create_app
from worker.queue.publisher import Publisher

T = TypeVar("T")
log = get_logger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.pid = os.getpid()
        self.publisher = Publisher(create_app(settings), settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="acs-transfer-loop", daemon=True)
        self._context: Context | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._probes: web.AppRunner | None = None
        #: set when the worker stops: jobs waiting on an outage give their messages back instead of waiting on
        self.stopping = asyncio.Event()
        self._jobs: set[Future[Any]] = set()

    def start(self, sweep: bool = True) -> None:
        self._thread.start()
        self.run(self._open(sweep))
        log.info("worker.started", worker_id=self.worker_id, settings=repr(self.settings))

    async def _open(self, sweep: bool) -> None:
        client = self._acs_client()
        ledger = await Ledger.open(self.settings.ledger_url)
        self._context = Context(
            self.settings, ledger, client, self.worker_id, limiter=self._limiter(), authorize=client.authorize
        )
        if self.settings.worker_metrics_port:
            await self._serve_probes(ledger)
        if sweep:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.create_task(
                run_sweeper(self._context, self.publisher.publish_jobs, self.publisher.queue_depths)
            )
            self._dispatcher = loop.create_task(Dispatcher(self._context, self.publisher.publish_jobs).run())

    def _acs_client(self) -> AcsClient:
        """The ACS client; under Microsoft Entra ID its credential is made here, on this loop, and closed with it."""
        auth = self.settings.acs_auth
        if isinstance(auth, AcsCredentials):
            register_secret(auth.access_key)
            register_secret(self.settings.acs_connection_string)
        tokens = None if isinstance(auth, AcsCredentials) else AccessTokens(default_credential())
        settings = self.settings
        timeouts = (settings.connect_timeout, settings.request_timeout)
        return AcsClient(auth, settings.api_version, *timeouts, settings.max_connections, tokens)

    def _limiter(self) -> Limiter:
        settings = self.settings
        return build_limiter(
            settings.rate_limit,
            settings.rate_limit_burst,
            settings.rate_limit_redis_url,
            f"acs-transfer:rate:{settings.queue}",
        )

    async def _serve_probes(self, ledger: Ledger) -> None:
        app = web.Application()
        app.add_routes(probes.routes(self.settings, ledger, self.publisher.queue_depths))
        self._probes = web.AppRunner(app, access_log=None)
        await self._probes.setup()
        await web.TCPSite(self._probes, self.settings.serve_host, self.settings.worker_metrics_port).start()
        log.info("worker.probes", host=self.settings.serve_host, port=self.settings.worker_metrics_port)

    @property
    def context(self) -> Context:
        assert self._context is not None, "Runtime.start() was not called"
        return self._context

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def start_job(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Run a job's coroutine on the loop; `stop` waits for it."""
        future = self.submit(coroutine)
        self._jobs.add(future)
        future.add_done_callback(self._jobs.discard)
        return future

    def drain(self) -> None:
        """Let every job under way finish (a retry's back-off included); jobs waiting on an outage give their
        messages back. Called by the worker's consumer while it can still acknowledge them, and by `stop`."""
        assert threading.current_thread() is not self._thread, "drain() would wait on its own loop"
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.stopping.set)
            wait(list(self._jobs))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the process's loop from any other thread and wait for its result."""
        return self.submit(coroutine).result()

    async def _close(self) -> None:
        for task in (self._sweeper, self._dispatcher):
            if task is not None:
                task.cancel()
        if self._probes is not None:
            await self._probes.cleanup()
        if self._context is not None:
            sender = self._context.sender
            if isinstance(sender, AcsClient):
                await sender.close()
            await self._context.ledger.close()
            await self._context.limiter.close()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.drain()
            self.run(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            log.info("worker.stopped", worker_id=self.worker_id)


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime, started on first use (and again in a forked child)."""
    global _runtime  # noqa: PLW0603 - one runtime per process by design
    with _lock:
        if _runtime is None or _runtime.pid != os.getpid():
            runtime = Runtime(Settings.from_env())
            runtime.start()
            _runtime = runtime
        return _runtime


def stop_runtime() -> None:
    global _runtime  # noqa: PLW0603
    with _lock:
        if _runtime is not None and _runtime.pid == os.getpid():
            _runtime.stop()
        _runtime = None
