"""HMAC-SHA256 verification of one request, as ACS does it: signature first, then the clock."""

from __future__ import annotations

from collections.abc import Mapping

from worker.acs.signing import parse_http_date, verify


def authenticate(
    key: bytes,
    method: str,
    raw_path: str,
    host: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    date_tolerance: float,
) -> str | None:
    """None when the request is authentic and fresh, else why not (never the signature or key)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    if not lowered.get("authorization", "").startswith("HMAC-SHA256 "):
        return "missing or malformed HMAC-SHA256 Authorization header"
    date = lowered.get("x-ms-date")
    if date is None:
        return "x-ms-date header is missing"
    moment = parse_http_date(date)
    if moment is None:
        return "x-ms-date is not an RFC 1123 date in GMT"
    if abs(now - moment) > date_tolerance:
        return f"x-ms-date is {now - moment:+.0f} s from the server clock (tolerance {date_tolerance:g} s)"
    if "x-ms-content-sha256" not in lowered:
        return "x-ms-content-sha256 header is missing"
    return verify(key, method, raw_path, host, body, lowered)
