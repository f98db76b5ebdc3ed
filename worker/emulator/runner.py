"""Serving the emulator: in-process for tests (`start_emulator`) or blocking for the CLI (`run_emulator`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import sys
from types import TracebackType

from aiohttp import web

from worker.emulator.config import EmulatorConfig
from worker.emulator.server import STATE, create_emulator_app
from worker.emulator.state import EmulatorState
from worker.processes import stop_signal

# Hanging faults can keep handlers alive for their whole duration; shutting down must not wait for them.
_SHUTDOWN_TIMEOUT = 0.5


class Emulator:
    """A running emulator: its base `url`, `port`, in-memory `state`, and `close()`."""

    def __init__(self, runner: web.AppRunner, url: str, port: int) -> None:
        self._runner = runner
        self.url = url
        self.port = port
        self.app = runner.app
        self.state: EmulatorState = runner.app[STATE]
        self._closed = False

    async def close(self) -> None:
        """Stop serving; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._runner.cleanup()
        # Handlers whose client already left are no longer aiohttp's to cancel.
        running = list(self.state.running)
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> Emulator:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()


async def start_emulator(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> Emulator:
    """Serve on `host`:`port` (0 picks a free port) until `Emulator.close()`."""
    runner = web.AppRunner(create_emulator_app(config), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    actual_port = int(bound[1])
    shown_host = f"[{host}]" if ":" in host else host
    scheme = "https" if ssl_context is not None else "http"
    return Emulator(runner, f"{scheme}://{shown_host}:{actual_port}", actual_port)


def run_emulator(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly. Prints the base URL once listening. After SIGINT
    (Ctrl-C) raises KeyboardInterrupt, as any Python program does, so that a command can say it was interrupted."""
    if asyncio.run(_serve(config, host, port, ssl_context)) == signal.SIGINT:
        raise KeyboardInterrupt
    print("ACS emulator stopped", file=sys.stderr, flush=True)


async def _serve(config: EmulatorConfig, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
    emulator = await start_emulator(config, host, port, ssl_context)
    try:
        print(f"ACS emulator listening on {emulator.url}", flush=True)
        return await stop_signal()
    finally:
        await emulator.close()
