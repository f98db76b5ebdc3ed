"""Outcome events: the receiver's security and bookkeeping, and the whole loop through a real worker."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.stack import Stack
from worker.cli import main
from worker.emulator.callbacks import ACCEPTED_EVENT, FAILED_EVENT, transfer_event
from worker.ledger import State, op_events


def event_for(stack: Stack, job_id: str, failed: bool = False, **data: Any) -> dict[str, Any]:
    job = stack.job(job_id)
    body = json.loads(job.body)
    failure = {"code": 487, "subCode": 0, "message": "no answer"}
    event = transfer_event(body, job.call_connection_id, failed, failure)
    event["data"].update(data)
    return event


async def post(
    stack: Stack, events: object, token: str | None, path: str = "", raw: bytes | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{stack.settings.callback_base_url}/v1/callbacks{path}"
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else json.dumps(events).encode()
        async with session.post(url, data=data, headers=headers) as response:
            return response.status, await response.json(content_type=None)


def signed(stack: Stack, **claims: Any) -> str:
    return stack.emulator.state.callbacks.signer.token() if not claims else forge(stack, **claims)


def forge(stack: Stack, key: Any = None, kid: str | None = None, **claims: Any) -> str:
    """A token with the emulator's key (or another), its key id (or another), and changed claims."""
    signer = stack.emulator.state.callbacks.signer
    now = int(time.time())
    base = {"iss": signer.issuer, "aud": signer.audience, "iat": now, "nbf": now, "exp": now + 300}
    private = key if key is not None else signer._private_key
    return jwt.encode({**base, **claims}, private, algorithm="RS256", headers={"kid": kid or signer.key_id})


async def accepted_job(stack: Stack, call: str) -> str:
    """A job the worker sent and ACS accepted, whose event the emulator did not deliver (we post it ourselves)."""
    await stack.set_faults({"callbacks": {"drop_rate": 1.0}})
    job_id = stack.enqueue(call, operationContext=f"ctx-{call}")
    job = await stack.settled(job_id)
    assert job.state == State.ACCEPTED
    return job_id


@pytest.fixture
async def served(make_stack: Callable[..., Any]) -> Stack:
    stack: Stack = await make_stack("filesystem", "sqlite", serve=True)
    stack.start_worker()
    return stack


async def test_unsigned_forged_wrong_audience_and_expired_tokens_are_refused(served: Stack) -> None:
    job_id = await accepted_job(served, "call-sec")
    event = event_for(served, job_id)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    refused = {
        "unsigned": None,
        "garbage": "not.a.jwt",
        "forged signature": forge(served, key=other_key),
        "unknown key id": forge(served, key=other_key, kid="attacker"),
        "wrong audience": forge(served, aud="another-resource"),
        "wrong issuer": forge(served, iss="https://evil.example"),
        "expired": forge(served, iat=now - 900, nbf=now - 900, exp=now - 600),
        "HS256": jwt.encode({"aud": "x"}, "secret-secret-secret-secret-secret", algorithm="HS256"),
    }
    for case, token in refused.items():
        status, body = await post(served, [event], token, f"/{job_id}")
        assert status == 401, case
        assert body["error"]["message"], case
    assert served.job(job_id).state == State.ACCEPTED
    status, _ = await post(served, [event], signed(served), f"/{job_id}")
    assert status == 200
    assert served.job(job_id).state == State.TRANSFERRED


async def test_duplicates_unknown_types_unknown_jobs_and_malformed_bodies(served: Stack) -> None:
    job_id = await accepted_job(served, "call-dup")
    event = event_for(served, job_id)
    token = signed(served)
    status, counts = await post(served, [event, event], token, f"/{job_id}")
    assert status == 200
    assert counts == {"received": 2, "applied": 1, "duplicate": 1}
    status, counts = await post(served, [event], token, f"/{job_id}")
    assert counts == {"received": 1, "duplicate": 1}
    transitions = served.producer.ledger.run(op_events, job_id)
    assert [e.to_state for e in transitions].count(State.TRANSFERRED) == 1

    other = {"id": str(uuid.uuid4()), "type": "Microsoft.Communication.PlayCompleted", "data": {}}
    status, counts = await post(served, [other], token)
    assert (status, counts) == (200, {"received": 1, "ignored": 1})

    stray = transfer_event({}, "call-nobody-knows", False, {})
    status, counts = await post(served, [stray], token)
    assert (status, counts) == (200, {"received": 1, "unmatched": 1})

    status, body = await post(served, None, token, raw=b"{not json")
    assert status == 400
    assert body["error"]["code"] == "BadRequest"


async def test_an_event_that_overtakes_the_answer_settles_the_job(served: Stack) -> None:
    # ACS answers 202 after 1.5 s but the outcome event comes first.
    await served.set_faults(
        {"latency_ms": 0, "by_call": {"call-race": [{"kind": "timeout", "stage": "after", "seconds": 1.5}]}}
    )
    job_id = served.enqueue("call-race")
    job = await served.settled(job_id)
    assert job.state == State.TRANSFERRED
    assert job.result_code == 200
    await served.wait_for(lambda: "job.settled_meanwhile" in served.logs(), "the worker to notice the event won")
    assert served.emulator.state.effects.effects_for_call("call-race") == 1


