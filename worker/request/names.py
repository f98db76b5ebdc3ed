"""The rule for the names a producer gives a job, its idempotency key and its campaign, at every way in.

The producer API, the HTTP intake, the command line, campaign files and raw broker messages all ask here, so a
name refused by one is refused by all: it must not be blank, must fit the ledger's column and must be printable
(no control character, no lone surrogate), because it is stored and logged as given. A campaign name may not
begin or end with whitespace either: it is typed on command lines and shown in reports. These checks run on the
producer's hot path, so they are a few string checks and no more.
"""

from __future__ import annotations

from worker.errors import Issue
from worker.ledger.limits import CAMPAIGN, IDEMPOTENCY_KEY
from worker.text import is_printable


def _problem(value: object, limit: int) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if not value.strip():
        return "must not be blank"
    if len(value) > limit:
        return f"must be at most {limit} characters"
    if not is_printable(value):
        return "must not contain control characters or lone surrogates"
    return None


def key_problem(key: object) -> str | None:
    """Why `key` cannot be an idempotency key, or None if it can."""
    return _problem(key, IDEMPOTENCY_KEY)


def campaign_problem(name: object) -> str | None:
    """Why `name` cannot be a campaign's name, or None if it can."""
    problem = _problem(name, CAMPAIGN)
    if problem is None and isinstance(name, str) and name != name.strip():
        return "must not begin or end with whitespace"
    return problem


def name_issues(key: object, campaign: object, key_field: str = "idempotency_key") -> list[Issue]:
    """The issues of a job's optional key and campaign (None is no key, no campaign), named by field."""
    issues = []
    if key is not None and (problem := key_problem(key)) is not None:
        issues.append(Issue(key_field, problem))
    if campaign is not None and (problem := campaign_problem(campaign)) is not None:
        issues.append(Issue("campaign", problem))
    return issues
