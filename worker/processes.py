"""Starting and stopping the package's own processes (worker, emulator) for the demo, tests and benchmarks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

#: how a server is asked to stop: SIGTERM by a supervisor (a clean stop), SIGINT by Ctrl-C (an interruption)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def stop_signal() -> int:
    """Wait for SIGINT or SIGTERM and return which came. The loop handles both meanwhile, so neither interrupts
    whatever the loop is running; the caller shuts down cleanly, then tells the two apart."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()

    def note(sig: int) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, note, sig)
    try:
        return await received
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_access_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = {**os.environ, **overrides}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def spawn_worker(
    env: Mapping[str, str],
    log_file: Path | None = None,
    concurrency: int | None = None,
    queue: str | None = None,
) -> subprocess.Popen[bytes]:
    """`celery -A worker worker` as a child process in its own process group."""
    command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "WARNING", "--without-mingle"]
    command += ["--without-gossip", "--hostname", f"acs-transfer-{secrets.token_hex(3)}@%h"]
    if concurrency is not None:
        command += ["--concurrency", str(concurrency)]
    if queue is not None:
        command += ["--queues", queue]
    return _spawn(command, env, log_file)


def spawn_emulator(
    env: Mapping[str, str], port: int, log_file: Path | None = None, options: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "worker.cli", "emulator", "--port", str(port), *options]
    process = _spawn(command, env, log_file)
    wait_for_http(f"http://127.0.0.1:{port}/_emulator/health", process)
    return process


def _spawn(command: list[str], env: Mapping[str, str], log_file: Path | None) -> subprocess.Popen[bytes]:
    output = log_file.open("ab") if log_file is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, env=dict(env), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if log_file is not None:
            output.close()  # type: ignore[union-attr]


def wait_for_http(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback URL built by us
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
    """Ask the process group to stop, then kill it if it has not within `timeout`; returns the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(process)
    return int(process.returncode if process.returncode is not None else -9)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group: the worker dies mid-whatever, as in a crash."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
