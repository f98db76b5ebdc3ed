"""Metrics, health and readiness, on the server and on a worker; readiness follows real services going away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.services import PrivatePostgres, PrivateRedis
from tests.stack import Stack
from worker.config import Settings
from worker.ledger import State
from worker.processes import free_port
from worker.serve.server import create_server_app


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_server_and_worker_metrics_move_with_the_jobs(make_stack: Callable[..., Any]) -> None:
    metrics_port = free_port()
    stack: Stack = await make_stack("rabbitmq", "postgresql", serve=True, worker_metrics_port=metrics_port)
    await stack.set_faults({"callbacks": {"delay_ms": 300}})  # let every 202 be recorded before its event
    stack.start_worker()
    worker_url = f"http://127.0.0.1:{metrics_port}"
    for _ in range(100):
        try:
            status, _ = await get(f"{worker_url}/healthz")
            break
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)
    assert status == 200
    # The server runs in this test process, whose counters earlier tests may have moved: compare against now.
    _, text = await get(f"http://127.0.0.1:{stack.settings.serve_port}/metrics")
    applied_before = value(samples(text), "acs_transfer_callback_events_total", result="applied")
    job_ids = [stack.enqueue(f"call-metrics-{index}") for index in range(5)]
    for job_id in job_ids:
        await stack.wait_for(lambda j=job_id: stack.job(j).state == State.TRANSFERRED, "the outcome")

    status, text = await get(f"{worker_url}/metrics")
    worker = samples(text)
    assert status == 200
    assert value(worker, "acs_transfer_attempts_total", outcome="accepted", status="202") == 5
    assert value(worker, "acs_transfer_request_seconds_count") == 5
    assert value(worker, "acs_transfer_transitions_total", to_state=State.ACCEPTED) == 5
    assert value(worker, "acs_transfer_in_flight") == 0

    status, text = await get(f"http://127.0.0.1:{stack.settings.serve_port}/metrics")
    server = samples(text)
    assert value(server, "acs_transfer_callback_events_total", result="applied") == applied_before + 5
    assert value(server, "acs_transfer_jobs", state=State.TRANSFERRED) == 5
    assert value(server, "acs_transfer_jobs", state=State.QUEUED) == 0
    assert value(server, "acs_transfer_ledger_lag_seconds") == 0
    status, body = await get(f"http://127.0.0.1:{stack.settings.serve_port}/readyz")
    assert status == 200, body


@pytest.fixture
async def private_services() -> AsyncIterator[tuple[PrivateRedis, PrivatePostgres]]:
    redis_server, postgres = PrivateRedis(), await asyncio.to_thread(PrivatePostgres)
    redis_server.start()
    await asyncio.to_thread(postgres.start)
    yield redis_server, postgres
    redis_server.remove()
    await asyncio.to_thread(postgres.remove)


async def test_readyz_fails_while_the_broker_or_the_ledger_is_down(
    private_services: tuple[PrivateRedis, PrivatePostgres], tmp_path: Any
) -> None:
    redis_server, postgres = private_services
    settings = replace(
        Settings(home=tmp_path, callback_verify=False),
        broker_url=redis_server.url,
        ledger_url=postgres.url,
        serve_port=free_port(),
    )
    runner = web.AppRunner(await create_server_app(settings))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.serve_port).start()
    url = f"http://127.0.0.1:{settings.serve_port}/readyz"
    try:
        assert (await get(url))[0] == 200
        redis_server.stop()
        status, body = await get(url)
        assert status == 503
        assert '"broker": {"ok": false' in body
        assert '"ledger": {"ok": true' in body
        redis_server.start()
        assert (await get(url))[0] == 200
        await asyncio.to_thread(postgres.stop)
        status, body = await get(url)
        assert status == 503
        assert '"ledger": {"ok": false' in body
        assert (await get(url.replace("readyz", "healthz")))[0] == 200  # alive, just not ready
        await asyncio.to_thread(postgres.start)
        assert (await get(url))[0] == 200
    finally:
        await runner.cleanup()
