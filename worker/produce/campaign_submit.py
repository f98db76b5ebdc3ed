"""Submitting a campaign file: validate each row, write the good ones to the ledger in batches, publish the
new ones, report the bad ones. Resumable: running the same submit again enqueues only what is missing.

Each row's idempotency key comes from the campaign name and the row's key column, or without one from a hash
of the row's canonical content, so a job id (derived from the key) is the same on every run: a row already in
the ledger is counted as present and not published again. A crash between writing a batch and publishing it
leaves queued jobs whose messages were never sent; the workers' sweeper publishes those.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from worker.errors import IdempotencyConflict, Issue, ValidationError
from worker.ledger import Job, Lane, NewJob, SyncLedger
from worker.logs import get_logger
from worker.produce.campaign_files import FileError, Row
from worker.request.job import prepare_job
from worker.request.models import TransferRequest, parse_transfer

log = get_logger(__name__)
DEFAULT_BATCH = 1000
#: rejects kept in memory for the summary; all of them go to the rejects file
SHOWN_REJECTS = 20
#: when this many rows in a row from the start are all rejected, the file is not a campaign file
FIRST_ROWS_ALL_BAD = 1000


def idempotency_key(campaign: str, key: str | None, request: TransferRequest) -> str:
    """The job's key: the campaign plus the row's own key, or plus a hash of what the row asks for.

    JSON keeps the parts apart (no campaign/key pair can spell another's), and the hash is over the validated
    request, so two spellings of one transfer (a raw id or an identifier model) are one job."""
    if key is None:
        canonical = json.dumps(request.as_message(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "campaign:" + json.dumps([campaign, "sha256", hashlib.sha256(canonical.encode()).hexdigest()])
    return "campaign:" + json.dumps([campaign, "key", key], ensure_ascii=False)


@dataclass(frozen=True)
class Reject:
    line: int
    issues: tuple[Issue, ...]
    raw: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "errors": [{"field": i.field, "rule": i.rule} for i in self.issues], "raw": self.raw}

    def __str__(self) -> str:
        return f"line {self.line}: " + "; ".join(str(issue) for issue in self.issues)


@dataclass
class SubmitSummary:
    read: int = 0
    valid: int = 0
    rejected: int = 0
    already_present: int = 0
    enqueued: int = 0
    #: written to the ledger but not published (the broker failed): the sweeper publishes them
    unpublished: int = 0
    rejects: list[Reject] = field(default_factory=list)

    def as_json(self) -> dict[str, int]:
        names = ("read", "valid", "rejected", "already_present", "enqueued", "unpublished")
        return {name: getattr(self, name) for name in names}


class RejectsFile:
    """One JSON line per rejected row: line number, each field and rule, and the raw row.

    Written to a temporary file beside `path`, opened at once (an unwritable folder fails before anything is
    enqueued) and renamed over `path` by `close`, so a crash leaves the earlier file whole. Without rejects a
    stale file from an earlier run is removed; `discard` keeps whatever was there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or None)
        self._temporary = Path(temporary)
        self._handle: IO[str] = os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape")

    def write(self, reject: Reject) -> None:
        self._handle.write(json.dumps(reject.to_json(), ensure_ascii=False) + "\n")
        self.written += 1

    def close(self) -> None:
        if self._handle.closed:
            return
        self._handle.close()
        if self.written:
            self._temporary.replace(self.path)
        else:
            self._temporary.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        self._handle.close()
        self._temporary.unlink(missing_ok=True)


