"""Whether a ledger is there and set up, looked at read-only: the health check's view of the ledger.

Never creates anything: no SQLite file, no schema, no write lock, so a check never changes what it looks at.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from worker.errors import LedgerUrlError


def check_jobs_table(ledger_url: str, timeout: float) -> None:
    """Raise `RuntimeError` saying why unless the ledger at `ledger_url` answers and has its jobs table
    (`LedgerUrlError` for a URL of another database)."""
    url = sa.make_url(ledger_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        found = _sqlite_has_jobs(Path(url.database or ""), timeout)
    elif backend == "postgresql":
        found = _postgresql_has_jobs(url, timeout)
    else:
        raise LedgerUrlError(backend)
    if not found:
        raise RuntimeError("the ledger is reachable but has no jobs table yet (a worker creates it when it starts)")


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
