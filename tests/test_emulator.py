"""The ACS emulator over real HTTP on 127.0.0.1: auth, api-version, schema, repeatability, faults, SDK."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import signal
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import jwt
import pytest
from azure.communication.callautomation import CallAutomationClient, MicrosoftTeamsUserIdentifier, PhoneNumberIdentifier
from azure.core.credentials import AzureKeyCredential
from yarl import URL

from worker.acs.signing import http_date, sign
from worker.emulator import (
    Emulator,
    EmulatorConfig,
    Fault,
    FaultPlan,
    FaultPlanError,
    RandomFaults,
    create_emulator_app,
    start_emulator,
)
from worker.emulator.answers import EmulatorAnswer
from worker.emulator.callbacks import CallbackSender, CallbackSigner, EventFate
from worker.emulator.faults import CallbackPlan, FaultDispenser
from worker.emulator.repeatability import (
    Execute,
    InProgress,
    Rejection,
    RepeatabilityKey,
    RepeatabilityStore,
    Replay,
    parse_headers,
)
from worker.request.models import encode_path_segment, parse_transfer

KEY = b"emulator-test-key: not a secret, only for these tests"
B64_KEY = base64.b64encode(KEY).decode()
API = "2024-09-15"
RETRY_HEADERS = ("Retry-After", "retry-after-ms", "x-ms-retry-after-ms")
SIGNER = CallbackSigner("https://issuer.example", "resource")


# ---------------------------------------------------------------------------------------------- helpers


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any

    @property
    def result(self) -> str | None:
        return self.headers.get("Repeatability-Result")

    @property
    def message(self) -> str:
        return str(self.body["error"]["message"])


def body_bytes(
    call: str = "call-1", target: str = "4:+15551234567", context: str | None = "ctx", **extra: Any
) -> bytes:
    message: dict[str, Any] = {"callConnectionId": call, "targetParticipant": target, **extra}
    if context is not None:
        message["operationContext"] = context
    return parse_transfer(message).body_bytes()


def repeat(
    request_id: str | None = None, first_sent: float | None = None, first_sent_text: str | None = None
) -> dict[str, str]:
    return {
        "Repeatability-Request-ID": request_id or str(uuid.uuid4()),
        "Repeatability-First-Sent": first_sent_text or http_date(time.time() if first_sent is None else first_sent),
    }


def transfer_path(call: str, api_version: str | None = API) -> str:
    path = f"/calling/callConnections/{encode_path_segment(call)}:transferToParticipant"
    return path if api_version is None else f"{path}?api-version={api_version}"


async def post(
    session: aiohttp.ClientSession,
    emu: Emulator,
    body: bytes | None = None,
    *,
    call: str = "call-1",
    headers: Mapping[str, str] | None = None,
    api_version: str | None = API,
    key: bytes = KEY,
    now: float | None = None,
    signed_body: bytes | None = None,
    signed_path: str | None = None,
    signed_host: str | None = None,
    drop_headers: tuple[str, ...] = (),
    timeout: float = 5.0,
) -> Reply:
    """Sign and send one transfer; the ``signed_*`` overrides sign something other than what is sent."""
    body = body_bytes(call) if body is None else body
    path = transfer_path(call, api_version)
    host = f"127.0.0.1:{emu.port}"
    auth = sign(
        key,
        "POST",
        signed_path or path,
        signed_host or host,
        body if signed_body is None else signed_body,
        time.time() if now is None else now,
    )
    sent = {"Content-Type": "application/json", **auth, **(headers or {})}
    for name in drop_headers:
        sent.pop(name, None)
    # encoded=True: send the path byte for byte as signed (yarl would otherwise re-encode it).
    url = URL(emu.url + path, encoded=True)
    async with session.post(url, data=body, headers=sent, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        raw = await response.read()
        parsed = json.loads(raw) if raw else None
        return Reply(response.status, dict(response.headers), parsed)


async def control(session: aiohttp.ClientSession, emu: Emulator, method: str, name: str, data: Any = None) -> Reply:
    async with session.request(method, f"{emu.url}/_emulator/{name}", json=data) as response:
        return Reply(response.status, dict(response.headers), await response.json())


def set_plan(emu: Emulator, **plan: Any) -> None:
    emu.state.set_fault_plan(FaultPlan.from_json(plan))


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    emulator = await start_emulator(EmulatorConfig(access_key=KEY))
    yield emulator
    await emulator.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


# ---------------------------------------------------------------------------------------------- auth


async def test_signed_request_is_accepted_and_takes_effect(emu: Emulator, session: aiohttp.ClientSession) -> None:
    body = body_bytes("call-1", context="ctx-1")
    rid = str(uuid.uuid4())
    reply = await post(session, emu, body, headers=repeat(rid))

    assert reply.status == 202
    assert reply.body == {"operationContext": "ctx-1"}
    assert reply.result == "accepted"
    ledger = (await control(session, emu, "GET", "transfers")).body
    assert ledger["totalEffects"] == 1
    assert ledger["callsWithMoreThanOneEffect"] == []
    [transfer] = ledger["transfers"]
    assert transfer["callConnectionId"] == "call-1"
    assert transfer["requestId"] == rid
    assert transfer["body"] == json.loads(body)
    assert transfer["effects"] == 1
    assert transfer["firstEffectAt"] <= time.time()
    [logged] = (await control(session, emu, "GET", "requests")).body["requests"]
    assert logged["status"] == 202
    assert logged["requestId"] == rid
    assert logged["repeatabilityResult"] == "accepted"
    assert logged["fault"] is None


async def test_operation_context_absent_gives_empty_answer(emu: Emulator, session: aiohttp.ClientSession) -> None:
    reply = await post(session, emu, body_bytes(context=None))
    assert (reply.status, reply.body) == (202, {})


async def test_call_connection_id_is_decoded_from_the_path(emu: Emulator, session: aiohttp.ClientSession) -> None:
    call = "a/b:c d%é"
    reply = await post(session, emu, body_bytes(call), call=call)
    assert reply.status == 202
    assert emu.state.effects.effects_for_call(call) == 1


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no authorization", "Authorization"),
        ("wrong key", "signature does not match"),
        ("body differs from the signed one", "x-ms-content-sha256"),
        ("content hash header missing", "x-ms-content-sha256"),
        ("path signed without the query", "signature does not match"),
        ("other host signed", "signature does not match"),
        ("stale date", "x-ms-date"),
        ("future date", "x-ms-date"),
        ("no date", "x-ms-date"),
        ("unparseable date", "x-ms-date"),
    ],
)
async def test_bad_authentication_is_401_without_effect(
    emu: Emulator, session: aiohttp.ClientSession, case: str, expected: str
) -> None:
    choices: dict[str, dict[str, Any]] = {
        "no authorization": {"drop_headers": ("Authorization",)},
        "wrong key": {"key": b"another key"},
        "body differs from the signed one": {"signed_body": body_bytes(context="other")},
        "content hash header missing": {"drop_headers": ("x-ms-content-sha256",)},
        "path signed without the query": {"signed_path": transfer_path("call-1", None)},
        "other host signed": {"signed_host": "contoso.communication.azure.com"},
        "stale date": {"now": time.time() - 1000},
        "future date": {"now": time.time() + 1000},
        "no date": {"drop_headers": ("x-ms-date",)},
        "unparseable date": {"headers": {"x-ms-date": "yesterday"}},
    }
    options = choices[case]
    reply = await post(session, emu, headers={**repeat(), **options.pop("headers", {})}, **options)

    assert reply.status == 401
    assert reply.body["error"]["code"] == "401"
    assert expected in reply.message
    assert "Signature=" not in reply.message
    assert "Repeatability-Result" not in reply.headers
    assert emu.state.effects.total_effects == 0


async def test_date_within_tolerance_is_accepted(emu: Emulator, session: aiohttp.ClientSession) -> None:
    assert (await post(session, emu, now=time.time() - 600)).status == 202


async def test_error_body_never_echoes_the_signature(emu: Emulator, session: aiohttp.ClientSession) -> None:
    reply = await post(session, emu, key=b"wrong")
    assert reply.status == 401
    assert B64_KEY not in json.dumps(reply.body)
    assert set(reply.body["error"]) == {"code", "message"}


# ---------------------------------------------------------------------------------------------- api-version, schema


@pytest.mark.parametrize(("api_version", "expected"), [(None, "required"), ("2023-01-01", "not supported")])
async def test_api_version_is_checked(
    emu: Emulator, session: aiohttp.ClientSession, api_version: str | None, expected: str
) -> None:
    reply = await post(session, emu, api_version=api_version)
    assert reply.status == 400
    assert reply.body["error"]["code"] == "BadRequest"
    assert expected in reply.message
    assert emu.state.effects.total_effects == 0


async def test_configured_api_versions_are_accepted(session: aiohttp.ClientSession) -> None:
    config = EmulatorConfig(access_key=KEY, api_versions=frozenset({API, "2024-04-15"}))
    async with await start_emulator(config) as emulator:
        assert (await post(session, emulator, api_version="2024-04-15")).status == 202


PHONE = {"phoneNumber": {"value": "+15551234567"}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"targetParticipant": {"rawId": "4:+1555"}, "operationContext": NaN}', "NaN is not a JSON value"),
        ({"operationContext": "x"}, "'targetParticipant' is a required property"),
        ({"targetParticipant": PHONE, "unknown": 1}, "'unknown' was unexpected"),
        ({"targetParticipant": {"phoneNumber": {"value": 15551234567}}}, "targetParticipant.phoneNumber.value"),
        ({"targetParticipant": {"phoneNumber": {}}}, "'value' is a required property"),
        ({"targetParticipant": {"kind": "robot", **PHONE}}, "targetParticipant.kind"),
        ({"targetParticipant": {"microsoftTeamsUser": {"userId": "u", "cloud": "mars"}}}, "microsoftTeamsUser.cloud"),
        ({"targetParticipant": PHONE, "operationContext": 5}, "operationContext"),
        ({"targetParticipant": PHONE, "sourceCallerIdNumber": "+15551234567"}, "sourceCallerIdNumber"),
        (
            {"targetParticipant": PHONE, "customCallingContext": {"sipHeaders": {"X-MS-Custom-a": 1}}},
            'customCallingContext.sipHeaders["X-MS-Custom-a"]',
        ),
        ({"targetParticipant": PHONE, "customCallingContext": {"other": {}}}, "customCallingContext"),
        ({"targetParticipant": {**PHONE, "communicationUser": {"id": "8:acs:x"}}}, "at most one"),
        ({"targetParticipant": {"kind": "communicationUser", **PHONE}}, "targetParticipant.kind"),
        ({"targetParticipant": {}}, "names no participant"),
        ({"targetParticipant": PHONE, "transferee": {"communicationUser": {}}}, "transferee.communicationUser"),
    ],
)
async def test_schema_violations_are_400_naming_the_path(
    emu: Emulator, session: aiohttp.ClientSession, body: Any, expected: str
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = await post(session, emu, raw, headers=repeat())

    assert reply.status == 400
    assert reply.body["error"]["code"] == "BadRequest"
    assert expected in reply.message
    assert "Repeatability-Result" not in reply.headers  # refused before the repeatability layer
    assert emu.state.effects.total_effects == 0


@pytest.mark.parametrize("cloud", ["public", "PUBLIC", "Dod", "gcch"])
async def test_cloud_is_accepted_in_any_case(emu: Emulator, session: aiohttp.ClientSession, cloud: str) -> None:
    body = {
        "targetParticipant": {"microsoftTeamsUser": {"userId": "u-1", "cloud": cloud}},
        "transferee": {"microsoftTeamsApp": {"appId": "app-1", "cloud": cloud}},
    }
    reply = await post(session, emu, json.dumps(body).encode())
    assert reply.status == 202
    # The ledger keeps the body as sent.
    assert emu.state.effects.transfers[0].body == body


async def test_the_official_example_is_accepted(emu: Emulator, session: aiohttp.ClientSession) -> None:
    body = {
        "targetParticipant": {"kind": "communicationUser", "communicationUser": {"id": "8:acs:b96_da7"}},
        "transferee": {"kind": "communicationUser", "communicationUser": {"id": "8:acs:b96_ae9"}},
        "operationCallbackUri": "https://app.contoso.com/callback",
        "operationContext": "trasferring call",
    }
    reply = await post(session, emu, json.dumps(body).encode(), call="18dea47f-b081-4107-9a5c-4300819d2c6c")
    assert (reply.status, reply.body) == (202, {"operationContext": "trasferring call"})


async def test_every_body_the_models_produce_is_accepted(emu: Emulator, session: aiohttp.ClientSession) -> None:
    body = body_bytes(
        "call-9",
        target="8:orgid:teams-user",
        transferee="28:gcch:app",
        operationCallbackUri="https://example.com/cb",
        sourceCallerIdNumber="+15550000000",
        customCallingContext={"sipHeaders": {"X-MS-Custom-k": "v", "User-To-User": "u"}, "voipHeaders": {"a": "b"}},
    )
    assert (await post(session, emu, body, call="call-9")).status == 202


# ---------------------------------------------------------------------------------------------- repeatability


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Repeatability-Request-ID": "not-a-uuid", "Repeatability-First-Sent": http_date(time.time())}, "UUID"),
        ({"Repeatability-Request-ID": str(uuid.uuid1()), "Repeatability-First-Sent": http_date(time.time())}, "UUID"),
        ({"Repeatability-Request-ID": "{" + str(uuid.uuid4()) + "}"}, "UUID"),
        ({"Repeatability-Request-ID": str(uuid.uuid4())}, "Repeatability-First-Sent is required"),
        ({"Repeatability-Request-ID": str(uuid.uuid4()), "Repeatability-First-Sent": "2024-01-01T00:00:00Z"}, "IMF"),
        (
            {"Repeatability-Request-ID": str(uuid.uuid4()), "Repeatability-First-Sent": "Sun, 6 Nov 1994 08:49:37 GMT"},
            "IMF",
        ),
        (
            {
                "Repeatability-Request-ID": str(uuid.uuid4()),
                "Repeatability-First-Sent": "Mon, 06 Nov 1994 08:49:37 GMT",
            },
            "IMF",
        ),
        ({"Repeatability-First-Sent": http_date(time.time())}, "without Repeatability-Request-ID"),
    ],
    ids=["not-uuid", "uuid1", "braces", "no-date", "iso-date", "one-digit-day", "wrong-weekday", "date-only"],
)
async def test_malformed_repeatability_headers_are_rejected(
    emu: Emulator, session: aiohttp.ClientSession, headers: dict[str, str], expected: str
) -> None:
    reply = await post(session, emu, headers=headers)
    assert reply.status == 400
    assert reply.result == "rejected"
    assert expected in reply.message
    assert emu.state.effects.total_effects == 0


async def test_first_sent_older_than_the_window_is_412(emu: Emulator, session: aiohttp.ClientSession) -> None:
    reply = await post(session, emu, headers=repeat(first_sent=time.time() - 301))
    assert reply.status == 412
    assert reply.result == "rejected"
    assert reply.body["error"]["code"] == "PreconditionFailed"
    assert emu.state.effects.total_effects == 0
    # Just inside the window is still executed.
    assert (await post(session, emu, headers=repeat(first_sent=time.time() - 290))).status == 202


async def test_a_known_id_with_the_same_body_is_replayed_not_executed(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    headers = repeat()
    first = await post(session, emu, headers=headers)
    second = await post(session, emu, headers=headers)

    assert (first.status, second.status) == (202, 202)
    assert second.body == first.body
    assert second.result == "accepted"
    assert emu.state.effects.total_effects == 1
    assert emu.state.effects.transfers[0].effects == 1
    assert emu.state.repeatability.get(headers["Repeatability-Request-ID"]).executions == 1  # type: ignore[union-attr]


async def test_request_id_is_case_insensitive(emu: Emulator, session: aiohttp.ClientSession) -> None:
    headers = repeat()
    await post(session, emu, headers=headers)
    upper = {**headers, "Repeatability-Request-ID": headers["Repeatability-Request-ID"].upper()}
    assert (await post(session, emu, headers=upper)).status == 202
    assert emu.state.effects.total_effects == 1


async def test_a_known_id_with_another_body_is_rejected(emu: Emulator, session: aiohttp.ClientSession) -> None:
    headers = repeat()
    assert (await post(session, emu, body_bytes(context="a"), headers=headers)).status == 202
    # Same JSON meaning but different bytes is a different body too: retries must be byte-identical.
    spaced = json.dumps(json.loads(body_bytes(context="a"))).encode()
    for body in (body_bytes(context="b"), spaced):
        reply = await post(session, emu, body, headers=headers)
        assert reply.status == 400
        assert reply.result == "rejected"
    assert emu.state.effects.total_effects == 1


async def test_a_known_id_on_another_call_is_rejected(emu: Emulator, session: aiohttp.ClientSession) -> None:
    headers = repeat()
    body = json.dumps({"targetParticipant": PHONE}).encode()
    assert (await post(session, emu, body, call="call-a", headers=headers)).status == 202
    reply = await post(session, emu, body, call="call-b", headers=headers)
    assert (reply.status, reply.result) == (400, "rejected")
    assert emu.state.effects.effects_for_call("call-b") == 0


async def test_a_retry_while_the_first_is_in_progress_is_409(emu: Emulator, session: aiohttp.ClientSession) -> None:
    set_plan(emu, latency_ms=250)
    headers = repeat()
    started = time.monotonic()
    replies = await asyncio.gather(post(session, emu, headers=headers), post(session, emu, headers=headers))

    assert sorted(reply.status for reply in replies) == [202, 409]
    assert all(reply.result == "accepted" for reply in replies)
    assert time.monotonic() - started >= 0.25
    assert emu.state.effects.total_effects == 1


async def test_execution_continues_when_the_client_gives_up(emu: Emulator, session: aiohttp.ClientSession) -> None:
    set_plan(emu, latency_ms=300)
    headers = repeat()
    with pytest.raises(asyncio.TimeoutError):
        await post(session, emu, headers=headers, timeout=0.05)
    # Still in progress: the retry is told so, and nothing has taken effect yet.
    assert (await post(session, emu, headers=headers)).status == 409
    assert emu.state.effects.total_effects == 0
    await asyncio.sleep(0.35)
    assert emu.state.effects.total_effects == 1
    reply = await post(session, emu, headers=headers)
    assert (reply.status, reply.result) == (202, "accepted")
    assert emu.state.effects.total_effects == 1


async def test_a_stored_4xx_answer_is_replayed(emu: Emulator, session: aiohttp.ClientSession) -> None:
    set_plan(emu, script=[{"kind": "status", "status": 404, "stage": "answer"}])
    headers = repeat()
    first = await post(session, emu, headers=headers)
    second = await post(session, emu, headers=headers)

    assert (first.status, first.result) == (404, "accepted")
    assert first.body["error"]["code"] == "NotFound"
    assert (second.status, second.result, second.body) == (404, "accepted", first.body)
    assert emu.state.effects.total_effects == 0
    # A new id is a new request: executed.
    assert (await post(session, emu, headers=repeat())).status == 202


async def test_a_stored_5xx_answer_is_executed_again(emu: Emulator, session: aiohttp.ClientSession) -> None:
    set_plan(emu, script=[{"kind": "status", "status": 503, "stage": "answer", "retry_after": 2}])
    headers = repeat()
    first = await post(session, emu, headers=headers)
    assert (first.status, first.result) == (503, "accepted")
    assert first.headers["Retry-After"] == "2"
    assert emu.state.effects.total_effects == 0

    second = await post(session, emu, headers=headers)
    third = await post(session, emu, headers=headers)
    assert (second.status, second.result) == (202, "accepted")
    assert third.status == 202
    assert emu.state.effects.total_effects == 1
    assert emu.state.repeatability.get(headers["Repeatability-Request-ID"]).executions == 2  # type: ignore[union-attr]


async def test_requests_without_repeatability_are_executed_every_time(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    first = await post(session, emu)
    second = await post(session, emu)

    assert (first.status, second.status) == (202, 202)
    assert "Repeatability-Result" not in first.headers
    ledger = (await control(session, emu, "GET", "transfers")).body
    assert ledger["totalEffects"] == 2
    assert ledger["callsWithMoreThanOneEffect"] == ["call-1"]
    assert ledger["transfers"][0]["requestId"] is None
    assert ledger["transfers"][0]["effects"] == 2


async def test_a_doubled_transfer_under_two_ids_is_visible(emu: Emulator, session: aiohttp.ClientSession) -> None:
    await post(session, emu, headers=repeat())
    await post(session, emu, headers=repeat())
    await post(session, emu, body_bytes("call-2"), call="call-2", headers=repeat())
    ledger = (await control(session, emu, "GET", "transfers")).body
    assert [t["effects"] for t in ledger["transfers"]] == [1, 1, 1]
    assert ledger["effectsByCall"] == {"call-1": 2, "call-2": 1}
    assert ledger["callsWithMoreThanOneEffect"] == ["call-1"]


def test_store_records_expire_a_window_after_first_sent() -> None:
    store = RepeatabilityStore(window=10)
    key = RepeatabilityKey(str(uuid.uuid4()), first_sent=1000.0, first_sent_text="")
    decision = store.begin(key, "fp", now=1001)
    assert isinstance(decision, Execute)
    assert isinstance(store.begin(key, "fp", now=1002), InProgress)
    store.finish(decision.record, EmulatorAnswer(202, {}))
    assert isinstance(store.begin(key, "fp", now=1009), Replay)
    store.purge(1009.5)
    assert len(store) == 1
    store.purge(1010.5)
    assert len(store) == 0
    late = store.begin(key, "fp", now=1010.5)
    assert isinstance(late, Rejection)
    assert late.answer.status == 412


def test_an_expired_record_in_progress_is_kept_until_it_finishes() -> None:
    store = RepeatabilityStore(window=10)
    key = RepeatabilityKey(str(uuid.uuid4()), first_sent=1000.0, first_sent_text="")
    decision = store.begin(key, "fp", now=1001)
    assert isinstance(decision, Execute)
    store.purge(1011)
    assert len(store) == 1
    store.finish(decision.record, EmulatorAnswer(202, {}))
    store.purge(1012)
    assert len(store) == 0


def test_header_parsing_accepts_only_well_formed_pairs() -> None:
    rid = str(uuid.uuid4())
    date = "Sun, 06 Nov 1994 08:49:37 GMT"
    assert parse_headers(None, None) is None
    parsed = parse_headers(rid.upper(), date)
    assert isinstance(parsed, RepeatabilityKey)
    assert parsed.request_id == rid
    assert parsed.first_sent == 784111777.0
    assert isinstance(parse_headers(rid, "Sun, 06 Nov 1994 08:49:37 +0000"), Rejection)


# ---------------------------------------------------------------------------------------------- faults


async def test_after_503_then_retry_is_replayed_with_one_effect(emu: Emulator, session: aiohttp.ClientSession) -> None:
    set_plan(emu, script=[{"kind": "status", "status": 503, "stage": "after"}])
    headers = repeat()
    first = await post(session, emu, headers=headers)
    assert first.status == 503
    assert first.body["error"]["code"] == "ServiceUnavailable"
    assert "Repeatability-Result" not in first.headers  # the front door answered, not the repeatability layer
    assert emu.state.effects.total_effects == 1  # ...but ACS had executed it

    retry = await post(session, emu, headers=headers)
    assert (retry.status, retry.result, retry.body) == (202, "accepted", {"operationContext": "ctx"})
    assert emu.state.effects.total_effects == 1
    log = (await control(session, emu, "GET", "requests")).body["requests"]
    assert [entry["status"] for entry in log] == [503, 202]
    assert log[0]["fault"] == {"kind": "status", "stage": "after", "status": 503, "applied": True}
    assert log[1]["fault"] is None


async def test_after_fault_on_a_replay_hides_the_replay(emu: Emulator, session: aiohttp.ClientSession) -> None:
    headers = repeat()
    await post(session, emu, headers=headers)
    set_plan(emu, script=[{"kind": "status", "status": 500, "stage": "after"}])
    assert (await post(session, emu, headers=headers)).status == 500
    assert (await post(session, emu, headers=headers)).status == 202
    assert emu.state.effects.total_effects == 1


@pytest.mark.parametrize(
    ("header", "retry_after", "expected"),
    [
        ("Retry-After", 2, "2"),
        ("Retry-After", 1.5, "1.5"),
        ("retry-after-ms", 1.5, "1500"),
        ("x-ms-retry-after-ms", 0.25, "250"),
    ],
)
async def test_before_429_sends_the_chosen_retry_header(
    emu: Emulator, session: aiohttp.ClientSession, header: str, retry_after: float, expected: str
) -> None:
    fault = {"kind": "status", "status": 429, "stage": "before", "retry_after": retry_after}
    set_plan(emu, script=[{**fault, "retry_after_header": header}])
    headers = repeat()
    reply = await post(session, emu, headers=headers)

    assert reply.status == 429
    assert reply.body["error"]["code"] == "TooManyRequests"
    assert reply.headers[header] == expected
    assert [name for name in RETRY_HEADERS if name in reply.headers] == [header]
    assert emu.state.effects.total_effects == 0
    # Nothing was recorded: the same id is executed (not replayed, not 409) on retry.
    assert emu.state.repeatability.get(headers["Repeatability-Request-ID"]) is None
    assert (await post(session, emu, headers=headers)).status == 202
    assert emu.state.effects.total_effects == 1


async def test_429_without_retry_after_sends_no_retry_header(emu: Emulator, session: aiohttp.ClientSession) -> None:
    set_plan(emu, script=[{"kind": "status", "status": 429}])
    reply = await post(session, emu, headers=repeat())
    assert reply.status == 429
    assert not [name for name in RETRY_HEADERS if name in reply.headers]


async def test_before_timeout_hangs_then_closes_without_effect(emu: Emulator, session: aiohttp.ClientSession) -> None:
    set_plan(emu, script=[{"kind": "timeout", "stage": "before", "seconds": 0.2}])
    headers = repeat()
    started = time.monotonic()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, emu, headers=headers)
    assert time.monotonic() - started >= 0.2
    assert emu.state.effects.total_effects == 0
    assert (await post(session, emu, headers=headers)).status == 202
    assert emu.state.effects.total_effects == 1


async def test_after_timeout_takes_effect_then_hangs(emu: Emulator, session: aiohttp.ClientSession) -> None:
    set_plan(emu, script=[{"kind": "timeout", "stage": "after", "seconds": 0.2}])
    headers = repeat()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, emu, headers=headers)
    assert emu.state.effects.total_effects == 1
    assert (await post(session, emu, headers=headers)).status == 202
    assert emu.state.effects.total_effects == 1
    log = emu.state.requests
    assert log[0].status is None
    assert log[0].fault is not None
    assert log[0].fault.kind == "timeout"


async def test_a_client_timeout_shorter_than_the_hang(emu: Emulator, session: aiohttp.ClientSession) -> None:
    set_plan(emu, script=[{"kind": "timeout", "stage": "before", "seconds": 30}])
    with pytest.raises(asyncio.TimeoutError):
        await post(session, emu, headers=repeat(), timeout=0.1)
    # close() does not wait the 30 seconds out.
    started = time.monotonic()
    await emu.close()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(("stage", "effects"), [("before", 0), ("after", 1)])
async def test_drop_closes_the_connection(
    emu: Emulator, session: aiohttp.ClientSession, stage: str, effects: int
) -> None:
    set_plan(emu, script=[{"kind": "drop", "stage": stage}])
    headers = repeat()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, emu, headers=headers)
    assert emu.state.effects.total_effects == effects
    assert (await post(session, emu, headers=headers)).status == 202
    assert emu.state.effects.total_effects == 1


async def test_a_5xx_after_the_effect_is_executed_again_and_meets_a_call_that_moved(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    """The contract's last row: a first answer of 5xx is executed again. ACS took the transfer and then failed
    with 503 itself, so the retry finds the call gone: 404 "call not found", stored and replayed."""
    set_plan(emu, script=[{"kind": "status", "status": 503, "stage": "after_5xx"}])
    headers = repeat()
    first = await post(session, emu, headers=headers)
    assert (first.status, first.result) == (503, "accepted")  # ACS itself answered
    assert emu.state.effects.total_effects == 1

    second = await post(session, emu, headers=headers)
    assert (second.status, second.result) == (404, "accepted")
    assert second.body["error"]["code"] == "NotFound"
    assert "Call not found" in second.message
    third = await post(session, emu, headers=headers)
    assert (third.status, third.body) == (404, second.body)
    assert emu.state.effects.total_effects == 1
    record = emu.state.repeatability.get(headers["Repeatability-Request-ID"])
    assert record is not None
    assert (record.executions, record.moved) == (2, True)
    (transfer,) = (await control(session, emu, "GET", "transfers?bodies=false")).body["transfers"]
    assert (transfer["effects"], "body" in transfer) == (1, False)
    log = (await control(session, emu, "GET", "requests")).body
    assert [entry["status"] for entry in log["requests"]] == [503, 404, 404]
    assert log["faultsApplied"] == {"503 after_5xx": 1}


@pytest.mark.parametrize("kind", ["timeout", "drop"])
async def test_no_answer_after_the_effect_hides_a_5xx_so_the_retry_meets_a_moved_call(
    emu: Emulator, session: aiohttp.ClientSession, kind: str
) -> None:
    fault: dict[str, Any] = {"kind": kind, "stage": "after_5xx"}
    if kind == "timeout":
        fault["seconds"] = 0.2
    set_plan(emu, script=[fault])
    headers = repeat()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, emu, headers=headers)
    assert emu.state.effects.total_effects == 1
    retry = await post(session, emu, headers=headers)
    assert (retry.status, retry.body["error"]["code"]) == (404, "NotFound")
    assert emu.state.effects.total_effects == 1


async def test_the_default_after_stage_still_replays_the_stored_202(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    """``after`` is the front door losing ACS's 202 (which ACS recorded): unchanged by ``after_5xx``."""
    set_plan(emu, script=[{"kind": "status", "status": 503, "stage": "after"}])
    headers = repeat()
    assert (await post(session, emu, headers=headers)).status == 503
    assert (await post(session, emu, headers=headers)).status == 202
    assert emu.state.effects.total_effects == 1


