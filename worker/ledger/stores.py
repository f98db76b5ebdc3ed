"""The stores that run ledger operations: `SyncLedger` for producers and the CLI, `Ledger` (group commit) for
the worker's event loop; SQLite (embedded default) and PostgreSQL (production) behind one code path."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from worker.errors import JobNotFound, LedgerSchemaError, LedgerUrlError
from worker.ledger.operations import _in_one_transaction, op_create_jobs, op_events, op_get
from worker.ledger.schema import Event, Job, NewJob, metadata

P = ParamSpec("P")
R = TypeVar("R")

#: what a ledger that is down, failing over or dropping connections raises: SQLAlchemy's errors, the drivers'
#: own (raised where SQLAlchemy does not wrap them, e.g. while connecting) and the network's. Never the job's fault.
LEDGER_ERRORS: tuple[type[Exception], ...] = (
    sa.exc.SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    psycopg.Error,
    sqlite3.Error,
    OSError,
)


def _sync_url(url: str) -> sa.URL:
    """The synchronous driver's URL for a LEDGER_URL such as ``sqlite:///x.db`` or ``postgresql://u@h/db``."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    raise LedgerUrlError(backend)


def _tune_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers, a busy timeout for concurrent writers, synchronous=FULL so a committed
    First-Sent survives power loss (NORMAL in WAL mode may lose the last commits), and BEGIN IMMEDIATE so a
    transaction that will write takes the write lock up front instead of failing to upgrade later."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _create_schema(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several processes may start at once; serialise DDL on an advisory lock.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(7247736865)"))
    metadata.create_all(connection, checkfirst=True)
    # create_all adds missing tables but never columns: a ledger made by an older release must be named as
    # such here, not fail later on the first statement that needs a new column.
    inspector = sa.inspect(connection)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in present]
        if missing:
            raise LedgerSchemaError(
                f"the ledger's {table.name} table lacks {', '.join(missing)}: it was created by an older release. "
                "Point LEDGER_URL at a new database (or add the columns) and start again."
            )


def _ensure_sqlite_folder(url: str) -> None:
    database = sa.make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def database_error_detail(error: Exception) -> str | None:
    """The database's own first line for an error the database raised (unreachable, refused, ...); None for any
    other error."""
    if not isinstance(error, sa.exc.DBAPIError):
        return None
    return str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__


def _found(job_id: str, job: Job | None) -> Job:
    # Both stores: `find` answers None for a missing job, `get` raises.
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    return job


