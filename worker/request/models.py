"""The transfer request: validated once at enqueue, then frozen as the exact bytes sent to ACS.

The wire form producers use (Python, HTTP intake, campaign rows, raw broker messages) is the swagger's
`TransferToParticipantRequest` plus the path's ``callConnectionId``; identifiers may also be raw id strings
and ``sourceCallerIdNumber`` a bare E.164 string. Every rule that fails is reported with its field path.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlsplit

from worker.errors import Issue, ValidationError
from worker.request.identifiers import E164, Identifier, parse_identifier, phone_number
from worker.text import can_store, has_control_characters, has_lone_surrogates

SIP_CUSTOM_PREFIX = "X-MS-Custom-"
SIP_UUI_HEADER = "User-To-User"
MAX_SIP_CUSTOM_HEADERS = 5
MAX_SIP_KEY_LENGTH = 64
MAX_SIP_VALUE_LENGTH = 256
MAX_VOIP_HEADERS = 1000
MAX_VOIP_VALUE_LENGTH = 1024
MAX_CALL_CONNECTION_ID_LENGTH = 256
MAX_URI_LENGTH = 2048

# RFC 3261 "token": the characters a SIP header name may use.
_SIP_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_FIELDS = {
    "callConnectionId",
    "targetParticipant",
    "transferee",
    "operationContext",
    "operationCallbackUri",
    "customCallingContext",
    "sourceCallerIdNumber",
}
_REQUEST_ID_NAMESPACE = b"acs-transfer/idempotency-key/"
_JOB_ID_NAMESPACE = b"acs-transfer/job-id/"


@dataclass(frozen=True)
class TransferRequest:
    """A validated transfer: the path's call connection id and the swagger body."""

    call_connection_id: str
    target: Identifier
    transferee: Identifier | None = None
    operation_context: str | None = None
    callback_uri: str | None = None
    source_caller_id: str | None = None
    sip_headers: Mapping[str, str] = field(default_factory=dict)
    voip_headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The `TransferToParticipantRequest` object, keys in the swagger's order."""
        body: dict[str, Any] = {"targetParticipant": self.target.model()}
        if self.operation_context is not None:
            body["operationContext"] = self.operation_context
        if self.transferee is not None:
            body["transferee"] = self.transferee.model()
        if self.callback_uri is not None:
            body["operationCallbackUri"] = self.callback_uri
        if self.sip_headers or self.voip_headers:
            context: dict[str, dict[str, str]] = {}
            if self.voip_headers:
                context["voipHeaders"] = dict(self.voip_headers)
            if self.sip_headers:
                context["sipHeaders"] = dict(self.sip_headers)
            body["customCallingContext"] = context
        if self.source_caller_id is not None:
            body["sourceCallerIdNumber"] = {"value": self.source_caller_id}
        return body

    def body_bytes(self) -> bytes:
        """The canonical bytes: compact JSON, UTF-8. Fixed once per job and re-sent byte for byte."""
        return json.dumps(self.body(), separators=(",", ":"), ensure_ascii=False).encode()

    def as_message(self) -> dict[str, Any]:
        """The wire form producers send: the body plus ``callConnectionId``."""
        return {"callConnectionId": self.call_connection_id, **self.body()}

    def with_callback_uri(self, uri: str | None) -> TransferRequest:
        return replace(self, callback_uri=uri)

    @property
    def encoded_call_connection_id(self) -> str:
        return encode_path_segment(self.call_connection_id)


def encode_path_segment(value: str) -> str:
    """Percent-encode everything but RFC 3986 unreserved characters, so the id is one opaque segment."""
    return quote(value, safe="-._~")


def _uuid4_from(namespace: bytes, text: str) -> str:
    digest = bytearray(hashlib.sha256(namespace + text.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40  # version 4
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(digest)))


def request_id_for_key(idempotency_key: str) -> str:
    """A valid version 4 UUID derived from an idempotency key: the same key always yields the same id."""
    return _uuid4_from(_REQUEST_ID_NAMESPACE, idempotency_key)


def job_id_for_key(idempotency_key: str) -> str:
    """The job id for an idempotency key, so that anything derived from the id (the callback URI) is stable too."""
    return _uuid4_from(_JOB_ID_NAMESPACE, idempotency_key)


def new_request_id() -> str:
    return str(uuid.uuid4())


