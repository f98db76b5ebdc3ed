"""Fuzzing the HMAC signer against the emulator's verifier over real HTTP: whatever the body, call connection
id and request id, the emulator accepts what `worker.acs.signing.sign` produces, and any single-byte change to
the signed request (body, path, date, host, content hash, signature) is answered 401.

The signer's own properties (round trips, known answers) are in test_signing.py; here the verifier is the
emulator's, reached through a socket exactly as ACS would be.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.acs.client import transfer_path
from worker.acs.signing import http_date, parse_http_date, sign
from worker.emulator import Emulator, EmulatorConfig, start_emulator

KEY = secrets.token_bytes(32)
API_VERSION = "2024-09-15"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Running:
    emulator: Emulator
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    """The emulator on a loop of its own thread, so the synchronous hypothesis tests can call it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emulator = asyncio.run_coroutine_threadsafe(start_emulator(EmulatorConfig(access_key=KEY)), loop).result(30)
    try:
        yield Running(emulator, emulator.port)
    finally:
        asyncio.run_coroutine_threadsafe(emulator.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def post(running: Running, path: str, headers: dict[str, str], body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    try:
        # skip_host: the Host header is part of what is signed, so send exactly the one given.
        connection.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


def signed(running: Running, call: str, body: bytes, request_id: str) -> tuple[str, dict[str, str]]:
    path = transfer_path(call, API_VERSION)
    now = time.time()
    headers = {
        **sign(KEY, "POST", path, running.host, body, now),
        "Host": running.host,
        "Content-Type": "application/json",
        "Repeatability-Request-ID": request_id,
        "Repeatability-First-Sent": http_date(now),
    }
    return path, headers


# Call connection ids as the request model admits them: any text but control characters and dot segments.
_calls = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda call: call not in {".", ".."} and call.strip() == call and not any(0x7F <= ord(c) < 0xA0 for c in call)
)
# Request ids are fresh v4 UUIDs: reusing one with another body is (rightly) a 400 from the repeatability layer.
_request_ids = st.builds(lambda: str(uuid.uuid4()))
_contexts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=60)


def _body(target: str, context: str) -> bytes:
    return json.dumps({"targetParticipant": {"rawId": target}, "operationContext": context}).encode()


@FUZZ
@given(call=_calls, context=_contexts, request_id=_request_ids, digits=st.integers(10**9, 10**12))
def test_the_emulator_accepts_what_the_signer_signs(
    running: Running, call: str, context: str, request_id: str, digits: int
) -> None:
    body = _body(f"4:+{digits}", context)
    path, headers = signed(running, call, body, request_id)
    assert post(running, path, headers, body) == 202
    assert running.emulator.state.effects.effects_for(call, request_id) == 1


@FUZZ
@given(body=st.binary(max_size=300), call=_calls, request_id=_request_ids)
def test_arbitrary_bodies_pass_authentication(running: Running, body: bytes, call: str, request_id: str) -> None:
    """Authentication looks at bytes, not meaning: an arbitrary body signed right is never a 401 (the schema
    check after it may still refuse it with a 400)."""
    path, headers = signed(running, call, body, request_id)
    assert post(running, path, headers, body) in {202, 400}


def _flip(text: str, index: int, alphabet: str) -> str:
    """`text` with the character at `index` replaced by another from `alphabet`."""
    index %= len(text)
    replacement = next(ch for ch in alphabet if ch != text[index])
    return text[:index] + replacement + text[index + 1 :]


@FUZZ
@given(
    context=_contexts,
    where=st.sampled_from(["body", "call", "date", "host", "hash", "signature", "api-version"]),
    index=st.integers(0, 10_000),
    byte=st.integers(1, 255),
)
def test_any_single_byte_change_is_refused(running: Running, context: str, where: str, index: int, byte: int) -> None:
    call = f"call-{uuid.uuid4().hex[:12]}"
    body = _body("4:+14255550123", context)
    path, headers = signed(running, call, body, str(uuid.uuid4()))
    if where == "body":
        position = index % len(body)
        body = body[:position] + bytes([body[position] ^ byte]) + body[position + 1 :]
    elif where == "call":
        prefix = "/calling/callConnections/"
        start = len(prefix) + index % len(call)
        path = path[:start] + _flip(path[start], 0, "abcdefghijklmnopqrstuvwxyz0123456789") + path[start + 1 :]
    elif where == "api-version":
        path = path.replace(API_VERSION, _flip(API_VERSION, index, "0123456789"))
    elif where == "date":
        # Another valid date, a few seconds off: still fresh, but not the one signed.
        signed_at = parse_http_date(headers["x-ms-date"])
        assert signed_at is not None
        headers["x-ms-date"] = http_date(signed_at - 1 - index % 60)
    elif where == "host":
        headers["Host"] = f"127.0.0.1:{running.port + 1 + index % 100}"
    elif where == "hash":
        headers["x-ms-content-sha256"] = _flip(headers["x-ms-content-sha256"], index, "ABCDEFabcdef0123456789+/")
    else:
        prefix, _, mac = headers["Authorization"].partition("Signature=")
        headers["Authorization"] = f"{prefix}Signature={_flip(mac[:-1], index, 'ABCDEFabcdef0123456789+/')}="
    before = running.emulator.state.effects.total_effects
    assert post(running, path, headers, body) == 401
    assert running.emulator.state.effects.total_effects == before
