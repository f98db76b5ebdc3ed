"""Fuzzing the outcome-event receiver of `acs-transfer serve` over real HTTP, on PostgreSQL: arbitrary bodies
with arbitrary (or no) tokens are 401 and change nothing; with ACS's valid token, arbitrary bodies are 200 or
400, never 500; no request without a valid token ever moves a job.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker.config import Settings
from worker.emulator import Emulator, EmulatorConfig, start_emulator
from worker.ledger import State, SyncLedger, op_claim, op_transition
from worker.processes import free_port
from worker.request.job import prepare_job
from worker.request.models import parse_transfer
from worker.serve.server import create_server_app

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KEY = secrets.token_bytes(32)


@dataclass
class Receiver:
    port: int
    emulator: Emulator
    ledger: SyncLedger
    job_id: str
    call: str

    def token(self) -> str:
        return self.emulator.state.callbacks.signer.token()

    def post(self, path: str, body: bytes, authorization: str | None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            headers = {"Content-Type": "application/json"}
            if authorization is not None:
                headers["Authorization"] = authorization
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def state(self) -> str:
        return self.ledger.get(self.job_id).state


@pytest.fixture
def receiver(postgres_url: str, tmp_path: Path) -> Iterator[Receiver]:
    """Emulator (signs events, publishes its keys) and the server, on one loop in a thread; a job accepted and
    waiting for its outcome event."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)

    emulator: Emulator = run(start_emulator(EmulatorConfig(access_key=KEY)))
    port = free_port()
    config = Settings(
        home=tmp_path,
        acs_connection_string=f"endpoint={emulator.url}/;accesskey={base64.b64encode(KEY).decode()}",
        ledger_url=postgres_url,
        serve_port=port,
        callback_base_url=f"http://127.0.0.1:{port}",
        acs_resource_id=emulator.state.config.resource_id,
        callback_jwks_url=f"{emulator.url}/calling/keys",
    )

    async def serve() -> web.AppRunner:
        runner = web.AppRunner(await create_server_app(config))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner: web.AppRunner = run(serve())
    ledger = SyncLedger(postgres_url)
    call = f"call-fuzz-{uuid.uuid4().hex[:8]}"
    request = parse_transfer({"callConnectionId": call, "targetParticipant": "4:+15551234567"})
    ((job, _),) = ledger.create_jobs([prepare_job(request, callback_base_url=config.callback_base_url)])
    now = time.time()
    ledger.run(op_claim, job.id, "fuzz", now, now + 60)
    ledger.run(op_transition, job.id, "fuzz", State.SENDING, State.ACCEPTED, now, detail="accepted by ACS")
    try:
        yield Receiver(port, emulator, ledger, job.id, call)
    finally:
        ledger.close()
        run(runner.cleanup())
        run(emulator.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _event(call: str, **overrides: Any) -> dict[str, Any]:
    event = {
        "id": str(uuid.uuid4()),
        "type": "Microsoft.Communication.CallTransferAccepted",
        "data": {"callConnectionId": call, "resultInformation": {"code": 200, "subCode": 7015, "message": "ok"}},
        "specversion": "1.0",
    }
    return {**event, **overrides}


_FORGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _forged(claims: dict[str, Any], kid: str) -> str:
    return jwt.encode(claims, _FORGER, algorithm="RS256", headers={"kid": kid})


_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_bodies = st.binary(max_size=400) | _json.map(lambda value: json.dumps(value).encode())
_paths = st.sampled_from(["/v1/callbacks", "/v1/callbacks/{job}", "/v1/callbacks/{other}"])


@FUZZ
@given(
    body=_bodies,
    # What an HTTP client can put in a header: visible ASCII and spaces.
    authorization=st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
    path=_paths,
    forge=st.sampled_from(["none", "other-key", "expired", "wrong-audience", "alg-none", "scheme"]),
)
@example(body=b"[" * 100_000, authorization=None, path="/v1/callbacks", forge="none")
def test_without_a_valid_token_every_request_is_refused_and_changes_nothing(
    receiver: Receiver, body: bytes, authorization: str | None, path: str, forge: str
) -> None:
    now = int(time.time())
    audience = receiver.emulator.state.config.resource_id
    issuer = receiver.emulator.state.config.callback_issuer
    kid = receiver.emulator.state.callbacks.signer.key_id
    claims = {"iss": issuer, "aud": audience, "iat": now, "nbf": now, "exp": now + 300}
    if forge == "other-key":
        authorization = f"Bearer {_forged(claims, kid)}"
    elif forge == "expired":
        authorization = f"Bearer {_forged({**claims, 'iat': now - 900, 'exp': now - 600}, kid)}"
    elif forge == "wrong-audience":
        # Signed by the emulator's own key, for another resource: still not for us.
        token = jwt.encode({**claims, "aud": "another-resource"}, _signer_key(receiver), "RS256", {"kid": kid})
        authorization = f"Bearer {token}"
    elif forge == "alg-none":
        authorization = "Bearer " + jwt.encode(claims, None, algorithm="none")
    elif forge == "scheme":
        authorization = f"Basic {receiver.token()}"
    before = receiver.state()
    target = path.format(job=receiver.job_id, other=uuid.uuid4())
    # The body most worth forging: a real event for the real job.
    for payload in (body, json.dumps([_event(receiver.call)]).encode()):
        assert receiver.post(target, payload, authorization) == 401
    assert receiver.state() == before == State.ACCEPTED


def _signer_key(receiver: Receiver) -> Any:
    return receiver.emulator.state.callbacks.signer._private_key


@FUZZ
@given(body=_bodies, path=_paths)
@example(body=b"[" * 100_000, path="/v1/callbacks")
@example(body=json.dumps([_event("c\x00", id="nul\x00id")]).encode(), path="/v1/callbacks")
@example(
    body=b'[{"id": "\\ud800", "type": "Microsoft.Communication.CallTransferFailed", '
    b'"data": {"callConnectionId": "x"}}]',
    path="/v1/callbacks",
)
@example(
    body=json.dumps([_event("c", data={"callConnectionId": "c", "operationContext": "\x00"})]).encode(),
    path="/v1/callbacks",
)
@example(body=json.dumps([_event("c", id="x" * 5000)]).encode(), path="/v1/callbacks")
def test_with_a_valid_token_arbitrary_bodies_are_200_or_400_never_500(
    receiver: Receiver, body: bytes, path: str
) -> None:
    target = path.format(job=receiver.job_id, other=uuid.uuid4())
    assert receiver.post(target, body, f"Bearer {receiver.token()}") in {200, 400}
    # Only a transfer event for the job's own call could settle it, and none of these name that call.
    assert receiver.state() == State.ACCEPTED


@pytest.mark.parametrize("job_path", ["%00", "x" * 300, "%ED%A0%80", "..%2F..", "%F0%9F%93%9E"])
def test_odd_job_ids_in_the_path_are_not_a_server_error(receiver: Receiver, job_path: str) -> None:
    body = json.dumps([_event(receiver.call)]).encode()
    assert receiver.post(f"/v1/callbacks/{job_path}", body, f"Bearer {receiver.token()}") == 200
    assert receiver.state() == State.ACCEPTED  # a URI naming no job settles nothing


def test_a_valid_event_for_the_job_settles_it_once(receiver: Receiver) -> None:
    """The control: the same receiver does settle the job when the request is genuine."""
    event = _event(receiver.call)
    for _ in range(2):
        body = json.dumps([event]).encode()
        assert receiver.post(f"/v1/callbacks/{receiver.job_id}", body, f"Bearer {receiver.token()}") == 200
    job = receiver.ledger.get(receiver.job_id)
    assert job.state == State.TRANSFERRED
    assert job.result_code == 200