def parse_transfer(data: object, where: str = "") -> TransferRequest:
    """Validate the wire form; raise `ValidationError` naming every broken rule (and `where`, e.g. a line)."""
    if not isinstance(data, Mapping):
        raise ValidationError([Issue("(request)", "must be a JSON object")], where)
    issues: list[Issue] = []
    unknown = sorted(str(key) for key in data if key not in _FIELDS)
    # A blank key would make a blank field name: quote it instead.
    issues += [Issue(key if key.strip() else repr(key), "is not a field of a transfer request") for key in unknown]

    call_connection_id = _call_connection_id(data.get("callConnectionId"), issues)
    target = _identifier(data, "targetParticipant", issues, required=True)
    transferee = _identifier(data, "transferee", issues, required=False)
    operation_context = _optional_string(data, "operationContext", issues)
    callback_uri = _callback_uri(data.get("operationCallbackUri"), issues)
    source_caller_id = _source_caller_id(data.get("sourceCallerIdNumber"), issues)
    sip_headers, voip_headers = _custom_context(data.get("customCallingContext"), issues)

    if issues:
        raise ValidationError(issues, where)
    assert call_connection_id is not None
    assert target is not None
    return TransferRequest(
        call_connection_id=call_connection_id,
        target=target,
        transferee=transferee,
        operation_context=operation_context,
        callback_uri=callback_uri,
        source_caller_id=source_caller_id,
        sip_headers=sip_headers,
        voip_headers=voip_headers,
    )


def _call_connection_id(value: object, issues: list[Issue]) -> str | None:
    name = "callConnectionId"
    if not isinstance(value, str):
        issues.append(Issue(name, "is required and must be a string"))
        return None
    if not value.strip():
        issues.append(Issue(name, "must not be empty"))
    elif value != value.strip() or has_control_characters(value):
        issues.append(Issue(name, "must not contain whitespace at its ends or control characters"))
    elif has_lone_surrogates(value):
        issues.append(Issue(name, "must not contain lone surrogates (not encodable as UTF-8)"))
    elif value in {".", ".."}:
        issues.append(Issue(name, "must not be a dot segment"))
    elif len(encode_path_segment(value)) > MAX_CALL_CONNECTION_ID_LENGTH:
        issues.append(Issue(name, f"must be at most {MAX_CALL_CONNECTION_ID_LENGTH} characters once URL-encoded"))
    else:
        return value
    return None


def _identifier(data: Mapping[Any, Any], name: str, issues: list[Issue], required: bool) -> Identifier | None:
    value = data.get(name)
    if value is None:
        if required:
            issues.append(Issue(name, "is required"))
        return None
    identifier, problems = parse_identifier(value, name)
    issues += problems
    return identifier


def _optional_string(data: Mapping[Any, Any], name: str, issues: list[Issue]) -> str | None:
    value = data.get(name)
    # NUL is refused too: the ledger keeps this value, and PostgreSQL cannot store NUL in text.
    if value is None or (isinstance(value, str) and can_store(value)):
        return value
    issues.append(Issue(name, "must be a string encodable as UTF-8 (no lone surrogates, no NUL characters)"))
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _callback_uri(value: object, issues: list[Issue]) -> str | None:
    name = "operationCallbackUri"
    if value is None:
        return None
    if not isinstance(value, str):
        issues.append(Issue(name, "must be a string"))
        return None
    if len(value) > MAX_URI_LENGTH or has_control_characters(value) or " " in value:
        issues.append(Issue(name, f"must be a URI of at most {MAX_URI_LENGTH} characters without spaces"))
        return None
    if "\\" in value or has_lone_surrogates(value):
        # WHATWG and .NET parsers read a backslash as "/": http://evil\@127.0.0.1/ would reach evil, not loopback.
        issues.append(Issue(name, "must not contain backslashes or lone surrogates"))
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        issues.append(Issue(name, "is not a valid URI"))
        return None
    if not host:
        issues.append(Issue(name, "must be an absolute URI with a host"))
    elif "@" in parts.netloc:
        # Credentials in a URI end up in logs and reports; ACS callbacks authenticate with a signed token instead.
        issues.append(Issue(name, "must not carry user information (user:password@)"))
    elif parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host)):
        return value
    elif parts.scheme == "http":
        issues.append(Issue(name, "must use https (http is allowed only to a loopback host)"))
    else:
        issues.append(Issue(name, f"scheme {parts.scheme!r} is not allowed: use https"))
    return None