async def test_another_request_id_on_a_moved_call_is_still_counted_as_a_second_effect(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    """The 404 is for an id executed again; a new id (a replay) that transfers the call again is the double
    the audits must see, so the emulator records it as one."""
    set_plan(emu, script=[{"kind": "status", "status": 500, "stage": "after_5xx"}])
    await post(session, emu, headers=repeat())
    assert (await post(session, emu, headers=repeat())).status == 202
    assert emu.state.effects.calls_with_more_than_one_effect() == ["call-1"]


@dataclass
class Received:
    at: float
    authorization: str
    events: list[dict[str, Any]]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[Received]]]:
    """An HTTP server on 127.0.0.1 that records every outcome-event POST."""
    got: list[Received] = []

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        got.append(Received(time.time(), request.headers.get("Authorization", ""), await request.json()))
        return aiohttp.web.json_response({})

    app = aiohttp.web.Application()
    app.router.add_post("/events", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/events", got
    await runner.cleanup()


def with_callback(url: str, call: str = "call-1") -> bytes:
    return body_bytes(call, operationCallbackUri=url)


async def wait_for_events(got: list[Received], count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"expected {count} event deliveries, got {len(got)}"
        await asyncio.sleep(0.02)


async def test_an_outcome_event_is_signed_and_verifiable_with_the_published_keys(
    emu: Emulator, session: aiohttp.ClientSession, receiver: tuple[str, list[Received]]
) -> None:
    url, got = receiver
    assert (await post(session, emu, with_callback(url), headers=repeat())).status == 202
    await wait_for_events(got, 1)
    (event,) = got[0].events
    assert event["type"] == "Microsoft.Communication.CallTransferAccepted"
    assert event["data"]["callConnectionId"] == "call-1"
    jwks = (await control(session, emu, "GET", "../calling/keys")).body
    key = jwt.PyJWK(jwks["keys"][0]).key
    token = got[0].authorization.removeprefix("Bearer ")
    claims = jwt.decode(token, key, algorithms=["RS256"], audience=emu.state.config.resource_id)
    assert claims["iss"] == emu.state.config.callback_issuer


async def test_a_failed_transfer_posts_call_transfer_failed_and_does_not_move_the_call(
    emu: Emulator, session: aiohttp.ClientSession, receiver: tuple[str, list[Received]]
) -> None:
    url, got = receiver
    set_plan(emu, callbacks={"fail_calls": ["call-1"]})
    headers = repeat()
    assert (await post(session, emu, with_callback(url), headers=headers)).status == 202
    await wait_for_events(got, 1)
    assert got[0].events[0]["type"] == "Microsoft.Communication.CallTransferFailed"
    assert emu.state.effects.total_effects == 0
    assert emu.state.effects.failed_for("call-1", headers["Repeatability-Request-ID"]) == 1
    ledger = (await control(session, emu, "GET", "transfers")).body
    assert ledger["failedTransfers"] == [
        {"callConnectionId": "call-1", "requestId": headers["Repeatability-Request-ID"], "executions": 1}
    ]


async def test_an_early_event_is_delivered_before_the_202(
    emu: Emulator, session: aiohttp.ClientSession, receiver: tuple[str, list[Received]]
) -> None:
    url, got = receiver
    set_plan(emu, callbacks={"early_rate": 1.0, "delay_ms": 5000})
    reply = await post(session, emu, with_callback(url), headers=repeat())
    assert reply.status == 202
    assert len(got) == 1  # already there when the 202 came back


async def test_late_duplicated_and_dropped_events(
    emu: Emulator, session: aiohttp.ClientSession, receiver: tuple[str, list[Received]]
) -> None:
    url, got = receiver
    set_plan(emu, callbacks={"late_rate": 1.0, "late_ms": 400, "duplicate_rate": 1.0})
    sent = time.time()
    await post(session, emu, with_callback(url), headers=repeat())
    assert emu.state.callbacks.pending == 1
    await wait_for_events(got, 2)
    assert got[0].at - sent >= 0.2  # late: from half to all of late_ms
    assert got[0].events[0]["id"] == got[1].events[0]["id"]  # the same event, twice
    assert emu.state.callbacks.pending == 0

    set_plan(emu, callbacks={"drop_rate": 1.0})
    headers = repeat()
    await post(session, emu, with_callback(url, "call-2"), call="call-2", headers=headers)
    await asyncio.sleep(0.2)
    assert len(got) == 2
    listed = (await control(session, emu, "GET", "callbacks?call=call-2")).body
    assert listed["deliveries"] == []
    assert listed["dropped"] == [
        {
            "callConnectionId": "call-2",
            "requestId": headers["Repeatability-Request-ID"],
            "type": "Microsoft.Communication.CallTransferAccepted",
        }
    ]
    assert listed["pending"] == 0
    summary = (await control(session, emu, "GET", "callbacks?deliveries=false")).body
    assert (summary["deliveries"], len(summary["dropped"]), summary["pending"]) == ([], 1, 0)


def test_event_fates_follow_the_seed_per_transfer_whatever_the_order() -> None:
    plan = CallbackPlan(fail_rate=0.3, drop_rate=0.3, early_rate=0.3, late_rate=0.3, late_ms=1000, duplicate_rate=0.3)
    transfers = [(f"call-{n}", str(uuid.uuid4())) for n in range(40)]

    def fates(order: list[tuple[str, str]], seed: int) -> dict[tuple[str, str], EventFate]:
        sender = CallbackSender(SIGNER)
        sender.reseed(seed)
        return {(call, rid): sender.decide(plan, call, rid, 1) for call, rid in order}

    forward = fates(transfers, 7)
    assert fates(list(reversed(transfers)), 7) == forward
    assert fates(transfers, 8) != forward
    assert {fate.failed for fate in forward.values()} == {True, False}
    assert {fate.dropped for fate in forward.values()} == {True, False}
    # Executed again (after a 5xx), a transfer that failed fails again; how its event travels is drawn anew.
    sender = CallbackSender(SIGNER)
    sender.reseed(7)
    again = {(call, rid): sender.decide(plan, call, rid, 2) for call, rid in transfers}
    assert all(again[key].failed == forward[key].failed for key in transfers)
    assert any(again[key] != forward[key] for key in transfers)


async def test_drop_answered_only_keeps_the_event_of_a_transfer_whose_answer_was_lost(
    emu: Emulator, session: aiohttp.ClientSession, receiver: tuple[str, list[Received]]
) -> None:
    """So a harness never meets a transfer nobody can know about: no answer and no event."""
    url, got = receiver
    callbacks = {"drop_rate": 1.0, "drop_answered_only": True}
    set_plan(emu, callbacks=callbacks, script=[{"kind": "status", "status": 503, "stage": "after_5xx"}])
    assert (await post(session, emu, with_callback(url), headers=repeat())).status == 503
    await wait_for_events(got, 1)
    assert (await post(session, emu, with_callback(url, "call-2"), call="call-2", headers=repeat())).status == 202
    await asyncio.sleep(0.2)
    assert len(got) == 1
    assert [event["callConnectionId"] for event in emu.state.callbacks.dropped] == ["call-2"]


async def test_answer_fault_on_a_request_that_is_not_executed_is_not_applied(
    emu: Emulator, session: aiohttp.ClientSession
) -> None:
    headers = repeat()
    await post(session, emu, headers=headers)
    set_plan(emu, script=[{"kind": "status", "status": 500, "stage": "answer"}])
    assert (await post(session, emu, headers=headers)).status == 202  # replayed; ACS executed nothing to fail
    assert emu.state.requests[-1].fault_applied is False


async def test_by_call_faults_come_before_the_script(emu: Emulator, session: aiohttp.ClientSession) -> None:
    set_plan(
        emu,
        script=[{"kind": "status", "status": 500}],
        by_call={"call-2": [{"kind": "status", "status": 404}, {"kind": "status", "status": 409}]},
    )
    statuses = [
        (await post(session, emu, body_bytes(call), call=call)).status
        for call in ("call-2", "call-1", "call-2", "call-2", "call-1")
    ]
    assert statuses == [404, 500, 409, 202, 202]


async def test_random_faults_follow_rate_and_seed(emu: Emulator, session: aiohttp.ClientSession) -> None:
    plan = {
        "seed": 7,
        "random": {"rate": 0.5, "faults": [{"kind": "status", "status": 500}, {"kind": "status", "status": 502}]},
    }

    async def run() -> list[int]:
        set_plan(emu, **plan)
        return [(await post(session, emu)).status for _ in range(20)]

    first, second = await run(), await run()
    assert first == second  # reseeded on load: reproducible
    assert {500, 502, 202} == set(first)
    set_plan(emu, random={"rate": 0, "faults": []})
    assert {(await post(session, emu)).status for _ in range(5)} == {202}


def test_dispenser_draws_random_faults_at_the_given_rate() -> None:
    plan = FaultPlan(seed=1, random=RandomFaults(0.25, (Fault("status", status=503),)))
    dispenser = FaultDispenser(plan)
    drawn = sum(dispenser.next_for("c") is not None for _ in range(4000))
    assert 850 < drawn < 1150


async def test_initial_plan_comes_from_the_config(session: aiohttp.ClientSession) -> None:
    plan = FaultPlan(latency_ms=100, script=[Fault("status", status=502, stage="before")])
    async with await start_emulator(EmulatorConfig(access_key=KEY, faults=plan)) as emulator:
        assert (await post(session, emulator)).status == 502
        started = time.monotonic()
        assert (await post(session, emulator)).status == 202
        assert time.monotonic() - started >= 0.1


# ---------------------------------------------------------------------------------------------- control endpoints


async def test_health(emu: Emulator, session: aiohttp.ClientSession) -> None:
    assert (await control(session, emu, "GET", "health")).status == 200


async def test_put_faults_returns_and_stores_the_canonical_plan(emu: Emulator, session: aiohttp.ClientSession) -> None:
    plan = {
        "latency_ms": 50,
        "seed": 7,
        "script": [
            {
                "kind": "status",
                "status": 503,
                "stage": "after",
                "retry_after": 1.5,
                "retry_after_header": "retry-after-ms",
            },
            {"kind": "timeout", "seconds": 2},
            {"kind": "drop", "stage": "after"},
        ],
        "by_call": {"call-9": [{"kind": "status", "status": 404, "stage": "answer"}]},
        "random": {"rate": 0.1, "faults": [{"kind": "status", "status": 500}]},
    }
    put = await control(session, emu, "PUT", "faults", plan)
    assert put.status == 200
    got = await control(session, emu, "GET", "faults")
    assert got.body == put.body
    assert got.body["script"][1] == {"kind": "timeout", "stage": "before", "seconds": 2}
    assert got.body["script"][0]["retry_after_header"] == "retry-after-ms"
    assert emu.state.fault_plan.latency == 0.05
    # The canonical form is itself a valid plan.
    assert FaultPlan.from_json(got.body) == emu.state.fault_plan


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        ([], "(plan)"),
        ({"latency": 5}, "latency"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": "50"}, "latency_ms"),
        ({"seed": 1.5}, "seed"),
        ({"script": {}}, "script"),
        ({"script": [{"kind": "explode"}]}, "script[0].kind"),
        ({"script": [{"kind": "status"}]}, "script[0].status"),
        ({"script": [{"kind": "status", "status": 200}]}, "script[0].status"),
        ({"script": [{"kind": "status", "status": True}]}, "script[0].status"),
        ({"script": [{"kind": "status", "status": 503, "stage": "later"}]}, "script[0].stage"),
        ({"script": [{"kind": "status", "status": 503, "retry_after": -1}]}, "script[0].retry_after"),
        (
            {"script": [{"kind": "status", "status": 503, "retry_after": 1, "retry_after_header": "X"}]},
            "script[0].retry_after_header",
        ),
        (
            {"script": [{"kind": "status", "status": 503, "retry_after_header": "Retry-After"}]},
            "script[0].retry_after_header",
        ),
        ({"script": [{"kind": "timeout", "stage": "answer"}]}, "script[0].stage"),
        ({"script": [{"kind": "timeout", "seconds": "long"}]}, "script[0].seconds"),
        ({"script": [{"kind": "drop", "seconds": 1}]}, "script[0].seconds"),
        ({"script": [{"kind": "status", "status": 500}, "x"]}, "script[1]"),
        ({"by_call": []}, "by_call"),
        ({"by_call": {"c": [{"kind": "drop", "stage": "x"}]}}, "by_call['c'][0].stage"),
        ({"random": {"rate": 2, "faults": []}}, "random.rate"),
        ({"random": {"rate": 0.5, "faults": []}}, "random.faults"),
        ({"random": {"rate": 0.5, "faults": [{"kind": "x"}]}}, "random.faults[0].kind"),
        ({"random": {"rate": 0.5, "faults": [], "extra": 1}}, "random.extra"),
        ({"script": [{"kind": "status", "status": 429, "stage": "after_5xx"}]}, "script[0].status"),
        ({"callbacks": {"late_ms": -1}}, "callbacks.late_ms"),
        ({"callbacks": {"early_rate": 1.5}}, "callbacks.early_rate"),
    ],
)
async def test_put_faults_rejects_invalid_plans_naming_the_field(
    emu: Emulator, session: aiohttp.ClientSession, plan: Any, field: str
) -> None:
    set_plan(emu, latency_ms=5)
    reply = await control(session, emu, "PUT", "faults", plan)
    assert reply.status == 400
    assert reply.message.startswith(f"{field}: ")
    assert emu.state.fault_plan.latency_ms == 5  # the old plan stays


async def test_put_faults_rejects_invalid_json(emu: Emulator, session: aiohttp.ClientSession) -> None:
    async with session.put(f"{emu.url}/_emulator/faults", data=b"{") as response:
        assert response.status == 400


def test_fault_constructor_validates() -> None:
    with pytest.raises(FaultPlanError, match="status"):
        Fault("status", status=200)
    with pytest.raises(FaultPlanError, match="stage"):
        Fault("drop", stage="answer")
    with pytest.raises(FaultPlanError, match=r"random\.faults"):
        RandomFaults(0.5, ())


async def test_reset_clears_everything(emu: Emulator, session: aiohttp.ClientSession) -> None:
    headers = repeat()
    await post(session, emu, headers=headers)
    set_plan(emu, latency_ms=10, script=[{"kind": "drop"}])
    assert (await control(session, emu, "POST", "reset")).status == 200

    assert (await control(session, emu, "GET", "transfers")).body["totalEffects"] == 0
    assert (await control(session, emu, "GET", "requests")).body == {"requests": [], "total": 0, "faultsApplied": {}}
    assert (await control(session, emu, "GET", "faults")).body == FaultPlan().to_json()
    # The record is gone too: the same id executes again.
    assert (await post(session, emu, headers=headers)).status == 202
    assert emu.state.effects.total_effects == 1


async def test_request_log_is_bounded(session: aiohttp.ClientSession) -> None:
    async with await start_emulator(EmulatorConfig(access_key=KEY, max_logged_requests=3)) as emulator:
        for _ in range(5):
            await post(session, emulator)
        log = (await control(session, emulator, "GET", "requests")).body
        assert (len(log["requests"]), log["total"]) == (3, 5)


async def test_unknown_paths_and_methods(emu: Emulator, session: aiohttp.ClientSession) -> None:
    async with session.post(f"{emu.url}/calling/callConnections/c1:hangUp?api-version={API}") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "NotFound"
    async with session.get(f"{emu.url}{transfer_path('c1')}") as response:
        assert response.status == 405
    assert emu.state.requests_seen == 0


def test_create_emulator_app_builds_an_application() -> None:
    app = create_emulator_app(EmulatorConfig(access_key=KEY))
    assert any(resource.canonical == "/_emulator/health" for resource in app.router.resources())


def test_config_from_connection_string() -> None:
    config = EmulatorConfig.from_connection_string(f"endpoint=https://x.example/;accesskey={B64_KEY}", window=60)
    assert config.access_key == KEY
    assert config.window == 60
    assert KEY.decode() not in repr(config)


# ---------------------------------------------------------------------------------------------- official SDK


async def test_the_official_sdk_is_accepted_and_replayed_by_request_id(emu: Emulator) -> None:
    rid, first_sent = str(uuid.uuid4()), http_date(time.time())

    def transfer_twice() -> list[str | None]:
        # The constructor, not from_connection_string: the latter always makes the endpoint https.
        client = CallAutomationClient(emu.url, AzureKeyCredential(B64_KEY), api_version=API)
        connection = client.get_call_connection("sdk-call")
        results = []
        for _ in range(2):
            result = connection.transfer_call_to_participant(
                PhoneNumberIdentifier("+15551234567"),
                operation_context="sdk",
                transferee=MicrosoftTeamsUserIdentifier("teams-user"),  # sent with cloud "PUBLIC"
                sip_headers={"X-MS-Custom-a": "b"},
                headers={"Repeatability-Request-ID": rid, "Repeatability-First-Sent": first_sent},
            )
            results.append(result.operation_context)
        connection.transfer_call_to_participant(PhoneNumberIdentifier("+15551234568"))  # a new id per call
        return results

    assert await asyncio.to_thread(transfer_twice) == ["sdk", "sdk"]
    assert emu.state.effects.effects_for("sdk-call", rid) == 1
    assert emu.state.effects.effects_for_call("sdk-call") == 2
    assert [entry.repeatability_result for entry in emu.state.requests] == ["accepted"] * 3
    assert emu.state.effects.transfers[0].body["transferee"]["microsoftTeamsUser"]["cloud"] == "PUBLIC"


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    # cryptography is not a project dependency (only present in most environments): skip without it.
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def test_the_sdk_from_a_connection_string_over_tls(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    async with await start_emulator(EmulatorConfig(access_key=KEY), ssl_context=context) as emulator:
        assert emulator.url.startswith("https://127.0.0.1:")

        def transfer() -> None:
            client = CallAutomationClient.from_connection_string(
                f"endpoint={emulator.url}/;accesskey={B64_KEY}", api_version=API, connection_verify=str(cert_file)
            )
            client.get_call_connection("tls-call").transfer_call_to_participant(PhoneNumberIdentifier("+15551234567"))

        await asyncio.to_thread(transfer)
        assert emulator.state.effects.effects_for_call("tls-call") == 1


# ---------------------------------------------------------------------------------------------- run_emulator


async def test_run_emulator_serves_until_sigterm(tmp_path: Path) -> None:
    script = (
        "import sys; from worker.emulator import EmulatorConfig, run_emulator;"
        f"run_emulator(EmulatorConfig(access_key={KEY!r}), '127.0.0.1', 0)"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("ACS emulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()
        async with aiohttp.ClientSession() as client, client.get(f"{url}/_emulator/health") as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_emulator_is_an_async_context_manager() -> None:
    async with await start_emulator(EmulatorConfig(access_key=KEY)) as emulator:
        port = emulator.port
        assert emulator.url == f"http://127.0.0.1:{port}"
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{port}/_emulator/health"):
            pass
