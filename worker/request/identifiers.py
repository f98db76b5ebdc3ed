"""Communication identifiers: parsed from raw ids or identifier-model JSON, serialized as the swagger defines.

ACS names a participant by a raw id whose prefix tells the kind (``4:`` phone, ``8:acs:`` ACS user, ``8:orgid:``
Teams user, ``28:orgid:`` Teams app, ...). Requests carry a ``CommunicationIdentifierModel``: ``kind``, ``rawId``
and exactly one kind-specific object. Both forms are accepted; the output is always the full model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import Issue
from worker.text import has_control_characters, has_lone_surrogates

E164 = re.compile(r"\A\+[1-9][0-9]{1,14}\Z")  # \Z: "$" would also match before a trailing newline

# (prefix, kind, cloud, anonymous), longest prefix first so "8:dod-acs:" wins over "8:dod:".
_PREFIXES = sorted(
    [
        ("8:acs:", "communicationUser", "public", False),
        ("8:spool:", "communicationUser", "public", False),
        ("8:dod-acs:", "communicationUser", "dod", False),
        ("8:gcch-acs:", "communicationUser", "gcch", False),
        ("8:orgid:", "microsoftTeamsUser", "public", False),
        ("8:dod:", "microsoftTeamsUser", "dod", False),
        ("8:gcch:", "microsoftTeamsUser", "gcch", False),
        ("8:teamsvisitor:", "microsoftTeamsUser", "public", True),
        ("28:orgid:", "microsoftTeamsApp", "public", False),
        ("28:dod:", "microsoftTeamsApp", "dod", False),
        ("28:gcch:", "microsoftTeamsApp", "gcch", False),
    ],
    key=lambda entry: -len(entry[0]),
)
_ACS_USER_PREFIXES = tuple(prefix for prefix, kind, _, _ in _PREFIXES if kind == "communicationUser")
_CLOUDS = ("public", "dod", "gcch")
_KINDS = ("communicationUser", "phoneNumber", "microsoftTeamsUser", "microsoftTeamsApp")
_MAX_ID_LENGTH = 1024
#: for the intake's OpenAPI document
RAW_ID_PREFIXES = tuple(prefix for prefix, *_ in _PREFIXES)
MAX_ID_LENGTH = _MAX_ID_LENGTH

RAW_ID_FORMS = "4:+E164, 8:acs:…, 8:orgid:…, 8:dod:…, 8:gcch:…, 8:teamsvisitor:…, 28:orgid:…, 28:dod:…, 28:gcch:…"


@dataclass(frozen=True)
class Identifier:
    """A validated participant; `model()` is its swagger `CommunicationIdentifierModel`."""

    kind: str
    raw_id: str
    value: str
    cloud: str = "public"
    is_anonymous: bool = False

    def model(self) -> dict[str, Any]:
        detail: dict[str, Any]
        if self.kind == "phoneNumber":
            detail = {"value": self.value}
        elif self.kind == "communicationUser":
            detail = {"id": self.value}
        elif self.kind == "microsoftTeamsUser":
            detail = {"userId": self.value, "isAnonymous": self.is_anonymous, "cloud": self.cloud}
        else:
            detail = {"appId": self.value, "cloud": self.cloud}
        return {"kind": self.kind, "rawId": self.raw_id, self.kind: detail}


def phone_number(value: str) -> Identifier:
    return Identifier("phoneNumber", "4:" + value, value)


def _raw_id(kind: str, value: str, cloud: str, anonymous: bool = False) -> str:
    prefix = next(p for p, k, c, a in _PREFIXES if (k, c, a) == (kind, cloud, anonymous))
    return prefix + value


def parse_identifier(value: object, field: str) -> tuple[Identifier | None, list[Issue]]:
    """Parse a raw id string or an identifier-model mapping; never raises."""
    if isinstance(value, str):
        return _parse_raw_id(value, field)
    if isinstance(value, Mapping):
        return _parse_model(value, field)
    return None, [Issue(field, f"must be a raw id string ({RAW_ID_FORMS}) or an identifier object")]


def _bad_text(text: str) -> str | None:
    if not text.strip():
        return "must not be empty"
    if len(text) > _MAX_ID_LENGTH:
        return f"must be at most {_MAX_ID_LENGTH} characters"
    if has_control_characters(text):
        return "must not contain control characters"
    if has_lone_surrogates(text):
        return "must not contain lone surrogates (not encodable as UTF-8)"
    return None


def _parse_raw_id(raw: str, field: str) -> tuple[Identifier | None, list[Issue]]:
    if problem := _bad_text(raw):
        return None, [Issue(field, problem)]
    if raw.startswith("4:"):
        number = raw[2:]
        if not E164.match(number):
            return None, [Issue(field, f"phone number {number!r} is not E.164 (+ then 2 to 15 digits)")]
        return phone_number(number), []
    for prefix, kind, cloud, anonymous in _PREFIXES:
        if raw.startswith(prefix):
            suffix = raw[len(prefix) :]
            if not suffix.strip():
                return None, [Issue(field, f"raw id {raw!r} has nothing after its prefix")]
            # An ACS user's id is its whole raw id; Teams ids are the part after the prefix.
            value = raw if kind == "communicationUser" else suffix
            return Identifier(kind, raw, value, cloud, anonymous), []
    return None, [Issue(field, f"unrecognised raw id {raw!r}: expected one of {RAW_ID_FORMS}")]


def _parse_model(model: Mapping[Any, Any], field: str) -> tuple[Identifier | None, list[Issue]]:
    known = {"kind", "rawId", *_KINDS}
    extra = sorted(str(key) for key in model if key not in known)
    if extra:
        return None, [Issue(f"{field}.{extra[0]}", "is not a property of CommunicationIdentifierModel")]
    present = [kind for kind in _KINDS if kind in model]
    raw_id = model.get("rawId")
    if raw_id is not None and not isinstance(raw_id, str):
        return None, [Issue(f"{field}.rawId", "must be a string")]
    if len(present) > 1:
        return None, [Issue(field, f"must set only one of {', '.join(present)}")]
    if not present:
        if isinstance(raw_id, str):
            identifier, issues = _parse_raw_id(raw_id, f"{field}.rawId")
            kind_field = model.get("kind")
            if identifier is not None and kind_field not in (None, "unknown", identifier.kind):
                return None, [Issue(f"{field}.kind", f"is {kind_field!r} but rawId names a {identifier.kind}")]
            return identifier, issues
        return None, [Issue(field, f"must set one of {', '.join(_KINDS)} or rawId")]
    kind = present[0]
    kind_field = model.get("kind")
    if kind_field is not None and kind_field != kind:
        return None, [Issue(f"{field}.kind", f"is {kind_field!r} but the identifier sets {kind}")]
    detail = model[kind]
    if not isinstance(detail, Mapping):
        return None, [Issue(f"{field}.{kind}", "must be an object")]
    identifier, issues = _MODEL_PARSERS[kind](detail, f"{field}.{kind}")
    if identifier is not None and raw_id is not None and raw_id != identifier.raw_id:
        return None, [Issue(f"{field}.rawId", f"{raw_id!r} does not match the {kind} it names")]
    return identifier, issues


def _string_property(
    detail: Mapping[Any, Any], name: str, field: str, allowed: tuple[str, ...]
) -> tuple[str | None, list[Issue]]:
    extra = sorted(str(key) for key in detail if key not in allowed)
    if extra:
        return None, [Issue(f"{field}.{extra[0]}", "is not a property of this identifier")]
    value = detail.get(name)
    if not isinstance(value, str):
        return None, [Issue(f"{field}.{name}", "is required and must be a string")]
    if problem := _bad_text(value):
        return None, [Issue(f"{field}.{name}", problem)]
    return value, []


def _cloud(detail: Mapping[Any, Any], field: str) -> tuple[str | None, list[Issue]]:
    cloud = detail.get("cloud", "public")
    # The official Python SDK sends the cloud upper-case; the swagger enum is lower-case.
    if not isinstance(cloud, str) or cloud.lower() not in _CLOUDS:
        return None, [Issue(f"{field}.cloud", f"must be one of {', '.join(_CLOUDS)}")]
    return cloud.lower(), []


def _phone_model(detail: Mapping[Any, Any], field: str) -> tuple[Identifier | None, list[Issue]]:
    value, issues = _string_property(detail, "value", field, ("value",))
    if value is None:
        return None, issues
    if not E164.match(value):
        return None, [Issue(f"{field}.value", f"phone number {value!r} is not E.164 (+ then 2 to 15 digits)")]
    return phone_number(value), []


def _acs_user_model(detail: Mapping[Any, Any], field: str) -> tuple[Identifier | None, list[Issue]]:
    value, issues = _string_property(detail, "id", field, ("id",))
    if value is None:
        return None, issues
    if not value.startswith(_ACS_USER_PREFIXES):
        return None, [Issue(f"{field}.id", "must start with 8:acs:, 8:spool:, 8:dod-acs: or 8:gcch-acs:")]
    # The id is a raw id: parse it as one so an empty suffix is refused and 8:dod-acs:/8:gcch-acs: keep their cloud.
    return _parse_raw_id(value, f"{field}.id")


def _teams_user_model(detail: Mapping[Any, Any], field: str) -> tuple[Identifier | None, list[Issue]]:
    value, issues = _string_property(detail, "userId", field, ("userId", "isAnonymous", "cloud"))
    if value is None:
        return None, issues
    cloud, issues = _cloud(detail, field)
    if cloud is None:
        return None, issues
    anonymous = detail.get("isAnonymous", False)
    if not isinstance(anonymous, bool):
        return None, [Issue(f"{field}.isAnonymous", "must be true or false")]
    return Identifier(
        "microsoftTeamsUser",
        _raw_id("microsoftTeamsUser", value, "public" if anonymous else cloud, anonymous),
        value,
        cloud,
        anonymous,
    ), []


def _teams_app_model(detail: Mapping[Any, Any], field: str) -> tuple[Identifier | None, list[Issue]]:
    value, issues = _string_property(detail, "appId", field, ("appId", "cloud"))
    if value is None:
        return None, issues
    cloud, issues = _cloud(detail, field)
    if cloud is None:
        return None, issues
    return Identifier("microsoftTeamsApp", _raw_id("microsoftTeamsApp", value, cloud), value, cloud), []


_MODEL_PARSERS = {
    "phoneNumber": _phone_model,
    "communicationUser": _acs_user_model,
    "microsoftTeamsUser": _teams_user_model,
    "microsoftTeamsApp": _teams_app_model,
}
