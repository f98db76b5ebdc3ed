"""ACS HMAC-SHA256 request signing, shared by the client (to sign) and the emulator (to verify).

    string_to_sign = METHOD "\\n" path_and_query "\\n" x-ms-date ";" host ";" base64(sha256(body))
    Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=<base64 hmac>

`path_and_query` and `host` must be exactly what goes on the wire, so callers pass the raw, already
percent-encoded path they send and the Host header they send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import timedelta
from email.utils import formatdate, parsedate_to_datetime

SIGNED_HEADERS = "x-ms-date;host;x-ms-content-sha256"
_AUTH_PREFIX = f"HMAC-SHA256 SignedHeaders={SIGNED_HEADERS}&Signature="


def http_date(timestamp: float) -> str:
    """IMF-fixdate (RFC 7231), e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return formatdate(timestamp, usegmt=True)


def parse_http_date(text: str) -> float | None:
    """Seconds since the epoch for an IMF-fixdate in GMT, or None when it is not one."""
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    # "... 08:49:37 EST GMT" ends with GMT yet parses as EST: insist on a zero offset too.
    if moment.tzinfo is None or moment.utcoffset() != timedelta(0) or not text.rstrip().endswith("GMT"):
        return None
    return moment.timestamp()


def content_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def string_to_sign(method: str, path_and_query: str, date: str, host: str, body_hash: str) -> str:
    return f"{method.upper()}\n{path_and_query}\n{date};{host};{body_hash}"


def signature(key: bytes, text: str) -> str:
    return base64.b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).decode()


def sign(key: bytes, method: str, path_and_query: str, host: str, body: bytes, now: float) -> dict[str, str]:
    """The headers that authenticate one attempt; call again for every attempt (the date changes)."""
    date = http_date(now)
    body_hash = content_hash(body)
    mac = signature(key, string_to_sign(method, path_and_query, date, host, body_hash))
    return {
        "x-ms-date": date,
        "x-ms-content-sha256": body_hash,
        "Authorization": _AUTH_PREFIX + mac,
    }


def verify(
    key: bytes,
    method: str,
    path_and_query: str,
    host: str,
    body: bytes,
    headers: dict[str, str],
) -> str | None:
    """None when the headers authenticate this exact request, else why not (without any secret)."""
    # Header names are case-insensitive: accept sign()'s "Authorization" too (first occurrence wins).
    headers = {name.lower(): value for name, value in reversed(list(headers.items()))}
    authorization = headers.get("authorization", "")
    if not authorization.startswith(_AUTH_PREFIX):
        return "missing or malformed HMAC-SHA256 Authorization header"
    date = headers.get("x-ms-date", "")
    claimed_hash = headers.get("x-ms-content-sha256", "")
    if claimed_hash != content_hash(body):
        return "x-ms-content-sha256 does not match the body"
    expected = signature(key, string_to_sign(method, path_and_query, date, host, claimed_hash))
    if not hmac.compare_digest(expected, authorization[len(_AUTH_PREFIX) :]):
        return "signature does not match"
    return None
