"""Outcome events: after a transfer takes effect, POST a signed CloudEvent to its operation callback URI.

As ACS does: a JSON array with one `Microsoft.Communication.CallTransferAccepted` or `...CallTransferFailed`
event, and ``Authorization: Bearer <JWT>`` (RS256, a new token per event, 5-minute lifetime, issuer and
audience as configured). The signing key is made at start; its public half is served as a JWKS at
``/calling/keys`` so a receiver verifies exactly as in production.

Which transfers fail, and how events are delayed, come early, twice or never, is the fault plan's
`CallbackPlan`; `CallbackSender.decide` draws it for one execution (from the plan's seed, per call, request id
and execution, so the same transfer gets the same fate in every run with that seed).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from worker.emulator.faults import CallbackPlan
from worker.logs import get_logger

log = get_logger(__name__)
ACCEPTED_EVENT = "Microsoft.Communication.CallTransferAccepted"
FAILED_EVENT = "Microsoft.Communication.CallTransferFailed"
TOKEN_LIFETIME = 300
_SUCCESS = {"code": 200, "subCode": 7015, "message": "The transfer operation completed successfully."}


class CallbackSigner:
    """The emulator's own RS256 key: signs one token per event and publishes its public half."""

    def __init__(self, issuer: str, audience: str) -> None:
        self.issuer = issuer
        self.audience = audience
        self.key_id = uuid.uuid4().hex
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def __repr__(self) -> str:
        return f"CallbackSigner(issuer={self.issuer!r}, audience={self.audience!r}, key_id={self.key_id!r})"

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._private_key.public_key()))
        return {"keys": [{**public, "kid": self.key_id, "use": "sig", "alg": "RS256"}]}

    def token(self, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + TOKEN_LIFETIME,
        }
        return jwt.encode(claims, self._private_key, algorithm="RS256", headers={"kid": self.key_id})


def transfer_event(
    body: Mapping[str, Any], call_connection_id: str, failed: bool, failure: Mapping[str, Any]
) -> dict[str, Any]:
    """The CloudEvent ACS posts when a transfer's outcome is known."""
    data: dict[str, Any] = {
        "callConnectionId": call_connection_id,
        "serverCallId": f"server-{call_connection_id}",
        "correlationId": str(uuid.uuid4()),
        "resultInformation": dict(failure) if failed else dict(_SUCCESS),
    }
    if "operationContext" in body:
        data["operationContext"] = body["operationContext"]
    if not failed:
        data["transferTarget"] = body.get("targetParticipant")
        if "transferee" in body:
            data["transferee"] = body["transferee"]
    return {
        "id": str(uuid.uuid4()),
        "source": f"calling/callConnections/{call_connection_id}",
        "type": FAILED_EVENT if failed else ACCEPTED_EVENT,
        "data": data,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": f"calling/callConnections/{call_connection_id}",
    }


@dataclass(frozen=True)
class EventFate:
    """What happens to the outcome of one execution: whether the transfer fails, and how its event travels."""

    failed: bool
    dropped: bool = False
    early: bool = False  # delivered before the 202 is answered
    delay: float = 0.0
    copies: int = 1


@dataclass
class Delivery:
    """One POST of an event: where, what, and what the receiver answered (None: not reached)."""

    at: float
    url: str
    event_id: str
    event_type: str
    call_connection_id: str
    request_id: str | None = None
    status: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "url": self.url,
            "eventId": self.event_id,
            "type": self.event_type,
            "callConnectionId": self.call_connection_id,
            "requestId": self.request_id,
            "status": self.status,
            "error": self.error,
        }


class CallbackSender:
    """Delivers outcome events in the background; deliveries are recorded for inspection."""

    def __init__(self, signer: CallbackSigner) -> None:
        self.signer = signer
        self.deliveries: list[Delivery] = []
        self._deliveries_by_call: dict[str, list[Delivery]] = {}
        #: events never posted on purpose (``drop_rate``): callConnectionId, requestId, type
        self.dropped: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._seed: int | None = None
        self._random = random.Random()

    @property
    def pending(self) -> int:
        """Events scheduled or on their way: an audit waits for these before judging."""
        return len(self._tasks)

    def reseed(self, seed: int | None) -> None:
        self._seed = seed
        self._random = random.Random(seed)

    def decide(
        self,
        plan: CallbackPlan,
        call_connection_id: str,
        request_id: str | None,
        execution: int,
        answer_hidden: bool = False,
    ) -> EventFate:
        """The fate of one execution's outcome; seeded per transfer, so arrival order does not change it.
        Whether the transfer fails is drawn per request id (executed again, it fails again)."""
        rng = fails = self._random
        if self._seed is not None:
            rng = random.Random(f"{self._seed}/{call_connection_id}/{request_id}/{execution}")
            fails = random.Random(f"{self._seed}/{call_connection_id}/{request_id}")
        failed = fails.random() < plan.fail_rate or call_connection_id in plan.fail_calls
        dropped = rng.random() < plan.drop_rate and not (answer_hidden and plan.drop_answered_only)
        early = rng.random() < plan.early_rate
        late = rng.random() < plan.late_rate
        copies = 2 if rng.random() < plan.duplicate_rate else 1
        delay = 0.0 if early else (plan.late_ms * rng.uniform(0.5, 1.0) if late else plan.delay_ms) / 1000
        return EventFate(failed, dropped, early, delay, copies)

    def schedule(
        self,
        plan: CallbackPlan,
        fate: EventFate,
        body: Mapping[str, Any],
        call_connection_id: str,
        request_id: str | None = None,
    ) -> asyncio.Task[None] | None:
        """Post the outcome event to the body's callback URI as `fate` says; the delivery task, if any."""
        url = body.get("operationCallbackUri")
        if not isinstance(url, str):
            return None
        event = transfer_event(body, call_connection_id, fate.failed, plan.failure)
        if fate.dropped:
            dropped = {"callConnectionId": call_connection_id, "requestId": request_id, "type": event["type"]}
            self.dropped.append(dropped)
            return None
        delivery = self._deliver(url, event, request_id, fate.copies, fate.delay)
        task = asyncio.get_running_loop().create_task(delivery)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(
        self, url: str, event: dict[str, Any], request_id: str | None, copies: int, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for _ in range(copies):
            call = event["data"]["callConnectionId"]
            delivery = Delivery(time.time(), url, event["id"], event["type"], call, request_id)
            self.deliveries.append(delivery)
            self._deliveries_by_call.setdefault(call, []).append(delivery)
            headers = {"Authorization": f"Bearer {self.signer.token()}", "Content-Type": "application/json"}
            try:
                async with self._session.post(url, data=json.dumps([event]), headers=headers) as response:
                    delivery.status = response.status
            except (aiohttp.ClientError, TimeoutError) as error:
                delivery.error = f"{type(error).__name__}: {error}"
                log.warning("emulator.callback_undelivered", url=url, error=delivery.error)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def deliveries_for(self, call_connection_id: str) -> list[Delivery]:
        return self._deliveries_by_call.get(call_connection_id, [])

    def clear(self) -> None:
        self.deliveries.clear()
        self._deliveries_by_call.clear()
        self.dropped.clear()
