"""What the emulator answers: a status, an ACS-shaped JSON body and extra headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


@dataclass(frozen=True)
class EmulatorAnswer:
    """One HTTP answer; repeatable requests store it so a retry can be replayed byte for byte."""

    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


def error_code(status: int) -> str:
    """ACS-style code for a status: ``ServiceUnavailable`` for 503 (401 keeps ACS's literal ``"401"``)."""
    if status == 401:
        return "401"
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return str(status)


def acs_error(
    status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None
) -> EmulatorAnswer:
    """A `CommunicationErrorResponse`: ``{"error": {"code", "message"}}``."""
    body = {"error": {"code": code or error_code(status), "message": message}}
    return EmulatorAnswer(status, body, dict(headers or {}))
