"""The outcome-event receiver: ACS POSTs CloudEvents here; transfer outcomes settle their jobs.

    POST /v1/callbacks/{job_id}   the URI the producer puts in operationCallbackUri (names the job)
    POST /v1/callbacks            events forwarded by a producer that uses its own callback URI: matched to
                                  the one job on the event's call (and operation context, when given) that
                                  was sent and waits for an outcome; none or several: recorded unmatched

Each request must carry ACS's bearer token (verified in `worker.serve.tokens`) unless verification is switched off
for local development. Events are deduplicated on their CloudEvent id. `CallTransferAccepted` moves a job to
``transferred``, `CallTransferFailed` to ``transfer_failed``, with resultInformation stored; any other event
type is logged and ignored. An event for an unknown job, or one that arrives twice or after the job settled,
is recorded and answered 200 so ACS does not retry it.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from worker.errors import CallbackRejected
from worker.ledger import EventOutcome, Ledger, State
from worker.ledger.limits import EVENT_ID
from worker.ledger.outcomes import Received, TransferEvent, op_receive
from worker.logs import get_logger
from worker.metrics import CALLBACKS
from worker.request.job import CALLBACK_PATH
from worker.serve.tokens import TokenVerifier
from worker.text import can_store

log = get_logger(__name__)
TRANSFER_OUTCOMES = {
    "Microsoft.Communication.CallTransferAccepted": State.TRANSFERRED,
    "Microsoft.Communication.CallTransferFailed": State.TRANSFER_FAILED,
}


def parse_event(event: object) -> TransferEvent | str:
    """A transfer event, or why this event is not one we act on."""
    if not isinstance(event, Mapping):
        return "not an object"
    event_id, event_type, data = event.get("id"), event.get("type"), event.get("data")
    if not isinstance(event_id, str) or not event_id or len(event_id) > EVENT_ID or not isinstance(event_type, str):
        return "missing id or type"
    if event_type not in TRANSFER_OUTCOMES:
        return f"not a transfer outcome ({event_type[:100]!r})"
    if not isinstance(data, Mapping) or not isinstance(data.get("callConnectionId"), str):
        return "data.callConnectionId is missing"
    result = data.get("resultInformation")
    result = result if isinstance(result, Mapping) else {}
    context = data.get("operationContext")
    texts = [event_id, data["callConnectionId"], context if isinstance(context, str) else ""]
    if not all(can_store(text) for text in texts):
        # No job of ours has such an id, call or context (they are validated), and the ledger cannot store it.
        return "id, callConnectionId or operationContext holds NUL or unpaired surrogates"
    message = str(result["message"])[:2000] if result.get("message") is not None else None
    return TransferEvent(
        id=event_id,
        type=event_type,
        call_connection_id=data["callConnectionId"],
        operation_context=context if isinstance(context, str) else None,
        outcome=EventOutcome(
            state=TRANSFER_OUTCOMES[event_type],
            code=_integer(result.get("code")),
            subcode=_integer(result.get("subCode")),
            message=None
            if message is None
            else message.encode("utf-8", "backslashreplace").decode().replace("\x00", ""),
        ),
        payload=json.dumps(event)[:100_000],
    )


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def receive(request: web.Request, ledger: Ledger, verifier: TokenVerifier | None) -> web.Response:
    if verifier is not None:
        try:
            await verifier.verify(request.headers.get("Authorization"))
        except CallbackRejected as error:
            log.warning("callback.rejected", reason=str(error), remote=request.remote)
            CALLBACKS.labels("rejected").inc()
            return web.json_response({"error": {"code": "Unauthorized", "message": str(error)}}, status=401)
    try:
        document = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply to decode
        return web.json_response({"error": {"code": "BadRequest", "message": "body is not JSON"}}, status=400)
    events = document if isinstance(document, list) else [document]
    path_job_id = request.match_info.get("job_id")
    counts: dict[str, int] = {}
    for raw in events:
        parsed = parse_event(raw)
        if isinstance(parsed, str):
            log.info("callback.ignored", reason=parsed, job_id=path_job_id)
            CALLBACKS.labels("ignored").inc()
            counts["ignored"] = counts.get("ignored", 0) + 1
            continue
        received = await ledger.run(op_receive, parsed, path_job_id, time.time())
        counts[received.result] = counts.get(received.result, 0) + 1
        CALLBACKS.labels(received.result).inc()
        _log_result(received, parsed, path_job_id)
    return web.json_response({"received": len(events), **counts})


def _log_result(received: Received, event: TransferEvent, path_job_id: str | None) -> None:
    result, job = received.result, received.job
    fields: dict[str, Any] = {
        "event_id": event.id,
        "event_type": event.type,
        "call_connection_id": event.call_connection_id,
        "job_id": job.id if job else path_job_id,
    }
    if result == "applied" and job is not None:
        outcome = event.outcome
        log.info(
            "job.transition",
            to_state=job.state,
            result_code=outcome.code,
            result_subcode=outcome.subcode,
            result_message=outcome.message,
            request_id=job.request_id,
            **fields,
        )
        if received.replacement is not None:
            what, replacement = received.replacement
            if what == "superseded":
                log.warning("replay.superseded", replacement=replacement.id, reason=replacement.reason, **fields)
            else:
                log.warning("replay.both_sent", replacement=replacement.id, reason=job.reason, **fields)
        elif job.replayed_by is not None:
            log.warning("callback.outcome_after_replay", replayed_by=job.replayed_by, **fields)
    elif result == "already_settled" and job is not None and job.state != event.outcome.state:
        log.warning("callback.conflicting_outcome", state=job.state, event_state=event.outcome.state, **fields)
    elif result == "unmatched":
        log.warning("callback.unmatched", reason=received.unmatched_because, **fields)
    else:
        log.info(f"callback.{result}", **fields)


def routes(ledger: Ledger, verifier: TokenVerifier | None) -> list[web.RouteDef]:
    """The receiver's routes; `verifier` None means tokens are not checked (local development only)."""
    handler = functools.partial(receive, ledger=ledger, verifier=verifier)
    return [web.post(CALLBACK_PATH, handler), web.post(CALLBACK_PATH + "/{job_id}", handler)]
