"""A whole system per test: emulator in this process, a fresh ledger, a queue of its own, worker processes.

`make_stack` (a fixture in conftest.py) builds one; tests start, kill and stop workers at will.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import kombu
import pytest
from aiohttp import web

from worker.config import Settings
from worker.emulator import Emulator, EmulatorConfig, start_emulator
from worker.ledger import SETTLED_STATES, Job, Lane
from worker.processes import child_env, free_port, spawn_worker, stop
from worker.produce.producer import Producer
from worker.queue.broker import TASK_NAME, lane_queues, transfer_queue
from worker.serve.server import create_server_app

KEY = secrets.token_bytes(32)


@dataclass
class Stack:
    settings: Settings
    emulator: Emulator
    log_dir: Path
    producer: Producer
    workers: list[Any] = field(default_factory=list)

    def start_worker(self) -> Any:
        env = child_env({**self.settings.to_env(), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
        process = spawn_worker(env, self.log_dir / f"worker-{len(self.workers)}.log", concurrency=16)
        self.workers.append(process)
        return process

    def enqueue(self, call: str, **fields: Any) -> str:
        message = {"callConnectionId": call, "targetParticipant": "4:+15551234567", **fields}
        return self.producer.enqueue(message).job_id

    def job(self, job_id: str) -> Job:
        return self.producer.ledger.get(job_id)

    async def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; worker logs in {self.log_dir}")
            await asyncio.sleep(0.1)

    async def settled(self, job_id: str, timeout: float = 45.0) -> Job:
        await self.wait_for(lambda: self.job(job_id).state in SETTLED_STATES, f"job {job_id} to settle", timeout)
        return self.job(job_id)

    def requests_for(self, call: str) -> list[Any]:
        return [entry for entry in self.emulator.state.requests if entry.call_connection_id == call]

    async def set_faults(self, plan: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as session:
            response = await session.put(f"{self.emulator.url}/_emulator/faults", json=plan)
            assert response.status == 200, await response.text()

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.log_dir.glob("worker-*.log")))


def broker_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "filesystem":
        return "filesystem://"
    return str(request.getfixturevalue(f"{kind}_url"))


def celery_message(task_id: str, kwargs: dict[str, Any], task: str = TASK_NAME) -> tuple[bytes, dict[str, Any]]:
    """A Celery protocol 2 message as any AMQP client can build it: headers plus a JSON body."""
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "retries": 0}
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return json.dumps(body).encode(), headers


def publish_raw(settings: Settings, messages: list[tuple[bytes, dict[str, Any]]], lane: str = Lane.LIVE) -> None:
    """Publish with plain kombu, no Celery involved."""
    queue = transfer_queue(settings, lane)
    with kombu.Connection(settings.broker_url) as connection:
        producer = connection.Producer()
        for body, headers in messages:
            producer.publish(
                body,
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
            )


def _delete_queue(settings: Settings) -> None:
    if settings.broker_url.startswith("amqp"):
        with kombu.Connection(settings.broker_url) as connection:
            for queue in lane_queues(settings):
                queue(connection.default_channel).delete()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """The emulator alone, in this process, checking signatures with `KEY`."""
    async with await start_emulator(EmulatorConfig(access_key=KEY)) as running:
        yield running


@pytest.fixture
async def make_stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Callable[[str, str], Any]]:
    stacks: list[Stack] = []
    emulators: list[Emulator] = []
    runners: list[web.AppRunner] = []

    async def build(broker: str, ledger: str, serve: bool = False, **overrides: Any) -> Stack:
        """A stack; `serve` adds `acs-transfer serve` in this process, receiving the emulator's signed events."""
        emulator = await start_emulator(EmulatorConfig(access_key=KEY))
        emulators.append(emulator)
        ledger_url = (
            f"sqlite:///{tmp_path / 'ledger.db'}" if ledger == "sqlite" else request.getfixturevalue("postgres_url")
        )
        settings = Settings(
            home=tmp_path / "home",
            acs_connection_string=f"endpoint={emulator.url}/;accesskey={base64.b64encode(KEY).decode()}",
            broker_url=broker_url(broker, request),
            ledger_url=ledger_url,
            queue=f"acs-test-{uuid.uuid4().hex[:10]}",
            request_timeout=3.0,
            backoff_base=0.05,
            backoff_cap=0.5,
            claim_lease=1.0,
            sweep_interval=0.5,
            republish_after=1.5,
            worker_concurrency=16,
        )
        if serve:
            port = free_port()
            settings = replace(
                settings,
                serve_port=port,
                callback_base_url=f"http://127.0.0.1:{port}",
                acs_resource_id=emulator.state.config.resource_id,
                callback_jwks_url=f"{emulator.url}/calling/keys",
            )
        settings = replace(settings, **overrides)
        stack = Stack(settings, emulator, tmp_path, Producer(settings))
        stacks.append(stack)
        if serve:
            runner = web.AppRunner(await create_server_app(settings))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", settings.serve_port).start()
            runners.append(runner)
        return stack

    yield build

    for stack in stacks:
        for process in stack.workers:
            stop(process)
        stack.producer.close()
        _delete_queue(stack.settings)
    for runner in runners:
        await runner.cleanup()
    for emulator in emulators:
        await emulator.close()
