"""Lanes and pacing at dispatch, on real brokers, a real ledger and real worker processes.

What must hold: a live enqueue travels in the live lane and a campaign's jobs in the bulk lane; the sweeper
re-publishes a job into its own lane, and re-publishes a queued job whose message was lost even while its
lane's queue is busy; a paced campaign's jobs are released at its rate by the dispatcher, so no worker slot
waits for a campaign token and a live transfer is sent at once in the middle of it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Connection

from tests.stack import Stack
from worker.cli import main
from worker.config import Settings
from worker.deliver.sweeper import sweep_once
from worker.deliver.transfer import Context
from worker.ledger import Lane, Ledger, State, jobs
from worker.processes import free_port
from worker.request.job import prepare_job
from worker.request.models import parse_transfer


def cli_env(settings: Any) -> dict[str, str]:
    return {**settings.to_env(), "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json"}


def campaign_file(tmp_path: Path, name: str, count: int) -> Path:
    source = tmp_path / f"{name}.jsonl"
    rows = [{"callConnectionId": f"call-{name}-{i}", "targetParticipant": f"4:+1425555{i:04d}"} for i in range(count)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return source


def submit(settings: Any, *arguments: str) -> None:
    result = CliRunner().invoke(main, ["submit", *arguments], env=cli_env(settings))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("broker", ["rabbitmq", "redis", "filesystem"])
async def test_a_live_job_goes_to_the_live_lane_and_a_campaign_to_bulk(
    make_stack: Callable[..., Any], broker: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    stack: Stack = await make_stack(broker, "postgresql", worker_metrics_port=metrics_port)
    live = stack.enqueue("call-live")
    named = stack.producer.enqueue(
        {"callConnectionId": "call-named-bulk", "targetParticipant": "4:+15551234567"}, lane=Lane.BULK
    ).job_id
    submit(stack.settings, str(campaign_file(tmp_path, "spring", 5)), "--campaign", "spring")
    # No worker yet: the messages wait in their queues.
    assert stack.producer.publisher.queue_depths() == {Lane.LIVE: 1, Lane.BULK: 6}
    assert stack.job(live).lane == Lane.LIVE
    assert stack.job(named).lane == Lane.BULK
    stack.start_worker()
    await stack.settled(live)
    await stack.settled(named)
    await stack.wait_for(lambda: len(stack.emulator.state.requests) == 7, "every job to be sent")
    assert {stack.job(job_id).state for job_id in (live, named)} == {State.ACCEPTED}
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{metrics_port}/metrics") as got:
        metrics = await got.text()
    # Each lane's wait from publish to a worker, and its depth as the broker reports it.
    assert 'acs_transfer_queue_wait_seconds_count{lane="live"} 1.0' in metrics
    assert 'acs_transfer_queue_wait_seconds_count{lane="bulk"} 6.0' in metrics
    assert 'acs_transfer_queue_depth{lane="bulk"} 0.0' in metrics


class NoSender:
    async def transfer(self, *_: Any) -> Any:
        raise AssertionError("the sweeper sends nothing")


@pytest.mark.parametrize("broker", ["rabbitmq", "redis"])
async def test_the_sweeper_republishes_into_the_jobs_own_lane_even_while_the_queue_is_busy(
    make_stack: Callable[..., Any], broker: str
) -> None:
    """Item: no job waits forever behind a busy queue, and a deep backlog is not published twice over. Jobs whose
    messages were lost (written, never published) come back in their own lane after REPUBLISH_AFTER, on the
    second sweep that finds them missing: all of them with the lane empty; with the lane holding messages, only
    its shortfall (queued jobs less messages waiting), the oldest first."""
    stack: Stack = await make_stack(broker, "postgresql")
    settings = replace(stack.settings, republish_after=10.0)
    publisher = stack.producer.publisher
    publisher.publish(["someone-elses-1"], Lane.LIVE)  # the live lane is busy

    def lost(call: str, lane: str, age: float) -> str:
        request = parse_transfer({"callConnectionId": call, "targetParticipant": "4:+15551234567"})
        ((job, _),) = stack.producer.ledger.create_jobs([prepare_job(request, lane=lane)])

        def backdate(connection: Connection) -> None:
            connection.execute(jobs.update().where(jobs.c.id == job.id).values(published_at=time.time() - age))

        stack.producer.ledger.run(backdate)
        return job.id

    oldest = lost("call-live-old", Lane.LIVE, 150)  # two queued, one message: one of them is missing
    younger = lost("call-live-recent", Lane.LIVE, 50)  # the one message may be its: it waits
    bulk = lost("call-bulk-old", Lane.BULK, 50)  # its lane is empty: lost
    recent = lost("call-bulk-new", Lane.BULK, 5)  # not yet REPUBLISH_AFTER
    ledger = await Ledger.open(settings.ledger_url)
    try:
        context = Context(settings, ledger, NoSender(), "sweeper-under-test")
        suspects: set[str] = set()
        # The first pass only suspects the queued jobs: their messages may be at a worker not yet claimed.
        first, _ = await sweep_once(context, publisher.publish_jobs, publisher.queue_depths, suspects=suspects)
        assert (first, suspects) == (0, {oldest, bulk})
        republished, _ = await sweep_once(context, publisher.publish_jobs, publisher.queue_depths, suspects=suspects)
    finally:
        await ledger.close()
    assert republished == 2
    assert publisher.queue_depths() == {Lane.LIVE: 2, Lane.BULK: 1}
    published = {job_id: stack.job(job_id).published_at or 0 for job_id in (oldest, younger, bulk, recent)}
    assert time.time() - published[oldest] < 10
    assert time.time() - published[bulk] < 10
    assert time.time() - published[younger] > 40
    assert 4 < time.time() - published[recent] < 10
    stack.start_worker()
    for job_id in (oldest, bulk):
        assert (await stack.settled(job_id)).state == State.ACCEPTED


class Sampler:
    """Samples the ledger on a thread of its own (a query on the test's loop would delay the emulator's clock)."""

    def __init__(self, url: str, campaign: str) -> None:
        self._engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        self._campaign = campaign
        self.samples: list[dict[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._engine.dispose()

    def _run(self) -> None:
        query = (
            sa.select(jobs.c.state, jobs.c.published_at.is_(None), sa.func.count())
            .where(jobs.c.campaign == self._campaign)
            .group_by(jobs.c.state, jobs.c.published_at.is_(None))
        )
        while not self._stop.wait(0.05):
            with self._engine.connect() as connection:
                sample: dict[str, int] = {}
                for state, awaiting, count in connection.execute(query):
                    key = "awaiting" if state == State.QUEUED and awaiting else str(state)
                    sample[key] = sample.get(key, 0) + int(count)
                self.samples.append(sample)


async def test_a_paced_campaign_is_released_at_its_rate_and_a_live_job_goes_at_once(
    make_stack: Callable[..., Any], tmp_path: Path
) -> None:
    """Two workers: one dispatches (under the ledger's lease), both send. No campaign job holds a worker slot
    waiting for its token, the queue never holds more than two seconds of the campaign, and a live job
    enqueued in the middle is sent within a second."""
    rate, count = 10.0, 40
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    submit(stack.settings, str(campaign_file(tmp_path, "paced", count)), "--campaign", "paced", "--rate", "10/s")
    assert stack.producer.publisher.queue_depths() == {Lane.LIVE: 0, Lane.BULK: 0}  # nothing published yet
    shown = CliRunner().invoke(main, ["campaign", "paced"], env=cli_env(stack.settings))
    assert f"{count} awaiting dispatch" in shown.stdout, shown.output
    stack.start_worker()
    stack.start_worker()
    calls = [f"call-paced-{i}" for i in range(count)]
    with Sampler(stack.settings.ledger_url, "paced") as sampler:
        await stack.wait_for(lambda: len(stack.emulator.state.requests) >= 10, "the campaign to start", timeout=60)
        enqueued = time.time()
        live = await asyncio.to_thread(stack.enqueue, "call-live-during-campaign")
        await stack.wait_for(lambda: bool(stack.requests_for("call-live-during-campaign")), "the live job")
        live_sent = stack.requests_for("call-live-during-campaign")[0].at
        await stack.wait_for(lambda: all(stack.requests_for(call) for call in calls), "the whole campaign", timeout=60)
    assert live_sent - enqueued < 1.5  # behind 40 campaign jobs waiting for tokens in the slots, it took seconds
    assert (await stack.settled(live)).lane == Lane.LIVE
    times = sorted(stack.requests_for(call)[0].at for call in calls)
    achieved = (count - 1) / (times[-1] - times[0])
    assert abs(achieved - rate) / rate < 0.15, achieved  # over 4 s on a shared machine; bench/lanes.py: 0.2%
    # Jobs in flight only (at 10/s, one or two); a job waiting for a token in a slot would be counted here too.
    assert max(sample.get(State.SENDING, 0) for sample in sampler.samples) <= 6
    # Released, not yet taken by a worker: at most two seconds of the campaign's rate.
    assert max(sample.get(State.QUEUED, 0) for sample in sampler.samples) <= 2 * rate
    assert max(sample.get("awaiting", 0) for sample in sampler.samples) > count / 2  # it really waited in the ledger
    assert len(stack.emulator.state.requests) == count + 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_dispatcher_keeps_the_rate_and_at_most_two_seconds_in_the_queue(ledger_url: str) -> None:
    """On an injected clock: jobs are released on the campaign's schedule, no more than `horizon` seconds of
    them wait published at once, and only the holder of the dispatcher's lease releases anything."""
    from worker.deliver.dispatcher import Dispatcher  # noqa: PLC0415
    from worker.ledger import SyncLedger, op_transition  # noqa: PLC0415
    from worker.ledger.campaign import op_save_campaign  # noqa: PLC0415

    settings = Settings(ledger_url=ledger_url)
    sync = SyncLedger(ledger_url)
    sync.run(op_save_campaign, "slow", 10.0, None, time.time())
    requests = [
        parse_transfer({"callConnectionId": f"call-d{i}", "targetParticipant": "4:+15551234567"}) for i in range(60)
    ]
    created = sync.create_jobs([prepare_job(r, campaign="slow", lane=Lane.BULK) for r in requests])
    assert all(job.published_at is None for job, _ in created)  # paced: written, not published
    ledger = await Ledger.open(ledger_url)
    released: list[tuple[str, str]] = []
    clock = FakeClock()
    context = Context(settings, ledger, NoSender(), "dispatcher-a")
    dispatcher = Dispatcher(context, lambda jobs: released.extend(jobs) or len(released), clock=clock)
    rival = Dispatcher(replace(context, worker_id="dispatcher-b"), lambda jobs: 0, clock=clock)
    try:
        assert await dispatcher.dispatch_once()
        assert len(released) == 1  # the first job is due at once
        assert not await rival.dispatch_once()  # one dispatcher at a time, across processes
        clock.now += 1.0
        await dispatcher.dispatch_once()
        assert len(released) == 11  # ten a second
        clock.now += 1.0
        await dispatcher.dispatch_once()
        assert len(released) == 20  # two seconds' worth wait in the queue: no more until workers take some
        clock.now += 1.0
        await dispatcher.dispatch_once()
        assert len(released) == 20
        for job_id, _ in released[:10]:  # workers take ten
            await ledger.run(op_transition, job_id, None, State.QUEUED, State.ACCEPTED, time.time())
        clock.now += 0.5
        await dispatcher.dispatch_once()
        assert len(released) == 30  # room for ten again, and at most a second of schedule made up (CATCH_UP)
        assert {lane for _, lane in released} == {Lane.BULK}
        assert len({job_id for job_id, _ in released}) == 30
    finally:
        await ledger.close()
        sync.close()
