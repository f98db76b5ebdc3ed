"""Routes: the transfer endpoint ACS exposes, and the emulator's own unauthenticated control endpoints.

Transfer request pipeline, in order:
    1. HMAC signature and x-ms-date freshness,
       or a Microsoft Entra ID bearer token it issued -> 401
    2. api-version                                 -> 400
    3. body against the swagger schema             -> 400
    -- the fault plan is consulted here: a ``before`` fault answers now, nothing recorded --
    4. repeatability headers and store             -> 400/412 rejected, 409, replay, or execute
    5. execution: `latency`, then the effect and the stored 202 (or an ``answer`` fault's status); an id
       executed again after its call moved meets a call that is gone: 404, stored, no effect
    -- an ``after`` fault now hides whatever ACS answered; an ``after_5xx`` fault makes ACS record and answer a
       5xx after the effect (a timeout or dropped connection hides that 5xx) --
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from worker.emulator.answers import EmulatorAnswer, acs_error
from worker.emulator.auth import authenticate
from worker.emulator.callbacks import Delivery
from worker.emulator.config import EmulatorConfig
from worker.emulator.entra import REVOKED
from worker.emulator.entra import add_routes as add_entra_routes
from worker.emulator.faults import Fault, FaultPlan, FaultPlanError
from worker.emulator.repeatability import (
    ACCEPTED,
    FIRST_SENT_HEADER,
    REJECTED,
    REQUEST_ID_HEADER,
    RESULT_HEADER,
    Execute,
    InProgress,
    Record,
    Rejection,
    Replay,
    fingerprint,
    parse_headers,
)
from worker.emulator.schema import BodyValidator
from worker.emulator.state import EmulatorState, LoggedRequest

STATE: web.AppKey[EmulatorState] = web.AppKey("acs_emulator_state", EmulatorState)
VALIDATOR: web.AppKey[BodyValidator] = web.AppKey("acs_emulator_validator", BodyValidator)

TRANSFER_PREFIX = "/calling/callConnections/"
TRANSFER_SUFFIX = ":transferToParticipant"
#: how long a 202 waits for an early outcome event to be delivered first
EARLY_EVENT_WAIT = 5.0


class _Disconnect:
    """Marker: close the connection without answering."""


_DISCONNECT = _Disconnect()


def create_emulator_app(config: EmulatorConfig) -> web.Application:
    """The emulator as an aiohttp application; its state is ``app[STATE]``."""
    app = web.Application()
    app[STATE] = EmulatorState(config)
    app[VALIDATOR] = BodyValidator()  # loads the swagger and resolves its references once
    app.router.add_get("/calling/keys", _keys)
    app.router.add_get("/calling/.well-known/acsopenidconfiguration", _openid_configuration)
    app.router.add_route("*", "/calling/{tail:.*}", _calling)
    app.router.add_get("/_emulator/callbacks", _callbacks)
    app.on_cleanup.append(_close_callbacks)
    app.router.add_get("/_emulator/health", _health)
    app.router.add_get("/_emulator/transfers", _transfers)
    app.router.add_get("/_emulator/requests", _requests)
    app.router.add_get("/_emulator/faults", _get_faults)
    app.router.add_put("/_emulator/faults", _put_faults)
    app.router.add_post("/_emulator/reset", _reset)
    add_entra_routes(app, app[STATE].entra)
    return app


def call_connection_id_from_path(raw_path: str) -> str | None:
    """The decoded id from ``/calling/callConnections/{id}:transferToParticipant``, or None.

    Parsed from the raw path so an encoded ``/`` (``%2F``) in the id stays inside the one segment.
    """
    path = raw_path.partition("?")[0]
    if not (path.startswith(TRANSFER_PREFIX) and path.endswith(TRANSFER_SUFFIX)):
        return None
    segment = path[len(TRANSFER_PREFIX) : -len(TRANSFER_SUFFIX)]
    if not segment or "/" in segment:
        return None
    return unquote(segment)


def _json(answer: EmulatorAnswer, extra_headers: dict[str, str] | None = None) -> web.Response:
    headers = {**answer.headers, **(extra_headers or {})}
    return web.json_response(dict(answer.body), status=answer.status, headers=headers)


async def _calling(request: web.Request) -> web.StreamResponse:
    call_connection_id = call_connection_id_from_path(request.raw_path)
    if call_connection_id is None:
        return _json(acs_error(404, f"the emulator implements only POST {TRANSFER_PREFIX}{{id}}{TRANSFER_SUFFIX}"))
    if request.method != "POST":
        return _json(acs_error(405, f"{request.method} is not allowed here"), {"Allow": "POST"})
    state = request.app[STATE]
    task = asyncio.current_task()
    if task is not None:
        state.running.add(task)
    entry = state.log(
        LoggedRequest(
            at=time.time(),
            call_connection_id=call_connection_id,
            request_id=request.headers.get(REQUEST_ID_HEADER),
            first_sent=request.headers.get(FIRST_SENT_HEADER),
        )
    )
    try:
        outcome = await _transfer(request, call_connection_id, entry)
    finally:
        if task is not None:
            state.running.discard(task)
        state.count_fault(entry)
    entry.answered_at = time.time()
    if isinstance(outcome, _Disconnect):
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=499)  # never written: the transport is closed
    entry.status = outcome.status
    entry.repeatability_result = outcome.headers.get(RESULT_HEADER)
    client_request_id = request.headers.get("x-ms-client-request-id")
    return _json(outcome, {"x-ms-client-request-id": client_request_id} if client_request_id else None)


async def _transfer(
    request: web.Request, call_connection_id: str, entry: LoggedRequest
) -> EmulatorAnswer | _Disconnect:
    state = request.app[STATE]
    config = state.config
    raw = await request.read()
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        problem = state.entra.verify(authorization.removeprefix("Bearer "), time.time())
        if problem is not None:
            challenge = {"WWW-Authenticate": state.entra.challenge(time.time())} if problem == REVOKED else None
            return acs_error(401, f"Microsoft Entra ID authentication failed: {problem}", headers=challenge)
    else:
        problem = authenticate(
            config.access_key,
            request.method,
            request.raw_path,
            request.headers.get("Host", ""),
            raw,
            request.headers,
            time.time(),
            config.date_tolerance,
        )
        if problem is not None:
            return acs_error(401, f"HMAC authentication failed: {problem}")

    api_version = request.query.get("api-version")
    if api_version is None:
        return acs_error(400, "the api-version query parameter is required")
    if api_version not in config.api_versions:
        supported = ", ".join(sorted(config.api_versions))
        return acs_error(400, f"api-version {api_version!r} is not supported (supported: {supported})")

    parsed = request.app[VALIDATOR].parse(raw)
    if isinstance(parsed, str):
        return acs_error(400, parsed)

    fault = state.faults.next_for(call_connection_id)
    entry.fault = fault
    if fault is not None and fault.stage == "before":
        entry.fault_applied = True
        return await _inflict(fault)

    answer, executed, transferred = await _process(request, state, call_connection_id, raw, parsed.data, fault)
    if fault is not None and fault.stage == "after":
        entry.fault_applied = True
        return await _inflict(fault)
    if fault is not None and fault.stage == "after_5xx":
        entry.fault_applied = transferred
        if transferred and fault.kind != "status":
            return await _inflict(fault)
    if fault is not None and fault.stage == "answer":
        entry.fault_applied = executed
    return answer


async def _process(
    request: web.Request,
    state: EmulatorState,
    call_connection_id: str,
    raw: bytes,
    body: dict[str, Any],
    fault: Fault | None,
) -> tuple[EmulatorAnswer, bool, bool]:
    """Steps 4 and 5: the repeatability decision and, if it says so, the execution.
    Returns (answer, executed, whether the execution carried out the transfer)."""
    key = parse_headers(request.headers.get(REQUEST_ID_HEADER), request.headers.get(FIRST_SENT_HEADER))
    if key is None:
        answer, transferred = await _execute(state, call_connection_id, None, body, fault, None)
        return answer, True, transferred
    if isinstance(key, Rejection):
        return _with_result(key.answer, REJECTED), False, False
    decision = state.repeatability.begin(key, fingerprint(call_connection_id, raw), time.time())
    if isinstance(decision, Rejection):
        return _with_result(decision.answer, REJECTED), False, False
    if isinstance(decision, Replay | InProgress):
        return _with_result(decision.answer, ACCEPTED), False, False
    assert isinstance(decision, Execute)
    answer, transferred = await _execute(state, call_connection_id, key.request_id, body, fault, decision.record)
    return _with_result(answer, ACCEPTED), True, transferred


async def _execute(
    state: EmulatorState,
    call_connection_id: str,
    request_id: str | None,
    body: dict[str, Any],
    fault: Fault | None,
    record: Record | None,
) -> tuple[EmulatorAnswer, bool]:
    """The request is in progress for `latency`, then carries out the transfer (or ACS answers an ``answer``
    fault, or the call already moved). Returns what ACS answers and records, and whether it transferred."""
    try:
        await asyncio.sleep(state.fault_plan.latency)
    except asyncio.CancelledError:
        if record is not None:
            state.repeatability.abandon(record)
        raise
    transferred = False
    if record is not None and record.moved:
        # Executed again (its first answer was a 5xx), but an earlier execution moved the call away.
        answer = acs_error(404, f"Call not found: {call_connection_id} is no longer connected.")
    elif fault is not None and fault.stage == "answer":
        assert fault.status is not None
        answer = acs_error(fault.status, f"emulated fault: ACS answered {fault.status}", headers=fault.retry_headers())
    else:
        hidden = fault is not None and fault.stage in ("after", "after_5xx")
        answer = await _transfer_call(state, call_connection_id, request_id, body, record, hidden)
        transferred = True
        if fault is not None and fault.stage == "after_5xx":
            status = fault.status or 500
            message = f"emulated fault: ACS failed with {status} after the transfer took effect"
            answer = acs_error(status, message, headers=fault.retry_headers())
    if record is not None:
        state.repeatability.finish(record, answer)
    return answer, transferred


async def _transfer_call(
    state: EmulatorState,
    call_connection_id: str,
    request_id: str | None,
    body: dict[str, Any],
    record: Record | None,
    answer_hidden: bool,
) -> EmulatorAnswer:
    """Move the call (or fail to: ``CallTransferFailed``), schedule its outcome event, and answer 202."""
    plan = state.fault_plan.callbacks
    execution = record.executions if record else 0
    fate = state.callbacks.decide(plan, call_connection_id, request_id, execution, answer_hidden)
    if fate.failed:
        state.effects.record_failed(call_connection_id, request_id)
    else:
        state.effects.record(call_connection_id, request_id, body, time.time())
        if record is not None:
            record.moved = True
    delivery = state.callbacks.schedule(plan, fate, body, call_connection_id, request_id)
    if delivery is not None and fate.early:
        await asyncio.wait({delivery}, timeout=EARLY_EVENT_WAIT)  # the event overtakes the 202
    result = {"operationContext": body["operationContext"]} if "operationContext" in body else {}
    return EmulatorAnswer(202, result)


async def _inflict(fault: Fault) -> EmulatorAnswer | _Disconnect:
    """What the client sees instead of ACS's answer: a status from the front door, a hang, or a reset."""
    if fault.kind == "status":
        assert fault.status is not None
        return acs_error(
            fault.status, f"emulated fault: {fault.status} at stage {fault.stage}", headers=fault.retry_headers()
        )
    if fault.kind == "timeout":
        await asyncio.sleep(fault.seconds)
    return _DISCONNECT


