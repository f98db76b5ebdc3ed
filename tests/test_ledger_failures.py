"""The ledger when its database fails: a dropped connection surfaces as itself (and is retried), the worker waits
out every database error instead of acknowledging its message away (and gives the message back when it stops),
and SQLite keeps its commits across power loss."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tests.services import PrivatePostgres
from tests.stack import Stack, celery_message, publish_raw
from worker.ledger import LEDGER_ERRORS, Ledger, State, SyncLedger, op_get
from worker.processes import stop


def _terminated_mid_transaction(admin_url: str, times: int) -> Callable[[Connection], int]:
    """An operation whose connection is killed from a second connection (pg_terminate_backend) in the middle of
    its transaction, the first `times` it runs; then it reads one row."""
    runs: list[int] = []

    def operation(connection: Connection) -> int:
        backend = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        runs.append(1)
        if len(runs) <= times:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        return int(connection.execute(sa.text("SELECT 1")).scalar_one())

    return operation


async def test_a_connection_dropped_mid_transaction_raises_the_disconnect_itself(postgres_url: str) -> None:
    ledger = await Ledger.open(postgres_url)
    try:
        with pytest.raises(sa.exc.DBAPIError) as caught:
            await ledger.run(_terminated_mid_transaction(postgres_url, times=2))  # the batch, then alone
        assert caught.value.connection_invalidated
        assert isinstance(caught.value, LEDGER_ERRORS)
        assert await ledger.run(op_get, str(uuid.uuid4())) is None  # the pool let the dead connection go
    finally:
        await ledger.close()


def test_the_sync_ledger_retries_a_transaction_whose_connection_dropped(postgres_url: str) -> None:
    ledger = SyncLedger(postgres_url)
    try:
        assert ledger.run(_terminated_mid_transaction(postgres_url, times=1)) == 1
    finally:
        ledger.close()


@pytest.mark.parametrize("opened", ["sync", "async"])
async def test_sqlite_connections_keep_commits_across_power_loss(sqlite_url: str, opened: str) -> None:
    def pragmas(connection: Connection) -> tuple[Any, Any]:
        return (
            connection.exec_driver_sql("PRAGMA journal_mode").scalar(),
            connection.exec_driver_sql("PRAGMA synchronous").scalar(),
        )

    if opened == "sync":
        ledger = SyncLedger(sqlite_url)
        found = ledger.run(pragmas)
        ledger.close()
    else:
        worker_ledger = await Ledger.open(sqlite_url)
        found = await worker_ledger.run(pragmas)
        await worker_ledger.close()
    assert found == ("wal", 2)  # 2 is FULL: every commit is synced to disk, WAL included


@pytest.mark.parametrize(
    "error",
    [
        sa.exc.PendingRollbackError,
        sa.exc.TimeoutError,  # the pool had no connection to give
        sa.exc.OperationalError,
        sa.exc.InterfaceError,
        asyncpg.ConnectionDoesNotExistError,
        asyncpg.InterfaceError,
        psycopg.OperationalError,
        sqlite3.OperationalError,
        ConnectionRefusedError,
    ],
)
def test_the_worker_waits_out_every_database_error_with_the_message_unacknowledged(error: type[Exception]) -> None:
    from worker.deliver.strategy import INFRASTRUCTURE_ERRORS  # noqa: PLC0415

    assert issubclass(error, INFRASTRUCTURE_ERRORS)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of its own, started; the test may stop and start it."""
    database = PrivatePostgres()
    try:
        database.start()
        yield database
    finally:
        database.remove()


async def _message_meets_an_outage(stack: Stack, database: PrivatePostgres, call: str) -> str:
    """With a worker running on `database`: one job sent, the database stopped, then a raw producer's message for
    `call` published (its job exists only in the message) and met by the outage. Returns its task id."""
    stack.enqueue("call-before")
    await stack.wait_for(lambda: stack.emulator.state.effects.effects_for_call("call-before") == 1, "a first job")
    database.stop()
    task_id = str(uuid.uuid4())
    request = {"callConnectionId": call, "targetParticipant": "4:+15551234567"}
    publish_raw(stack.settings, [celery_message(task_id, {"request": request})])
    await stack.wait_for(lambda: '"task.infrastructure_error"' in stack.logs(), "the message to meet the outage")
    return task_id


async def test_a_worker_retries_a_message_through_a_ledger_outage(
    make_stack: Callable[..., Any], private_postgres: PrivatePostgres
) -> None:
    stack: Stack = await make_stack("rabbitmq", "sqlite", ledger_url=private_postgres.url)
    stack.start_worker()
    task_id = await _message_meets_an_outage(stack, private_postgres, "call-during")
    await asyncio.sleep(1.0)
    private_postgres.start()
    await stack.wait_for(lambda: stack.emulator.state.effects.effects_for_call("call-during") == 1, "the job")
    job = await stack.settled(task_id)
    assert job.state == State.ACCEPTED
    await asyncio.sleep(1.0)
    assert len(stack.requests_for("call-during")) == 1


async def test_a_worker_stopped_during_a_ledger_outage_gives_the_waiting_message_back(
    make_stack: Callable[..., Any], private_postgres: PrivatePostgres
) -> None:
    # The job exists only in its message (a raw producer's): acknowledged away, it would be lost for good.
    stack: Stack = await make_stack("rabbitmq", "sqlite", ledger_url=private_postgres.url)
    worker = stack.start_worker()
    task_id = await _message_meets_an_outage(stack, private_postgres, "call-outage")
    started = time.monotonic()
    code = await asyncio.to_thread(stop, worker, 30, signal.SIGTERM)
    took = time.monotonic() - started
    assert code == 0, stack.logs()[-3000:]
    assert took < 10, f"the worker kept waiting on the outage for {took:.1f}s after SIGTERM"
    private_postgres.start()
    stack.start_worker()
    await stack.wait_for(lambda: stack.emulator.state.effects.effects_for_call("call-outage") == 1, "the job")
    job = await stack.settled(task_id)
    assert job.state == State.ACCEPTED
