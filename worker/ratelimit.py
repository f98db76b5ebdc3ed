"""Token buckets: pacing transfers globally (all workers on all hosts), and campaigns at dispatch.

Each bucket is a GCRA ("generic cell rate algorithm") token bucket: one number per key, the *theoretical
arrival time* of the next token, so a take is one read and one write. A take *reserves*: it returns how long
the caller must wait for its token (0 when one is free now), so waiters queue in order without polling. A
caller that may not wait that long (`max_wait`) gets ``None`` and nothing is taken.

Two implementations with the same behaviour:
- `LocalBuckets`: in this process, on the monotonic clock. A limit then holds per worker process.
- `RedisBuckets`: one Lua script per take, run atomically by Redis on Redis's own clock (``TIME``), so every
  worker on every host shares one bucket and host clocks do not matter. If Redis cannot be reached the
  process falls back to its local buckets (and logs it) rather than stopping all sending.

`Pacer` takes the global bucket's token for each attempt, retries first, and is what the send logic uses;
`Unlimited` is the no-op default when no global limit is configured.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from worker.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Limit:
    """One bucket: `rate` tokens per second, holding at most `burst` (at least 1)."""

    key: str
    rate: float
    burst: float = 1.0

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("a rate must be positive")
        object.__setattr__(self, "burst", max(1.0, self.burst))

    @property
    def interval(self) -> float:
        """Seconds between two tokens at the steady rate."""
        return 1.0 / self.rate

    @property
    def tolerance(self) -> float:
        """How far ahead of the steady schedule a take may be: what lets `burst` tokens go at once."""
        return (self.burst - 1.0) * self.interval


class Buckets(Protocol):
    async def reserve(self, limit: Limit, max_wait: float | None = None) -> float | None:
        """Take one token; seconds to wait before using it, or None (nothing taken) if that would be longer
        than `max_wait`."""
        ...

    async def pause(self, limit: Limit, seconds: float) -> None:
        """Give no token out for `seconds` from now (tokens already reserved stay reserved)."""
        ...

    async def close(self) -> None: ...


class LocalBuckets:
    """Buckets in this process. Thread-safe; the clock is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next: dict[str, float] = {}  # key -> theoretical arrival time of the next token
        self._lock = threading.Lock()

    def take(self, limit: Limit, max_wait: float | None = None) -> float | None:
        with self._lock:
            now = self._clock()
            arrival = max(self._next.get(limit.key, now), now)
            wait = max(0.0, arrival - limit.tolerance - now)
            if max_wait is not None and wait > max_wait:
                return None
            self._next[limit.key] = arrival + limit.interval
            if len(self._next) > 10_000:
                self._forget_idle(now)
            return wait

    def _forget_idle(self, now: float) -> None:
        """A key whose next token is in the past is a full bucket: the same as no entry at all."""
        for key in [key for key, arrival in self._next.items() if arrival < now]:
            del self._next[key]

    async def reserve(self, limit: Limit, max_wait: float | None = None) -> float | None:
        return self.take(limit, max_wait)

    def hold(self, limit: Limit, seconds: float) -> None:
        with self._lock:
            now = self._clock()
            # The next token may be handed out no sooner than now + seconds, and the bucket is empty then.
            self._next[limit.key] = max(self._next.get(limit.key, now), now + seconds + limit.tolerance)

    async def pause(self, limit: Limit, seconds: float) -> None:
        self.hold(limit, seconds)

    async def close(self) -> None:
        return None


# KEYS[1]: the bucket. ARGV: the longest acceptable wait in seconds (negative: any), the interval, the
# tolerance. Returns {1, wait} with the token taken, or {0, wait} with nothing taken. Numbers go out as
# strings: Redis would truncate a Lua number to an integer.
_RESERVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local max_wait = tonumber(ARGV[1])
local arrival = tonumber(redis.call('GET', KEYS[1]) or '0')
if arrival < now then arrival = now end
local wait = math.max(0, arrival - tonumber(ARGV[3]) - now)
if max_wait >= 0 and wait > max_wait then
  return {0, string.format('%.6f', wait)}
end
arrival = arrival + tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.6f', arrival), 'PX', math.ceil((arrival - now) * 1000) + 1000)
return {1, string.format('%.6f', wait)}
"""

# KEYS[1]: the bucket. ARGV: seconds to pause, the bucket's tolerance.
_PAUSE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local arrival = tonumber(redis.call('GET', KEYS[1]) or '0')
local paused = now + tonumber(ARGV[1]) + tonumber(ARGV[2])
if paused > arrival then
  redis.call('SET', KEYS[1], string.format('%.6f', paused), 'PX', math.ceil((paused - now) * 1000) + 1000)
end
return 1
"""