class Submitter:
    """Turns rows into jobs of one campaign. `summary` is up to date after every batch; setting `stopping`
    (from a signal handler) ends the run after the batch in hand is written and published."""

    def __init__(
        self,
        ledger: SyncLedger,
        publish: Callable[[Iterable[str]], int],
        campaign: str,
        rejects: RejectsFile | None = None,
        key_column: str | None = None,
        batch_size: int = DEFAULT_BATCH,
        callback_base_url: str | None = None,
        before_first_write: Callable[[], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._before_first_write = before_first_write
        self._publish = publish
        self._campaign = campaign
        self._rejects = rejects
        self._key_column = key_column
        self._batch_size = batch_size
        self._callback_base_url = callback_base_url
        self._publishing = True
        self.stopping = False
        self.summary = SubmitSummary()

    def submit(self, rows: Iterable[Row]) -> SubmitSummary:
        # Batch N is published on a thread of its own while batch N+1 is read, validated and written: the two
        # mostly wait on different servers. At most two batches wait for it, so memory stays bounded.
        outbox: queue.Queue[list[str] | None] = queue.Queue(maxsize=2)
        publisher = threading.Thread(target=self._publish_from, args=(outbox,), name="campaign-publish", daemon=True)
        publisher.start()
        try:
            batch: list[tuple[Row, NewJob]] = []
            for row in rows:
                if self.stopping:
                    break
                self.summary.read += 1
                job = self._job(row)
                if job is None:
                    if self.summary.read == self.summary.rejected == FIRST_ROWS_ALL_BAD:
                        raise FileError(
                            row.line, f"the first {FIRST_ROWS_ALL_BAD} rows are all rejected: not a campaign file?"
                        )
                    continue
                batch.append((row, job))
                if len(batch) >= self._batch_size:
                    outbox.put(self._flush(batch))
                    batch = []
            outbox.put(self._flush(batch))
        finally:
            outbox.put(None)
            publisher.join()
        return self.summary

    def _job(self, row: Row) -> NewJob | None:
        if row.issues or row.message is None:
            self._reject(row, row.issues)
            return None
        try:
            request = parse_transfer(row.message, where=f"line {row.line}")
        except ValidationError as error:
            self._reject(row, error.issues)
            return None
        key = idempotency_key(self._campaign, row.key, request)
        return prepare_job(
            request,
            idempotency_key=key,
            campaign=self._campaign,
            callback_base_url=self._callback_base_url,
            lane=Lane.BULK,
        )

    def _reject(self, row: Row, issues: Iterable[Issue]) -> None:
        reject = Reject(row.line, tuple(issues), row.raw)
        self.summary.rejected += 1
        if len(self.summary.rejects) < SHOWN_REJECTS:
            self.summary.rejects.append(reject)
        if self._rejects is not None:
            self._rejects.write(reject)

    def _conflict(self, row: Row) -> None:
        field_name = self._key_column or "(row)"
        rule = f"the key {row.key!r} already names a different transfer in this campaign"
        self._reject(row, [Issue(field_name, rule)])

    def _flush(self, batch: list[tuple[Row, NewJob]]) -> list[str]:
        """Write a batch to the ledger; the ids of the jobs it created."""
        if not batch:
            return []
        if self._before_first_write is not None:
            self._before_first_write()  # e.g. the campaign's record: created only once a row is good
            self._before_first_write = None
        # Within one batch the first row of a key wins; a later one is the same job or a conflicting one.
        first: dict[str, tuple[Row, NewJob]] = {}
        repeats: list[tuple[Row, NewJob]] = []
        for row, job in batch:
            assert job.idempotency_key is not None
            if job.idempotency_key in first:
                repeats.append((row, job))
            else:
                first[job.idempotency_key] = (row, job)
        unique = list(first.values())
        new_jobs = [job for _, job in unique]
        try:
            outcomes: list[tuple[Job, bool] | None] = list(self._ledger.create_jobs(new_jobs))
        except IdempotencyConflict:
            # Some key in the batch names a different transfer from an earlier batch or run: go row by row
            # (rare, so the slow path is fine) to reject just those.
            outcomes = [self._create_one(job) for job in new_jobs]
        created_ids: list[str] = []
        for (row, _), outcome in zip(unique, outcomes, strict=True):
            if outcome is None:
                self._conflict(row)
            elif outcome[1]:
                self.summary.enqueued += 1
                # A paced campaign's job waits in the ledger for the dispatcher, which publishes it at its rate.
                if outcome[0].published_at is not None:
                    created_ids.append(outcome[0].id)
            else:
                self.summary.already_present += 1
        for row, job in repeats:
            if job.identity == first[job.idempotency_key or ""][1].identity:
                self.summary.already_present += 1
            else:
                self._conflict(row)
        self.summary.valid = self.summary.enqueued + self.summary.already_present
        return created_ids

    def _create_one(self, job: NewJob) -> tuple[Job, bool] | None:
        try:
            (outcome,) = self._ledger.create_jobs([job])
        except IdempotencyConflict:
            return None
        return outcome

    def _publish_from(self, outbox: queue.Queue[list[str] | None]) -> None:
        while (job_ids := outbox.get()) is not None:
            if not job_ids:
                continue
            if self._publishing:
                try:
                    self._publish(job_ids)
                    continue
                except Exception as error:
                    # The jobs exist; the sweeper publishes them. Stop trying for this run rather than stall on
                    # every batch.
                    self._publishing = False
                    log.warning("campaign.publish_deferred", error=f"{type(error).__name__}: {error}")
            self.summary.unpublished += len(job_ids)
