"""Shared fixtures: real services on loopback (RabbitMQ, Redis, PostgreSQL), fresh per test.

A missing service fails the test with the command that starts it; nothing is skipped.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
import structlog

from tests.stack import emulator, make_stack  # noqa: F401 - registers the fixtures for every test module

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

_START = {
    5432: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    5672: "rabbitmq-server -detached",
    6379: "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no",
}


#: fixtures that reach RabbitMQ, Redis or PostgreSQL (shared on loopback, or a private instance of its own)
SERVICE_FIXTURES = frozenset({"postgres_url", "rabbitmq_url", "redis_url", "private_redis", "private_services"})
SERVICE_KINDS = frozenset({"rabbitmq", "redis", "postgresql"})
#: a stack built on a service named in the source: make_stack("rabbitmq", ...), make_stack(..., "postgresql")
#: (a parametrized kind is seen in the test's parameters)
_STACK_ON_A_SERVICE = re.compile(r'make_stack\(\s*("(rabbitmq|redis)"|[^)]*"postgresql")')


def _needs_services(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    if names & SERVICE_FIXTURES or (callspec is not None and set(map(str, callspec.params.values())) & SERVICE_KINDS):
        return True
    info = getattr(item, "_fixtureinfo", None)
    functions = [getattr(item, "function", None)]
    if info is not None:
        functions += [definition.func for defs in info.name2fixturedefs.values() for definition in defs]
    for function in functions:
        try:
            if function is not None and _STACK_ON_A_SERVICE.search(inspect.getsource(function)):
                return True
        except (OSError, TypeError):
            continue
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `services` every test that needs one, so `pytest -m "not services"` runs the rest alone."""
    for item in items:
        if _needs_services(item):
            item.add_marker(pytest.mark.services)


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