def _source_caller_id(value: object, issues: list[Issue]) -> str | None:
    name = "sourceCallerIdNumber"
    if value is None:
        return None
    if isinstance(value, Mapping):
        extra = sorted(str(key) for key in value if key != "value")
        if extra:
            issues.append(Issue(f"{name}.{extra[0]}", "is not a property of PhoneNumberIdentifierModel"))
            return None
        value, name = value.get("value"), f"{name}.value"
    if isinstance(value, str) and value.startswith("4:"):
        value = value[2:]
    if not isinstance(value, str) or not E164.match(value):
        issues.append(Issue(name, f"{value!r} is not an E.164 phone number (+ then 2 to 15 digits)"))
        return None
    return phone_number(value).value


def _string_map(value: object, name: str, issues: list[Issue]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        issues.append(Issue(name, "must be an object of string keys to string values"))
        return {}
    headers: dict[str, str] = {}
    for key, header_value in value.items():
        if not isinstance(key, str) or not isinstance(header_value, str):
            issues.append(Issue(f"{name}[{key!r}]", "keys and values must be strings"))
        elif not key or any(has_control_characters(t) or has_lone_surrogates(t) for t in (key, header_value)):
            issues.append(Issue(f"{name}[{key!r}]", "must be non-empty, without control characters or lone surrogates"))
        else:
            headers[key] = header_value
    return headers


def _custom_context(value: object, issues: list[Issue]) -> tuple[dict[str, str], dict[str, str]]:
    name = "customCallingContext"
    if value is None:
        return {}, {}
    if not isinstance(value, Mapping):
        issues.append(Issue(name, "must be an object with sipHeaders and/or voipHeaders"))
        return {}, {}
    extra = sorted(str(key) for key in value if key not in {"sipHeaders", "voipHeaders"})
    issues += [Issue(f"{name}.{key}", "is not a property of CustomCallingContext") for key in extra]
    sip = _string_map(value.get("sipHeaders"), f"{name}.sipHeaders", issues)
    voip = _string_map(value.get("voipHeaders"), f"{name}.voipHeaders", issues)
    _check_sip_headers(sip, f"{name}.sipHeaders", issues)
    _check_voip_headers(voip, f"{name}.voipHeaders", issues)
    return sip, voip


def _check_sip_headers(headers: Mapping[str, str], name: str, issues: list[Issue]) -> None:
    custom = 0
    seen: set[str] = set()
    for key, value in headers.items():
        where = f"{name}[{key!r}]"
        if key.lower() in seen:
            issues.append(Issue(where, "is given twice (SIP header names are case-insensitive)"))
        seen.add(key.lower())
        if not _SIP_TOKEN.match(key):
            issues.append(Issue(where, "a SIP header name may use only letters, digits and -.!%*_+`'~"))
        elif key.lower() == SIP_UUI_HEADER.lower():
            pass
        elif not key.lower().startswith(SIP_CUSTOM_PREFIX.lower()) or len(key) == len(SIP_CUSTOM_PREFIX):
            issues.append(Issue(where, f"must be {SIP_UUI_HEADER} or start with {SIP_CUSTOM_PREFIX} and a name"))
        else:
            custom += 1
            if len(key) > MAX_SIP_KEY_LENGTH:
                issues.append(Issue(where, f"key must be at most {MAX_SIP_KEY_LENGTH} characters including the prefix"))
        if len(value) > MAX_SIP_VALUE_LENGTH:
            issues.append(Issue(where, f"value must be at most {MAX_SIP_VALUE_LENGTH} characters"))
    if custom > MAX_SIP_CUSTOM_HEADERS:
        issues.append(
            Issue(name, f"at most {MAX_SIP_CUSTOM_HEADERS} {SIP_CUSTOM_PREFIX} headers are allowed, got {custom}")
        )


def _check_voip_headers(headers: Mapping[str, str], name: str, issues: list[Issue]) -> None:
    if len(headers) > MAX_VOIP_HEADERS:
        issues.append(Issue(name, f"at most {MAX_VOIP_HEADERS} headers are allowed, got {len(headers)}"))
    for key, value in headers.items():
        if len(value) > MAX_VOIP_VALUE_LENGTH:
            issues.append(Issue(f"{name}[{key!r}]", f"value must be at most {MAX_VOIP_VALUE_LENGTH} characters"))
