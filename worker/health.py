"""Can this process do its work? One check per dependency: the broker, the ledger, and ACS authentication.

Used by `acs-transfer healthcheck` (the container's HEALTHCHECK) and meant for a readiness endpoint. Checks are
synchronous and bounded by `timeout`; an async caller runs them with `asyncio.to_thread`. They only read: no
queue is declared and no schema created, so a check never changes what it looks at.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import kombu
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from worker.broker import broker_kind, transport_options
from worker.config import AcsCredentials, Settings
from worker.redact import mask_url, scrub, url_secrets


@dataclass(frozen=True)
class Check:
    """The outcome of one check; `detail` says what was reached, or why not, never a secret."""

    name: str
    ok: bool
    detail: str
    duration_ms: float


def check_broker(settings: Settings, timeout: float = 5.0) -> str:
    """Connect (and log in) to the broker; returns what was reached, raises on failure."""
    shown = mask_url(settings.broker_url)
    if broker_kind(settings.broker_url) == "filesystem":
        folder = settings.broker_folder / "queue"
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise RuntimeError(f"embedded broker folder {folder} is missing or not writable")
        return f"embedded broker at {settings.broker_folder}"
    options = {**transport_options(settings), "socket_connect_timeout": timeout, "socket_timeout": timeout}
    with kombu.Connection(settings.broker_url, connect_timeout=timeout, transport_options=options) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=math.ceil(timeout))
    return shown


def check_ledger(settings: Settings, timeout: float = 5.0) -> str:
    """Open the ledger read-only and find its jobs table; returns what was reached, raises on failure."""
    url = sa.make_url(settings.ledger_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        found = _sqlite_has_jobs(Path(url.database or ""), timeout)
    elif backend == "postgresql":
        found = _postgresql_has_jobs(url, timeout)
    else:
        raise RuntimeError(f"LEDGER_URL must be sqlite:///PATH or postgresql://..., not {backend!r}")
    if not found:
        raise RuntimeError("the ledger is reachable but has no jobs table yet (a worker creates it when it starts)")
    return mask_url(settings.ledger_url)


def _sqlite_has_jobs(path: Path, timeout: float) -> bool:
    if not path.is_file():
        raise RuntimeError(f"no ledger file at {path} (a worker creates it when it starts)")
    # Read-only, so that a check never creates a file or takes SQLite's write lock.
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
    try:
        row = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone()
    finally:
        connection.close()
    return row is not None


def _postgresql_has_jobs(url: sa.URL, timeout: float) -> bool:
    engine = sa.create_engine(
        url.set(drivername="postgresql+psycopg"),
        poolclass=NullPool,
        connect_args={"connect_timeout": max(1, math.ceil(timeout))},
    )
    try:
        with engine.connect() as connection:
            return sa.inspect(connection).has_table("jobs")
    finally:
        engine.dispose()


def check_acs(settings: Settings, timeout: float = 5.0) -> str:
    """Which authentication the worker uses for ACS; under Microsoft Entra ID, proof that a token can be had.

    Nothing is sent to ACS. A process with neither ACS_CONNECTION_STRING nor ACS_ENDPOINT passes: it may be a
    producer or `serve`, which never send."""
    if not (settings.acs_connection_string or settings.acs_endpoint):
        return "not configured (ACS_CONNECTION_STRING or ACS_ENDPOINT): this process cannot send transfers"
    auth = settings.acs_auth
    if isinstance(auth, AcsCredentials):
        return f"access key (ACS_CONNECTION_STRING) for {auth.endpoint}"
    from worker.entra import check_token  # noqa: PLC0415 - azure-identity only on this path

    return f"Microsoft Entra ID (ACS_ENDPOINT) for {auth.endpoint}: {check_token(timeout)}"


CHECKS: dict[str, Callable[[Settings, float], str]] = {
    "broker": check_broker,
    "ledger": check_ledger,
    "acs": check_acs,
}


def run_checks(settings: Settings, timeout: float = 5.0, names: tuple[str, ...] = tuple(CHECKS)) -> list[Check]:
    """Run the named checks in order; a failing check is reported, never raised."""
    secrets = url_secrets(settings.broker_url) + url_secrets(settings.ledger_url)
    secrets += [settings.acs_connection_string] if settings.acs_connection_string else []
    results = []
    for name in names:
        started = time.monotonic()
        try:
            detail, ok = CHECKS[name](settings, timeout), True
        except Exception as error:
            # First line only: SQLAlchemy appends the statement and a documentation link.
            first_line = (str(error).strip().splitlines() or [""])[0]
            detail, ok = scrub(f"{type(error).__name__}: {first_line}", secrets), False
        results.append(Check(name, ok, detail, round((time.monotonic() - started) * 1000, 1)))
    return results
