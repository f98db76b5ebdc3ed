"""An operator's replay of failed or dead jobs: a new job with a new request id, on purpose.

Replaying is the one way a transfer is sent again under a new `Repeatability-Request-ID`, so it happens only
when an operator asks. The new job carries the original's request (its callback URI renamed for the new job
when it pointed at our receiver), points back at the original, and the original records its replacement.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from worker.ledger import Job, State, SyncLedger, op_replay
from worker.models import parse_transfer
from worker.producer import CALLBACK_PATH, prepare_job
from worker.publisher import Publisher


@dataclass(frozen=True)
class Replayed:
    original: Job
    replacement: Job
    #: the original's outcome was unknown (it may have taken effect), so the replay may transfer twice
    effect_unknown: bool


def replay(
    ledger: SyncLedger, publisher: Publisher, job_id: str, reason: str, callback_base_url: str | None
) -> Replayed:
    """Create, link and publish the replacement of one failed or dead job."""
    original = ledger.get(job_id)
    request = parse_transfer({"callConnectionId": original.call_connection_id, **json.loads(original.body)})
    ours = f"{CALLBACK_PATH}/{original.id}"
    if request.callback_uri is not None and request.callback_uri.endswith(ours):
        request = request.with_callback_uri(None)
    new_job = prepare_job(
        request,
        campaign=original.campaign,
        callback_base_url=callback_base_url,
        replay_of=original.id,
        lane=original.lane,
    )
    replacement = ledger.run(op_replay, original.id, new_job, reason, time.time())
    publisher.publish_jobs([(replacement.id, replacement.lane)] if replacement.published_at is not None else [])
    was_unknown = any(event.to_state == State.UNKNOWN for event in ledger.events(original.id))
    return Replayed(ledger.get(original.id), replacement, was_unknown)
