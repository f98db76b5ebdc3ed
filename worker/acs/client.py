"""The ACS client: one aiohttp session per process, one authenticated POST per attempt, every answer classified.

Authentication is an HMAC signature with the access key (ACS_CONNECTION_STRING) or a Microsoft Entra ID bearer
token (ACS_ENDPOINT, see `worker.acs.entra`). Under Entra ID a 401 gets one more try with a renewed token before it
counts, and a token that cannot be had is a request not sent (transient).

Classification follows where a request failed (as azure-core does): never sent (connection refused),
sent with no answer (timeout, dropped connection), or answered with a status.

    202                                   ACCEPTED   done, wait for the callback event
    412                                   STALE      repeatability window passed: outcome unknown
    408, 429, 5xx, 409 "in progress",     TRANSIENT  retry with the same request id and first-sent
    no answer, not sent
    any other 4xx                         PERMANENT  fail now with ACS's error code and message

A transient answer other than "not sent" and 429 leaves the attempt's effect unknown (`Answer.effect_unknown`):
ACS executes a request again after a 5xx, so a later 4xx (a call that already moved answers 404) proves nothing.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import aiohttp
import yarl

from worker.acs import signing
from worker.acs.entra import AccessTokens, TokenUnavailable, challenge_claims
from worker.config import AcsAuth, EntraIdEndpoint
from worker.ledger.limits import LAST_ERROR
from worker.logs import get_logger
from worker.text import storable
from worker.version import __version__

log = get_logger(__name__)
USER_AGENT = f"acs-transfer/{__version__}"
_TRANSIENT_STATUSES = {408, 429}


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    STALE = "stale"


class Reach(enum.StrEnum):
    """How far the attempt got."""

    NOT_SENT = "not_sent"
    NO_ANSWER = "no_answer"
    ANSWERED = "answered"


@dataclass(frozen=True)
class Answer:
    """What one attempt produced, in terms the retry logic and the ledger understand."""

    outcome: Outcome
    reach: Reach
    status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after: float | None = None
    repeatability_result: str | None = None
    duration_ms: float = 0.0

    @property
    def effect_unknown(self) -> bool:
        """The attempt may have taken effect although no answer says so: no answer, 408, 409 in progress, 5xx."""
        return self.outcome is Outcome.TRANSIENT and self.reach is not Reach.NOT_SENT and self.status != 429

    @property
    def summary(self) -> str:
        """One line for logs and the ledger, e.g. ``503 ServiceUnavailable: try later`` or ``no answer: timeout``."""
        if self.status is None:
            return f"{self.reach.value.replace('_', ' ')}: {self.error_message or self.error_code}"
        detail = " ".join(part for part in (self.error_code, self.error_message) if part)
        return f"{self.status} {detail}".strip()


def retry_delay(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The server's retry hint in seconds: retry-after-ms, x-ms-retry-after-ms, then Retry-After."""
    lookup = {key.lower(): value for key, value in headers.items()}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        if name in lookup:
            try:
                return max(0.0, float(lookup[name]) / 1000)
            except ValueError:
                pass
    text = lookup.get("retry-after")
    if text is None:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment - (time.time() if now is None else now))


def classify(status: int, body: bytes, headers: Mapping[str, str], duration_ms: float) -> Answer:
    """Turn an HTTP answer into an `Answer`."""
    result = next((v for k, v in headers.items() if k.lower() == "repeatability-result"), None)
    if status == 202:
        return Answer(Outcome.ACCEPTED, Reach.ANSWERED, status, repeatability_result=result, duration_ms=duration_ms)
    code, message = _error_detail(body)
    if status == 412:
        outcome = Outcome.STALE
    elif status in _TRANSIENT_STATUSES or status >= 500 or (status == 409 and (result or "").lower() == "accepted"):
        # A 409 with Repeatability-Result: accepted means "the first request is still in progress".
        outcome = Outcome.TRANSIENT
    else:
        outcome = Outcome.PERMANENT
    return Answer(outcome, Reach.ANSWERED, status, code, message, retry_delay(headers), result, duration_ms)


