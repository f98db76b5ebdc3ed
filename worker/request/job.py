"""Building a job from a validated request: its id, its request id, its callback URI and the exact body bytes.

Every way in (the producer API, the HTTP intake, campaign files, raw broker messages, replays) builds its jobs
here, so one idempotency key makes the same job id and request id whichever way it came in.
"""

from __future__ import annotations

import uuid

from worker.ledger import Lane, NewJob
from worker.request.models import TransferRequest, job_id_for_key, new_request_id, request_id_for_key


def check_lane(lane: str) -> str:
    """`lane` if it names a lane, else ValueError saying which ones there are."""
    if lane not in Lane.ALL:
        raise ValueError(f"lane must be one of {', '.join(Lane.ALL)}, not {lane!r}")
    return lane


CALLBACK_PATH = "/v1/callbacks"


def callback_uri_for(base_url: str, job_id: str) -> str:
    """Where ACS posts the outcome events of one job: `acs-transfer serve`'s receiver, naming the job."""
    return f"{base_url.rstrip('/')}{CALLBACK_PATH}/{job_id}"


def prepare_job(
    request: TransferRequest,
    *,
    job_id: str | None = None,
    idempotency_key: str | None = None,
    campaign: str | None = None,
    callback_base_url: str | None = None,
    replay_of: str | None = None,
    lane: str = Lane.LIVE,
) -> NewJob:
    """Freeze a validated request as a job: its id, its request id and the exact body bytes.

    Without a callback URI of the producer's own, and with a receiver configured (`callback_base_url`),
    the job's events are sent to the receiver at a URI that names the job.
    """
    if idempotency_key is not None:
        request_id, job_id = request_id_for_key(idempotency_key), job_id or job_id_for_key(idempotency_key)
    else:
        request_id, job_id = new_request_id(), job_id or str(uuid.uuid4())
    if request.callback_uri is None and callback_base_url:
        request = request.with_callback_uri(callback_uri_for(callback_base_url, job_id))
    return NewJob(
        id=job_id,
        request_id=request_id,
        call_connection_id=request.call_connection_id,
        body=request.body_bytes(),
        idempotency_key=idempotency_key,
        campaign=campaign,
        operation_context=request.operation_context,
        replay_of=replay_of,
        lane=check_lane(lane),
    )
