"""The repeatability store: the ACS repeatable-requests contract, row by row.

| request                                      | Repeatability-Result | status                       |
|----------------------------------------------|----------------------|------------------------------|
| malformed ID or date, or ID without date     | rejected             | 400                          |
| First-Sent older than the window             | rejected             | 412                          |
| new ID within the window                     | accepted             | normal execution             |
| known ID, body differs from the first        | rejected             | 400                          |
| known ID, same body, first still in progress | accepted             | 409                          |
| known ID, same body, first answered 2xx/4xx  | accepted             | stored answer, not executed  |
| known ID, same body, first answered 5xx      | accepted             | executed again               |

Records are keyed by request id and expire `window` seconds after their First-Sent. All methods are
synchronous and take `now` explicitly, so a decision and its bookkeeping never straddle an ``await``.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from dataclasses import dataclass

from worker.acs.signing import http_date, parse_http_date
from worker.emulator.answers import EmulatorAnswer, acs_error

REQUEST_ID_HEADER = "Repeatability-Request-ID"
FIRST_SENT_HEADER = "Repeatability-First-Sent"
RESULT_HEADER = "Repeatability-Result"
ACCEPTED = "accepted"
REJECTED = "rejected"

# Canonical 8-4-4-4-12 form, version nibble 4, RFC 4122 variant (10xx).
_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE)


@dataclass(frozen=True)
class RepeatabilityKey:
    """The two headers of a well-formed repeatable request."""

    request_id: str
    first_sent: float
    first_sent_text: str


@dataclass(frozen=True)
class Rejection:
    """The request is refused by the repeatability layer (``Repeatability-Result: rejected``)."""

    answer: EmulatorAnswer


def parse_headers(request_id: str | None, first_sent: str | None) -> RepeatabilityKey | Rejection | None:
    """None when neither header is present (a plain request), else the key or why it is malformed."""
    if request_id is None and first_sent is None:
        return None
    if request_id is None:
        # Not in ACS's table; rejected so a client that forgets the id is caught, not silently non-idempotent.
        return _bad_request(f"{FIRST_SENT_HEADER} was sent without {REQUEST_ID_HEADER}")
    if not _UUID4.match(request_id):
        return _bad_request(f"{REQUEST_ID_HEADER} must be a version 4 UUID (8-4-4-4-12 hex digits)")
    if first_sent is None:
        return _bad_request(f"{FIRST_SENT_HEADER} is required with {REQUEST_ID_HEADER}")
    moment = parse_http_date(first_sent)
    # Round-tripping rejects other date forms parsedate accepts (no weekday, 1-digit day, wrong weekday).
    if moment is None or http_date(moment) != first_sent:
        return _bad_request(f"{FIRST_SENT_HEADER} must be an IMF-fixdate, e.g. Sun, 06 Nov 1994 08:49:37 GMT")
    return RepeatabilityKey(request_id.lower(), moment, first_sent)


def _bad_request(message: str) -> Rejection:
    return Rejection(acs_error(400, message))


def fingerprint(call_connection_id: str, body: bytes) -> str:
    """What "the same request" means: the raw body bytes, and the call they target.

    ACS documents only the body; the call connection id is included so reusing an id on another call is
    reported (400) instead of replaying the first call's answer and silently skipping the second transfer.
    """
    digest = hashlib.sha256(call_connection_id.encode())
    digest.update(b"\n")
    digest.update(hashlib.sha256(body).digest())
    return digest.hexdigest()


@dataclass
class Record:
    """What ACS remembers about one request id."""

    request_id: str
    fingerprint: str
    first_sent: float
    expires_at: float
    in_progress: bool = False
    answer: EmulatorAnswer | None = None
    executions: int = 0
    #: an execution of this id moved the call: executing it again meets a call that is gone (404)
    moved: bool = False


@dataclass(frozen=True)
class Execute:
    """Run the request; report its answer with `RepeatabilityStore.finish` (or `abandon`)."""

    record: Record


@dataclass(frozen=True)
class Replay:
    answer: EmulatorAnswer


@dataclass(frozen=True)
class InProgress:
    answer: EmulatorAnswer


Decision = Execute | Replay | InProgress | Rejection


class RepeatabilityStore:
    def __init__(self, window: float) -> None:
        self.window = window
        self._records: dict[str, Record] = {}
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._records)

    def get(self, request_id: str) -> Record | None:
        return self._records.get(request_id.lower())

    def clear(self) -> None:
        self._records.clear()
        self._expiry.clear()

    def begin(self, key: RepeatabilityKey, request_fingerprint: str, now: float) -> Decision:
        """Decide one request per the table; an `Execute` marks the record in progress before returning."""
        self.purge(now)
        if now - key.first_sent > self.window:
            return Rejection(
                acs_error(412, f"{FIRST_SENT_HEADER} is older than the {self.window:g}-second repeatability window")
            )
        record = self._records.get(key.request_id)
        if record is None:
            record = Record(key.request_id, request_fingerprint, key.first_sent, key.first_sent + self.window)
            self._records[key.request_id] = record
            heapq.heappush(self._expiry, (record.expires_at, key.request_id))
        elif record.fingerprint != request_fingerprint:
            return _bad_request(
                f"{REQUEST_ID_HEADER} {key.request_id} was first used with a different body or call connection"
            )
        elif record.in_progress:
            return InProgress(acs_error(409, f"the request {key.request_id} is still in progress"))
        elif record.answer is not None and record.answer.status < 500:
            return Replay(record.answer)
        record.in_progress = True
        record.answer = None
        record.executions += 1
        return Execute(record)

    def finish(self, record: Record, answer: EmulatorAnswer) -> None:
        record.in_progress = False
        record.answer = answer

    def abandon(self, record: Record) -> None:
        """The execution was cancelled (emulator shutting down): forget it so a retry executes."""
        record.in_progress = False
        if record.answer is None and self._records.get(record.request_id) is record:
            del self._records[record.request_id]

    def purge(self, now: float) -> None:
        """Drop records whose window has passed; a later request for them is 412 anyway."""
        busy: list[tuple[float, str]] = []
        while self._expiry and self._expiry[0][0] < now:
            expires_at, request_id = heapq.heappop(self._expiry)
            record = self._records.get(request_id)
            if record is None or record.expires_at != expires_at:
                continue
            if record.in_progress:
                busy.append((expires_at, request_id))  # its execution still holds it: look again later
            else:
                del self._records[request_id]
        for entry in busy:
            heapq.heappush(self._expiry, entry)
