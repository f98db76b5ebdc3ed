"""Campaign reports: one row per job with its final state, ACS's result, attempts and timings.

Written as CSV or JSON (by the file's extension), streamed from the ledger so a campaign of any size fits in
flat memory, plus a summary of states and result codes for the terminal.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.ledger import Job, SyncLedger
from worker.ledger.campaign import op_campaign_jobs_after
from worker.produce.views import job_view

#: the report's formats, by file extension
REPORT_FORMATS = (".csv", ".json")
#: the report's columns, in order
COLUMNS = (
    "job_id",
    "idempotency_key",
    "call_connection_id",
    "operation_context",
    "state",
    "reason",
    "result_code",
    "result_subcode",
    "result_message",
    "last_status",
    "last_error",
    "attempts",
    "request_id",
    "created_at",
    "first_sent",
    "accepted_at",
    "settled_at",
    "ms_to_accepted",
    "ms_to_outcome",
    "replay_of",
    "replayed_by",
)


@dataclass
class ReportSummary:
    rows: int = 0
    states: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        self.states[row["state"]] += 1
        if row["result_code"] is not None:
            self.results[f"{row['result_code']}/{row['result_subcode']} {row['result_message'] or ''}".strip()] += 1
        elif row["last_status"] is not None and row["state"] in {"failed", "dead", "unknown"}:
            self.results[f"HTTP {row['last_status']} {row['last_error'] or ''}".strip()] += 1


def campaign_jobs(ledger: SyncLedger, campaign: str, chunk: int = 1000) -> Iterator[Job]:
    """A campaign's jobs in creation order, read in chunks (keyset pagination on (created_at, id))."""
    after: tuple[float, str] | None = None
    while True:
        page = ledger.run(op_campaign_jobs_after, campaign, after, chunk)
        yield from page
        if len(page) < chunk:
            return
        after = (page[-1].created_at, page[-1].id)


def write_report(ledger: SyncLedger, campaign: str, path: Path) -> ReportSummary:
    """Write the report (CSV, or JSON when the name ends in .json) and return its summary."""
    summary = ReportSummary()
    rows = ({column: job_view(job)[column] for column in COLUMNS} for job in campaign_jobs(ledger, campaign))
    with path.open("w", newline="", encoding="utf-8") as out:
        if path.suffix.lower() == ".json":
            out.write("[")
            for index, row in enumerate(rows):
                summary.add(row)
                out.write(("," if index else "") + "\n  " + json.dumps(row, ensure_ascii=False))
            out.write("\n]\n")
        else:
            writer = csv.DictWriter(out, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                summary.add(row)
                writer.writerow(row)
    return summary
