"""The dispatcher: publishes each paced campaign's jobs at the campaign's rate, so no worker slot ever waits
for a campaign's token and the queue holds at most a few seconds of any campaign.

A paced campaign's jobs are written to the ledger unpublished. One worker process (the holder of the
"dispatcher" lease in the ledger, like the sweeper's) releases them: every `tick` it gives each paced
campaign the jobs due by its schedule, no more than `horizon` seconds' worth waiting in the queue at once
(workers that fall behind are not flooded later), and publishes them into their lane. If publishing fails, the
jobs have a publish time and the sweeper publishes them again. If the holder dies, another worker takes the
lease over within `LEASE` seconds and the campaigns carry on from where the ledger says they are.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable

from worker.ledger import op_take_lease
from worker.ledger.dispatch import op_paced_backlog, op_release
from worker.logs import get_logger
from worker.transfer import Context

log = get_logger(__name__)
DISPATCH_LEASE = "dispatcher"
LEASE = 5.0
#: seconds between two looks for campaigns with jobs awaiting dispatch
LOOK_EVERY = 1.0
#: at most this much of a campaign's schedule is made up at once after a pause (a slow ledger, a full queue)
CATCH_UP = 1.0


class Dispatcher:
    def __init__(
        self,
        ctx: Context,
        publish: Callable[[Iterable[tuple[str, str]]], int],
        tick: float = 0.1,
        horizon: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self._publish = publish
        self.tick = tick
        self.horizon = horizon
        self._clock = clock
        self._campaigns: list[tuple[str, float]] = []
        self._looked = -math.inf
        self._due: dict[str, float] = {}  # campaign -> when its next job is due, on `clock`

    async def run(self) -> None:
        """Dispatch until cancelled; errors are logged, never fatal."""
        while True:
            try:
                holding = await self.dispatch_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.error("dispatcher.failed", error=f"{type(error).__name__}: {error}")
                holding = False
            await asyncio.sleep(self.tick if holding else LOOK_EVERY)

    async def dispatch_once(self) -> bool:
        """Release what is due now; False when another process holds the dispatcher's lease."""
        ctx = self._ctx
        now = ctx.clock()
        if not await ctx.ledger.run(op_take_lease, DISPATCH_LEASE, ctx.worker_id, now, now + LEASE):
            self._due.clear()
            self._looked = -math.inf
            return False
        moment = self._clock()
        if moment - self._looked >= LOOK_EVERY:
            self._campaigns = await ctx.ledger.run(op_paced_backlog)
            self._looked = moment
            names = {name for name, _ in self._campaigns}
            self._due = {name: due for name, due in self._due.items() if name in names}
        for name, rate in self._campaigns:
            await self._release(name, rate, moment, now)
        return True

    async def _release(self, campaign: str, rate: float, moment: float, now: float) -> None:
        due = max(self._due.get(campaign, moment), moment - CATCH_UP)
        # Every job due by now: the one due at `due` and those every 1/rate after it (the epsilon: float sums).
        count = math.floor((moment - due) * rate + 1e-9) + 1 if due <= moment else 0
        if count <= 0:
            return
        cap = max(1, math.ceil(rate * self.horizon))
        released = await self._ctx.ledger.run(op_release, campaign, count, cap, now)
        self._due[campaign] = due + len(released) / rate
        if not released:
            return
        try:
            await asyncio.to_thread(self._publish, released)
        except Exception as error:
            # The jobs have a publish time now: the sweeper publishes them again once the broker is back.
            log.warning(
                "dispatcher.publish_failed",
                campaign=campaign,
                jobs=len(released),
                error=f"{type(error).__name__}: {error}",
            )
            return
        log.debug("dispatcher.released", campaign=campaign, jobs=len(released))
