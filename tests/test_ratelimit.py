"""Token buckets: the in-process one on a fake clock, the Redis one on a real Redis (whose clock it uses),
and the pacer that takes the global limit for every attempt, retries first."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis

from worker.ratelimit import Limit, LocalBuckets, Pacer, RedisBuckets, Turn


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis_buckets(redis_url: str) -> AsyncIterator[RedisBuckets]:
    buckets = RedisBuckets(redis_url, f"test-rate-{uuid.uuid4().hex[:8]}")
    yield buckets
    await buckets.close()


def test_local_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock)
    limit = Limit("k", rate=10, burst=3)
    waits = [buckets.take(limit) for _ in range(6)]
    assert waits == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])
    clock.now += 10  # a long idle time refills the bucket, but never beyond its burst
    assert [buckets.take(limit) for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])


def test_local_bucket_refuses_a_wait_longer_than_allowed_and_takes_nothing() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock)
    limit = Limit("k", rate=2)
    assert buckets.take(limit) == 0
    assert buckets.take(limit, max_wait=0.4) is None  # the next token is 0.5 s away
    assert buckets.take(limit, max_wait=0.5) == pytest.approx(0.5)  # the refusal took nothing
    clock.now += 0.25
    assert buckets.take(limit) == pytest.approx(0.75)


def test_local_bucket_pause_holds_tokens_back_and_leaves_it_empty() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock)
    limit = Limit("k", rate=10, burst=5)
    buckets.hold(limit, 2.0)
    assert buckets.take(limit) == pytest.approx(2.0)
    clock.now += 2.0
    assert buckets.take(limit) == pytest.approx(0.1)  # no burst saved up during the pause
    other = Limit("other", rate=10)
    assert buckets.take(other) == 0  # keys are independent


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        Limit("k", rate=0)
    assert Limit("k", rate=5, burst=0).burst == 1  # a bucket holds at least one token


async def test_redis_bucket_paces_on_the_server_clock(redis_buckets: RedisBuckets) -> None:
    limit = Limit("k", rate=10, burst=2)
    waits = [await redis_buckets.reserve(limit) for _ in range(5)]
    assert waits[:2] == [0, 0]
    # Each reservation is 0.1 s after the previous one, less the little time between the calls.
    for expected, wait in zip([0.1, 0.2, 0.3], waits[2:], strict=True):
        assert wait is not None
        assert expected - 0.05 < wait <= expected


async def test_redis_bucket_refuses_a_long_wait_and_takes_nothing(redis_buckets: RedisBuckets) -> None:
    limit = Limit("k", rate=1)
    assert await redis_buckets.reserve(limit) == 0
    assert await redis_buckets.reserve(limit, max_wait=0.5) is None
    wait = await redis_buckets.reserve(limit, max_wait=1.0)
    assert wait is not None
    assert 0.9 < wait <= 1.0


async def test_redis_bucket_pause(redis_buckets: RedisBuckets) -> None:
    limit = Limit("k", rate=100, burst=10)
    await redis_buckets.pause(limit, 1.5)
    wait = await redis_buckets.reserve(limit)
    assert wait is not None
    assert 1.4 < wait <= 1.5


async def test_redis_bucket_is_one_bucket_for_many_clients(redis_url: str) -> None:
    """Four clients (as four workers would) taking 40 tokens at 20/s, burst 1: all 40 reservations are
    distinct slots 50 ms apart, whoever took them."""
    prefix = f"test-rate-{uuid.uuid4().hex[:8]}"
    clients = [RedisBuckets(redis_url, prefix) for _ in range(4)]
    limit = Limit("shared", rate=20)
    started = time.time()
    try:
        waits = await asyncio.gather(*(clients[i % 4].reserve(limit) for i in range(40)))
    finally:
        for client in clients:
            await client.close()
    elapsed = time.time() - started
    slots = sorted(started + (wait or 0.0) for wait in waits)
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert min(gaps) > 0.05 - elapsed  # no two reservations share a slot
    assert slots[-1] - slots[0] >= 39 * 0.05 - elapsed


async def test_redis_bucket_falls_back_to_the_process_when_redis_is_unreachable() -> None:
    buckets = RedisBuckets("redis://127.0.0.1:9/0", "unreachable")  # nothing listens on port 9
    limit = Limit("k", rate=10)
    try:
        assert await buckets.reserve(limit) == 0
        wait = await buckets.reserve(limit)
        assert wait == pytest.approx(0.1, abs=0.02)
    finally:
        await buckets.close()


async def test_redis_keys_expire_once_the_bucket_is_full_again(redis_url: str, redis_buckets: RedisBuckets) -> None:
    limit = Limit("expiring", rate=10)
    await redis_buckets.reserve(limit)
    ttl = redis.Redis.from_url(redis_url).pttl(redis_buckets.key(limit))
    assert 0 < ttl <= 1200


class Recorder:
    """A pacer's `wait` callback that records instead of sleeping (and can give up)."""

    def __init__(self, clock: FakeClock, keep_going: bool = True) -> None:
        self.clock = clock
        self.waits: list[float] = []
        self.keep_going = keep_going

    async def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.clock.now += seconds
        return self.keep_going


async def test_a_retry_waits_behind_at_most_a_second_of_first_attempts() -> None:
    """Pacing must not cost a retry its repeatability window: first attempts may reserve global tokens only a
    second ahead, a retry reserves the next free one, so a retry never waits behind a backlog of first attempts."""
    clock = FakeClock()
    buckets = LocalBuckets(clock)
    pacer = Pacer(buckets, Limit("global", rate=10))
    granted = 0
    for _ in range(50):  # first attempts arriving together: only about a second's worth get a token ahead
        delay = await buckets.reserve(pacer.global_limit, pacer.first_attempt_ahead)
        granted += delay is not None
    assert 10 <= granted <= 11
    refused = Recorder(clock)
    # A first attempt that finds the next second taken waits, reserving nothing, and asks again.
    assert await pacer.acquire(False, None, refused) is Turn.GRANTED
    assert refused.waits[0] == pytest.approx(0.5)
    retry = Recorder(clock)
    assert await pacer.acquire(True, 30.0, retry) is Turn.GRANTED
    assert sum(retry.waits) <= 1.2  # not behind the other 39 first attempts (3.9 s)


async def test_pacer_refuses_a_retry_when_the_wait_would_pass_its_window() -> None:
    clock = FakeClock()
    pacer = Pacer(LocalBuckets(clock), Limit("global", rate=0.5))
    recorder = Recorder(clock)
    assert await pacer.acquire(True, 1.0, recorder) is Turn.GRANTED
    assert await pacer.acquire(True, 1.0, recorder) is Turn.TOO_LATE  # the next token is 2 s away
    assert recorder.waits == []
    assert await pacer.acquire(False, None, Recorder(clock, keep_going=False)) is Turn.ABANDONED


async def test_a_429_pauses_the_global_bucket() -> None:
    clock = FakeClock()
    pacer = Pacer(LocalBuckets(clock), Limit("global", rate=100))
    await pacer.throttled(2.5)
    recorder = Recorder(clock)
    assert await pacer.acquire(True, None, recorder) is Turn.GRANTED
    assert recorder.waits == pytest.approx([2.5])
