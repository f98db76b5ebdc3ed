"""The text rules every way in shares: what can be encoded as UTF-8 and what the ledger can store.

JSON can carry an unpaired surrogate (``\\ud800``), which has no UTF-8 form, and PostgreSQL refuses NUL in text.
Values that are validated are refused with these (`has_lone_surrogates`, `can_store`, `is_printable`); values
that are only recorded (a poison message, an error ACS sent) are made storable instead (`storable`). The widths
of the ledger's columns are in `worker.ledger.limits`.
"""

from __future__ import annotations

import re

# C0 and C1 control characters, DEL, and the surrogate range (a lone surrogate has no UTF-8 form). Searched with
# `re`, not character by character: every field of every job passes here.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogates(text: str) -> bool:
    """Whether `text` holds an unpaired surrogate: such a string has no UTF-8 form, so it can be neither sent
    nor stored."""
    return _SURROGATE.search(text) is not None


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a C0 or C1 control character or DEL."""
    return _CONTROL.search(text) is not None


def can_store(text: str) -> bool:
    """Whether the ledger can keep `text`: PostgreSQL refuses NUL, and a lone surrogate has no UTF-8 form."""
    return "\x00" not in text and not has_lone_surrogates(text)


def is_printable(text: str) -> bool:
    """Whether `text` holds no control character and no lone surrogate: what a name that is stored and logged as
    given (a job id, an idempotency key, a campaign) may hold."""
    return _UNPRINTABLE.search(text) is None


def storable(text: str, limit: int) -> str:
    """`text` as any ledger can store it: lone surrogates and NUL escaped, cut to `limit` characters, so that
    recording it can never fail because of what it holds."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")[:limit]
