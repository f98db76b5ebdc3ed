"""Outcome events: after a transfer takes effect, POST a signed CloudEvent to its operation callback URI.

As ACS does: a JSON array with one `Microsoft.Communication.CallTransferAccepted` or `...CallTransferFailed`
event, and ``Authorization: Bearer <JWT>`` (RS256, a new token per event, 5-minute lifetime, issuer and
audience as configured). The signing key is made at start; its public half is served as a JWKS at
``/calling/keys`` so a receiver verifies exactly as in production.

Which transfers fail, and how events are delayed, duplicated or dropped, is the fault plan's `CallbackPlan`.
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


@dataclass
class Delivery:
    """One POST of an event: where, what, and what the receiver answered (None: not reached)."""

    at: float
    url: str
    event_id: str
    event_type: str
    call_connection_id: str
    status: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "url": self.url,
            "eventId": self.event_id,
            "type": self.event_type,
            "callConnectionId": self.call_connection_id,
            "status": self.status,
            "error": self.error,
        }


class CallbackSender:
    """Delivers outcome events in the background; deliveries are recorded for inspection."""

    def __init__(self, signer: CallbackSigner) -> None:
        self.signer = signer
        self.deliveries: list[Delivery] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._random = random.Random()

    def reseed(self, seed: int | None) -> None:
        self._random = random.Random(seed)

    def schedule(self, plan: CallbackPlan, body: Mapping[str, Any], call_connection_id: str) -> None:
        url = body.get("operationCallbackUri")
        if not isinstance(url, str) or self._random.random() < plan.drop_rate:
            return
        failed = call_connection_id in plan.fail_calls or self._random.random() < plan.fail_rate
        event = transfer_event(body, call_connection_id, failed, plan.failure)
        copies = 2 if self._random.random() < plan.duplicate_rate else 1
        task = asyncio.get_running_loop().create_task(self._deliver(url, event, copies, plan.delay_ms / 1000))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, event: dict[str, Any], copies: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for _ in range(copies):
            delivery = Delivery(time.time(), url, event["id"], event["type"], event["data"]["callConnectionId"])
            self.deliveries.append(delivery)
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

    def clear(self) -> None:
        self.deliveries.clear()
