"""Hiding secrets inside values that are shown: passwords in URLs, in their userinfo or their query string.

A libpq URL may carry its password as ``?password=...`` and a Redis URL as ``redis://:secret@host``; both end
up in reprs, logs and `acs-transfer config` unless masked here.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"
#: query parameter names whose values are secrets (matched as substrings, case-insensitively)
_SECRET_PARAMETER = re.compile(r"pass|secret|token|key|sig|auth|credential", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`url` with any password (userinfo or secret-looking query parameter) replaced by ``***``.

    Edits the text in place rather than re-joining parsed parts, which would rewrite ``filesystem://`` or
    ``sqlite:////abs/path``.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password:
        user_info, _, host = parts.netloc.rpartition("@")
        user = user_info.partition(":")[0]
        url = url.replace(f"//{parts.netloc}", f"//{user}:{MASK}@{host}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(_SECRET_PARAMETER.search(name) for name, _ in pairs):
            masked = [(name, MASK if _SECRET_PARAMETER.search(name) else value) for name, value in pairs]
            url = url.replace(f"?{parts.query}", f"?{urlencode(masked, safe='*')}", 1)
    return url


def url_secrets(url: str) -> list[str]:
    """The secret values inside `url`, to scrub them from text that might quote them (error messages)."""
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    found += [value for name, value in parse_qsl(parts.query) if value and _SECRET_PARAMETER.search(name)]
    return found


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text
