"""Private service instances a test may stop, start or pause at will without disturbing the shared ones:
a Redis server, a PostgreSQL cluster and a RabbitMQ node of its own, on free loopback ports, removed afterwards."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from worker.processes import free_port

_RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


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
        self._paused: list[int] = []
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
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        data = str(self.folder / "data")
        self._as_postgres(str(self._bin / "pg_ctl"), "-D", data, "-o", options, "-l", f"{data}/log", "-w", "start")
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        self._as_postgres(str(self._bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        _wait_port(self.port, up=False)

    def _processes(self) -> list[int]:
        """The postmaster and every process it forked (backends, checkpointer, ...)."""
        pid_file = self.folder / "data" / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return []
        found = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                # The command name may hold spaces: the parent pid is the second field after its closing ')'.
                if int(stat.read_text().rpartition(")")[2].split()[1]) == postmaster:
                    found.append(int(stat.parent.name))
        return found

    def pause(self) -> int:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers. Returns how many processes."""
        stopped = self._processes()
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self._paused = stopped
        return len(stopped)

    def resume(self) -> None:
        for pid in self._paused + self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._paused = []

    def remove(self) -> None:
        self.resume()  # a frozen server would never stop
        with contextlib.suppress(subprocess.CalledProcessError, TimeoutError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class PrivateRabbitMQ:
    """A second RabbitMQ node of our own (own name, ports, data and cookie), so a test may stop and start its
    broker while the shared node on 5672 serves everyone else.

    Runs in the foreground in its own process group (no ``-detached``), so removing it can always kill what
    it started; its config file overrides the system one, which pins the listener to 5672."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="acs-test-rabbit-"))
        self.node = f"acs-chaos-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "enabled_plugins").write_text("[].\n")
        self._process: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        ctl_port = free_port()
        return {
            **os.environ,
            "HOME": str(self.folder),  # the Erlang cookie lives here, shared by the node and rabbitmqctl
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl_port),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def ctl(self, *command: str, timeout: float = 120.0) -> None:
        subprocess.run(
            [_RABBITMQ_BIN / "rabbitmqctl", "-n", self.node, *command],
            env=self._env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )

    def start(self) -> None:
        log = (self.folder / "server.out").open("ab")
        try:
            self._process = subprocess.Popen(
                [_RABBITMQ_BIN / "rabbitmq-server"],
                env=self._env(),
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self._await_startup()

    def _await_startup(self, timeout: float = 120.0) -> None:
        # await_startup fails at once while the node is not reachable yet: ask again until it is.
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self._process.returncode}; see {self.folder}")
            try:
                self.ctl("await_startup", timeout=max(5.0, deadline - time.monotonic()))
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        _wait_port(self.port, up=True)

    def stop_app(self) -> None:
        """Stop the broker but not the Erlang node: every connection drops, queues and messages stay on disk."""
        self.ctl("stop_app")
        _wait_port(self.port, up=False)

    def start_app(self) -> None:
        self.ctl("start_app")
        self._await_startup()

    def remove(self) -> None:
        if self._process is not None:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self.ctl("stop", timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(10)
            self._process = None
        shutil.rmtree(self.folder, ignore_errors=True)