def _with_result(answer: EmulatorAnswer, result: str) -> EmulatorAnswer:
    return EmulatorAnswer(answer.status, answer.body, {**answer.headers, RESULT_HEADER: result})


async def _keys(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].callbacks.signer.jwks())


async def _openid_configuration(request: web.Request) -> web.Response:
    signer = request.app[STATE].callbacks.signer
    base = f"{request.scheme}://{request.host}"
    return web.json_response({"issuer": signer.issuer, "jwks_uri": f"{base}/calling/keys"})


async def _callbacks(request: web.Request) -> web.Response:
    """Deliveries and dropped events (``?call=ID``: of one call only; ``?deliveries=false``: no deliveries), and
    how many are still pending."""
    sender = request.app[STATE].callbacks
    call = request.query.get("call")
    if request.query.get("deliveries") == "false":
        listed: list[Delivery] = []
    else:
        listed = sender.deliveries if call is None else sender.deliveries_for(call)
    deliveries = [delivery.to_json() for delivery in listed]
    dropped = [event for event in sender.dropped if call is None or event["callConnectionId"] == call]
    return web.json_response({"deliveries": deliveries, "dropped": dropped, "pending": sender.pending})


async def _close_callbacks(app: web.Application) -> None:
    await app[STATE].callbacks.close()


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _transfers(request: web.Request) -> web.Response:
    bodies = request.query.get("bodies") != "false"
    return web.json_response(request.app[STATE].effects.to_json(bodies))


async def _requests(request: web.Request) -> web.Response:
    """The request log (``?call=ID``: of one call only), the total seen and the faults applied to them all."""
    state = request.app[STATE]
    call = request.query.get("call")
    logged = [entry.to_json() for entry in state.requests if call is None or entry.call_connection_id == call]
    counts = dict(state.faults_applied)
    return web.json_response({"requests": logged, "total": state.requests_seen, "faultsApplied": counts})


async def _get_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(state.fault_plan.to_json())


async def _put_faults(request: web.Request) -> web.Response:
    try:
        data = json.loads(await request.read())
    except ValueError as error:
        return _json(acs_error(400, f"(plan): not valid JSON ({error})"))
    try:
        plan = FaultPlan.from_json(data)
    except FaultPlanError as error:
        return _json(acs_error(400, str(error)))
    request.app[STATE].set_fault_plan(plan)
    return web.json_response(plan.to_json())


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"reset": True})
