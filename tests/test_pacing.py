"""The global rate limit in the send logic (in-process, real emulator and ledger) and across real worker
processes. (A campaign's pace is kept before its jobs are published: tests/test_lanes.py.)

What must hold: every HTTP attempt takes a token first; a first attempt's wait happens before First-Sent is
fixed; a retry goes before first attempts, and one that cannot get a token inside the repeatability window is
not sent; a 429 holds the global bucket back; and two workers sharing a Redis bucket stay within its rate
together.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.stack import KEY, Stack
from worker.acs.client import AcsClient
from worker.config import Settings
from worker.deliver.ratelimit import Limit, LocalBuckets, Pacer
from worker.deliver.transfer import Context, send_job
from worker.emulator import Emulator
from worker.ledger import Job, Ledger, State, SyncLedger
from worker.request.job import prepare_job
from worker.request.models import parse_transfer


@pytest.fixture
def settings(emulator: Emulator, tmp_path: Path) -> Settings:
    return Settings(
        acs_connection_string=f"endpoint={emulator.url}/;accesskey={base64.b64encode(KEY).decode()}",
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        request_timeout=2.0,
        backoff_base=0.05,
        backoff_cap=0.2,
        claim_lease=1.0,  # shorter than the waits below: the lease must be stretched over them
    )


@pytest.fixture
async def open_context(settings: Settings) -> AsyncIterator[Callable[[Pacer, Settings | None], Context]]:
    closers: list[Any] = []
    ledger = await Ledger.open(settings.ledger_url)

    def build(pacer: Pacer, custom: Settings | None = None) -> Context:
        used = custom or settings
        client = AcsClient(used.acs, used.api_version, 1.0, used.request_timeout, 10)
        closers.append(client)
        return Context(used, ledger, client, "test-worker", limiter=pacer)

    yield build
    for client in closers:
        await client.close()
    await ledger.close()


def create_job(settings: Settings, call: str, campaign: str | None = None) -> Job:
    request = parse_transfer({"callConnectionId": call, "targetParticipant": "4:+15551234567"})
    ledger = SyncLedger(settings.ledger_url)
    try:
        ((job, _),) = ledger.create_jobs([prepare_job(request, campaign=campaign)])
    finally:
        ledger.close()
    return job


async def set_faults(emulator: Emulator, plan: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session, session.put(f"{emulator.url}/_emulator/faults", json=plan) as r:
        assert r.status == 200, await r.text()


def requests_for(emulator: Emulator, call: str) -> list[Any]:
    return [entry for entry in emulator.state.requests if entry.call_connection_id == call]


async def test_a_first_attempt_waits_for_its_token_before_first_sent_is_fixed(
    emulator: Emulator, settings: Settings, open_context: Callable[[Pacer], Context]
) -> None:
    context = open_context(Pacer(LocalBuckets(), Limit("global", rate=1.0)))
    jobs = [create_job(settings, f"call-paced-{index}") for index in range(3)]
    done = await asyncio.gather(*(send_job(job.id, context) for job in jobs))
    assert [job.state if job else None for job in done] == [State.ACCEPTED] * 3
    assert [job.attempts if job else None for job in done] == [1, 1, 1]
    sent = [requests_for(emulator, f"call-paced-{index}")[0] for index in range(3)]
    times = sorted(entry.at for entry in sent)
    assert times[1] - times[0] >= 0.95
    assert times[2] - times[1] >= 0.95
    for job in done:
        assert job is not None
        assert job.first_sent is not None
        (entry,) = requests_for(emulator, job.call_connection_id)
        # First-Sent is the second the request left, not the second the job started waiting for its token.
        assert 0 <= entry.at - job.first_sent < 1.0


async def test_a_retry_that_gets_no_token_inside_the_window_is_not_sent(
    emulator: Emulator, settings: Settings, open_context: Callable[[Pacer, Settings], Context]
) -> None:
    narrow = replace(settings, repeatability_window=6.0, window_safety_margin=2.0)  # attempts start within 4 s
    context = open_context(Pacer(LocalBuckets(), Limit("global", rate=0.2)), narrow)  # a token every 5 s
    await set_faults(emulator, {"by_call": {"call-late": [{"kind": "status", "status": 503, "stage": "before"}]}})
    job = create_job(settings, "call-late")
    started = time.monotonic()
    done = await send_job(job.id, context)
    assert done is not None
    assert done.state == State.UNKNOWN
    assert "rate-limit token" in (done.reason or "")
    assert [entry.status for entry in requests_for(emulator, "call-late")] == [503]
    assert time.monotonic() - started < 2.0  # settled at once, without sleeping towards a token it cannot use


async def test_a_retry_does_not_wait_behind_first_attempts_for_a_token(
    emulator: Emulator, settings: Settings, open_context: Callable[[Pacer], Context]
) -> None:
    """Pacing must not cost a retry its window: with 20 first attempts waiting for global tokens (5 s of them at
    4/s), a job answered 503 is retried within about a second, not after all of them."""
    context = open_context(Pacer(LocalBuckets(), Limit("global", rate=4.0)))
    await set_faults(emulator, {"by_call": {"call-retry": [{"kind": "status", "status": 503, "stage": "before"}]}})
    retried = asyncio.ensure_future(send_job(create_job(settings, "call-retry").id, context))
    await asyncio.sleep(0)  # its first attempt takes the first token
    others = [create_job(settings, f"call-first-{index}") for index in range(20)]
    rest = asyncio.gather(*(send_job(job.id, context) for job in others))
    done = await retried
    assert done is not None
    assert done.state == State.ACCEPTED
    failed, again = requests_for(emulator, "call-retry")
    assert failed.status == 503
    assert again.at - failed.answered_at < 2.0
    firsts_before = [e for e in emulator.state.requests if e.call_connection_id != "call-retry" and e.at < again.at]
    assert len(firsts_before) <= 8
    assert [job.state if job else None for job in await rest] == [State.ACCEPTED] * 20


async def test_a_429_holds_the_global_bucket_back(
    emulator: Emulator, settings: Settings, open_context: Callable[[Pacer], Context]
) -> None:
    context = open_context(Pacer(LocalBuckets(), Limit("global", rate=50, burst=5)))
    fault = {"kind": "status", "status": 429, "stage": "before", "retry_after": 1.0}
    await set_faults(emulator, {"by_call": {"call-throttled": [fault]}})
    first = asyncio.ensure_future(send_job(create_job(settings, "call-throttled").id, context))
    deadline = time.monotonic() + 10
    while not any(entry.status == 429 for entry in requests_for(emulator, "call-throttled")):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    throttled_at = requests_for(emulator, "call-throttled")[0].answered_at
    other = await send_job(create_job(settings, "call-other").id, context)
    assert other is not None
    assert other.state == State.ACCEPTED
    assert requests_for(emulator, "call-other")[0].at - throttled_at >= 0.9
    done = await first
    assert done is not None
    assert done.state == State.ACCEPTED


def _max_in_window(times: list[float], window: float) -> int:
    most, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] > window:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_two_workers_sharing_a_redis_limit_stay_within_it_together(
    make_stack: Callable[[str, str], Any], redis_url: str
) -> None:
    rate, burst, count = 20.0, 2.0, 60
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    stack.settings = replace(
        stack.settings,
        rate_limit=rate,
        rate_limit_burst=burst,
        rate_limit_redis_url=redis_url,
        # Jobs wait in the workers' prefetch for their tokens: keep the sweeper from re-publishing them meanwhile
        # (harmless, but the duplicate deliveries it makes load the workers and blur the timing measured here).
        republish_after=60.0,
        claim_lease=10.0,
    )
    job_ids = [stack.enqueue(f"call-rate-{index}") for index in range(count)]
    stack.start_worker()
    stack.start_worker()
    # Wait on the emulator's own record only: a ledger query here would block the event loop the emulator
    # runs on, and requests arriving meanwhile would be stamped late, all at once.
    await stack.wait_for(lambda: len(stack.emulator.state.requests) >= count, "every request", timeout=60)
    await asyncio.sleep(0.5)
    assert [stack.job(job_id).state for job_id in job_ids] == [State.ACCEPTED] * count
    requests = list(stack.emulator.state.requests)
    repeated = sorted({e.call_connection_id for e in requests if len(stack.requests_for(e.call_connection_id)) > 1})
    assert len(requests) == count, [(call, [e.status for e in stack.requests_for(call)]) for call in repeated]
    assert stack.emulator.state.effects.calls_with_more_than_one_effect() == []
    times = sorted(entry.at for entry in requests)
    # In any window of W seconds the bucket hands out at most burst + rate * W tokens. A request reaches the
    # emulator a little after its token's slot (event loop wake-up, ledger write, HTTP) and that delay varies,
    # so a window may also hold requests whose slots were up to `jitter` before it.
    jitter = 0.2
    for window in (0.5, 1.0, 2.0):
        assert _max_in_window(times, window) <= burst + rate * (window + jitter), window
    assert times[-1] - times[0] >= (count - burst) / rate - jitter
    # Both workers sent: the limit was shared, not one worker doing all the work.
    for path in sorted(stack.log_dir.glob("worker-*.log")):
        attempts = [line for line in path.read_text().splitlines() if '"acs.attempt"' in line]
        assert attempts, f"{path.name} sent nothing"
        assert all(json.loads(line)["status"] == 202 for line in attempts)
