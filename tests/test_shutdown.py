"""A SIGTERM to a busy worker loses nothing and doubles nothing.

Celery's warm shutdown stops consuming, lets the requests already running finish, and leaves prefetched
messages unacknowledged (late acks), so the broker hands them to the next worker; a redelivered message whose
job already settled is skipped by the claim. The emulator's record of effects is the ground truth.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.stack import Stack
from worker.ledger import State
from worker.processes import stop

JOBS = 200


@pytest.mark.parametrize(
    ("broker", "ledger"), [("rabbitmq", "postgresql"), ("redis", "postgresql"), ("filesystem", "sqlite")]
)
async def test_sigterm_to_a_busy_worker_loses_nothing_and_doubles_nothing(
    make_stack: Callable[[str, str], Any], broker: str, ledger: str
) -> None:
    stack: Stack = await make_stack(broker, ledger)
    await stack.set_faults({"latency_ms": 200})
    first = stack.start_worker()
    calls = [f"call-term-{index}" for index in range(JOBS)]
    job_ids = [stack.enqueue(call) for call in calls]

    # Strike while the worker is mid-stream: some transfers done, many requests open at the emulator.
    effects = stack.emulator.state.effects

    def in_flight() -> int:
        return len(stack.emulator.state.requests) - effects.total_effects

    await stack.wait_for(lambda: effects.total_effects >= 40 and in_flight() >= 8, "a busy worker")
    requested = len(stack.emulator.state.requests)
    assert effects.total_effects < JOBS // 2, "the worker finished too much before SIGTERM"

    started = time.monotonic()
    # In a thread: the emulator shares this event loop and must keep answering the requests still open.
    code = await asyncio.to_thread(stop, first, 30, signal.SIGTERM)
    took = time.monotonic() - started
    assert code == 0, f"warm shutdown exited with {code}; logs in {stack.log_dir}"
    assert took < 25, f"warm shutdown took {took:.1f}s"
    # Warm shutdown waits for running requests, so none of them is left half done at the emulator.
    done_at_stop = effects.total_effects
    assert done_at_stop >= requested, "a request in flight at SIGTERM did not finish"
    assert done_at_stop == len(stack.emulator.state.requests), "a request was cut off mid-way"
    assert done_at_stop < JOBS, "nothing was left for the second worker: the test proves nothing"
    assert not any(stack.job(job_id).state == State.SENDING for job_id in job_ids)

    second = stack.start_worker()
    for job_id in job_ids:
        job = await stack.settled(job_id, timeout=90)
        assert job.state == State.ACCEPTED, (job.id, job.state, job.reason)
    if broker == "rabbitmq":
        # The first worker acknowledged every message whose job it finished: none came back to the second one.
        # (The embedded transport gives a stopping worker's unacknowledged messages back before it has sent the
        # last acknowledgements, so there a few finished jobs come back and are skipped by the claim.)
        stop(second)
        second_log = (stack.log_dir / "worker-1.log").read_text().splitlines()
        redelivered = [line for line in second_log if '"job.skipped"' in line]
        assert redelivered == [], redelivered[:3]

    assert effects.calls_with_more_than_one_effect() == []
    assert all(effects.effects_for_call(call) == 1 for call in calls)
    assert effects.total_effects == JOBS
    # Nothing was even re-sent: the prefetched messages went back to the broker unstarted.
    assert all(len(stack.requests_for(call)) == 1 for call in calls)
    assert all(stack.job(job_id).attempts == 1 for job_id in job_ids)
    # Every request any worker sent for a job carried that job's one request id.
    request_ids = {stack.job(job_id).request_id for job_id in job_ids}
    assert {entry.request_id for entry in stack.emulator.state.requests} <= request_ids


async def test_sigterm_during_a_retry_back_off_finishes_the_job_before_exiting(
    make_stack: Callable[[str, str], Any],
) -> None:
    # The warm shutdown waits for the job's task, back-off included: the retry goes out, then the worker exits.
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    fault = {"kind": "status", "status": 503, "retry_after": 3}
    await stack.set_faults({"by_call": {"call-backoff": [fault]}})
    worker = stack.start_worker()
    job_id = stack.enqueue("call-backoff")
    await stack.wait_for(lambda: stack.job(job_id).state == State.RETRY_WAIT, "the job to wait out its back-off")
    started = time.monotonic()
    code = await asyncio.to_thread(stop, worker, 30, signal.SIGTERM)
    took = time.monotonic() - started
    assert code == 0
    job = stack.job(job_id)
    assert job.state == State.ACCEPTED, (job.state, job.reason)
    assert job.attempts == 2
    assert 1.5 < took < 20, f"the worker exited after {took:.1f}s, not after the 3 s back-off"
    assert stack.emulator.state.effects.effects_for_call("call-backoff") == 1
