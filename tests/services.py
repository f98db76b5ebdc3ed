"""Private service instances a test may stop and start at will without disturbing the shared ones:
a Redis server and a PostgreSQL cluster of its own, on free loopback ports, removed afterwards."""

from __future__ import annotations

import contextlib
import glob
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from worker.processes import free_port


def _wait_port(port: int, up: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            listening = True
        except OSError:
            listening = False
        if listening == up:
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not {'open' if up else 'close'} within {timeout:.0f}s")


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="acs-test-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None
        _wait_port(self.port, up=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class PrivatePostgres:
    """A throwaway cluster run by the postgres user (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="acs-test-pg-"))
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not binaries:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql")
        self._bin = Path(binaries[-1])
        shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(str(self._bin / "initdb"), "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres")

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        data = str(self.folder / "data")
        self._as_postgres(str(self._bin / "pg_ctl"), "-D", data, "-o", options, "-l", f"{data}/log", "-w", "start")
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        self._as_postgres(str(self._bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        _wait_port(self.port, up=False)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, TimeoutError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
