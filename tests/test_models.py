"""The transfer request: every validation rule, the canonical body bytes, request ids, and the official schema."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from worker.errors import Issue, ValidationError
from worker.request.models import TransferRequest, new_request_id, parse_transfer, request_id_for_key

SPEC_DIR = Path(__file__).resolve().parents[1] / "worker" / "spec"
# Where the two files live in Azure/azure-rest-api-specs, so the swagger's relative $refs
# ("../../../Common/stable/2023-11-15/common.json#/definitions/X") resolve against the registry.
_BASE = "https://specs.invalid/specification/communication/data-plane/"
_SWAGGER_URI = _BASE + "CallAutomation/stable/2024-09-15/communicationservicescallautomation.json"
_COMMON_URI = _BASE + "Common/stable/2023-11-15/common.json"

# The official example that sits beside the swagger in azure-rest-api-specs, kept with the package's copy of it.
EXAMPLE = SPEC_DIR / "example.CallConnection_TransferToParticipant.2024-09-15.json"
CALL_ID = "18dea47f-b081-4107-9a5c-4300819d2c6c"
PHONE = "+14255550123"
ACS_USER = "8:acs:b9614373-fd0b-480c-8fd2-cb58b70eab9f_da7be3a9-8788-42a6-85c6-56b2cf784fce"
FIELDS = [
    "callConnectionId",
    "targetParticipant",
    "transferee",
    "operationContext",
    "operationCallbackUri",
    "customCallingContext",
    "sourceCallerIdNumber",
]


@pytest.fixture(scope="module")
def schema() -> Draft4Validator:
    swagger = json.loads((SPEC_DIR / "communicationservicescallautomation.2024-09-15.json").read_text())
    common = json.loads((SPEC_DIR / "common.2023-11-15.json").read_text())
    registry = Registry().with_resources(
        [
            (_SWAGGER_URI, Resource.from_contents(swagger, default_specification=DRAFT4)),
            (_COMMON_URI, Resource.from_contents(common, default_specification=DRAFT4)),
        ]
    )
    return Draft4Validator({"$ref": _SWAGGER_URI + "#/definitions/TransferToParticipantRequest"}, registry=registry)


_DROP = object()  # request(field=_DROP) leaves the field out


def request(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"callConnectionId": CALL_ID, "targetParticipant": "4:" + PHONE}
    data.update(fields)
    return {key: value for key, value in data.items() if value is not _DROP}


def issues_of(data: object) -> list[Issue]:
    with pytest.raises(ValidationError) as caught:
        parse_transfer(data)
    issues = list(caught.value.issues)
    assert issues
    for issue in issues:
        assert issue.field
        assert issue.rule
    return issues


def only_issue(data: object) -> Issue:
    issues = issues_of(data)
    assert len(issues) == 1, issues
    return issues[0]


def assert_issue(data: object, field: str, *words: str) -> Issue:
    """Exactly one issue, on `field`, whose rule mentions every word."""
    issue = only_issue(data)
    assert issue.field == field, issue
    for word in words:
        assert word in issue.rule, issue
    return issue


def body_of(data: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(parse_transfer(data).body_bytes())
    return body


def sip(headers: dict[str, str]) -> dict[str, Any]:
    return request(customCallingContext={"sipHeaders": headers})


def voip(headers: dict[str, str]) -> dict[str, Any]:
    return request(customCallingContext={"voipHeaders": headers})


SIP_FIELD = "customCallingContext.sipHeaders"
VOIP_FIELD = "customCallingContext.voipHeaders"


# --- the official schema itself ---------------------------------------------------------------------------


def test_schema_validator_is_not_vacuous(schema: Draft4Validator) -> None:
    """The $refs into common.json resolve, and the validator does reject what the swagger forbids."""
    good = {"targetParticipant": {"rawId": ACS_USER, "communicationUser": {"id": ACS_USER}}}
    schema.validate(good)
    assert not schema.is_valid({})
    assert not schema.is_valid({**good, "callConnectionId": CALL_ID})  # additionalProperties: false
    assert not schema.is_valid({"targetParticipant": {"communicationUser": {}}})  # id required (common.json)
    assert not schema.is_valid({"targetParticipant": {"kind": "bot", "rawId": "x"}})  # kind enum (common.json)
    teams = {"userId": "u", "cloud": "PUBLIC"}
    assert not schema.is_valid({"targetParticipant": {"microsoftTeamsUser": teams}})  # lower-case enum only
    assert not schema.is_valid({**good, "customCallingContext": {"sipHeaders": {"X-MS-Custom-a": 1}}})
    assert not schema.is_valid({**good, "customCallingContext": {"other": {}}})
    assert not schema.is_valid({**good, "sourceCallerIdNumber": PHONE})


def test_official_example_parses_to_the_same_body(schema: Draft4Validator) -> None:
    example = json.loads(EXAMPLE.read_text())
    parameters = example["parameters"]
    sent = parameters["transferToParticipantRequest"]
    parsed = parse_transfer({"callConnectionId": parameters["callConnectionId"], **sent})
    body = json.loads(parsed.body_bytes())
    schema.validate(body)
    assert parsed.call_connection_id == parameters["callConnectionId"]
    # Same content; the model form only adds each identifier's rawId.
    for name in ("targetParticipant", "transferee"):
        assert body[name] == {**sent[name], "rawId": sent[name]["communicationUser"]["id"]}
    assert {k: v for k, v in body.items() if k not in {"targetParticipant", "transferee"}} == {
        "operationCallbackUri": sent["operationCallbackUri"],
        "operationContext": sent["operationContext"],
    }


def test_full_request_body_validates_and_is_exact(schema: Draft4Validator) -> None:
    data = request(
        targetParticipant={"microsoftTeamsUser": {"userId": "u1", "cloud": "GCCH"}},
        transferee=ACS_USER,
        operationContext="ctx-1",
        operationCallbackUri="https://app.contoso.com/callback?job=1",
        customCallingContext={
            "sipHeaders": {"X-MS-Custom-Ticket": "42", "User-To-User": "abc;encoding=hex"},
            "voipHeaders": {"ticket": "42"},
        },
        sourceCallerIdNumber={"value": "+18005550100"},
    )
    parsed = parse_transfer(data)
    body = json.loads(parsed.body_bytes())
    schema.validate(body)
    assert body == {
        "targetParticipant": {
            "kind": "microsoftTeamsUser",
            "rawId": "8:gcch:u1",
            "microsoftTeamsUser": {"userId": "u1", "isAnonymous": False, "cloud": "gcch"},
        },
        "operationContext": "ctx-1",
        "transferee": {"kind": "communicationUser", "rawId": ACS_USER, "communicationUser": {"id": ACS_USER}},
        "operationCallbackUri": "https://app.contoso.com/callback?job=1",
        "customCallingContext": {
            "voipHeaders": {"ticket": "42"},
            "sipHeaders": {"X-MS-Custom-Ticket": "42", "User-To-User": "abc;encoding=hex"},
        },
        "sourceCallerIdNumber": {"value": "+18005550100"},
    }
    assert parsed.call_connection_id == CALL_ID
    assert "callConnectionId" not in body


def test_minimal_request_body(schema: Draft4Validator) -> None:
    parsed = parse_transfer(request())
    assert parsed.body_bytes() == (
        b'{"targetParticipant":{"kind":"phoneNumber","rawId":"4:+14255550123","phoneNumber":{"value":"+14255550123"}}}'
    )
    schema.validate(json.loads(parsed.body_bytes()))


# --- the request as a whole ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, [], "4:+14255550123", 5, [("callConnectionId", CALL_ID)]])
def test_request_must_be_an_object(data: object) -> None:
    assert_issue(data, "(request)", "JSON object")


@pytest.mark.parametrize("key", ["kind", "TargetParticipant", "callbackUri", "sourceCallerId", "api-version"])
def test_unknown_top_level_fields_are_rejected(key: str) -> None:
    issues = issues_of(request(**{key: "x"}))
    assert Issue(key, "is not a field of a transfer request") in issues


@pytest.mark.parametrize("key", ["", " "])
def test_blank_unknown_field_is_named_quoted(key: str) -> None:
    assert_issue(request(**{key: "x"}), repr(key), "not a field")


def test_all_unknown_fields_are_reported() -> None:
    issues = issues_of(request(zeta=1, alpha=2))
    assert [i.field for i in issues] == ["alpha", "zeta"]


def test_several_broken_rules_are_all_reported() -> None:
    data = {
        "callConnectionId": "..",
        "transferee": "9:nobody",
        "operationContext": 7,
        "operationCallbackUri": "http://example.com/cb",
        "sourceCallerIdNumber": "14255550123",
        "customCallingContext": {"sipHeaders": {"X-Other": "v"}, "voipHeaders": {"k": "v" * 1025}},
        "extra": True,
    }
    with pytest.raises(ValidationError) as caught:
        parse_transfer(data, where="line 7")
    fields = [issue.field for issue in caught.value.issues]
    assert sorted(fields) == sorted(
        [
            "extra",
            "callConnectionId",
            "targetParticipant",
            "transferee",
            "operationContext",
            "operationCallbackUri",
            "sourceCallerIdNumber",
            "customCallingContext.sipHeaders['X-Other']",
            "customCallingContext.voipHeaders['k']",
        ]
    )
    message = str(caught.value)
    assert message.startswith("line 7: ")
    assert "targetParticipant: is required" in message
    assert caught.value.as_json()[0] == {"field": caught.value.issues[0].field, "rule": caught.value.issues[0].rule}


# --- callConnectionId ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [_DROP, None, 5, ["x"], {"id": "x"}])
def test_call_connection_id_required_string(value: object) -> None:
    assert_issue(request(callConnectionId=value), "callConnectionId", "required")


@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_call_connection_id_not_empty(value: str) -> None:
    assert_issue(request(callConnectionId=value), "callConnectionId", "empty")


@pytest.mark.parametrize("value", [" x", "x ", "a\x00b", "a\nb", "a\rb", "a\x1bb", "a\x7fb", "a\x85b", "a\x9fb"])
def test_call_connection_id_control_characters(value: str) -> None:
    assert_issue(request(callConnectionId=value), "callConnectionId", "control characters")


@pytest.mark.parametrize("value", [".", ".."])
def test_call_connection_id_dot_segments(value: str) -> None:
    assert_issue(request(callConnectionId=value), "callConnectionId", "dot segment")


def test_call_connection_id_lone_surrogate() -> None:
    assert_issue(request(callConnectionId="a\udc00"), "callConnectionId", "surrogates")


def test_call_connection_id_encoded_length_limit() -> None:
    assert parse_transfer(request(callConnectionId="a" * 256)).call_connection_id == "a" * 256
    assert_issue(request(callConnectionId="a" * 257), "callConnectionId", "256", "URL-encoded")
    # 86 characters, but 516 once percent-encoded: the limit is on what goes into the path.
    assert_issue(request(callConnectionId="é" * 86), "callConnectionId", "URL-encoded")
    assert parse_transfer(request(callConnectionId="é" * 42)).encoded_call_connection_id == "%C3%A9" * 42


@pytest.mark.parametrize(
    ("value", "encoded"),
    [("...", "..."), ("a/b", "a%2Fb"), ("a?b#c", "a%3Fb%23c"), ("a b", "a%20b"), ("~_-.", "~_-."), ("%2F", "%252F")],
)
def test_call_connection_id_is_one_opaque_path_segment(value: str, encoded: str) -> None:
    parsed = parse_transfer(request(callConnectionId=value))
    assert parsed.call_connection_id == value
    assert parsed.encoded_call_connection_id == encoded


# --- targetParticipant / transferee -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [_DROP, None])
def test_target_participant_required(value: object) -> None:
    assert_issue(request(targetParticipant=value), "targetParticipant", "required")


@pytest.mark.parametrize("name", ["targetParticipant", "transferee"])
@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("9:x", ""),
        ("4:14255550123", ""),
        ("8:acs:", ""),
        (17, ""),
        ({"phoneNumber": {"value": "123"}}, ".phoneNumber.value"),
        ({"rawId": "4:+1", "phoneNumber": {"value": PHONE}}, ".rawId"),
        ({"phoneNumber": {"value": PHONE}, "communicationUser": {"id": ACS_USER}}, ""),
        ({"microsoftTeamsUser": {"userId": "u", "cloud": "azure"}}, ".microsoftTeamsUser.cloud"),
        ({"phoneNumber": {"value": PHONE}, "extra": 1}, ".extra"),
    ],
)
def test_bad_identifiers_name_their_field(name: str, value: object, field: str) -> None:
    issue = only_issue(request(**{name: value}))
    assert issue.field == name + field


@pytest.mark.parametrize(
    ("value", "kind", "raw_id"),
    [
        ("4:" + PHONE, "phoneNumber", "4:" + PHONE),
        (ACS_USER, "communicationUser", ACS_USER),
        ("8:orgid:u1", "microsoftTeamsUser", "8:orgid:u1"),
        ("8:teamsvisitor:u1", "microsoftTeamsUser", "8:teamsvisitor:u1"),
        ("28:dod:a1", "microsoftTeamsApp", "28:dod:a1"),
        ({"kind": "phoneNumber", "phoneNumber": {"value": PHONE}}, "phoneNumber", "4:" + PHONE),
        ({"microsoftTeamsApp": {"appId": "a1", "cloud": "GCCH"}}, "microsoftTeamsApp", "28:gcch:a1"),
        ({"rawId": "8:dod:u1"}, "microsoftTeamsUser", "8:dod:u1"),
    ],
)
def test_identifier_forms(schema: Draft4Validator, value: object, kind: str, raw_id: str) -> None:
    body = body_of(request(targetParticipant=value, transferee=value))
    schema.validate(body)
    for name in ("targetParticipant", "transferee"):
        assert body[name]["kind"] == kind
        assert body[name]["rawId"] == raw_id
        assert kind in body[name]


def test_transferee_is_optional() -> None:
    assert "transferee" not in body_of(request())
    assert "transferee" not in body_of(request(transferee=None))


# --- operationContext -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "ctx", "Grüße 📞", "line\nbreak", "x" * 5000])
def test_operation_context_any_string(schema: Draft4Validator, value: str) -> None:
    body = body_of(request(operationContext=value))
    assert body["operationContext"] == value
    schema.validate(body)


@pytest.mark.parametrize("value", [1, 1.5, True, [], {}, ["ctx"]])
def test_operation_context_must_be_string(value: object) -> None:
    assert_issue(request(operationContext=value), "operationContext", "string")


def test_operation_context_lone_surrogate() -> None:
    """JSON can carry "\\ud800"; it must be refused at parse time, not blow up later in body_bytes()."""
    data = json.loads('{"callConnectionId": "c", "targetParticipant": "4:+14255550123", "operationContext": "\\ud800"}')
    assert_issue(data, "operationContext", "surrogates")


# --- operationCallbackUri ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.contoso.com/callback",
        "https://app.contoso.com:8443/cb?job=1&x=%20#frag",
        "HTTPS://APP.CONTOSO.COM/cb",
        "https://203.0.113.7/cb",
        "https://[2001:db8::1]:443/cb",
        "http://localhost/cb",
        "http://LOCALHOST:8080/cb",
        "http://127.0.0.1:8080/cb",
        "http://127.255.255.254/cb",
        "http://127.1.2.3/",
        "http://[::1]:9000/cb",
    ],
)
def test_callback_uri_accepted(schema: Draft4Validator, uri: str) -> None:
    body = body_of(request(operationCallbackUri=uri))
    assert body["operationCallbackUri"] == uri
    schema.validate(body)


@pytest.mark.parametrize(
    "uri",
    [
        "http://app.contoso.com/cb",
        "http://128.0.0.1/cb",
        "http://126.255.255.255/cb",
        "http://0.0.0.0/cb",
        "http://10.0.0.1/cb",
        "http://[::2]/cb",
        "http://localhost.contoso.com/cb",
        "http://127.0.0.1.nip.io/cb",
    ],
)
def test_callback_uri_http_only_to_loopback(uri: str) -> None:
    assert_issue(request(operationCallbackUri=uri), "operationCallbackUri", "https", "loopback")


@pytest.mark.parametrize(
    "uri", ["http://user@127.0.0.1/cb", "http://127.0.0.1@evil.example/cb", "http://localhost:80@evil.example/cb"]
)
def test_callback_uri_with_user_information_is_rejected(uri: str) -> None:
    assert_issue(request(operationCallbackUri=uri), "operationCallbackUri", "user information")


@pytest.mark.parametrize(
    "uri", ["ftp://127.0.0.1/cb", "ws://localhost/cb", "wss://app.contoso.com/cb", "file://localhost/etc/passwd"]
)
def test_callback_uri_other_schemes(uri: str) -> None:
    assert_issue(request(operationCallbackUri=uri), "operationCallbackUri", "scheme", "not allowed")


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("callback", ("absolute", "host")),
        ("/callback", ("absolute", "host")),
        ("//app.contoso.com/cb", ("scheme",)),
        ("https:///cb", ("absolute", "host")),
        ("javascript:alert(1)", ("absolute",)),
        ("mailto:ops@contoso.com", ("absolute",)),
        ("https://app.contoso.com/a b", ("without spaces",)),
        ("https://app.contoso.com/\ncb", ("without spaces",)),
        ("https://app.contoso.com/\x85", ("without spaces",)),
        ("https://app.contoso.com/" + "a" * 2048, ("2048",)),
        ("https://app.contoso.com:99999/cb", ("not a valid URI",)),
        ("https://app.contoso.com:port/cb", ("not a valid URI",)),
        ("https://[::1/cb", ("not a valid URI",)),
        ("http://evil.example\\@127.0.0.1/cb", ("backslash",)),
        ("https://app.contoso.com/\udc80", ("surrogates",)),
    ],
)
def test_callback_uri_malformed(uri: str, words: tuple[str, ...]) -> None:
    assert_issue(request(operationCallbackUri=uri), "operationCallbackUri", *words)


def test_callback_uri_length_boundary() -> None:
    uri = "https://app.contoso.com/"
    uri += "a" * (2048 - len(uri))
    assert body_of(request(operationCallbackUri=uri))["operationCallbackUri"] == uri


@pytest.mark.parametrize("value", [1, ["https://x/"], {"uri": "https://x/"}, True])
def test_callback_uri_must_be_string(value: object) -> None:
    assert_issue(request(operationCallbackUri=value), "operationCallbackUri", "string")


# --- sourceCallerIdNumber ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [PHONE, "4:" + PHONE, {"value": PHONE}])
def test_source_caller_id_forms(schema: Draft4Validator, value: object) -> None:
    body = body_of(request(sourceCallerIdNumber=value))
    assert body["sourceCallerIdNumber"] == {"value": PHONE}
    schema.validate(body)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("14255550123", "sourceCallerIdNumber"),
        ("4:14255550123", "sourceCallerIdNumber"),
        ("+0425550123", "sourceCallerIdNumber"),
        ("+1", "sourceCallerIdNumber"),
        ("+1234567890123456", "sourceCallerIdNumber"),
        ("+1 425 555 0123", "sourceCallerIdNumber"),
        (PHONE + "\n", "sourceCallerIdNumber"),
        ("8:acs:x", "sourceCallerIdNumber"),
        ("4:4:" + PHONE, "sourceCallerIdNumber"),
        (14255550123, "sourceCallerIdNumber"),
        (["+14255550123"], "sourceCallerIdNumber"),
        ({}, "sourceCallerIdNumber.value"),
        ({"value": None}, "sourceCallerIdNumber.value"),
        ({"value": 14255550123}, "sourceCallerIdNumber.value"),
        ({"value": "14255550123"}, "sourceCallerIdNumber.value"),
        ({"value": PHONE + "\n"}, "sourceCallerIdNumber.value"),
    ],
)
def test_source_caller_id_must_be_e164(value: object, field: str) -> None:
    assert_issue(request(sourceCallerIdNumber=value), field, "E.164")


def test_source_caller_id_model_has_only_value() -> None:
    assert_issue(
        request(sourceCallerIdNumber={"value": PHONE, "isAnonymous": False}),
        "sourceCallerIdNumber.isAnonymous",
        "PhoneNumberIdentifierModel",
    )


# --- customCallingContext: structure ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["x", 1, [], ["sipHeaders"]])
def test_custom_context_must_be_object(value: object) -> None:
    assert_issue(request(customCallingContext=value), "customCallingContext", "object")


def test_custom_context_unknown_property() -> None:
    assert_issue(
        request(customCallingContext={"sipHeaders": {}, "headers": {}}),
        "customCallingContext.headers",
        "not a property",
    )


@pytest.mark.parametrize("name", ["sipHeaders", "voipHeaders"])
@pytest.mark.parametrize("value", ["a=b", 1, [["k", "v"]]])
def test_header_maps_must_be_objects(name: str, value: object) -> None:
    assert_issue(request(customCallingContext={name: value}), f"customCallingContext.{name}", "object")


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"X-MS-Custom-a": 1}, "X-MS-Custom-a"),
        ({"X-MS-Custom-a": None}, "X-MS-Custom-a"),
        ({"X-MS-Custom-a": ["v"]}, "X-MS-Custom-a"),
        ({1: "v"}, 1),
    ],
)
@pytest.mark.parametrize("name", ["sipHeaders", "voipHeaders"])
def test_header_keys_and_values_must_be_strings(name: str, headers: dict[Any, Any], key: object) -> None:
    assert_issue(request(customCallingContext={name: headers}), f"customCallingContext.{name}[{key!r}]", "strings")


@pytest.mark.parametrize(
    ("key", "value"),
    [("", "v"), ("X-MS-Custom-a", "v\r\nInjected: 1"), ("X-MS-Custom-a", "\x00"), ("X-MS-Custom-a", "\x85")],
)
@pytest.mark.parametrize("name", ["sipHeaders", "voipHeaders"])
def test_header_control_characters_and_empty_keys(name: str, key: str, value: str) -> None:
    assert_issue(request(customCallingContext={name: {key: value}}), f"customCallingContext.{name}[{key!r}]", "control")


@pytest.mark.parametrize("name", ["sipHeaders", "voipHeaders"])
def test_header_lone_surrogates(name: str) -> None:
    issue = only_issue(request(customCallingContext={name: {"X-MS-Custom-a": "\ud83d"}}))
    assert issue.field == f"customCallingContext.{name}['X-MS-Custom-a']"
    assert "surrogates" in issue.rule


def test_empty_custom_context_is_left_out() -> None:
    assert "customCallingContext" not in body_of(request(customCallingContext={}))
    assert "customCallingContext" not in body_of(request(customCallingContext={"sipHeaders": {}, "voipHeaders": {}}))
    only_voip = body_of(voip({"k": "v"}))["customCallingContext"]
    assert only_voip == {"voipHeaders": {"k": "v"}}


# --- customCallingContext: SIP rules ----------------------------------------------------------------------


def test_sip_headers_accepted(schema: Draft4Validator) -> None:
    headers = {f"X-MS-Custom-h{i}": f"v{i}" for i in range(5)} | {"User-To-User": "00112233;encoding=hex"}
    body = body_of(sip(headers))
    assert body["customCallingContext"]["sipHeaders"] == headers
    assert list(body["customCallingContext"]["sipHeaders"]) == list(headers)  # order kept
    schema.validate(body)


@pytest.mark.parametrize("key", ["X-Custom-a", "X-MS-a", "Custom-a", "From", "X-MS-Custom", "X-MS-Custom-", "UUI"])
def test_sip_key_must_have_custom_prefix(key: str) -> None:
    assert_issue(sip({key: "v"}), f"{SIP_FIELD}[{key!r}]", "X-MS-Custom-", "User-To-User")


@pytest.mark.parametrize("key", ["x-ms-custom-a", "X-MS-CUSTOM-A", "user-to-user", "USER-TO-USER"])
def test_sip_prefix_and_uui_are_case_insensitive(key: str) -> None:
    assert body_of(sip({key: "v"}))["customCallingContext"]["sipHeaders"] == {key: "v"}


def test_sip_key_length_includes_prefix() -> None:
    key64 = "X-MS-Custom-" + "k" * (64 - 12)
    assert len(key64) == 64
    assert body_of(sip({key64: "v"}))["customCallingContext"]["sipHeaders"] == {key64: "v"}
    key65 = key64 + "k"
    assert_issue(sip({key65: "v"}), f"{SIP_FIELD}[{key65!r}]", "64", "including the prefix")


@pytest.mark.parametrize("key", ["X-MS-Custom-a", "User-To-User"])
def test_sip_value_length(key: str) -> None:
    assert body_of(sip({key: "v" * 256}))["customCallingContext"]["sipHeaders"][key] == "v" * 256
    assert_issue(sip({key: "v" * 257}), f"{SIP_FIELD}[{key!r}]", "256")


def test_sip_value_length_counts_characters_not_bytes() -> None:
    # Documented as characters; 256 non-ASCII characters are accepted (doubtful, see the report).
    assert parse_transfer(sip({"X-MS-Custom-a": "é" * 256})).sip_headers == {"X-MS-Custom-a": "é" * 256}


def test_at_most_five_custom_sip_headers_plus_uui() -> None:
    five = {f"X-MS-Custom-h{i}": "v" for i in range(5)}
    parse_transfer(sip(five | {"User-To-User": "u"}))
    issue = assert_issue(sip(five | {"X-MS-Custom-h5": "v"}), SIP_FIELD, "at most 5")
    assert "6" in issue.rule


@pytest.mark.parametrize(
    ("first", "second"),
    [("User-To-User", "user-to-user"), ("X-MS-Custom-a", "x-ms-custom-A"), ("X-MS-Custom-Ab", "X-MS-CUSTOM-aB")],
)
def test_duplicate_sip_keys_case_insensitive(first: str, second: str) -> None:
    assert_issue(sip({first: "1", second: "2"}), f"{SIP_FIELD}[{second!r}]", "twice")


@pytest.mark.parametrize(
    "key",
    ["X-MS-Custom-a b", "X-MS-Custom-a:b", "X-MS-Custom-é", "X-MS-Custom-a@b", "X-MS-Custom-(x)", "X-MS-Custom-a/b"],
)
def test_sip_key_token_characters(key: str) -> None:
    assert_issue(sip({key: "v"}), f"{SIP_FIELD}[{key!r}]", "letters, digits")


def test_sip_key_all_token_punctuation_allowed() -> None:
    key = "X-MS-Custom-a.b!c%d*e_f+g`h'i~j-9"
    assert parse_transfer(sip({key: "v"})).sip_headers == {key: "v"}


def test_all_sip_problems_reported_together() -> None:
    headers = {f"X-MS-Custom-h{i}": "v" for i in range(6)} | {"Bad": "v", "X-MS-Custom-long": "v" * 300}
    fields = sorted(issue.field for issue in issues_of(sip(headers)))
    assert fields == sorted([SIP_FIELD, f"{SIP_FIELD}['Bad']", f"{SIP_FIELD}['X-MS-Custom-long']"])


# --- customCallingContext: VoIP rules ---------------------------------------------------------------------


def test_voip_header_count_limit(schema: Draft4Validator) -> None:
    thousand = {f"key-{i}": str(i) for i in range(1000)}
    body = body_of(voip(thousand))
    assert len(body["customCallingContext"]["voipHeaders"]) == 1000
    schema.validate(body)
    issue = assert_issue(voip(thousand | {"one-more": "x"}), VOIP_FIELD, "at most 1000")
    assert "1001" in issue.rule


def test_voip_value_length() -> None:
    assert parse_transfer(voip({"k": "v" * 1024})).voip_headers == {"k": "v" * 1024}
    assert_issue(voip({"k": "v" * 1025}), f"{VOIP_FIELD}['k']", "1024")


def test_voip_keys_are_free_form() -> None:
    """VoIP headers have no prefix rule and no key length or token rule; case-distinct keys are distinct."""
    headers = {"Any Key: with spaces": "v", "k": "1", "K": "2", "ключ": "значение", "x" * 300: "v"}
    assert parse_transfer(voip(headers)).voip_headers == headers


# --- body bytes ---------------------------------------------------------------------------------------------


def test_body_bytes_compact_utf8_and_deterministic() -> None:
    data = request(operationContext='Grüße 📞 "quoted" \\ back', customCallingContext={"voipHeaders": {"ü": "ß"}})
    parsed = parse_transfer(data)
    raw = parsed.body_bytes()
    assert raw == parsed.body_bytes() == parsed.body_bytes()
    assert "Grüße 📞".encode() in raw  # raw UTF-8, not \u escapes
    assert b"\\u" not in raw
    assert b", " not in raw
    assert b'": ' not in raw
    assert b"\n" not in raw
    assert raw == json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert json.loads(raw.decode("utf-8"))["operationContext"] == data["operationContext"]


def test_body_key_order_does_not_depend_on_input_order() -> None:
    fields = {
        "operationCallbackUri": "https://app.contoso.com/cb",
        "sourceCallerIdNumber": PHONE,
        "operationContext": "c",
        "transferee": ACS_USER,
        "customCallingContext": {"sipHeaders": {"User-To-User": "u"}, "voipHeaders": {"k": "v"}},
        "targetParticipant": "8:orgid:u1",
        "callConnectionId": CALL_ID,
    }
    forwards = parse_transfer(fields).body_bytes()
    backwards = parse_transfer(dict(reversed(list(fields.items())))).body_bytes()
    assert forwards == backwards
    assert list(json.loads(forwards)) == [
        "targetParticipant",
        "operationContext",
        "transferee",
        "operationCallbackUri",
        "customCallingContext",
        "sourceCallerIdNumber",
    ]


def test_as_message_round_trip_is_byte_identical() -> None:
    data = request(
        targetParticipant={"microsoftTeamsUser": {"userId": "u1", "isAnonymous": True, "cloud": "DOD"}},
        transferee="8:gcch-acs:x",
        operationContext="é",
        operationCallbackUri="http://[::1]:8000/cb",
        customCallingContext={"sipHeaders": {"X-MS-Custom-a": "1"}, "voipHeaders": {"b": "2"}},
        sourceCallerIdNumber="4:" + PHONE,
    )
    first = parse_transfer(data)
    message = first.as_message()
    assert message["callConnectionId"] == CALL_ID
    again = parse_transfer(json.loads(json.dumps(message)))
    assert again.body_bytes() == first.body_bytes()
    assert again.as_message() == message
    assert again == first


def test_with_callback_uri_changes_only_that() -> None:
    parsed = parse_transfer(request(operationContext="c"))
    updated = parsed.with_callback_uri("https://app.contoso.com/cb")
    assert json.loads(updated.body_bytes()) == json.loads(parsed.body_bytes()) | {
        "operationCallbackUri": "https://app.contoso.com/cb"
    }
    assert "operationCallbackUri" not in json.loads(parsed.body_bytes())


# --- request ids --------------------------------------------------------------------------------------------


def assert_v4(value: str) -> None:
    parsed = uuid.UUID(value)
    assert parsed.version == 4
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == value  # canonical, lower-case, hyphenated


def test_request_id_for_key_is_stable_across_releases() -> None:
    """A retried job after a restart or deploy must send the same Repeatability-Request-ID."""
    assert request_id_for_key("job-1") == "6ade465c-7b74-444a-9938-66228e985e00"
    assert request_id_for_key("") == "a60a633c-2dab-40f8-9c8b-f356e11ff599"
    assert request_id_for_key("ключ") == "fb1c66be-d578-43e1-b7c5-949f0d1c20cf"


@settings(max_examples=300, deadline=None)
@given(key=st.text(max_size=200), other=st.text(max_size=200))
def test_request_id_for_key_properties(key: str, other: str) -> None:
    # (Lone surrogates cannot be encoded: hypothesis' default text() has none, like JSON keys after validation.)
    value = request_id_for_key(key)
    assert_v4(value)
    assert request_id_for_key(key) == value
    if other != key:
        assert request_id_for_key(other) != value


def test_new_request_id_is_random_v4() -> None:
    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for value in ids:
        assert_v4(value)


# --- property tests -----------------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), max_size=30)
_id_text = _text.filter(lambda s: s.strip() != "")
_clouds = st.sampled_from(["public", "dod", "gcch", "PUBLIC", "DOD", "GCCH", "Public"])
e164 = st.builds(
    lambda cc, rest: f"+{cc}{rest}", st.integers(1, 9), st.text(alphabet="0123456789", min_size=1, max_size=14)
)
_acs_prefixes = st.sampled_from(["8:acs:", "8:spool:", "8:dod-acs:", "8:gcch-acs:"])
_raw_prefixes = st.sampled_from(
    [
        *("8:acs:", "8:spool:", "8:dod-acs:", "8:gcch-acs:"),
        *("8:orgid:", "8:dod:", "8:gcch:", "8:teamsvisitor:"),
        *("28:orgid:", "28:dod:", "28:gcch:"),
    ]
)


identifiers = st.one_of(
    e164.map(lambda n: "4:" + n),
    st.builds(lambda p, s: p + s, _raw_prefixes, _id_text),
    st.builds(lambda n: {"phoneNumber": {"value": n}}, e164),
    st.builds(lambda n: {"kind": "phoneNumber", "rawId": "4:" + n, "phoneNumber": {"value": n}}, e164),
    st.builds(lambda p, s: {"communicationUser": {"id": p + s}}, _acs_prefixes, _id_text),
    st.builds(
        lambda u, c, a: {"microsoftTeamsUser": {"userId": u, "cloud": c, "isAnonymous": a}},
        _id_text,
        _clouds,
        st.booleans(),
    ),
    st.builds(lambda u: {"microsoftTeamsUser": {"userId": u}}, _id_text),
    st.builds(
        lambda u, c: {"kind": "microsoftTeamsApp", "microsoftTeamsApp": {"appId": u, "cloud": c}}, _id_text, _clouds
    ),
    st.builds(lambda p, s: {"kind": "unknown", "rawId": p + s}, _raw_prefixes, _id_text),
)
_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1, max_size=52
)
_header_value = st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), max_size=40)
sip_headers = st.builds(
    lambda names, values, uui: (
        {"X-MS-Custom-" + n: v for n, v in zip(names, values, strict=False)}
        | ({"User-To-User": uui} if uui is not None else {})
    ),
    st.lists(_token, max_size=5, unique_by=str.lower),
    st.lists(_header_value, min_size=5, max_size=5),
    st.none() | st.text(alphabet="0123456789abcdef", max_size=256),
)
voip_headers = st.dictionaries(_id_text, _header_value, max_size=8)
callback_uris = st.one_of(
    st.builds(
        lambda host, path: f"https://{host}/{path}",
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){1,3}", fullmatch=True),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~/?=&%", max_size=40),
    ),
    st.builds(
        lambda host, port: f"http://{host}:{port}/cb",
        st.sampled_from(["localhost", "127.0.0.1", "127.3.2.1", "[::1]"]),
        st.integers(1, 65535),
    ),
)
# 21 characters of at most 4 UTF-8 bytes each stay within 256 once percent-encoded.
call_ids = st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=21).filter(
    lambda s: s == s.strip() and s not in {".", ".."}
)
valid_requests = st.fixed_dictionaries(
    {"callConnectionId": call_ids, "targetParticipant": identifiers},
    optional={
        "transferee": identifiers,
        # Any text but NUL, which the ledger cannot store (PostgreSQL), so validation refuses it.
        "operationContext": st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=60),
        "operationCallbackUri": callback_uris,
        "customCallingContext": st.fixed_dictionaries(
            {}, optional={"sipHeaders": sip_headers, "voipHeaders": voip_headers}
        ),
        "sourceCallerIdNumber": st.one_of(e164, e164.map(lambda n: "4:" + n), e164.map(lambda n: {"value": n})),
    },
)


def _check_body(schema: Draft4Validator, parsed: TransferRequest) -> dict[str, Any]:
    raw = parsed.body_bytes()
    body: dict[str, Any] = json.loads(raw.decode("utf-8"))
    errors = sorted(schema.iter_errors(body), key=str)
    assert not errors, errors[0]
    for name in ("targetParticipant", "transferee"):
        if name in body:
            model = body[name]
            assert set(model) == {"kind", "rawId", model["kind"]}  # one kind object, matching the kind
    assert parsed.body_bytes() == raw
    assert parse_transfer(json.loads(json.dumps(parsed.as_message()))).body_bytes() == raw
    return body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=valid_requests)
def test_any_valid_request_parses_to_a_schema_valid_body(schema: Draft4Validator, data: dict[str, Any]) -> None:
    parsed = parse_transfer(data)
    body = _check_body(schema, parsed)
    assert parsed.call_connection_id == data["callConnectionId"]
    context = data.get("customCallingContext", {})
    expected = set(data) - {"callConnectionId"}
    if not any(context.values()):
        expected.discard("customCallingContext")  # empty header maps are left out
    assert set(body) == expected
    if context.get("sipHeaders"):
        assert body["customCallingContext"]["sipHeaders"] == context["sipHeaders"]
    if context.get("voipHeaders"):
        assert body["customCallingContext"]["voipHeaders"] == context["voipHeaders"]
    if "operationContext" in data:
        assert body["operationContext"] == data["operationContext"]
    if "sourceCallerIdNumber" in data:
        assert body["sourceCallerIdNumber"]["value"].startswith("+")


_any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_any_text, children, max_size=4),
    max_leaves=12,
)
_plausible_text = st.one_of(
    _any_text,
    st.builds(
        lambda p, s: p + s,
        st.sampled_from(["4:", "4:+1", "8:acs:", "8:orgid:", "28:dod:", "+1", "https://", "http://"]),
        _any_text,
    ),
    e164,
)
_plausible_headers = st.dictionaries(
    st.one_of(_any_text, st.builds(lambda s: "X-MS-Custom-" + s, _any_text), st.just("User-To-User")),
    st.one_of(_plausible_text, json_values),
    max_size=8,
)
_plausible_identifier = st.one_of(
    _plausible_text,
    st.dictionaries(
        st.sampled_from(
            ["kind", "rawId", "phoneNumber", "communicationUser", "microsoftTeamsUser", "microsoftTeamsApp", "x"]
        ),
        st.one_of(
            _plausible_text,
            st.dictionaries(
                st.sampled_from(["value", "id", "userId", "appId", "cloud", "isAnonymous", "x"]),
                st.one_of(_plausible_text, st.sampled_from(["PUBLIC", "dod", "gcch"]), json_values),
                max_size=4,
            ),
        ),
        max_size=4,
    ),
)
_field_values = {
    "callConnectionId": _plausible_text,
    "targetParticipant": _plausible_identifier,
    "transferee": _plausible_identifier,
    "operationContext": _plausible_text,
    "operationCallbackUri": _plausible_text,
    "customCallingContext": st.dictionaries(
        st.sampled_from(["sipHeaders", "voipHeaders", "other"]), st.one_of(_plausible_headers, json_values), max_size=3
    ),
    "sourceCallerIdNumber": st.one_of(
        _plausible_text, st.dictionaries(st.sampled_from(["value", "x"]), _plausible_text)
    ),
}
junk_requests = st.one_of(
    json_values,
    st.dictionaries(st.one_of(_any_text, st.integers()), json_values, max_size=5),
    st.fixed_dictionaries(
        {}, optional={name: st.one_of(strategy, json_values) for name, strategy in _field_values.items()}
    ),
    st.builds(
        lambda valid, junk: valid | junk,
        valid_requests,
        st.fixed_dictionaries({}, optional={name: st.one_of(s, json_values) for name, s in _field_values.items()}),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=junk_requests)
def test_any_input_parses_or_raises_validation_error(schema: Draft4Validator, data: object) -> None:
    """Never any other exception; a refusal names a field and a rule for every issue."""
    error: ValidationError | None = None
    try:
        parsed = parse_transfer(data)
    except ValidationError as caught:
        error = caught
    if error is None:
        _check_body(schema, parsed)
        return
    assert error.issues
    for issue in error.issues:
        assert isinstance(issue.field, str)
        assert isinstance(issue.rule, str)
        assert issue.field.strip()
        assert issue.rule.strip()
    assert str(error)
    json.dumps(error.as_json())


def test_callback_uri_with_credentials_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_transfer(
            {
                "callConnectionId": "call-1",
                "targetParticipant": "4:+15551234567",
                "operationCallbackUri": "https://user:secret@example.com/cb",
            }
        )
    assert [(issue.field, issue.rule) for issue in caught.value.issues] == [
        ("operationCallbackUri", "must not carry user information (user:password@)")
    ]
    assert "secret" not in str(caught.value)


def test_operation_context_with_nul_is_refused() -> None:
    """PostgreSQL cannot store NUL in text: accepted, it failed the ledger insert (a 500, an endless retry)."""
    assert_issue(request(operationContext="a\x00b"), "operationContext", "NUL")