def _error_detail(body: bytes) -> tuple[str | None, str | None]:
    try:
        error = json.loads(body)["error"]
        code, message = error.get("code"), error.get("message")
        return (
            storable(str(code), _MAX_CODE) if code is not None else None,
            storable(str(message), _MAX_MESSAGE) if message is not None else None,
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        text = body[:300].decode(errors="replace").strip()
        return None, storable(text, _MAX_MESSAGE) or None


_MAX_CODE = LAST_ERROR
_MAX_MESSAGE = 1000


def transfer_path(call_connection_id: str, api_version: str) -> str:
    """The raw path and query sent on the wire (and signed): the id is one percent-encoded segment."""
    return (
        f"/calling/callConnections/{quote(call_connection_id, safe='-._~')}:transferToParticipant"
        f"?api-version={quote(api_version, safe='-._~')}"
    )


class AcsClient:
    """Sends transfer requests. Create it inside the event loop that will use it, once per process.

    With an `EntraIdEndpoint`, `tokens` (which it then owns and closes) supplies the bearer tokens."""

    def __init__(
        self,
        credentials: AcsAuth,
        api_version: str,
        connect_timeout: float,
        request_timeout: float,
        max_connections: int,
        tokens: AccessTokens | None = None,
    ) -> None:
        if isinstance(credentials, EntraIdEndpoint) and tokens is None:
            raise ValueError("an ACS endpoint authenticated with Microsoft Entra ID needs a token source")
        self._key = None if isinstance(credentials, EntraIdEndpoint) else credentials.access_key
        self._tokens = tokens if self._key is None else None
        self._api_version = api_version
        self._host = credentials.host
        self._endpoint = credentials.endpoint
        connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=request_timeout, connect=connect_timeout),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            skip_auto_headers=("Accept-Encoding",),
        )

    def __repr__(self) -> str:
        auth = "access key" if self._tokens is None else "Microsoft Entra ID"
        return f"AcsClient(endpoint={self._endpoint!r}, api_version={self._api_version!r}, auth={auth!r})"

    async def close(self) -> None:
        await self._session.close()
        if self._tokens is not None:
            await self._tokens.close()

    async def authorize(self) -> None:
        """Make sure the next attempt can be authenticated, before it is recorded: under Entra ID, that a token is
        at hand (cached, or fetched now). Raises `TokenUnavailable`; with an access key there is nothing to do."""
        if self._tokens is not None:
            await self._tokens.get()

    async def transfer(self, call_connection_id: str, body: bytes, request_id: str, first_sent: str) -> Answer:
        """One attempt, authenticated afresh (a new x-ms-date, or the current token) over the exact bytes sent."""
        path = transfer_path(call_connection_id, self._api_version)
        repeatability = {"Repeatability-Request-ID": request_id, "Repeatability-First-Sent": first_sent}
        if self._tokens is None:
            assert self._key is not None
            signed = signing.sign(self._key, "POST", path, self._host, body, time.time())
            return (await self._post(path, body, {**signed, **repeatability}))[0]
        try:
            token = await self._tokens.get()
        except TokenUnavailable as error:
            return self._failed(Reach.NOT_SENT, "token_unavailable", str(error), time.perf_counter())
        answer, challenge = await self._post(path, body, {"Authorization": f"Bearer {token}", **repeatability})
        if answer.status != 401:
            return answer
        # A refused token took no effect: renew it and try once more with the same request id and bytes.
        log.warning("acs.token_refused", detail=answer.summary)
        try:
            token = await self._tokens.renew(token, challenge_claims(challenge))
        except TokenUnavailable as error:
            return self._failed(Reach.NOT_SENT, "token_unavailable", str(error), time.perf_counter())
        retried, _ = await self._post(path, body, {"Authorization": f"Bearer {token}", **repeatability})
        return replace(retried, duration_ms=answer.duration_ms + retried.duration_ms)

    async def _post(self, path: str, body: bytes, auth_headers: dict[str, str]) -> tuple[Answer, str | None]:
        """The answer, and a 401's WWW-Authenticate challenge."""
        headers = {**auth_headers, "Host": self._host, "x-ms-client-request-id": str(uuid.uuid4())}
        url = yarl.URL(self._endpoint + path, encoded=True)
        started = time.perf_counter()
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
                answer = classify(
                    response.status, payload, dict(response.headers), (time.perf_counter() - started) * 1000
                )
                if response.status == 502:
                    # ACS: "retry with a fresh HTTP client" - do not reuse this connection.
                    response.close()
                return answer, response.headers.get("WWW-Authenticate")
        except aiohttp.ConnectionTimeoutError:
            message = "no connection within the connect timeout"
            failed = self._failed(Reach.NOT_SENT, "connect_timeout", message, started)
        except aiohttp.ClientConnectorError as error:
            failed = self._failed(Reach.NOT_SENT, "connection_failed", str(error.os_error or error), started)
        except TimeoutError:
            failed = self._failed(Reach.NO_ANSWER, "timeout", "no answer within the request timeout", started)
        except aiohttp.ClientError as error:
            failed = self._failed(Reach.NO_ANSWER, type(error).__name__, str(error) or type(error).__name__, started)
        return failed, None

    @staticmethod
    def _failed(reach: Reach, code: str, message: str, started: float) -> Answer:
        duration_ms = (time.perf_counter() - started) * 1000
        return Answer(Outcome.TRANSIENT, reach, None, code, message, duration_ms=duration_ms)
