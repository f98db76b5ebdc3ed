"""Request-body validation against the official swagger's `TransferToParticipantRequest`.

The swagger and the common identifier file are registered under URIs that mirror their places in
Azure/azure-rest-api-specs, so the swagger's relative ``../../../Common/stable/2023-11-15/common.json``
references resolve unchanged. The validator is built once per app; every reference is resolved at build
time (and inlined) so a broken spec fails at start-up, not on the first request that happens to reach it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import fastjsonschema
from jsonschema import Draft4Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4

_SPECS = "https://azure-rest-api-specs.invalid/specification/communication/data-plane/"
SWAGGER_URI = _SPECS + "CallAutomation/stable/2024-09-15/communicationservicescallautomation.json"
COMMON_URI = _SPECS + "Common/stable/2023-11-15/common.json"
SWAGGER_FILE = "communicationservicescallautomation.2024-09-15.json"
COMMON_FILE = "common.2023-11-15.json"
REQUEST_DEFINITION = "TransferToParticipantRequest"

_IDENTIFIER_FIELDS = ("targetParticipant", "transferee")
_IDENTIFIER_KINDS = ("communicationUser", "phoneNumber", "microsoftTeamsUser", "microsoftTeamsApp")
_CLOUD_KINDS = ("microsoftTeamsUser", "microsoftTeamsApp")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_ISSUES = 5
_MAX_MESSAGE = 200


@dataclass(frozen=True)
class ParsedBody:
    data: dict[str, Any]


class BodyValidator:
    """Parses raw request bytes and checks them against the swagger schema."""

    def __init__(self) -> None:
        spec = files("worker") / "spec"
        swagger = json.loads((spec / SWAGGER_FILE).read_text(encoding="utf-8"))
        common = json.loads((spec / COMMON_FILE).read_text(encoding="utf-8"))
        registry: Registry[Any] = Registry().with_resources(
            [(SWAGGER_URI, DRAFT4.create_resource(swagger)), (COMMON_URI, DRAFT4.create_resource(common))]
        )
        root = {"$ref": f"{SWAGGER_URI}#/definitions/{REQUEST_DEFINITION}"}
        # Every reference inlined once here: resolving them on each request cost half the emulator's CPU.
        # Swagger 2.0 schemas are JSON Schema draft 4 (plus x-ms-* keywords, which validators ignore).
        schema = _inlined(root, registry.resolver())
        self._validator = Draft4Validator(schema)
        # Compiled to Python once: valid bodies (nearly all) are checked in microseconds; an invalid one is
        # checked again by jsonschema, which names every broken rule rather than the first.
        self._is_valid = fastjsonschema.compile(schema)

    def parse(self, raw: bytes) -> ParsedBody | str:
        """The parsed body, or a message naming the path and the rule it breaks."""
        try:
            data = json.loads(raw, parse_constant=_reject_constant)
        except ValueError as error:  # includes UnicodeDecodeError
            return f"body: not valid JSON ({error})"
        if not isinstance(data, dict):
            return "body: must be a JSON object (TransferToParticipantRequest)"
        normalised = _normalised(data)
        try:
            self._is_valid(normalised)
            issues = []
        except fastjsonschema.JsonSchemaException:
            issues = [
                f"{_path(error.absolute_path)}: {_shorten(error.message)}"
                for error in sorted(
                    self._validator.iter_errors(normalised), key=lambda e: [str(p) for p in e.absolute_path]
                )
            ]
        issues += _identifier_issues(data)
        if issues:
            more = len(issues) - _MAX_ISSUES
            return "; ".join(issues[:_MAX_ISSUES]) + (f"; and {more} more" if more > 0 else "")
        return ParsedBody(data)


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are Python's JSON extensions, not JSON."""
    raise ValueError(f"{name} is not a JSON value")


def _inlined(node: Any, resolver: Any, depth: int = 0) -> Any:
    """`node` with every $ref replaced by what it points to; raises `referencing.exceptions.Unresolvable` if one
    is broken. The request's schema has no recursive references; a deep chain means one appeared."""
    if depth > 50:
        raise ValueError("the request schema refers to itself: it cannot be inlined")
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):  # draft 4: a $ref replaces the whole object, siblings are ignored
            resolved = resolver.lookup(ref)
            return _inlined(resolved.contents, resolved.resolver, depth + 1)
        return {key: _inlined(value, resolver, depth + 1) for key, value in node.items()}
    if isinstance(node, list):
        return [_inlined(value, resolver, depth + 1) for value in node]
    return node


def _normalised(data: dict[str, Any]) -> dict[str, Any]:
    """A copy with identifier `cloud` values lower-cased: the swagger enum is lower-case, the Python SDK
    sends ``PUBLIC``, and ACS accepts both."""
    clouds = [
        (name, kind)
        for name in _IDENTIFIER_FIELDS
        for kind in _CLOUD_KINDS
        if isinstance(data.get(name), dict)
        and isinstance(data[name].get(kind), dict)
        and isinstance(data[name][kind].get("cloud"), str)
    ]
    if not clouds:
        return data
    copied = copy.deepcopy(data)
    for name, kind in clouds:
        detail = copied[name][kind]
        detail["cloud"] = detail["cloud"].lower()
    return copied


def _identifier_issues(data: dict[str, Any]) -> list[str]:
    """The polymorphism rule the swagger states only in prose: at most one kind-specific property,
    matching `kind` when both are given, and something that names a participant."""
    issues: list[str] = []
    for name in _IDENTIFIER_FIELDS:
        model = data.get(name)
        if not isinstance(model, dict):
            continue
        present = [kind for kind in _IDENTIFIER_KINDS if kind in model]
        kind = model.get("kind")
        if len(present) > 1:
            issues.append(f"{name}: sets {', '.join(present)}; at most one identifier property is allowed")
        elif not present and "rawId" not in model:
            issues.append(f"{name}: names no participant (set rawId or one of {', '.join(_IDENTIFIER_KINDS)})")
        elif present and isinstance(kind, str) and kind != present[0]:
            issues.append(f"{name}.kind: is {kind!r} but the identifier sets {present[0]}")
    return issues


def _path(parts: Iterable[Any]) -> str:
    path = "body"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _NAME.match(str(part)):
            path += f".{part}"
        else:
            path += f"[{json.dumps(part)}]"
    return path.removeprefix("body.") if path != "body" else path


def _shorten(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"
