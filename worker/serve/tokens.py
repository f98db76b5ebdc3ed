"""Verifying the bearer token ACS puts on every callback: RS256, issuer, audience, lifetime, key from a JWKS.

Keys are fetched from the configured JWKS URL and cached; a token signed with a key id not in the cache
triggers one refetch (ACS rotates keys), at most every `min_refresh` seconds so a flood of forged tokens
cannot turn into a flood of fetches.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt

from worker.errors import CallbackRejected
from worker.logs import get_logger

log = get_logger(__name__)
_CLOCK_SKEW = 10  # seconds of leeway on exp/nbf/iat between ACS's clock and ours


class TokenVerifier:
    def __init__(
        self,
        jwks_url: str,
        issuer: str,
        audience: str,
        session: aiohttp.ClientSession,
        ttl: float = 3600.0,
        min_refresh: float = 30.0,
    ) -> None:
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._audience = audience
        self._session = session
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"TokenVerifier(jwks_url={self._jwks_url!r}, issuer={self._issuer!r}, audience={self._audience!r})"

    async def verify(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims, or `CallbackRejected` saying what is wrong (never echoing the token)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise CallbackRejected("missing bearer token")
        try:
            header = jwt.get_unverified_header(token.strip())
        except jwt.InvalidTokenError:
            raise CallbackRejected("malformed token") from None
        if header.get("alg") != "RS256":
            raise CallbackRejected("token is not signed with RS256")
        key = await self._key(str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token.strip(),
                key.key,
                algorithms=["RS256"],
                audience=self._audience,
                issuer=self._issuer,
                leeway=_CLOCK_SKEW,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise CallbackRejected("token expired") from None
        except jwt.InvalidAudienceError:
            raise CallbackRejected("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise CallbackRejected("token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise CallbackRejected("token signature does not verify") from None
        except jwt.InvalidTokenError as error:
            raise CallbackRejected(f"invalid token: {type(error).__name__}") from None
        return claims

    async def _key(self, key_id: str) -> jwt.PyJWK:
        if key_id in self._keys and time.monotonic() - self._fetched_at < self._ttl:
            return self._keys[key_id]
        async with self._lock:
            stale = time.monotonic() - self._fetched_at >= self._ttl
            if (key_id not in self._keys or stale) and time.monotonic() - self._fetched_at >= self._min_refresh:
                await self._refresh()
        if key_id not in self._keys:
            raise CallbackRejected("token is signed with an unknown key")
        return self._keys[key_id]

    async def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            async with self._session.get(self._jwks_url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                response.raise_for_status()
                document = await response.json(content_type=None)
            keys = jwt.PyJWKSet.from_dict(document)
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKSetError) as error:
            # Keep the keys we have: an outage of the key endpoint must not reject tokens we can still verify.
            log.error("callback.jwks_unavailable", url=self._jwks_url, error=f"{type(error).__name__}: {error}")
            return
        self._keys = {key.key_id: key for key in keys.keys if key.key_id}
        log.info("callback.jwks_refreshed", url=self._jwks_url, keys=len(self._keys))
