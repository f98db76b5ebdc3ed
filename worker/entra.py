"""Microsoft Entra ID access tokens for ACS: one cached token per process, refreshed before it expires.

`ACS_ENDPOINT` (with no access key) selects this path. The credential is azure-identity's async
`DefaultAzureCredential`, so a service principal (``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``),
workload identity (``AZURE_FEDERATED_TOKEN_FILE``) and managed identity work as in every Azure SDK.

`AccessTokens` asks the credential only when the cached token nears its end (less than five minutes, or half
of a short lifetime, remain), and concurrent jobs wait for that one request instead of making their own: the
credential's own cache does not coalesce concurrent callers. A token that cannot be had raises
`TokenUnavailable`, an infrastructure failure: the job is not sent and is retried later.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import time

from azure.core.credentials import AccessTokenInfo
from azure.core.credentials_async import AsyncSupportsTokenInfo

from worker.errors import TokenUnavailable
from worker.logs import get_logger, register_secret
from worker.redact import scrub

__all__ = ["SCOPE", "AccessTokens", "TokenUnavailable", "check_token", "default_credential", "describe"]
log = get_logger(__name__)

#: the scope ACS data-plane tokens are issued for (the resource URI, then "/.default", as the SDKs ask)
SCOPE = "https://communication.azure.com//.default"
REFRESH_MARGIN = 300.0
#: never send a token closer to its expiry than this: it could expire on the way
MIN_REMAINING = 2.0
#: azure-identity's variables whose values are secrets
_SECRET_VARIABLES = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_PASSWORD")
_ADVICE = re.compile(r"^(To mitigate|For more information|Visit|See)\b", re.IGNORECASE)
_MAX_DESCRIPTION = 600


def default_credential() -> AsyncSupportsTokenInfo:
    """azure-identity's async DefaultAzureCredential; create it on the event loop that will use it."""
    from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415 - only the Entra ID path loads it

    register_credential_secrets()
    # Each credential in the chain logs its failure (several lines, unscrubbed); `describe` reports it in one.
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.ERROR)
    return DefaultAzureCredential()


def register_credential_secrets() -> None:
    """Keep azure-identity's secrets (a client secret, a certificate password) out of every log line."""
    for variable in _SECRET_VARIABLES:
        register_secret(os.environ.get(variable))


def describe(error: BaseException) -> str:
    """Why no token could be had, in one line without secrets (azure-identity's messages span many lines)."""
    text = str(getattr(error, "message", None) or error) or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _ADVICE.match(line.strip())]
    # azure-identity appends the token endpoint's whole JSON answer after "Content:": its message says it already.
    one_line = re.sub(r"\s+", " ", re.sub(r" Content: \{.*?\}(?=\s|$)", "", " ".join(lines)))
    secrets = [value for variable in _SECRET_VARIABLES if (value := os.environ.get(variable))]
    return scrub(one_line, secrets)[:_MAX_DESCRIPTION]


class AccessTokens:
    """This process's ACS token: cached, refreshed before expiry by one request that concurrent jobs share."""

    def __init__(self, credential: AsyncSupportsTokenInfo) -> None:
        self._credential = credential
        self._current: AccessTokenInfo | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        #: how many times the credential was asked (its own cache may answer some without a request)
        self.asked = 0

    def __repr__(self) -> str:
        expires = "none" if self._current is None else f"in {self._current.expires_on - time.time():.0f}s"
        return f"AccessTokens(scope={SCOPE!r}, token expires {expires})"

    async def get(self) -> str:
        """A token with time left; raises `TokenUnavailable`."""
        current = self._current
        if current is not None and time.time() < self._refresh_at:
            return current.token
        async with self._lock:
            if self._current is not None and time.time() < self._refresh_at:
                return self._current.token  # another job refreshed it while this one waited
            return (await self._refresh(None)).token

    async def renew(self, rejected: str, claims: str | None = None) -> str:
        """After ACS refused `rejected` (401): a token fetched since, or the credential's answer now. `claims` from
        the 401's challenge (a revoked token) make the credential skip its cache and fetch a new token."""
        async with self._lock:
            current = self._current
            if current is not None and current.token != rejected and self._usable(current):
                return current.token
            return (await self._refresh(claims)).token

    async def close(self) -> None:
        await self._credential.close()

    @staticmethod
    def _usable(token: AccessTokenInfo) -> bool:
        return token.expires_on - time.time() >= MIN_REMAINING

    async def _refresh(self, claims: str | None) -> AccessTokenInfo:
        try:
            token = await self._ask(claims)
            if not self._usable(token):
                # The credential caches a token until it expires: wait that out, then it must fetch a new one.
                await asyncio.sleep(max(0.0, token.expires_on - time.time()) + 1.0)
                token = await self._ask()
                if not self._usable(token):
                    raise TokenUnavailable("the credential keeps returning a token that expires within seconds")
        except TokenUnavailable:
            raise
        except Exception as error:
            # azure-identity itself keeps a still-valid token when a proactive refresh fails: this is no token.
            raise TokenUnavailable(f"no Microsoft Entra ID token for ACS: {describe(error)}") from None
        if self._current is None or token.token != self._current.token:
            log.info("entra.token", expires_in=round(token.expires_on - time.time()), asked=self.asked)
        self._current = token
        now = time.time()
        self._refresh_at = token.expires_on - min(REFRESH_MARGIN, (token.expires_on - now) / 2)
        if token.refresh_on is not None and token.refresh_on > now:
            # A past refresh_on the credential has not acted on yet would send every job to the credential.
            self._refresh_at = min(self._refresh_at, token.refresh_on)
        return token

    async def _ask(self, claims: str | None = None) -> AccessTokenInfo:
        self.asked += 1
        return await self._credential.get_token_info(SCOPE, options={"claims": claims} if claims else None)


async def fetch_token(seconds: float) -> AccessTokenInfo:
    """One token from a fresh DefaultAzureCredential (closed afterwards): proof that the worker can get one."""
    try:
        async with asyncio.timeout(seconds), default_credential() as credential:
            return await credential.get_token_info(SCOPE)
    except TimeoutError:
        raise TokenUnavailable(f"no Microsoft Entra ID token for ACS within {seconds:g} s") from None
    except Exception as error:
        raise TokenUnavailable(f"no Microsoft Entra ID token for ACS: {describe(error)}") from None


def check_token(seconds: float) -> str:
    """`fetch_token` from synchronous code; what was had, e.g. for `acs-transfer healthcheck`."""
    token = asyncio.run(fetch_token(seconds))
    seconds = max(0, round(token.expires_on - time.time()))
    return f"a token for {SCOPE}, expires in {seconds} s"


def challenge_claims(www_authenticate: str | None) -> str | None:
    """The claims a 401's ``WWW-Authenticate: Bearer ... claims="<base64 JSON>"`` challenge asks for (as Continuous
    Access Evaluation sends for a revoked token), or None."""
    found = re.search(r'\bclaims="([^"]+)"', www_authenticate or "")
    if found is None:
        return None
    encoded = found.group(1)
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
