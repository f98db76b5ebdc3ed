"""Shared fixtures: real services on loopback (RabbitMQ, Redis, PostgreSQL), fresh per test.

A missing service fails the test with the command that starts it; nothing is skipped.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
import structlog
from stack import emulator, make_stack  # noqa: F401 - registers the fixtures for every test module

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

_START = {
    5432: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    5672: "rabbitmq-server -detached",
    6379: "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no",
}


@pytest.fixture(autouse=True)
def _default_logging() -> None:
    """Each test starts with structlog's defaults, whatever an earlier test (or CLI run) configured."""
    structlog.reset_defaults()


def require_service(port: int) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.fail(f"nothing listens on 127.0.0.1:{port}; start it with: {_START.get(port, '?')}", pytrace=False)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    require_service(5432)
    name = f"acs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each ledger test runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def rabbitmq_url() -> str:
    require_service(5672)
    return RABBITMQ_URL


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of its own: a number no other test uses at the same time, flushed before and after."""
    require_service(6379)
    client = redis.Redis.from_url(REDIS_URL)
    database = 1 + (uuid.uuid4().int % 14)
    url = REDIS_URL.rsplit("/", 1)[0] + f"/{database}"
    scoped = redis.Redis.from_url(url)
    scoped.flushdb()
    yield url
    scoped.flushdb()
    client.close()
    scoped.close()