class RedisBuckets:
    """Buckets in Redis, shared by every process that uses the same Redis and key prefix."""

    def __init__(self, url: str, prefix: str, fallback: LocalBuckets | None = None) -> None:
        import redis.asyncio  # noqa: PLC0415 - only workers with a shared limit need it

        self._redis: Any = redis.asyncio.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._prefix = prefix
        self._reserve = self._redis.register_script(_RESERVE)
        self._pause = self._redis.register_script(_PAUSE)
        self._fallback = fallback or LocalBuckets()
        self._failing = False

    def key(self, limit: Limit) -> str:
        return f"{self._prefix}:{limit.key}"

    async def reserve(self, limit: Limit, max_wait: float | None = None) -> float | None:
        arguments = [-1.0 if max_wait is None else max(0.0, max_wait), limit.interval, limit.tolerance]
        try:
            taken, wait = await self._reserve(keys=[self.key(limit)], args=arguments)
        except Exception as error:
            self._fell_back(error)
            return self._fallback.take(limit, max_wait)
        self._recovered()
        return float(wait) if int(taken) else None

    async def pause(self, limit: Limit, seconds: float) -> None:
        try:
            await self._pause(keys=[self.key(limit)], args=[seconds, limit.tolerance])
        except Exception as error:
            self._fell_back(error)
        self._fallback.hold(limit, seconds)

    def _fell_back(self, error: Exception) -> None:
        if not self._failing:
            log.error("ratelimit.redis_unavailable", error=f"{type(error).__name__}: {error}", fallback="per process")
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.warning("ratelimit.redis_back")
        self._failing = False

    async def close(self) -> None:
        await self._redis.aclose()


class Turn(enum.Enum):
    """How waiting for an attempt's tokens ended."""

    GRANTED = "granted"
    TOO_LATE = "too_late"  # no token within the allowed wait: nothing may be sent
    ABANDONED = "abandoned"  # the caller gave up while waiting (it lost its job)


#: sleeps for the given seconds; False when the caller can no longer send (it lost its job meanwhile)
Wait = Callable[[float], Awaitable[bool]]


class Limiter(Protocol):
    """What the send logic asks before every HTTP attempt."""

    @property
    def enabled(self) -> bool: ...

    @property
    def paces_every_job(self) -> bool:
        """A global limit: every attempt needs a token."""
        ...

    async def acquire(self, retry: bool, max_wait: float | None, wait: Wait) -> Turn: ...

    async def throttled(self, retry_after: float | None) -> None: ...

    async def close(self) -> None: ...


class Unlimited:
    """No limit configured: the send logic skips pacing altogether."""

    enabled = False
    paces_every_job = False

    async def acquire(self, retry: bool, max_wait: float | None, wait: Wait) -> Turn:
        return Turn.GRANTED

    async def throttled(self, retry_after: float | None) -> None:
        return None

    async def close(self) -> None:
        return None


#: how long a 429 without a retry hint pauses the global bucket
DEFAULT_THROTTLE_PAUSE = 1.0
#: how far ahead a first attempt may reserve a global token (see `Pacer`)
FIRST_ATTEMPT_AHEAD = 1.0


class Pacer:
    """The global limit (the ACS resource's own), taken by every attempt.

    A campaign's pace is not taken here: the dispatcher (`worker.dispatcher`) publishes a paced campaign's jobs
    at its rate, so no worker slot waits for a campaign. Retries go before first attempts: a first attempt may
    reserve a token at most `first_attempt_ahead` seconds ahead (else it waits half that and asks again), while a
    retry reserves the next free token, however far, within its repeatability window. However many first
    attempts wait, a retry is never more than `first_attempt_ahead` behind them.
    """

    enabled = True
    paces_every_job = True

    def __init__(self, buckets: Buckets, global_limit: Limit, first_attempt_ahead: float = FIRST_ATTEMPT_AHEAD) -> None:
        self.buckets = buckets
        self.global_limit = global_limit
        self.first_attempt_ahead = first_attempt_ahead

    async def acquire(self, retry: bool, max_wait: float | None, wait: Wait) -> Turn:
        """Take the attempt's token, waiting (through `wait`) as long as it asks, but no longer than
        `max_wait` (what is left of a retry's window)."""
        while True:
            allowed = max_wait if retry else self.first_attempt_ahead
            delay = await self.buckets.reserve(self.global_limit, allowed)
            if delay is not None:
                return Turn.GRANTED if delay <= 0 or await wait(delay) else Turn.ABANDONED
            if retry:
                return Turn.TOO_LATE
            if not await wait(self.first_attempt_ahead / 2):
                return Turn.ABANDONED

    async def throttled(self, retry_after: float | None) -> None:
        """ACS answered 429: hold the global bucket (the ACS resource's limit) for the time it asked."""
        pause = retry_after if retry_after is not None and math.isfinite(retry_after) else DEFAULT_THROTTLE_PAUSE
        await self.buckets.pause(self.global_limit, pause)

    async def close(self) -> None:
        await self.buckets.close()


def build_limiter(rate: float, burst: float, redis_url: str | None, prefix: str) -> Limiter:
    """The worker's limiter: none without RATE_LIMIT; shared through Redis when `redis_url` is set, per process
    otherwise."""
    if rate <= 0:
        return Unlimited()
    buckets: Buckets = RedisBuckets(redis_url, prefix) if redis_url else LocalBuckets()
    return Pacer(buckets, Limit("global", rate, burst or max(1.0, rate)))
