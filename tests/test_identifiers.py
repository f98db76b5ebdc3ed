"""Identifiers: raw ids and identifier-model JSON in, the swagger `CommunicationIdentifierModel` out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from worker.errors import Issue
from worker.request.identifiers import Identifier, parse_identifier

SPEC_DIR = Path(__file__).resolve().parents[1] / "worker" / "spec"
_BASE = "https://specs.invalid/communication/data-plane/"
_COMMON_URI = _BASE + "Common/stable/2023-11-15/common.json"

# The expectations are written out here, independently of the table in worker/request/identifiers.py.
# (prefix, kind, cloud, anonymous, value-is-whole-raw-id)
PREFIXES = [
    ("8:acs:", "communicationUser", "public", False, True),
    ("8:spool:", "communicationUser", "public", False, True),
    ("8:dod-acs:", "communicationUser", "dod", False, True),
    ("8:gcch-acs:", "communicationUser", "gcch", False, True),
    ("8:orgid:", "microsoftTeamsUser", "public", False, False),
    ("8:dod:", "microsoftTeamsUser", "dod", False, False),
    ("8:gcch:", "microsoftTeamsUser", "gcch", False, False),
    ("8:teamsvisitor:", "microsoftTeamsUser", "public", True, False),
    ("28:orgid:", "microsoftTeamsApp", "public", False, False),
    ("28:dod:", "microsoftTeamsApp", "dod", False, False),
    ("28:gcch:", "microsoftTeamsApp", "gcch", False, False),
]
KINDS = ("communicationUser", "phoneNumber", "microsoftTeamsUser", "microsoftTeamsApp")
SUFFIX = "b9614373-fd0b-480c-8fd2-cb58b70eab9f_0000001a-2b3c"


@pytest.fixture(scope="module")
def identifier_schema() -> Draft4Validator:
    common = json.loads((SPEC_DIR / "common.2023-11-15.json").read_text())
    registry = Registry().with_resource(_COMMON_URI, Resource.from_contents(common, default_specification=DRAFT4))
    return Draft4Validator({"$ref": _COMMON_URI + "#/definitions/CommunicationIdentifierModel"}, registry=registry)


def ok(value: object, field: str = "targetParticipant") -> Identifier:
    identifier, issues = parse_identifier(value, field)
    assert issues == [], issues
    assert identifier is not None
    return identifier


def bad(value: object, field: str = "targetParticipant") -> list[Issue]:
    identifier, issues = parse_identifier(value, field)
    assert identifier is None
    assert issues, f"{value!r} was accepted"
    for issue in issues:
        assert issue.field.startswith(field), issue
        assert issue.rule.strip(), issue
    return issues


def assert_one_kind_object(model: dict[str, Any]) -> None:
    """The swagger only says so in prose ("at most one further property ... must match the kind")."""
    assert set(model) == {"kind", "rawId", model["kind"]}
    assert [k for k in KINDS if k in model] == [model["kind"]]


# --- raw ids --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "kind", "cloud", "anonymous", "whole"), PREFIXES)
def test_every_raw_prefix_parses_and_serializes(
    identifier_schema: Draft4Validator, prefix: str, kind: str, cloud: str, anonymous: bool, whole: bool
) -> None:
    raw = prefix + SUFFIX
    identifier = ok(raw)
    assert (identifier.kind, identifier.raw_id, identifier.cloud, identifier.is_anonymous) == (
        kind,
        raw,
        cloud,
        anonymous,
    )
    assert identifier.value == (raw if whole else SUFFIX)

    model = identifier.model()
    identifier_schema.validate(model)
    assert_one_kind_object(model)
    assert model["kind"] == kind
    assert model["rawId"] == raw
    expected_detail: dict[str, Any] = {
        "communicationUser": {"id": raw},
        "microsoftTeamsUser": {"userId": SUFFIX, "isAnonymous": anonymous, "cloud": cloud},
        "microsoftTeamsApp": {"appId": SUFFIX, "cloud": cloud},
    }[kind]
    assert model[kind] == expected_detail
    # The model parses back to the same identifier.
    assert ok(model) == identifier
    assert ok(model).model() == model


def test_phone_raw_id(identifier_schema: Draft4Validator) -> None:
    identifier = ok("4:+14255550123")
    assert (identifier.kind, identifier.value, identifier.raw_id) == ("phoneNumber", "+14255550123", "4:+14255550123")
    model = identifier.model()
    identifier_schema.validate(model)
    assert model == {"kind": "phoneNumber", "rawId": "4:+14255550123", "phoneNumber": {"value": "+14255550123"}}
    assert ok(model) == identifier


def test_longest_prefix_wins() -> None:
    # "8:dod-acs:" must not be read as a Teams user in DoD whose id is "-acs:..." (nor "8:dod:" as anything else).
    assert ok("8:dod-acs:x").kind == "communicationUser"
    assert ok("8:dod:x").kind == "microsoftTeamsUser"
    assert ok("8:gcch-acs:x").kind == "communicationUser"
    assert ok("8:gcch:x").kind == "microsoftTeamsUser"


@pytest.mark.parametrize(
    "number",
    [
        "14255550123",  # no plus
        "+04255550123",  # country code cannot start with 0
        "+1",  # too short
        "+1234567890123456",  # 16 digits
        "+1 425 555 0123",
        "+1-425-555-0123",
        "+١٤٢٥٥٥٥٠١٢٣",  # Arabic-Indic digits are digits to \d, not to E.164
        "+",
        "++14255550123",
        "+14255550123x",
    ],
)
def test_non_e164_phone_raw_id(number: str) -> None:
    (issue,) = bad("4:" + number)
    assert issue.field == "targetParticipant"
    assert "E.164" in issue.rule


@pytest.mark.parametrize("number", ["+14255550123\n", "+1425555\n0123"])
def test_phone_with_newline_is_rejected(number: str) -> None:
    """A trailing newline must not slip through a ``$``-anchored pattern, in either form."""
    bad("4:" + number)
    (issue,) = bad({"phoneNumber": {"value": number}})
    assert issue.field == "targetParticipant.phoneNumber.value"


@pytest.mark.parametrize("prefix", [p[0] for p in PREFIXES] + ["4:"])
@pytest.mark.parametrize("suffix", ["", " ", "   ", "\u00a0"])
def test_empty_suffix(prefix: str, suffix: str) -> None:
    (issue,) = bad(prefix + suffix, "transferee")
    assert issue.field == "transferee"
    assert "nothing after its prefix" in issue.rule or "E.164" in issue.rule


@pytest.mark.parametrize("raw", ["9:acs:x", "8:unknown:x", "acs:x", "8:ACS:x", "28:bogus:x", "orgid:x", "x"])
def test_unrecognised_raw_id(raw: str) -> None:
    (issue,) = bad(raw)
    assert "unrecognised raw id" in issue.rule


@pytest.mark.parametrize("raw", ["", " ", "\t"])
def test_empty_raw_id(raw: str) -> None:
    (issue,) = bad(raw)
    assert issue.rule in {"must not be empty", "must not contain control characters"}


@pytest.mark.parametrize("char", ["\x00", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x85", "\x9f"])
@pytest.mark.parametrize("raw", ["8:acs:a{}b", "8:orgid:{}x", "28:orgid:x{}"])
def test_control_characters_in_raw_id(raw: str, char: str) -> None:
    (issue,) = bad(raw.format(char))
    assert issue.rule == "must not contain control characters"


def test_lone_surrogate_in_raw_id_is_an_issue_not_a_crash() -> None:
    (issue,) = bad("8:acs:\ud800")
    assert "surrogate" in issue.rule


def test_raw_id_length_limit() -> None:
    assert ok("8:acs:" + "a" * (1024 - 6)).raw_id.endswith("a")
    (issue,) = bad("8:acs:" + "a" * (1025 - 6))
    assert "at most 1024" in issue.rule


@pytest.mark.parametrize("value", [None, 5, 1.5, True, ["4:+14255550123"], b"4:+14255550123"])
def test_neither_string_nor_object(value: object) -> None:
    (issue,) = bad(value, "transferee")
    assert issue.field == "transferee"
    assert "raw id string" in issue.rule


# --- identifier-model JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("detail", "raw", "cloud"),
    [
        ({"userId": "u1", "cloud": "PUBLIC"}, "8:orgid:u1", "public"),
        ({"userId": "u1", "cloud": "DOD"}, "8:dod:u1", "dod"),
        ({"userId": "u1", "cloud": "GCCH"}, "8:gcch:u1", "gcch"),
        ({"userId": "u1", "cloud": "Gcch"}, "8:gcch:u1", "gcch"),
        ({"userId": "u1", "cloud": "gcch"}, "8:gcch:u1", "gcch"),
        ({"userId": "u1"}, "8:orgid:u1", "public"),
        ({"userId": "u1", "isAnonymous": True, "cloud": "PUBLIC"}, "8:teamsvisitor:u1", "public"),
    ],
)
def test_teams_user_model_cloud_any_case(
    identifier_schema: Draft4Validator, detail: dict[str, Any], raw: str, cloud: str
) -> None:
    identifier = ok({"rawId": raw, "microsoftTeamsUser": detail})
    assert (identifier.raw_id, identifier.cloud) == (raw, cloud)
    model = identifier.model()
    identifier_schema.validate(model)  # the swagger enum is lower-case only
    assert model["microsoftTeamsUser"]["cloud"] == cloud
    assert model["microsoftTeamsUser"]["isAnonymous"] is detail.get("isAnonymous", False)
    # Without rawId the same raw id is derived.
    assert ok({"microsoftTeamsUser": detail}).raw_id == raw


@pytest.mark.parametrize(("cloud", "raw"), [("PUBLIC", "28:orgid:a1"), ("DOD", "28:dod:a1"), ("GCCH", "28:gcch:a1")])
def test_teams_app_model_cloud_any_case(identifier_schema: Draft4Validator, cloud: str, raw: str) -> None:
    identifier = ok({"kind": "microsoftTeamsApp", "rawId": raw, "microsoftTeamsApp": {"appId": "a1", "cloud": cloud}})
    assert identifier.raw_id == raw
    identifier_schema.validate(identifier.model())
    assert identifier.model()["microsoftTeamsApp"] == {"appId": "a1", "cloud": cloud.lower()}


def test_official_example_identifier() -> None:
    example = {
        "kind": "communicationUser",
        "communicationUser": {"id": "8:acs:b9614373-fd0b-480c-8fd2-cb58b70eab9f_da7be3a9-8788-42a6-85c6-56b2cf784fce"},
    }
    identifier = ok(example)
    assert identifier.raw_id == example["communicationUser"]["id"]  # type: ignore[index]
    assert identifier.model() == {**example, "rawId": identifier.raw_id}


@pytest.mark.parametrize(("prefix", "cloud"), [("8:acs:", "public"), ("8:dod-acs:", "dod"), ("8:gcch-acs:", "gcch")])
def test_acs_user_model_matches_its_raw_form(prefix: str, cloud: str) -> None:
    from_model = ok({"communicationUser": {"id": prefix + "x"}})
    assert from_model == ok(prefix + "x")
    assert from_model.cloud == cloud


def test_sdk_serialized_identifiers_round_trip(identifier_schema: Draft4Validator) -> None:
    """What the official Python SDK puts on the wire (upper-case cloud, no kind) is accepted unchanged."""
    models = pytest.importorskip("azure.communication.callautomation._shared.models")
    utils = pytest.importorskip("azure.communication.callautomation._utils")
    cloud = models.CommunicationCloudEnvironment
    identifiers = [
        models.PhoneNumberIdentifier("+14255550123"),
        models.CommunicationUserIdentifier("8:acs:abc_def"),
        models.MicrosoftTeamsUserIdentifier("u1"),
        models.MicrosoftTeamsUserIdentifier("u1", cloud=cloud.DOD),
        models.MicrosoftTeamsUserIdentifier("u1", cloud=cloud.GCCH),
        models.MicrosoftTeamsUserIdentifier("u1", is_anonymous=True),
        models.MicrosoftTeamsAppIdentifier("a1"),
        models.MicrosoftTeamsAppIdentifier("a1", cloud=cloud.DOD),
        models.MicrosoftTeamsAppIdentifier("a1", cloud=cloud.GCCH),
    ]
    for sdk_identifier in identifiers:
        wire = json.loads(json.dumps(utils.serialize_identifier(sdk_identifier).serialize()))
        parsed = ok(wire)
        assert parsed.raw_id == sdk_identifier.raw_id
        assert ok(sdk_identifier.raw_id) == parsed
        identifier_schema.validate(parsed.model())


def test_rawid_only_and_unknown_kind() -> None:
    assert ok({"rawId": "4:+14255550123"}).kind == "phoneNumber"
    assert ok({"kind": "unknown", "rawId": "8:orgid:u1"}).kind == "microsoftTeamsUser"
    assert ok({"kind": "communicationUser", "rawId": "8:acs:x"}).kind == "communicationUser"
    (issue,) = bad({"rawId": "8:acs:"})
    assert issue.field == "targetParticipant.rawId"


@pytest.mark.parametrize(
    ("model", "field"),
    [
        # rawId disagreeing with the kind object
        ({"rawId": "4:+14255550124", "phoneNumber": {"value": "+14255550123"}}, "x.rawId"),
        ({"rawId": "8:acs:other", "communicationUser": {"id": "8:acs:x"}}, "x.rawId"),
        ({"rawId": "8:orgid:u1", "microsoftTeamsUser": {"userId": "u1", "cloud": "dod"}}, "x.rawId"),
        ({"rawId": "8:orgid:u1", "microsoftTeamsUser": {"userId": "u1", "isAnonymous": True}}, "x.rawId"),
        ({"rawId": "8:orgid:u1", "microsoftTeamsUser": {"userId": "u2"}}, "x.rawId"),
        ({"rawId": "28:orgid:a1", "microsoftTeamsUser": {"userId": "a1"}}, "x.rawId"),
        ({"rawId": "28:orgid:a1", "microsoftTeamsApp": {"appId": "a1", "cloud": "GCCH"}}, "x.rawId"),
        ({"rawId": 5, "phoneNumber": {"value": "+14255550123"}}, "x.rawId"),
        # kind disagreeing with the kind object or the rawId
        ({"kind": "communicationUser", "phoneNumber": {"value": "+14255550123"}}, "x.kind"),
        ({"kind": "unknown", "phoneNumber": {"value": "+14255550123"}}, "x.kind"),
        ({"kind": "phoneNumber", "rawId": "8:acs:x"}, "x.kind"),
        ({"kind": "microsoftTeamsApp", "rawId": "8:orgid:u1"}, "x.kind"),
        # two kind objects
        ({"phoneNumber": {"value": "+14255550123"}, "communicationUser": {"id": "8:acs:x"}}, "x"),
        # unknown properties, at either level
        ({"phoneNumber": {"value": "+14255550123"}, "isAnonymous": False}, "x.isAnonymous"),
        ({"phoneNumber": {"value": "+14255550123", "isAnonymous": False}}, "x.phoneNumber.isAnonymous"),
        ({"teamsExtensionUser": {"userId": "u"}, "rawId": "8:orgid:u"}, "x.teamsExtensionUser"),
        ({"communicationUser": {"id": "8:acs:x", "cloud": "public"}}, "x.communicationUser.cloud"),
        ({"microsoftTeamsApp": {"appId": "a", "isAnonymous": False}}, "x.microsoftTeamsApp.isAnonymous"),
        # missing or malformed kind-specific values
        ({}, "x"),
        ({"kind": "phoneNumber"}, "x"),
        ({"phoneNumber": {}}, "x.phoneNumber.value"),
        ({"phoneNumber": "+14255550123"}, "x.phoneNumber"),
        ({"phoneNumber": {"value": 14255550123}}, "x.phoneNumber.value"),
        ({"phoneNumber": {"value": "14255550123"}}, "x.phoneNumber.value"),
        ({"phoneNumber": {"value": "+1 425 555 0123"}}, "x.phoneNumber.value"),
        ({"communicationUser": {"id": ""}}, "x.communicationUser.id"),
        ({"communicationUser": {"id": "8:acs:"}}, "x.communicationUser.id"),
        ({"communicationUser": {"id": "8:orgid:u1"}}, "x.communicationUser.id"),
        ({"communicationUser": {"id": "8:acs:a\x00b"}}, "x.communicationUser.id"),
        ({"microsoftTeamsUser": {"userId": " "}}, "x.microsoftTeamsUser.userId"),
        ({"microsoftTeamsUser": {"userId": "u\x85"}}, "x.microsoftTeamsUser.userId"),
        ({"microsoftTeamsUser": {"userId": "u", "cloud": "azure"}}, "x.microsoftTeamsUser.cloud"),
        ({"microsoftTeamsUser": {"userId": "u", "cloud": None}}, "x.microsoftTeamsUser.cloud"),
        ({"microsoftTeamsUser": {"userId": "u", "isAnonymous": "true"}}, "x.microsoftTeamsUser.isAnonymous"),
        ({"microsoftTeamsUser": {"userId": "u", "isAnonymous": 1}}, "x.microsoftTeamsUser.isAnonymous"),
        ({"microsoftTeamsApp": {"appId": "a\x7f"}}, "x.microsoftTeamsApp.appId"),
        ({"microsoftTeamsApp": {"appId": "a", "cloud": 1}}, "x.microsoftTeamsApp.cloud"),
        ({"microsoftTeamsApp": {}}, "x.microsoftTeamsApp.appId"),
    ],
)
def test_bad_models_name_the_field(model: dict[str, Any], field: str) -> None:
    (issue,) = bad(model, "x")
    assert issue.field == field


def test_two_kind_objects_names_both() -> None:
    (issue,) = bad({"phoneNumber": {"value": "+14255550123"}, "microsoftTeamsApp": {"appId": "a"}})
    assert "phoneNumber" in issue.rule
    assert "microsoftTeamsApp" in issue.rule


# --- properties -----------------------------------------------------------------------------------------

_SUFFIX_TEXT = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=40
).filter(lambda s: s.strip() != "")


@settings(max_examples=200, deadline=None)
@given(entry=st.sampled_from(PREFIXES), suffix=_SUFFIX_TEXT, field=st.sampled_from(["targetParticipant", "transferee"]))
def test_raw_ids_round_trip_through_models(entry: tuple[str, str, str, bool, bool], suffix: str, field: str) -> None:
    prefix, kind, cloud, anonymous, _ = entry
    identifier = ok(prefix + suffix, field)
    assert (identifier.kind, identifier.cloud, identifier.is_anonymous) == (kind, cloud, anonymous)
    model = json.loads(json.dumps(identifier.model()))
    assert_one_kind_object(model)
    again = ok(model, field)
    assert again == identifier
    assert again.model() == model


@settings(max_examples=200, deadline=None)
@given(country=st.integers(1, 9), rest=st.text(alphabet="0123456789", min_size=1, max_size=14))
def test_e164_numbers_round_trip(country: int, rest: str) -> None:
    number = f"+{country}{rest}"
    identifier = ok("4:" + number)
    assert identifier.value == number
    assert ok(identifier.model()) == identifier
    assert ok({"phoneNumber": {"value": number}}) == identifier