async def test_generic_endpoint_correlates_by_call_and_operation_context(served: Stack) -> None:
    job_id = await accepted_job(served, "call-fwd")
    wrong_context = event_for(served, job_id, operationContext="someone-else")
    assert await post(served, [wrong_context], signed(served)) == (200, {"received": 1, "unmatched": 1})
    assert served.job(job_id).state == State.ACCEPTED
    failed = event_for(served, job_id, failed=True)
    assert await post(served, [failed], signed(served)) == (200, {"received": 1, "applied": 1})
    job = served.job(job_id)
    assert job.state == State.TRANSFER_FAILED
    assert (job.result_code, job.result_subcode, job.result_message) == (487, 0, "no answer")


async def test_end_to_end_transferred_and_transfer_failed(make_stack: Callable[..., Any]) -> None:
    stack: Stack = await make_stack("rabbitmq", "postgresql", serve=True)
    failure = {"code": 486, "subCode": 8522, "message": "Target busy"}
    await stack.set_faults({"latency_ms": 20, "callbacks": {"fail_calls": ["call-e2e-1"], "failure": failure}})
    stack.start_worker()
    ok, bad = stack.enqueue("call-e2e-0"), stack.enqueue("call-e2e-1")
    await stack.wait_for(lambda: stack.job(ok).state == State.TRANSFERRED, "the transferred outcome")
    await stack.wait_for(lambda: stack.job(bad).state == State.TRANSFER_FAILED, "the failed outcome")
    transferred, failed = stack.job(ok), stack.job(bad)
    assert transferred.result_code == 200
    assert transferred.settled_at is not None
    assert (failed.result_code, failed.result_subcode, failed.result_message) == (486, 8522, "Target busy")
    body = json.loads(transferred.body)
    assert body["operationCallbackUri"] == f"{stack.settings.callback_base_url}/v1/callbacks/{ok}"
    deliveries = stack.emulator.state.callbacks.deliveries
    assert {(d.event_type, d.status) for d in deliveries} == {(ACCEPTED_EVENT, 200), (FAILED_EVENT, 200)}


async def test_unknown_outcome_settles_from_a_late_event(make_stack: Callable[..., Any]) -> None:
    stack: Stack = await make_stack(
        "filesystem", "sqlite", serve=True, repeatability_window=2.0, window_safety_margin=0.5
    )
    # Every answer is lost after the transfer took effect; the event arrives after the window closed.
    faults = [{"kind": "status", "status": 503, "stage": "after"}] * 100
    await stack.set_faults({"by_call": {"call-late": faults}, "callbacks": {"delay_ms": 3000}})
    stack.start_worker()
    job_id = stack.enqueue("call-late")
    await stack.wait_for(lambda: stack.job(job_id).state == State.UNKNOWN, "the outcome to become unknown")
    await stack.wait_for(lambda: stack.job(job_id).state == State.TRANSFERRED, "the late event")
    assert stack.emulator.state.effects.effects_for_call("call-late") == 1


async def test_no_event_ends_dead_and_replay_sends_once_more_under_a_new_request_id(
    make_stack: Callable[..., Any],
) -> None:
    stack: Stack = await make_stack(
        "filesystem", "sqlite", serve=True, repeatability_window=2.0, window_safety_margin=0.5, reconcile_after=2.0
    )
    never = [{"kind": "status", "status": 503, "stage": "before"}] * 100
    await stack.set_faults({"by_call": {"call-dead": never}})
    stack.start_worker()
    job_id = stack.enqueue("call-dead", operationContext="ctx-dead")
    await stack.wait_for(lambda: stack.job(job_id).state == State.DEAD, "the job to die")
    dead = stack.job(job_id)
    assert "no outcome event" in (dead.reason or "")
    original_requests = {entry.request_id for entry in stack.requests_for("call-dead")}
    assert original_requests == {dead.request_id}

    await stack.set_faults({})  # ACS is healthy again
    env = {**stack.settings.to_env(), "LOG_LEVEL": "WARNING"}
    listed = CliRunner().invoke(main, ["dead", "list"], env=env)
    assert job_id in listed.stdout
    assert "503" in listed.stdout
    result = CliRunner().invoke(main, ["dead", "replay", job_id, "--reason", "ACS outage over"], env=env)
    assert result.exit_code == 0, result.output
    new_id = result.stdout.split("->")[1].strip()
    replacement = await stack.settled(new_id)
    await stack.wait_for(lambda: stack.job(new_id).state == State.TRANSFERRED, "the replay's outcome")
    replacement = stack.job(new_id)
    assert replacement.replay_of == job_id
    assert replacement.request_id != dead.request_id
    assert replacement.operation_context == "ctx-dead"
    assert json.loads(replacement.body)["operationCallbackUri"].endswith(f"/v1/callbacks/{new_id}")
    original = stack.job(job_id)
    assert original.replayed_by == new_id
    assert "ACS outage over" in (original.reason or "")
    assert stack.emulator.state.effects.effects_for_call("call-dead") == 1
    again = CliRunner().invoke(main, ["dead", "replay", job_id], env=env)
    assert again.exit_code == 1
    assert "already replayed" in again.stderr


async def test_only_failed_or_dead_jobs_are_replayed(served: Stack) -> None:
    job_id = await accepted_job(served, "call-alive")
    env = served.settings.to_env()
    result = CliRunner().invoke(main, ["dead", "replay", job_id], env=env)
    assert result.exit_code == 1
    assert "only failed or dead jobs" in result.stderr
    assert served.job(job_id).replayed_by is None
