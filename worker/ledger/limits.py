"""The widths of the ledger's text columns, read from the schema: the one place these numbers are written.

Every way in checks its values against them before a job is written, so a value that passed validation can
always be stored, on SQLite as on PostgreSQL (which enforces the widths). What text can be stored at all is in
`worker.text`.
"""

from __future__ import annotations

import sqlalchemy as sa

from worker.ledger.schema import callback_events, campaigns, dead_messages, jobs


def _width(column: sa.Column[str]) -> int:
    length = getattr(column.type, "length", None)
    if not isinstance(length, int):
        raise TypeError(f"{column} has no width")
    return length


JOB_ID = _width(jobs.c.id)
IDEMPOTENCY_KEY = _width(jobs.c.idempotency_key)
CAMPAIGN = min(_width(jobs.c.campaign), _width(campaigns.c.name))
LAST_ERROR = _width(jobs.c.last_error)
EVENT_ID = _width(callback_events.c.event_id)
MESSAGE_ID = _width(dead_messages.c.message_id)
