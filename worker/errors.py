"""Every error the package raises on purpose, under one base class.

    TransferError                 base of everything below
    ├── ConfigError               a setting is missing or malformed (names the variable)
    │   └── LedgerUrlError        LEDGER_URL names neither SQLite nor PostgreSQL (raised where a ledger is opened)
    ├── ValidationError           a transfer request breaks a rule (names each field and rule)
    ├── IdempotencyConflict       an idempotency key was reused for a different request
    ├── JobNotFound               no job has that id
    ├── LedgerSchemaError         the ledger database was made by an older release (names the missing columns)
    ├── ReplayRefused             a job that is not failed or dead (or was replayed already) cannot be replayed
    ├── CallbackRejected          an outcome event's request is unauthenticated or malformed
    ├── TokenUnavailable          no Microsoft Entra ID token for ACS (nothing was sent; retried later)
    ├── BadMessage                a queue message cannot become a job (`worker.deliver.messages`; a dead message)
    └── FileError                 a campaign file cannot be read at all (`worker.produce.campaign_files`)

What ACS answers is not an exception: `worker.acs.client.Answer` classifies every answer (and every failure to get
one) so the transfer logic can decide between done, retry and give up without catching anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class TransferError(Exception):
    """Base class of every error raised on purpose by this package."""


@dataclass(frozen=True)
class Issue:
    """One broken rule: where (a field path such as ``customCallingContext.sipHeaders``) and what."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class ConfigError(TransferError):
    """One or more settings are missing or malformed; `issues` names each variable and its rule."""

    def __init__(self, message: str, issues: Sequence[Issue] = ()) -> None:
        self.issues = tuple(issues)
        super().__init__(message)


class LedgerUrlError(ConfigError):
    """LEDGER_URL names a database other than SQLite or PostgreSQL."""

    def __init__(self, backend: str) -> None:
        rule = f"must be sqlite:///PATH or postgresql://..., not {backend!r}"
        super().__init__(f"LEDGER_URL {rule}", [Issue("LEDGER_URL", rule)])


class ValidationError(TransferError, ValueError):
    """A transfer request breaks one or more rules; nothing was written or sent."""

    def __init__(self, issues: Sequence[Issue], where: str = "") -> None:
        self.issues = tuple(issues)
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(prefix + "; ".join(str(issue) for issue in self.issues))

    def as_json(self) -> list[dict[str, str]]:
        return [{"field": issue.field, "rule": issue.rule} for issue in self.issues]


class IdempotencyConflict(TransferError):
    """An idempotency key already names a job whose request differs from this one."""


class JobNotFound(TransferError, LookupError):
    """No job has the given id."""


class ReplayRefused(TransferError):
    """Only failed or dead jobs may be replayed, and each only once."""


class CallbackRejected(TransferError):
    """An outcome event request is not authentic (bad, expired or missing token) or not readable."""


class LedgerSchemaError(TransferError):
    """The ledger database lacks tables or columns this release needs."""


class TokenUnavailable(TransferError):
    """No Microsoft Entra ID token for ACS could be had: nothing was sent; the message is retried later."""
