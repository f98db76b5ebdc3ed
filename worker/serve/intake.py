"""The HTTP intake: other services enqueue transfers over HTTP, and read jobs and campaigns back.

    POST /v1/transfers          one transfer (wire form); ``Idempotency-Key`` header → the job's key
    POST /v1/transfers:batch    {"transfers": [...], "campaign"?}: each item validated on its own
    GET  /v1/transfers/{id}     a job, with its history
    GET  /v1/campaigns/{name}   a campaign's jobs by state
    GET  /openapi.json          this API described

Every route but /openapi.json needs ``Authorization: Bearer <token>`` with a token from INTAKE_TOKENS
(compared in constant time): none or a wrong one → 401 (every token may do everything, so 403 never
happens). Errors are JSON
``{"error": {"code", "message", "details"?: [{"field", "rule"}]}}``; a rejected request writes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from worker.config import Settings
from worker.errors import IdempotencyConflict, Issue, ValidationError
from worker.ledger import Job, Lane, Ledger, NewJob, op_create_jobs, op_events, op_get
from worker.ledger.campaign import op_progress
from worker.metrics import INTAKE
from worker.produce.views import history_view, job_view
from worker.queue.publisher import Publisher
from worker.request.job import prepare_job
from worker.request.models import parse_transfer
from worker.request.names import name_issues
from worker.serve.openapi import OPENAPI

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, code: str, message: str, details: list[dict[str, str]] | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    headers = {"WWW-Authenticate": 'Bearer realm="acs-transfer"'} if status == 401 else None
    return web.json_response({"error": body}, status=status, headers=headers)


def _authorised(tokens: tuple[str, ...], handler: Handler) -> Handler:
    expected = [token.encode() for token in tokens]

    @functools.wraps(handler)
    async def check(request: web.Request) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return error(401, "Unauthorized", "a bearer token is required (Authorization: Bearer <token>)")
        # Compare with every token, always, so the time taken says nothing about which one nearly matched.
        matches = [hmac.compare_digest(given.strip().encode(), token) for token in expected]
        if not any(matches):
            return error(401, "Unauthorized", "the bearer token is not valid for this intake (see INTAKE_TOKENS)")
        return await handler(request)

    return check


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply to decode
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"code": "BadRequest", "message": "body is not valid JSON"}}),
            content_type="application/json",
        ) from None


def _validation_error(failure: ValidationError) -> web.Response:
    return error(422, "ValidationFailed", str(failure), failure.as_json())


class Intake:
    """The handlers, bound to the server's ledger, publisher and settings."""

    def __init__(self, settings: Settings, ledger: Ledger, publisher: Publisher) -> None:
        self.settings = settings
        self.ledger = ledger
        self.publisher = publisher

    def _new_job(self, item: Any, key: str | None, campaign: str | None, lane: Any, where: str) -> NewJob:
        issues = name_issues(key, campaign, key_field="Idempotency-Key")
        if issues:
            raise ValidationError(issues, where)
        if lane not in Lane.ALL:
            raise ValidationError([Issue("lane", f"must be one of {', '.join(Lane.ALL)}")], where)
        request = parse_transfer(item, where=where)
        return prepare_job(
            request,
            idempotency_key=key,
            campaign=campaign,
            callback_base_url=self.settings.callback_base_url,
            lane=lane,
        )

    async def _create(self, new_jobs: list[NewJob]) -> list[tuple[Job, bool]]:
        results = await self.ledger.run(op_create_jobs, new_jobs, time.time())
        await asyncio.to_thread(self.publisher.publish_saved, [job for job, is_new in results if is_new])
        return results

    async def create_one(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        if not isinstance(data, Mapping):
            return error(422, "ValidationFailed", "the body must be a JSON object (a transfer request)")
        campaign = data.get("campaign")
        item = {key: value for key, value in data.items() if key not in {"campaign", "lane"}}
        try:
            if campaign is not None and not isinstance(campaign, str):
                raise ValidationError([Issue("campaign", "must be a string")])
            lane = data.get("lane", Lane.LIVE)
            new_job = self._new_job(item, request.headers.get("Idempotency-Key"), campaign, lane, "")
            ((job, created),) = await self._create([new_job])
        except ValidationError as failure:
            return _validation_error(failure)
        except IdempotencyConflict as conflict:
            return error(409, "IdempotencyConflict", str(conflict))
        return web.json_response(job_view(job), status=202 if created else 200)

    async def create_batch(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        items = data.get("transfers") if isinstance(data, Mapping) else None
        campaign = data.get("campaign") if isinstance(data, Mapping) else None
        if not isinstance(items, list) or (campaign is not None and not isinstance(campaign, str)):
            return error(422, "ValidationFailed", 'the body must be {"transfers": [...], "campaign"?: "name"}')
        limit = self.settings.intake_max_batch
        if len(items) > limit:
            return error(413, "BatchTooLarge", f"at most {limit} transfers per batch, got {len(items)}")
        # A batch that names a campaign is bulk work unless it says otherwise.
        lane = data.get("lane", Lane.LIVE if campaign is None else Lane.BULK)
        if lane not in Lane.ALL:
            return error(422, "ValidationFailed", f"lane must be one of {', '.join(Lane.ALL)}")
        results: list[dict[str, Any]] = [{"index": index} for index in range(len(items))]
        valid: list[tuple[int, NewJob]] = []
        for index, item in enumerate(items):
            try:
                if not isinstance(item, Mapping):
                    raise ValidationError([Issue("(item)", "must be a JSON object")], f"transfers[{index}]")
                fields = {key: value for key, value in item.items() if key != "idempotencyKey"}
                key = item.get("idempotencyKey")
                if key is not None and not isinstance(key, str):
                    raise ValidationError([Issue("idempotencyKey", "must be a string")], f"transfers[{index}]")
                valid.append((index, self._new_job(fields, key, campaign, lane, f"transfers[{index}]")))
            except ValidationError as failure:
                results[index].update(status="rejected", errors=failure.as_json())
        for index, outcome in zip(
            [i for i, _ in valid], await self._create_each([job for _, job in valid]), strict=True
        ):
            results[index].update(outcome)
        counts = {
            status: sum(1 for r in results if r["status"] == status) for status in ("created", "exists", "rejected")
        }
        return web.json_response({"results": results, **counts})

    async def _create_each(self, new_jobs: list[NewJob]) -> list[dict[str, Any]]:
        """One batch write; if a key conflicts, find which one by creating the items one at a time."""
        try:
            return [self._item(job, created) for job, created in await self._create(new_jobs)]
        except IdempotencyConflict:
            outcomes = []
            for new_job in new_jobs:
                try:
                    ((job, created),) = await self._create([new_job])
                    outcomes.append(self._item(job, created))
                except IdempotencyConflict as conflict:
                    outcomes.append(
                        {"status": "rejected", "errors": [{"field": "idempotencyKey", "rule": str(conflict)}]}
                    )
            return outcomes

    @staticmethod
    def _item(job: Job, created: bool) -> dict[str, Any]:
        return {"status": "created" if created else "exists", "job_id": job.id, "state": job.state}

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = await self.ledger.run(op_get, job_id)
        if job is None:
            return error(404, "NotFound", f"no job {job_id!r}")
        history = await self.ledger.run(op_events, job_id)
        return web.json_response({**job_view(job), "history": history_view(history)})

    async def get_campaign(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        progress = await self.ledger.run(op_progress, name, time.time(), 60.0)
        if progress.total == 0:
            return error(404, "NotFound", f"no campaign {name!r} (or it has no jobs)")
        return web.json_response(
            {
                "campaign": name,
                "total": progress.total,
                "settled": progress.settled,
                "states": progress.counts,
                "settled_per_second": round(progress.rate, 3),
            }
        )


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def routes(settings: Settings, ledger: Ledger, publisher: Publisher) -> list[web.RouteDef]:
    intake = Intake(settings, ledger, publisher)
    guard = functools.partial(_authorised, settings.intake_tokens)
    return [
        web.post("/v1/transfers", guard(intake.create_one)),
        web.post("/v1/transfers:batch", guard(intake.create_batch)),
        web.get("/v1/transfers/{job_id}", guard(intake.get_job)),
        web.get("/v1/campaigns/{name}", guard(intake.get_campaign)),
        web.get("/openapi.json", openapi),
    ]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (too large, not found, wrong method) as JSON like every other error; intake
    requests counted by route and status."""
    try:
        response = await handler(request)
    except web.HTTPException as failure:
        if failure.content_type == "application/json":
            _count(request, failure.status)
            raise
        code = failure.reason.replace(" ", "")
        message = "the body is larger than INTAKE_MAX_BODY_BYTES" if failure.status == 413 else failure.reason
        response = error(failure.status, code, message)
        if "Allow" in failure.headers:  # a 405 names the methods the resource has (RFC 9110)
            response.headers["Allow"] = failure.headers["Allow"]
    _count(request, response.status)
    return response


def _count(request: web.Request, status: int) -> None:
    route = request.match_info.route.resource
    path = route.canonical if route is not None else "(unmatched)"
    if path.startswith(("/v1/transfers", "/v1/campaigns")):
        INTAKE.labels(path, str(status)).inc()
