"""Security checks across the whole system.

- No secret (the ACS access key in raw-text, base64 and hex forms, the connection string, the intake tokens, the
  ledger's database password) appears in any log line, error, CLI output (`status`, `dead list`, `dead show`,
  `config`, `healthcheck`) of a full run with every process logging at DEBUG.
- The intake and the callback receiver refuse unauthenticated requests on every route, and bodies over the
  size limit.
- Messages are JSON only: a pickle that would run code is refused and recorded, never unpickled.
- The container runs as a non-root user (tests/test_dockerfile.py has the full check), and CI audits the
  dependencies for known vulnerabilities (.ci/run, pip-audit).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import kombu

from tests.stack import Stack
from worker.config import Settings
from worker.emulator.config import DEFAULT_RESOURCE_ID
from worker.ledger import FINAL_STATES, State, op_dead_messages
from worker.processes import child_env, free_port, spawn_emulator, spawn_worker, stop, wait_for_http
from worker.queue.broker import TASK_NAME, celery_config, transfer_queue

ROOT = Path(__file__).resolve().parent.parent


def _forms(secret: str | bytes) -> set[str]:
    """How a secret could show up in text."""
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(), raw.hex()}
    forms |= {form.rstrip("=") for form in forms}
    if isinstance(secret, str):
        forms.add(secret)
    return {form for form in forms if len(form) >= 8}


def _http(url: str, method: str = "GET", body: object = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _cli(env: dict[str, str], *arguments: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", *arguments],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    return f"$ acs-transfer {' '.join(arguments)} -> {done.returncode}\n{done.stdout}{done.stderr}"


def test_a_full_run_at_debug_level_shows_no_secret_anywhere(postgres_url: str, tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    tokens = (f"intake-{secrets.token_urlsafe(24)}", f"intake-{secrets.token_urlsafe(24)}")
    db_password = f"pw{secrets.token_urlsafe(18)}"
    emulator_port, serve_port = free_port(), free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    connection_string = f"endpoint={emulator_url}/;accesskey={base64.b64encode(key).decode()}"
    # The shared PostgreSQL trusts loopback, so any password works: it is there to be leaked, or not.
    ledger_url = postgres_url.replace("postgres@", f"postgres:{db_password}@", 1)
    assert db_password in ledger_url
    settings = Settings(
        home=tmp_path / "home",
        acs_connection_string=connection_string,
        ledger_url=ledger_url,
        request_timeout=1.0,
        backoff_base=0.05,
        backoff_cap=0.2,
        claim_lease=1.0,
        sweep_interval=0.5,
        republish_after=2.0,
        reconcile_after=8.0,  # at least the window, as Settings requires
        repeatability_window=8.0,
        window_safety_margin=2.0,
        serve_port=serve_port,
        callback_base_url=f"http://127.0.0.1:{serve_port}",
        acs_resource_id=DEFAULT_RESOURCE_ID,
        callback_jwks_url=f"{emulator_url}/calling/keys",
        intake_tokens=tokens,
        worker_metrics_port=free_port(),
        worker_concurrency=8,
    )
    env = child_env({**settings.to_env(), "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"})
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = []
    outputs: list[str] = []
    try:
        processes.append(spawn_emulator(env, emulator_port, logs / "emulator.log"))
        gone, slow = "call-sec-gone", "call-sec-slow"
        plan = {
            "seed": 3,
            "random": {"rate": 0.3, "faults": [{"kind": "status", "status": 503, "stage": "after"}]},
            "by_call": {
                gone: [{"kind": "status", "status": 404, "stage": "answer"}],
                # Hangs past the (short) repeatability window: the job ends unknown, then dead.
                slow: [{"kind": "timeout", "stage": "before", "seconds": 2}] * 8,
            },
            "callbacks": {"fail_calls": ["call-sec-1"], "duplicate_rate": 0.5},
        }
        assert _http(f"{emulator_url}/_emulator/faults", "PUT", plan)[0] == 200
        with (logs / "serve.log").open("ab") as output:
            server = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "serve"],
                env=env,
                cwd=ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append(server)
        wait_for_http(f"http://127.0.0.1:{serve_port}/healthz", server)
        processes.append(spawn_worker(env, logs / "worker.log", concurrency=8))
        intake = f"http://127.0.0.1:{serve_port}/v1/transfers"

        # Refused: no token, a wrong token, a token's near miss.
        good = {"callConnectionId": "call-sec-0", "targetParticipant": "4:+14255550123"}
        assert _http(intake, "POST", good)[0] == 401
        assert _http(intake, "POST", good, token=tokens[0][:-1])[0] == 401
        job_ids = []
        for index, call in enumerate(["call-sec-0", "call-sec-1", "call-sec-2", gone, slow]):
            status, body = _http(intake, "POST", {**good, "callConnectionId": call}, token=tokens[index % 2])
            assert status == 202, body
            job_ids.append(body["job_id"])
        status, body = _http(f"{intake}:batch", "POST", {"transfers": [{**good, "callConnectionId": "c-b"}, {}]},
                             token=tokens[0])  # fmt: skip
        assert status == 200
        job_ids += [item["job_id"] for item in body["results"] if item["status"] == "created"]

        deadline = time.monotonic() + 90
        final = {*FINAL_STATES, State.ACCEPTED}
        while time.monotonic() < deadline:
            states = {job: _http(f"{intake}/{job}", token=tokens[1])[1]["state"] for job in job_ids}
            if set(states.values()) <= final and State.DEAD in states.values():
                break
            time.sleep(0.5)
        assert set(states.values()) <= final, states
        assert {State.TRANSFERRED, State.TRANSFER_FAILED, State.FAILED, State.DEAD} <= set(states.values()), states
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{settings.worker_metrics_port}/metrics", timeout=10)
        outputs.append(metrics.read().decode())
        failed = next(job for job, state in states.items() if state == State.FAILED)
        dead = next(job for job, state in states.items() if state == State.DEAD)
        cli_env = {**env, "LOG_LEVEL": "DEBUG"}
        for arguments in (
            ("status", job_ids[0]),
            ("status", "--json", job_ids[1]),
            ("dead", "list"),
            ("dead", "show", failed),
            ("dead", "show", "--json", dead),
            ("config",),
            ("healthcheck",),
            ("status", "no-such-job"),
        ):
            outputs.append(_cli(cli_env, *arguments))
        # Errors too: a ledger that does not answer, named with the same password.
        broken = {**cli_env, "LEDGER_URL": f"postgresql://postgres:{db_password}@127.0.0.1:1/nowhere"}
        outputs.append(_cli(broken, "healthcheck", "--timeout", "2"))
        outputs.append(_cli(broken, "status", job_ids[0]))
        outputs.append(_cli(broken, "config"))
        outputs.append(repr(settings) + repr(settings.acs))
    finally:
        for process in reversed(processes):
            stop(process)
    text = "\n".join(outputs + [path.read_text(errors="replace") for path in sorted(logs.iterdir())])
    assert "acs.attempt" in text  # the logs really are there
    assert "job.transition" in text
    assert "***" in text  # and masking really happened (config, reprs)
    leaked = {
        form: name
        for name, secret in [
            ("access key", key),
            ("connection string", connection_string),
            ("intake token", tokens[0]),
            ("intake token", tokens[1]),
            ("database password", db_password),
        ]
        for form in _forms(secret)
        if form in text
    }
    assert leaked == {}, f"secrets in the output: {sorted(set(leaked.values()))}; see {logs}"
    assert "Signature=" not in text


async def test_every_intake_and_callback_route_refuses_unauthenticated_requests(
    make_stack: Callable[..., Any],
) -> None:
    stack: Stack = await make_stack("filesystem", "sqlite", serve=True, intake_tokens=("t" * 32,))
    base = f"http://127.0.0.1:{stack.settings.serve_port}"
    routes = [
        ("POST", "/v1/transfers"),
        ("POST", "/v1/transfers:batch"),
        ("GET", "/v1/transfers/some-job"),
        ("GET", "/v1/campaigns/some-campaign"),
        ("POST", "/v1/callbacks"),
        ("POST", "/v1/callbacks/some-job"),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path in routes:
            for authorization in (None, "Bearer ", "Bearer wrong", "Basic dDp0", f"Bearer {'t' * 31}"):
                headers = {} if authorization is None else {"Authorization": authorization}
                async with session.request(method, base + path, json={}, headers=headers) as response:
                    expected = {401} if authorization is None or path.startswith("/v1/callbacks") else {401, 403}
                    assert response.status in expected, (method, path, authorization, response.status)
        # Without any intake token configured, the intake refuses everyone: no token is known (401).
    bare: Stack = await make_stack("filesystem", "sqlite", serve=True, serve_port=free_port())
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{bare.settings.serve_port}/v1/transfers"
        async with session.post(url, json={}, headers={"Authorization": "Bearer anything"}) as response:
            assert response.status == 401


async def test_bodies_over_the_limit_are_refused_on_both_endpoints(make_stack: Callable[..., Any]) -> None:
    stack: Stack = await make_stack("filesystem", "sqlite", serve=True, intake_tokens=("t" * 32,))
    stack.settings = replace(stack.settings)
    limit = stack.settings.intake_max_body
    base = f"http://127.0.0.1:{stack.settings.serve_port}"
    token = stack.emulator.state.callbacks.signer.token()
    big = b"[" + b" " * (limit + 1) + b"]"
    async with aiohttp.ClientSession() as session:
        for path, authorization in (("/v1/transfers", "t" * 32), (f"/v1/callbacks/{'x' * 8}", token)):
            headers = {"Authorization": f"Bearer {authorization}", "Content-Type": "application/json"}
            async with session.post(base + path, data=big, headers=headers) as response:
                assert response.status == 413, path
    assert stack.producer.ledger.run(op_dead_messages, 10) == []


async def test_a_pickled_message_is_refused_not_executed(make_stack: Callable[..., Any], tmp_path: Path) -> None:
    assert celery_config(Settings())["accept_content"] == ["json"]
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    worker = stack.start_worker()
    marker = tmp_path / "pickle-ran"
    # A classic pickle payload: unpickling it runs os.system.
    bomb = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    queue = transfer_queue(stack.settings)

    def publish() -> None:
        with kombu.Connection(stack.settings.broker_url) as connection:
            connection.Producer().publish(
                bomb,
                headers={"lang": "py", "task": TASK_NAME, "id": "pickle-bomb"},
                content_type="application/x-python-serialize",
                content_encoding="binary",
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
            )

    await asyncio.to_thread(publish)

    def recorded() -> list[dict[str, Any]]:
        return [row for row in stack.producer.ledger.run(op_dead_messages, 10) if row["message_id"] == "pickle-bomb"]

    await stack.wait_for(lambda: bool(recorded()), "the pickle to be recorded as a dead message")
    assert "untrusted content of type pickle" in recorded()[0]["reason"]
    assert not marker.exists()
    assert worker.poll() is None


def test_the_container_runs_as_a_non_root_user() -> None:
    """The cheap cross-check; tests/test_dockerfile.py::test_final_stage_runs_as_a_non_root_user_set_before_its_command
    parses every stage."""
    users = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert users, "the Dockerfile sets no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_ci_audits_the_dependencies_before_the_tests() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "pip-audit" in script
    assert script.index("pip-audit") < script.index("python -m pytest")
    assert script.index("pip install") < script.index("pip-audit")
    dev = (ROOT / "pyproject.toml").read_text()
    assert '"pip-audit' in dev
    assert os.access(ROOT / ".ci" / "run", os.R_OK)