class SyncLedger:
    """The ledger for synchronous callers: producers, the CLI, reports."""

    def __init__(self, url: str) -> None:
        parsed = _sync_url(url)
        self.dialect = parsed.get_backend_name()
        sync_url = parsed.render_as_string(hide_password=False)
        if self.dialect == "sqlite":
            _ensure_sqlite_folder(sync_url)
        self._engine = sa.create_engine(sync_url)
        if self.dialect == "sqlite":
            _tune_sqlite(self._engine)
        with self._engine.begin() as connection:
            _create_schema(connection)

    def __repr__(self) -> str:
        return f"SyncLedger({self._engine.url.render_as_string(hide_password=True)!r})"

    def run(self, operation: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        def call(connection: Connection) -> R:
            return operation(connection, *args, **kwargs)

        return self.run_all([call])[0]

    def run_all(self, calls: Sequence[Callable[[Connection], R]]) -> list[R]:
        """Run operations in one transaction. A connection found dead (the server restarted since it was pooled)
        is replaced and the transaction tried once more: no pre-ping round trips on every call."""
        try:
            with self._engine.begin() as connection:
                return _in_one_transaction(connection, calls)
        except sa.exc.DBAPIError as error:
            if not error.connection_invalidated:
                raise
        with self._engine.begin() as connection:
            return _in_one_transaction(connection, calls)

    def create_jobs(self, new_jobs: Sequence[NewJob]) -> list[tuple[Job, bool]]:
        return self.run(op_create_jobs, new_jobs, time.time())

    def find(self, job_id: str) -> Job | None:
        return self.run(op_get, job_id)

    def get(self, job_id: str) -> Job:
        return _found(job_id, self.find(job_id))

    def events(self, job_id: str) -> list[Event]:
        return self.run(op_events, job_id)

    def close(self) -> None:
        self._engine.dispose()


Call = Callable[[Connection], Any]


class Ledger:
    """The ledger for the worker's event loop, with group commit.

    Operations submitted while the loop runs other jobs are gathered and run in ONE transaction (at most
    `MAX_BATCH`, at most `FLUSHES` transactions at a time), each awaiting its own result: begin, commit and the
    round trips around them are paid once per batch instead of once per job. Operations never see each other's
    failures: if any operation in a batch raises (a conflict, a deadlock with another process), the batch is
    rolled back and each operation runs again alone.

    PostgreSQL runs on asyncpg. SQLite runs its synchronous driver on one dedicated thread: SQLite has a single
    writer anyway, and one thread hop per transaction is far cheaper than aiosqlite's hop per call.
    """

    MAX_BATCH = 200
    FLUSHES = 2

    def __init__(self, engine: AsyncEngine | None = None, sync: SyncLedger | None = None) -> None:
        self._engine = engine
        self._sync = sync
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger") if sync else None
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flushing = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, url: str, pool_size: int = FLUSHES + 2) -> Ledger:
        sync_url = _sync_url(url)
        if sync_url.get_backend_name() == "sqlite":
            return cls(sync=await asyncio.to_thread(SyncLedger, url))
        async_url = sync_url.set(drivername="postgresql+asyncpg")
        # No pre-ping: it costs three round trips per transaction; a connection that died with the server fails
        # its batch, is discarded by the pool, and the task retries (worker.deliver.tasks).
        engine = create_async_engine(async_url, pool_size=pool_size, max_overflow=2)
        async with engine.begin() as connection:
            await connection.run_sync(_create_schema)
        return cls(engine=engine)

    def __repr__(self) -> str:
        target = self._engine.url if self._engine is not None else self._sync
        return f"Ledger({target!r})"

    async def run(self, operation: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one operation in a transaction (shared with whatever else is submitted meanwhile)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()

        def call(connection: Connection) -> R:
            return operation(connection, *args, **kwargs)

        self._pending.append((call, future))
        if len(self._pending) == 1:
            loop.call_soon(self._start_flush)  # after this tick: operations submitted in it join the batch
        return await future

    def _start_flush(self) -> None:
        while self._pending and self._flushing < self.FLUSHES:
            batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
            self._flushing += 1
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        calls = [call for call, _ in batch]
        try:
            outcomes = await self._transaction(calls)
        except Exception:
            outcomes = [await self._alone(call) for call in calls]
        finally:
            self._flushing -= 1
            self._start_flush()
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    async def _alone(self, call: Call) -> tuple[bool, Any]:
        try:
            ((_, value),) = await self._transaction([call])
        except Exception as error:
            return False, error
        return True, value

    async def _transaction(self, calls: list[Call]) -> list[tuple[bool, Any]]:
        if self._sync is not None:
            job = functools.partial(self._sync.run_all, calls)
            results = await asyncio.get_running_loop().run_in_executor(self._thread, job)
        else:
            assert self._engine is not None
            async with self._engine.begin() as connection:
                results = await connection.run_sync(_in_one_transaction, calls)
        return [(True, result) for result in results]

    async def find(self, job_id: str) -> Job | None:
        return await self.run(op_get, job_id)

    async def get(self, job_id: str) -> Job:
        return _found(job_id, await self.find(job_id))

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._engine is not None:
            await self._engine.dispose()
        if self._sync is not None and self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._sync.close)
            self._thread.shutdown(wait=False)
