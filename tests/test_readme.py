"""The README's "Local ACS" section works by copy-paste: its command blocks, run as written (on free ports, in a
fresh folder), take a newcomer from nothing to a `transferred` job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.config import ENVIRONMENT
from worker.processes import free_port, stop, wait_for_http

README = Path(__file__).resolve().parent.parent / "README.md"
VARIABLES = {variable for variable, _ in ENVIRONMENT.values()}
LONG_RUNNING = ("acs-transfer emulator", "acs-transfer serve", "celery -A worker worker")


def section(title: str) -> str:
    text = README.read_text()
    return text.split(f"\n### {title}", 1)[1].split("\n#", 1)[0]


def command_blocks(text: str) -> list[list[str]]:
    """The lines of each ```sh block, without comments."""
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    return [[line.split("  #")[0].strip() for line in block.splitlines() if line.strip()] for block in blocks]


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[tuple[dict[str, str], list[subprocess.Popen[bytes]]]]:
    """A new user's shell: no setting in the environment, the project's commands on PATH, a fresh folder."""
    env = {key: value for key, value in os.environ.items() if key not in VARIABLES}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    started: list[subprocess.Popen[bytes]] = []
    yield env, started
    for process in started:
        stop(process)


def test_local_acs_section_reaches_a_transferred_job(
    tmp_path: Path, shell: tuple[dict[str, str], list[subprocess.Popen[bytes]]]
) -> None:
    env, started = shell
    ports = {"8089": str(free_port()), "8080": str(free_port())}
    text = section("Local ACS")
    for written, port in ports.items():
        text = text.replace(written, port)
    blocks = command_blocks(text)
    env["SERVE_PORT"] = ports["8080"]  # the README relies on serve's default port, 8080
    assert blocks[0][0].startswith("acs-transfer emulator")
    assert [block[-1].split()[:2] for block in blocks[1:3]] == [["acs-transfer", "serve"], ["celery", "-A"]]

    def background(command: str, exports: list[str], name: str) -> subprocess.Popen[bytes]:
        script = "; ".join([*exports, f"exec {command}"])
        with (tmp_path / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                ["bash", "-c", script],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        return process

    def run(command: str, exports: list[str]) -> str:
        script = "; ".join([*exports, command])
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"{command}: {done.stderr}"
        return done.stdout

    # Terminal 1: the emulator prints the export lines the other terminals paste.
    emulator = background(blocks[0][0], [], "emulator")
    wait_for_http(f"http://127.0.0.1:{ports['8089']}/_emulator/health", emulator)
    printed = [line for line in (tmp_path / "emulator.log").read_text().splitlines() if line.startswith("export ")]
    assert len(printed) == 2, (tmp_path / "emulator.log").read_text()

    # Terminals 2 and 3: serve and the worker; terminal 4: enqueue and status.
    for block, name in ((blocks[1], "serve"), (blocks[2], "worker")):
        exports = [*printed, *(line for line in block if line.startswith("export "))]
        (command,) = [line for line in block if line.startswith(LONG_RUNNING)]
        background(command, exports, name)
    wait_for_http(f"http://127.0.0.1:{ports['8080']}/healthz", started[1])
    exports = [*printed, *(line for line in blocks[3] if line.startswith("export "))]
    enqueue, status = [line for line in blocks[3] if not line.startswith("export ")]
    job_id = run(enqueue, exports).strip()
    deadline = time.monotonic() + 60
    shown = ""
    while not re.search(r"^state\s+transferred$", shown, re.MULTILINE):
        assert time.monotonic() < deadline, f"not transferred: {shown}; logs in {tmp_path}"
        time.sleep(0.5)
        shown = run(status.replace("JOB_ID", job_id), exports)
    assert all(process.poll() is None for process in started), f"a process exited; logs in {tmp_path}"
