"""The HTTP intake over real HTTP: authentication, validation, idempotency, batches, limits, reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from tests.stack import Stack
from worker.errors import IdempotencyConflict
from worker.ledger import State, op_count_by_state

TOKENS = ("intake-token-alpha-1", "intake-token-beta-2")
GOOD = {"callConnectionId": "call-in-1", "targetParticipant": "4:+14255550123", "operationContext": "crm-1"}


@pytest.fixture
async def intake(make_stack: Callable[..., Any]) -> Stack:
    stack: Stack = await make_stack("filesystem", "sqlite", serve=True, intake_tokens=TOKENS, intake_max_batch=5)
    return stack


async def call(
    stack: Stack, method: str, path: str, body: Any = None, token: str | None = TOKENS[0], **headers: str
) -> tuple[int, Any, dict[str, str]]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = f"http://127.0.0.1:{stack.settings.serve_port}{path}"
    async with aiohttp.ClientSession() as session:
        data = body if isinstance(body, bytes) else None
        payload = None if isinstance(body, bytes) else body
        async with session.request(method, url, json=payload, data=data, headers=headers) as response:
            return response.status, await response.json(content_type=None), dict(response.headers)


async def test_authentication(intake: Stack) -> None:
    status, body, headers = await call(intake, "POST", "/v1/transfers", GOOD, token=None)
    assert (status, body["error"]["code"]) == (401, "Unauthorized")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = await call(intake, "POST", "/v1/transfers", GOOD, token="intake-token-alpha-X")
    assert (status, body["error"]["code"]) == (401, "Unauthorized")  # a wrong token is not authenticated
    assert "INTAKE_TOKENS" in body["error"]["message"]
    assert intake.producer.ledger.run(op_count_by_state, None) == {}
    status, body, _ = await call(intake, "POST", "/v1/transfers", GOOD, token=TOKENS[1])
    assert status == 202
    assert body["state"] == State.QUEUED


async def test_validation_errors_name_each_field_and_write_nothing(intake: Stack) -> None:
    bad = {
        "callConnectionId": "",
        "targetParticipant": "4:12345",
        "operationCallbackUri": "http://example.com/cb",
        "customCallingContext": {"sipHeaders": {"X-Other": "1"}},
        "surprise": True,
    }
    status, body, _ = await call(intake, "POST", "/v1/transfers", bad)
    assert status == 422
    fields = {detail["field"] for detail in body["error"]["details"]}
    assert fields == {
        "callConnectionId",
        "targetParticipant",
        "operationCallbackUri",
        "customCallingContext.sipHeaders['X-Other']",
        "surprise",
    }
    assert all(detail["rule"] for detail in body["error"]["details"])
    status, body, _ = await call(intake, "POST", "/v1/transfers", b"{nope", **{"Content-Type": "application/json"})
    assert (status, body["error"]["code"]) == (400, "BadRequest")
    status, body, _ = await call(intake, "POST", "/v1/transfers", [GOOD])
    assert status == 422
    assert intake.producer.ledger.run(op_count_by_state, None) == {}


async def test_idempotency_key_replays_the_same_job(intake: Stack) -> None:
    status, first, _ = await call(intake, "POST", "/v1/transfers", GOOD, **{"Idempotency-Key": "crm-ticket-9"})
    assert status == 202
    status, again, _ = await call(intake, "POST", "/v1/transfers", GOOD, **{"Idempotency-Key": "crm-ticket-9"})
    assert status == 200
    assert again["job_id"] == first["job_id"]
    assert again["request_id"] == first["request_id"]
    changed = {**GOOD, "targetParticipant": "4:+14255550999"}
    status, body, _ = await call(intake, "POST", "/v1/transfers", changed, **{"Idempotency-Key": "crm-ticket-9"})
    assert (status, body["error"]["code"]) == (409, "IdempotencyConflict")
    assert intake.producer.ledger.run(op_count_by_state, None) == {State.QUEUED: 1}


async def test_a_key_that_comes_back_for_another_call_is_refused_at_every_way_in(intake: Stack) -> None:
    key = {"Idempotency-Key": "crm-ticket-10"}
    status, first, _ = await call(intake, "POST", "/v1/transfers", {**GOOD, "callConnectionId": "call-A"}, **key)
    assert status == 202
    status, body, _ = await call(intake, "POST", "/v1/transfers", {**GOOD, "callConnectionId": "call-B"}, **key)
    assert (status, body["error"]["code"]) == (409, "IdempotencyConflict")
    assert "crm-ticket-10" in body["error"]["message"]
    with pytest.raises(IdempotencyConflict, match="crm-ticket-10"):
        intake.producer.enqueue({**GOOD, "callConnectionId": "call-B"}, idempotency_key="crm-ticket-10")
    items = [
        {**GOOD, "callConnectionId": "call-B", "idempotencyKey": "crm-ticket-10"},  # an earlier job's key
        {**GOOD, "callConnectionId": "call-C", "idempotencyKey": "crm-ticket-11"},
        {**GOOD, "callConnectionId": "call-D", "idempotencyKey": "crm-ticket-11"},  # this batch's own key
    ]
    status, batch, _ = await call(intake, "POST", "/v1/transfers:batch", {"transfers": items})
    assert status == 200
    assert [result["status"] for result in batch["results"]] == ["rejected", "created", "rejected"]
    for result, key_name in ((batch["results"][0], "crm-ticket-10"), (batch["results"][2], "crm-ticket-11")):
        assert result["errors"][0]["field"] == "idempotencyKey"
        assert key_name in result["errors"][0]["rule"]
    assert intake.producer.ledger.run(op_count_by_state, None) == {State.QUEUED: 2}
    assert intake.job(first["job_id"]).call_connection_id == "call-A"


async def test_batch_accepts_each_valid_item_and_reports_the_rest(intake: Stack) -> None:
    items = [
        {**GOOD, "callConnectionId": "call-b-0", "idempotencyKey": "b-0"},
        {**GOOD, "callConnectionId": "call-b-1", "targetParticipant": "9:nobody"},
        {**GOOD, "callConnectionId": "call-b-2"},
        "not an object",
    ]
    status, body, _ = await call(intake, "POST", "/v1/transfers:batch", {"transfers": items, "campaign": "spring"})
    assert status == 200
    assert (body["created"], body["exists"], body["rejected"]) == (2, 0, 2)
    statuses = [result["status"] for result in body["results"]]
    assert statuses == ["created", "rejected", "created", "rejected"]
    assert body["results"][1]["errors"][0]["field"] == "targetParticipant"
    status, again, _ = await call(intake, "POST", "/v1/transfers:batch", {"transfers": items[:1]})
    assert again["results"][0] == {**body["results"][0], "status": "exists"}
    status, progress, _ = await call(intake, "GET", "/v1/campaigns/spring")
    assert (status, progress["total"], progress["states"]) == (200, 2, {State.QUEUED: 2})
    status, _, _ = await call(intake, "GET", "/v1/campaigns/winter")
    assert status == 404


async def test_size_limits(intake: Stack) -> None:
    too_many = {"transfers": [{**GOOD, "callConnectionId": f"c-{i}"} for i in range(6)]}
    status, body, _ = await call(intake, "POST", "/v1/transfers:batch", too_many)
    assert (status, body["error"]["code"]) == (413, "BatchTooLarge")
    huge = b'{"callConnectionId": "' + b"x" * (intake.settings.intake_max_body + 10) + b'"}'
    status, body, _ = await call(intake, "POST", "/v1/transfers", huge, **{"Content-Type": "application/json"})
    assert status == 413
    assert "INTAKE_MAX_BODY_BYTES" in body["error"]["message"]
    assert intake.producer.ledger.run(op_count_by_state, None) == {}


async def test_jobs_from_the_intake_are_sent_and_readable(intake: Stack) -> None:
    intake.start_worker()
    status, created, _ = await call(intake, "POST", "/v1/transfers", GOOD)
    assert status == 202
    job = await intake.settled(created["job_id"])
    assert job.state in {State.ACCEPTED, State.TRANSFERRED}
    status, shown, _ = await call(intake, "GET", f"/v1/transfers/{job.id}")
    assert status == 200
    assert shown["job_id"] == job.id
    steps = [step["to"] for step in shown["history"]]
    assert steps[:2] == [State.QUEUED, State.SENDING]
    # The 202 and the emulator's outcome event race: the event may settle the job before the 202 is recorded.
    assert steps[2] in {State.ACCEPTED, State.TRANSFERRED}
    status, missing, _ = await call(intake, "GET", "/v1/transfers/no-such-job")
    assert (status, missing["error"]["code"]) == (404, "NotFound")
    status, _, _ = await call(intake, "GET", f"/v1/transfers/{job.id}", token=None)
    assert status == 401


async def test_openapi_document_is_valid_and_public(intake: Stack) -> None:
    status, document, _ = await call(intake, "GET", "/openapi.json", token=None)
    assert status == 200
    validate(document)
    assert set(document["paths"]) == {
        "/v1/transfers",
        "/v1/transfers:batch",
        "/v1/transfers/{job_id}",
        "/v1/campaigns/{name}",
    }


async def test_each_job_gets_its_lane(intake: Stack) -> None:
    """A single transfer is live work; a batch naming a campaign is bulk; either may name its lane."""
    _, single, _ = await call(intake, "POST", "/v1/transfers", {**GOOD, "callConnectionId": "call-lane-1"})
    _, named, _ = await call(
        intake, "POST", "/v1/transfers", {**GOOD, "callConnectionId": "call-lane-2", "lane": "bulk"}
    )
    assert (single["lane"], named["lane"]) == ("live", "bulk")
    items = [{**GOOD, "callConnectionId": "call-lane-3"}]
    _, campaign, _ = await call(intake, "POST", "/v1/transfers:batch", {"transfers": items, "campaign": "autumn"})
    _, plain, _ = await call(
        intake, "POST", "/v1/transfers:batch", {"transfers": [{**GOOD, "callConnectionId": "call-lane-4"}]}
    )
    lanes = [intake.job(body["results"][0]["job_id"]).lane for body in (campaign, plain)]
    assert lanes == ["bulk", "live"]
    status, refused, _ = await call(intake, "POST", "/v1/transfers", {**GOOD, "lane": "fast"})
    assert status == 422
    assert refused["error"]["details"][0]["field"] == "lane"
    status, _, _ = await call(intake, "POST", "/v1/transfers:batch", {"transfers": items, "lane": "fast"})
    assert status == 422
