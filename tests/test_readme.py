"""The README's command blocks work by copy-paste: run as written (on free ports, in a fresh folder) they take a
newcomer from nothing to a `transferred` job, start two workers side by side and take a transfer over HTTP; the
synopsis lines name only commands and options that exist."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest

from worker.config import ENVIRONMENT, Settings
from worker.emulator.config import DEFAULT_RESOURCE_ID
from worker.processes import free_port, new_access_key, stop, wait_for_http

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


def start(
    script: str, env: dict[str, str], folder: Path, name: str, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """Run a shell script in the background, in its own process group (which `stop` signals), logging to
    `folder/name.log`."""
    with (folder / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started.append(process)
    return process


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
        return start("; ".join([*exports, f"exec {command}"]), env, tmp_path, name, started)

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


def _wait_for_event(log: Path, event: str, process: subprocess.Popen[bytes], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for line in log.read_text().splitlines(keepends=True):
            try:  # the last line may be half written
                fields = json.loads(line) if line.startswith("{") and line.endswith("\n") else {}
            except ValueError:
                continue
            if fields.get("event") == event:
                return dict(fields)
        assert process.poll() is None, f"exited with {process.returncode}: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {event} within {timeout:.0f} s: {log.read_text()[-2000:]}"
        time.sleep(0.2)


def test_running_workers_block_runs_as_written(
    tmp_path: Path, shell: tuple[dict[str, str], list[subprocess.Popen[bytes]]], rabbitmq_url: str
) -> None:
    """Both lines, on one host and broker: the second worker starts beside the first with the name and
    concurrency it was given. As written they use the node names celery@host and worker2@host, so no other
    worker on this broker may have either."""
    env, started = shell
    queue = f"acs-readme-{secrets.token_hex(4)}"
    env.update(
        CELERY_BROKER_URL=rabbitmq_url,
        TRANSFER_QUEUE=queue,
        ACS_CONNECTION_STRING=f"endpoint=http://127.0.0.1:9/;accesskey={new_access_key()}",
        LOG_LEVEL="INFO",
    )
    (block,) = command_blocks(section("Running workers"))
    assert [line.split()[:4] for line in block] == [["celery", "-A", "worker", "worker"]] * 2
    ready = []
    try:
        for number, command in enumerate(block):
            process = start(f"exec {command}", env, tmp_path, f"worker{number}", started)
            ready.append(_wait_for_event(tmp_path / f"worker{number}.log", "worker.ready", process))
        assert all(process.poll() is None for process in started), f"a worker exited; logs in {tmp_path}"
    finally:
        for process in started:  # before their queues go, or they would declare them again
            stop(process)
        with kombu.Connection(rabbitmq_url) as connection:
            for name in (queue, f"{queue}.bulk"):
                kombu.Queue(name, queue_arguments={"x-queue-type": "quorum"})(connection.default_channel).delete()
    host = socket.gethostname()
    assert ready[1]["node"] == f"worker2@{host}" != ready[0]["node"]
    assert ready[1]["concurrency"] == 32
    assert ready[0]["concurrency"] == Settings().worker_concurrency


def test_http_intake_block_runs_as_written(
    tmp_path: Path, shell: tuple[dict[str, str], list[subprocess.Popen[bytes]]]
) -> None:
    """The curl line, against `acs-transfer serve` on the embedded defaults, makes a job."""
    env, started = shell
    port = str(free_port())
    token = secrets.token_urlsafe(24)
    env.update(
        INTAKE_TOKENS=token,
        SERVE_PORT=port,
        ACS_CONNECTION_STRING=f"endpoint=http://127.0.0.1:9/;accesskey={new_access_key()}",
        TOKEN=token,
        # As the Local ACS section's emulator printed them: serve verifies outcome events too.
        ACS_RESOURCE_ID=DEFAULT_RESOURCE_ID,
        CALLBACK_JWKS_URL="http://127.0.0.1:9/calling/keys",
    )
    (block,) = command_blocks(section("Over HTTP"))
    (curl,) = [" ".join(line.rstrip("\\").strip() for line in block)]
    assert curl.startswith("curl ")
    serve = start("exec acs-transfer serve", env, tmp_path, "serve", started)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", serve)

    def post() -> dict[str, Any]:
        done = subprocess.run(
            ["bash", "-c", curl.replace("8080", port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    job = post()
    assert job["state"] == "queued", job
    assert post()["job_id"] == job["job_id"]  # the same Idempotency-Key again is the same job


#: a project command and the plain words after it that name a subcommand
SHOWN = re.compile(r"(?:acs-transfer|celery -A worker|python -m bench\.\w+)(?: [a-z][a-z-]*(?=\s|$))*")


def test_every_option_the_readme_shows_exists() -> None:
    """The synopsis lines cannot run as written (they show alternatives in brackets), so each command they name
    must exist and each option they show must be one it takes."""
    shown = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            code = line.split("  #")[0]
            found = SHOWN.search(code)
            if found and not code.lstrip().startswith("docker "):
                shown.append((found.group(0), code[found.end() :]))
    assert len(shown) >= 10, shown
    helps: dict[str, str] = {}
    for name, rest in shown:
        if name not in helps:
            words = name.split()
            command = (
                [sys.executable, *words[1:]]
                if words[0] == "python"
                else [f"{Path(sys.executable).parent}/{words[0]}", *words[1:]]
            )
            done = subprocess.run(
                [*command, "--help"], cwd=README.parent, capture_output=True, text=True, timeout=60, check=False
            )
            assert done.returncode == 0, f"{name} --help: {done.stderr[-1500:]}"
            helps[name] = done.stdout
        for option in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helps[name]), f"{name} has no {option}"
