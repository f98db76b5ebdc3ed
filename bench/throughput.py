"""Throughput and latency of this project's worker beside what a user would run instead, in the same run.

    python -m bench.throughput [--jobs N] [--latency-ms 0,50] [--modes noop,naive,sdk,raw,ours]
                               [--processes P] [--json out.json]

Starts the ACS emulator (`acs-transfer emulator`, a child process) and, per latency and mode, a fresh queue on
RabbitMQ and fresh worker processes (and, for ``ours``, a fresh PostgreSQL database):

- ``noop``  a Celery task that does nothing: the queue's own ceiling. "Done" is the task having run, stamped by
            the task itself (one append to a file); there is no 202.
- ``naive`` a Celery task doing ``asyncio.run`` with a new aiohttp session per job, signing with worker.acs.signing.
- ``sdk``   a Celery task calling the official azure-communication-callautomation client.
- ``raw``   no broker: plain aiohttp loops posting straight to the emulator with ours' concurrency (the HTTP
            ceiling). Its "enqueue" is the moment a request starts.
- ``ours``  this project's worker (`celery -A worker worker`), ledger on PostgreSQL, enqueued with
            `worker.produce.producer.Producer`, end to end.

A job's time is from just before its enqueue call to the emulator answering its first 202 (read from the
emulator's request log); jobs/s is completed jobs over first enqueue to last 202. Each mode first runs a warm-up
batch (workers started, connections open), whose rate also sizes the measured batch: at least --jobs, more if
that is needed to run for --min-seconds. Worker RSS is the peak of the summed RSS of the mode's processes.
Low-load latency: --sequential jobs one at a time on an idle system, for ``ours`` and ``raw``.

Every wait has a time limit; every process started here is stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import kombu
import psycopg

from bench.baselines import NAIVE, NOOP, SDK, make_app
from bench.support import (
    ROOT,
    Emulator,
    Profiler,
    Sampler,
    busy_share,
    first_accepted,
    first_arrivals,
    log_problems,
    percentile,
    python,
    spawn,
    summarize_profile,
    wait_until,
)
from bench.wire import TARGET
from worker.config import Settings
from worker.ledger import SETTLED_STATES, op_count_by_state
from worker.processes import child_env, free_port, new_access_key, spawn_emulator, spawn_worker, stop
from worker.produce.producer import Producer
from worker.queue.broker import transfer_queue

MODES = ("noop", "naive", "sdk", "raw", "ours")
TASKS = {"noop": NOOP, "naive": NAIVE, "sdk": SDK}
MIB = 1024 * 1024


@dataclass(frozen=True)
class Pool:
    """A Celery pool for a baseline: ``prefork`` (one child per process) or ``threads`` with `concurrency` each."""

    kind: str
    concurrency: int = 1

    def __str__(self) -> str:
        return "prefork" if self.kind == "prefork" else f"threads x{self.concurrency}"

    @classmethod
    def parse(cls, text: str) -> Pool:
        kind, _, concurrency = text.partition(":")
        if kind not in {"prefork", "threads"}:
            raise argparse.ArgumentTypeError(f"pool must be prefork or threads:N, not {text!r}")
        return cls(kind, int(concurrency or 64) if kind == "threads" else 1)


# Chosen with --sweep on the 2-core development machine (README "Throughput"): threads x64 was best or within
# noise for every baseline; at 50 ms prefork falls to ~30 jobs/s, since each of its children waits out every
# round trip alone.
DEFAULT_POOLS = {"noop": Pool("threads", 64), "naive": Pool("threads", 64), "sdk": Pool("threads", 64)}
SWEEP_POOLS = (Pool("prefork"), Pool("threads", 16), Pool("threads", 64))


@dataclass
class Result:
    mode: str
    latency_ms: float
    pool: str
    processes: int
    jobs: int
    completed: int
    seconds: float
    jobs_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    rss_peak_mib: float
    rss_process_peak_mib: float
    cpu_ms_per_job: float | None = None
    enqueue_per_s: float | None = None
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LowLoad:
    mode: str
    latency_ms: float
    jobs: int
    p50_ms: float | None
    p95_ms: float | None
    min_ms: float | None
    max_ms: float | None


@dataclass
class Batch:
    """What one batch produced: when each job was enqueued and when the harness saw the batch finish."""

    enqueued: dict[str, float]
    enqueue_seconds: float
    finished: bool


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def token() -> str:
    return secrets.token_hex(4)


def delete_queue(broker_url: str, queue: str) -> None:
    with contextlib.suppress(Exception), kombu.Connection(broker_url, connect_timeout=5) as connection:
        transfer_queue(Settings(broker_url=broker_url, queue=queue))(connection.default_channel).delete()


# --- the queued modes ------------------------------------------------------------------------------------


class QueuedMode:
    """Workers consuming one fresh queue; `enqueue` publishes one job, `finished` counts a batch's settled jobs."""

    name: str
    pool: str
    folder: Path
    processes: list[subprocess.Popen[bytes]]

    def start(self) -> None:
        raise NotImplementedError

    def enqueue(self, call_connection_id: str, batch: str) -> str:
        raise NotImplementedError

    def finished(self, batch: str, calls: Sequence[str]) -> int:
        raise NotImplementedError

    def completions(self, calls: Sequence[str], requests: list[dict[str, Any]]) -> dict[str, float]:
        """When each job counts as done: its first 202 in the emulator's log."""
        wanted = set(calls)
        answered, _, _ = first_accepted(entry for entry in requests if entry["callConnectionId"] in wanted)
        return answered

    def close(self) -> None:
        raise NotImplementedError

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} worker exited with {process.returncode} (logs in {self.folder})")


class BaselineMode(QueuedMode):
    def __init__(self, name: str, pool: Pool, processes: int, broker_url: str, connection_string: str, root: Path):
        self.name = name
        self.pool = str(pool)
        self._pool = pool
        self._count = processes
        self._broker_url = broker_url
        self._connection_string = connection_string
        self.queue = f"bench-{name}-{token()}"
        self.folder = root / self.queue
        self.folder.mkdir(parents=True)
        self.app = make_app(broker_url, self.queue)
        self.processes = []
        self._offsets: dict[Path, int] = {}
        self.done: dict[str, tuple[float, int]] = {}

    def start(self) -> None:
        env = child_env(
            {
                "BENCH_BROKER_URL": self._broker_url,
                "BENCH_QUEUE": self.queue,
                "BENCH_ACS_CONNECTION_STRING": self._connection_string,
                "BENCH_DONE_DIR": str(self.folder),
                "PYTHONPATH": str(ROOT),
            }
        )
        # The same number of processes doing the work: one prefork parent with `processes` children, or
        # `processes` separate threads-pool workers.
        prefork = self._pool.kind == "prefork"
        instances = 1 if prefork else self._count
        concurrency = self._count if prefork else self._pool.concurrency
        for index in range(instances):
            command = python("-m", "celery", "-A", "bench.baselines", "worker", "--pool", self._pool.kind)
            command += ["--concurrency", str(concurrency), "--queues", self.queue, "--loglevel", "WARNING"]
            command += ["--hostname", f"{self.queue}-{index}@%h", "--without-mingle", "--without-gossip"]
            self.processes.append(spawn(command, env, self.folder / f"worker-{index}.log"))

        def ready() -> bool:
            self._check_alive()
            return len(list(self.folder.glob("ready-*"))) >= instances

        wait_until(ready, 60, 0.1, f"{self.name} workers to be ready")

    def enqueue(self, call_connection_id: str, batch: str) -> str:
        self.app.send_task(
            TASKS[self.name],
            kwargs={"call_connection_id": call_connection_id},
            task_id=call_connection_id,
            queue=self.queue,
            ignore_result=True,
        )
        return call_connection_id

    def _read_done(self) -> None:
        for path in self.folder.glob("done-*.log"):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as file:
                file.seek(offset)
                chunk = file.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
            self._offsets[path] = offset + len(complete)
            for line in complete.decode().splitlines():
                call, at, status = line.split()
                self.done.setdefault(call, (float(at), int(status)))

    def finished(self, batch: str, calls: Sequence[str]) -> int:
        self._check_alive()
        self._read_done()
        return sum(1 for call in calls if call in self.done)

    def completions(self, calls: Sequence[str], requests: list[dict[str, Any]]) -> dict[str, float]:
        if self.name != "noop":
            return super().completions(calls, requests)
        self._read_done()
        return {call: self.done[call][0] for call in calls if call in self.done}

    def close(self) -> None:
        for process in self.processes:
            stop(process)
        delete_queue(self._broker_url, self.queue)


class OursMode(QueuedMode):
    name = "ours"

    def __init__(
        self,
        processes: int,
        broker_url: str,
        postgres_url: str,
        connection_string: str,
        root: Path,
        concurrency: int | None,
    ):
        self._count = processes
        self._admin_url = postgres_url
        self.queue = f"bench-ours-{token()}"
        self.folder = root / self.queue
        self.folder.mkdir(parents=True)
        self.database = self.queue.replace("-", "_")
        self.processes = []
        self.producer: Producer | None = None
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        base = postgres_url.rpartition("/")[0]
        defaults = Settings()
        self.settings = Settings(
            home=self.folder / "home",
            acs_connection_string=connection_string,
            broker_url=broker_url,
            ledger_url=f"{base}/{self.database}",
            queue=self.queue,
            worker_concurrency=concurrency or defaults.worker_concurrency,
        )
        self.pool = f"loop x{self.settings.worker_concurrency}"  # each message runs on the process's event loop
        try:
            self.producer = Producer(self.settings)
        except BaseException:
            self._drop_database()
            raise

    def start(self) -> None:
        env = child_env({**self.settings.to_env(), "LOG_FORMAT": "json"})
        logs = [self.folder / f"worker-{index}.log" for index in range(self._count)]
        for path in logs:
            self.processes.append(spawn_worker(env, path, queue=self.queue))

        def ready() -> bool:
            # The runtime (event loop, HTTP session, ledger pool) logs worker.started once it can take jobs.
            self._check_alive()
            return all(path.exists() and '"worker.started"' in path.read_text() for path in logs)

        wait_until(ready, 60, 0.1, "ours workers to be ready")

    def enqueue(self, call_connection_id: str, batch: str) -> str:
        assert self.producer is not None
        message = {"callConnectionId": call_connection_id, "targetParticipant": f"4:{TARGET}"}
        return self.producer.enqueue(message, campaign=batch).job_id

    def states(self, batch: str) -> dict[str, int]:
        assert self.producer is not None
        return self.producer.ledger.run(op_count_by_state, batch)

    def finished(self, batch: str, calls: Sequence[str]) -> int:
        self._check_alive()
        counts = self.states(batch)
        return sum(counts.get(state, 0) for state in SETTLED_STATES)

    def job_state(self, job_id: str) -> str:
        assert self.producer is not None
        return self.producer.ledger.get(job_id).state

    def close(self) -> None:
        for process in self.processes:
            stop(process)
        if self.producer is not None:
            self.producer.close()
        delete_queue(self.settings.broker_url, self.queue)
        self._drop_database()

    def _drop_database(self) -> None:
        with contextlib.suppress(Exception), psycopg.connect(self._admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def run_batch(mode: QueuedMode, calls: list[str], batch: str, producers: int, timeout: float) -> Batch:
    """Enqueue `calls` from `producers` threads, then wait (at most `timeout`) until all of them settle."""
    enqueued: dict[str, float] = {}
    halt = threading.Event()

    def produce(chunk: Sequence[str]) -> None:
        for call in chunk:
            if halt.is_set():
                return
            at = time.time()  # before the call: a fast worker may finish the job before enqueue returns
            mode.enqueue(call, batch)
            enqueued[call] = at

    started = time.time()
    with ThreadPoolExecutor(producers, thread_name_prefix="producer") as executor:
        futures = [executor.submit(produce, calls[index::producers]) for index in range(producers)]
        try:
            for future in futures:
                future.result()
        finally:
            halt.set()
    enqueue_seconds = time.time() - started
    deadline = time.monotonic() + timeout
    while mode.finished(batch, calls) < len(calls):
        if time.monotonic() > deadline:
            log(f"  {mode.name}: batch {batch} not finished after {timeout:.0f}s")
            return Batch(enqueued, enqueue_seconds, False)
        time.sleep(0.2)
    return Batch(enqueued, enqueue_seconds, True)


def batch_size(jobs: int, rate: float, min_seconds: float, max_jobs: int) -> int:
    # A warm-up batch under-estimates a fast mode's rate (it includes the ramp-up), hence the margin.
    wanted = int(rate * min_seconds * 1.2) if min_seconds > 0 else 0
    return max(jobs, min(wanted, max_jobs))


def summarize(
    mode: str,
    latency_ms: float,
    pool: str,
    processes: int,
    started: dict[str, float],
    done: dict[str, float],
    memory: Sampler,
    requests: list[dict[str, Any]],
) -> Result:
    calls = set(started)
    times = [(done[call] - started[call]) * 1000 for call in calls if call in done]
    first = min(started.values())
    last = max((done[call] for call in calls if call in done), default=first)
    seconds = max(last - first, 1e-9)
    mine = [entry for entry in requests if entry["callConnectionId"] in calls]
    _, per_call, statuses = first_accepted(mine)
    p50, p95 = percentile(times, 0.50), percentile(times, 0.95)
    # Where the time goes: before the request reaches ACS (queue, ledger, hand-offs) and the round trip itself.
    arrived = first_arrivals(mine)
    before = [(arrived[call] - started[call]) * 1000 for call in calls if call in arrived]
    trip = [(done[call] - arrived[call]) * 1000 for call in calls if call in arrived and call in done]
    split = {
        "min_ms": _rounded(min(times, default=None)),
        "max_ms": _rounded(max(times, default=None)),
        "p50_ms_enqueue_to_request": _rounded(percentile(before, 0.5)),
        "p50_ms_request_to_202": _rounded(percentile(trip, 0.5)),
    }
    return Result(
        mode=mode,
        latency_ms=latency_ms,
        pool=pool,
        processes=processes,
        jobs=len(calls),
        completed=len(times),
        seconds=round(seconds, 3),
        jobs_per_s=round(len(times) / seconds, 1),
        p50_ms=None if p50 is None else round(p50, 1),
        p95_ms=None if p95 is None else round(p95, 1),
        rss_peak_mib=round(memory.peak_total / MIB, 1),
        rss_process_peak_mib=round(memory.peak_process / MIB, 1),
        cpu_ms_per_job=round(memory.cpu_seconds * 1000 / len(times), 2) if times else None,
        requests=len(mine),
        statuses={str(status): count for status, count in sorted(statuses.items())},
        extra={"calls_with_more_than_one_request": sum(1 for count in per_call.values() if count > 1), **split},
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@contextlib.contextmanager
def profiling(
    pids: Sequence[int], folder: Path | None, label: str, rate: int, gil_only: bool, flamegraph: bool
) -> Iterator[list[Path]]:
    if folder is None:
        yield []
        return
    folder.mkdir(parents=True, exist_ok=True)
    profilers = [Profiler(pid, folder / f"{label}-{pid}.txt", rate, gil_only, flamegraph) for pid in pids]
    try:
        time.sleep(0.5)  # let py-spy attach before the load starts
        yield [profiler.output for profiler in profilers]
    finally:
        for profiler in profilers:
            profiler.stop()


@dataclass
class Run:
    """Everything one invocation measures, and how."""

    args: argparse.Namespace
    emulator: Emulator
    connection_string: str
    workdir: Path
    results: list[Result] = field(default_factory=list)
    sweep: list[Result] = field(default_factory=list)
    low_load: list[LowLoad] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def queued(self, name: str, latency_ms: float, pool: Pool | None) -> Result:
        args = self.args
        mode: QueuedMode
        if name == "ours":
            mode = OursMode(
                args.processes,
                args.broker_url,
                args.postgres_url,
                self.connection_string,
                self.workdir,
                args.ours_concurrency,
            )
        else:
            assert pool is not None
            mode = BaselineMode(name, pool, args.processes, args.broker_url, self.connection_string, self.workdir)
        try:
            mode.start()
            self.emulator.reset(latency_ms)
            warmup = [str(uuid.uuid4()) for _ in range(args.warmup)]
            began = time.time()
            run_batch(mode, warmup, "warmup", args.producers, args.timeout)
            rate = len(warmup) / max(time.time() - began, 1e-3)
            size = batch_size(args.jobs, rate, args.min_seconds, args.max_jobs)
            log(f"  {name} ({mode.pool}): warm-up {rate:.0f} jobs/s, measuring {size} jobs")
            self.emulator.reset(latency_ms)
            calls = [str(uuid.uuid4()) for _ in range(size)]
            pgids = [process.pid for process in mode.processes]
            label = f"{name}-{latency_ms:g}ms"
            profile_to = args.py_spy if name == "ours" else None
            with (
                Sampler(pgids) as memory,
                Sampler([self.emulator.process.pid]) as emulator_usage,
                profiling(
                    pgids, profile_to, label, args.py_spy_rate, args.py_spy_gil, args.py_spy_flamegraph
                ) as profiles,
            ):
                batch = run_batch(mode, calls, "measure", args.producers, args.timeout)
            requests = self.emulator.requests()
            done = mode.completions(calls, requests)
            result = summarize(name, latency_ms, mode.pool, args.processes, batch.enqueued, done, memory, requests)
            result.enqueue_per_s = round(len(batch.enqueued) / max(batch.enqueue_seconds, 1e-9), 1)
            result.extra["emulator_cpu_ms_per_job"] = round(emulator_usage.cpu_seconds * 1000 / max(len(done), 1), 2)
            result.extra["finished_in_time"] = batch.finished
            result.extra["worker_log_problems"] = log_problems(sorted(mode.folder.glob("worker-*.log")))
            if isinstance(mode, OursMode):
                result.extra["ledger_states"] = mode.states("measure")
                result.extra["calls_transferred_twice"] = len(self.emulator.transfers()["callsWithMoreThanOneEffect"])
                if profiles and not args.py_spy_flamegraph:
                    self.profile[label] = summarize_profile(profiles)
                if args.sequential:
                    self.low_load.append(self.sequential_ours(mode, latency_ms))
            return result
        finally:
            mode.close()

    def sequential_ours(self, mode: OursMode, latency_ms: float) -> LowLoad:
        self.emulator.reset(latency_ms)
        started: dict[str, float] = {}
        for _ in range(self.args.sequential):
            call = str(uuid.uuid4())
            at = time.time()
            job_id = mode.enqueue(call, "sequential")
            started[call] = at
            wait_until(lambda job=job_id: mode.job_state(job) in SETTLED_STATES, 30, 0.002, f"job {job_id}")
            time.sleep(0.05)  # idle again before the next one
        done, _, _ = first_accepted(self.emulator.requests())
        return low_load("ours", latency_ms, started, done)

    def raw(self, latency_ms: float, jobs: int, processes: int, concurrency: int, warmup: int) -> tuple[Result, int]:
        """`processes` raw loops of `concurrency` lanes each; returns the result and the measured job count."""
        self.emulator.reset(latency_ms)
        folder = self.workdir / f"raw-{token()}"
        folder.mkdir()
        env = child_env({"ACS_CONNECTION_STRING": self.connection_string, "PYTHONPATH": str(ROOT)})
        start_at = time.time() + 3.0  # after every loop has imported and warmed up: they start together
        shares = [jobs // processes + (1 if index < jobs % processes else 0) for index in range(processes)]
        outputs = [folder / f"out-{index}.tsv" for index in range(processes)]
        children = []
        try:
            for index, (share, out) in enumerate(zip(shares, outputs, strict=True)):
                command = python("-m", "bench.rawload", "--jobs", str(share), "--concurrency", str(concurrency))
                command += ["--warmup", str(warmup), "--start-at", f"{start_at:.3f}", "--out", str(out)]
                command += ["--time-limit", str(self.args.timeout)]
                children.append(spawn(command, env, folder / f"rawload-{index}.log"))
            time.sleep(max(0.0, start_at - time.time() - 0.05))  # warm-up requests are not part of the figures
            with Sampler([child.pid for child in children]) as memory, Sampler([self.emulator.process.pid]) as usage:
                wait_until(
                    lambda: all(child.poll() is not None for child in children),
                    self.args.timeout + 60,
                    0.1,
                    "raw loops",
                )
        finally:
            for child in children:
                stop(child)
        started: dict[str, float] = {}
        for out in outputs:
            for line in out.read_text().splitlines() if out.exists() else []:
                call, sent, _, _ = line.split()
                started[call] = float(sent)
        if not started:
            raise RuntimeError(f"the raw loops sent nothing (logs in {folder})")
        usages = [
            json.loads(out.with_suffix(".json").read_text()) for out in outputs if out.with_suffix(".json").exists()
        ]
        requests = self.emulator.requests()
        done, _, _ = first_accepted(requests)
        result = summarize("raw", latency_ms, f"asyncio x{concurrency}", processes, started, done, memory, requests)
        result.extra["emulator_cpu_ms_per_job"] = round(usage.cpu_seconds * 1000 / max(len(done), 1), 2)
        result.cpu_ms_per_job = round(sum(u["cpu_seconds"] for u in usages) * 1000 / max(result.completed, 1), 2)
        # A short run may end before the first sample: the loops' own peaks are the better figure then.
        result.rss_peak_mib = max(result.rss_peak_mib, round(sum(u["peak_rss_bytes"] for u in usages) / MIB, 1))
        result.rss_process_peak_mib = round(
            max([result.rss_process_peak_mib, *(u["peak_rss_bytes"] / MIB for u in usages)]), 1
        )
        return result, len(started)

    def run_raw(self, latency_ms: float) -> Result:
        args = self.args
        concurrency = args.ours_concurrency or Settings().worker_concurrency
        probe, _ = self.raw(latency_ms, args.warmup, args.processes, concurrency, 0)
        size = batch_size(args.jobs, probe.jobs_per_s, args.min_seconds, args.max_jobs)
        log(f"  raw (asyncio x{concurrency}): warm-up {probe.jobs_per_s:.0f} jobs/s, measuring {size} jobs")
        result, _ = self.raw(latency_ms, size, args.processes, concurrency, warmup=concurrency)
        if args.sequential:
            single, _ = self.raw(latency_ms, args.sequential, 1, 1, warmup=5)
            self.low_load.append(
                LowLoad(
                    "raw",
                    latency_ms,
                    single.completed,
                    single.p50_ms,
                    single.p95_ms,
                    single.extra["min_ms"],
                    single.extra["max_ms"],
                )
            )
        return result

    def settle(self) -> float:
        """Wait (at most --wait-idle seconds) for other load on the machine to drop; returns the share still busy."""
        deadline = time.monotonic() + self.args.wait_idle
        busy = busy_share()
        while busy > self.args.idle_below and time.monotonic() < deadline:
            busy = busy_share()
        if busy > self.args.idle_below:
            log(f"  the machine is {busy:.0%} busy with other work; measuring anyway")
        return round(busy, 3)

    def one(self, name: str, latency_ms: float, pool: Pool | None) -> Result:
        background = self.settle()
        result = self.run_raw(latency_ms) if name == "raw" else self.queued(name, latency_ms, pool)
        result.extra["background_cpu_share"] = background
        log(f"  -> {describe(result)}")
        return result

    def attempt(self, name: str, latency_ms: float, pool: Pool | None) -> Result | None:
        """One mode; a failure (a worker that died, a service that refused) is recorded and the run goes on."""
        try:
            return self.one(name, latency_ms, pool)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            log(f"  {name} at {latency_ms:g} ms failed: {reason}")
            self.failures.append({"mode": name, "latency_ms": latency_ms, "pool": str(pool or ""), "error": reason})
            return None

    def run_all(self) -> None:
        args = self.args
        for latency_ms in args.latency_ms:
            for name in args.modes:
                log(f"{name} at {latency_ms:g} ms")
                if name in {"raw", "ours"} or not args.sweep:
                    result = self.attempt(name, latency_ms, None if name in {"raw", "ours"} else args.pools[name])
                else:
                    tried = [r for r in (self.attempt(name, latency_ms, pool) for pool in SWEEP_POOLS) if r is not None]
                    self.sweep.extend(tried)
                    result = max(tried, key=lambda r: r.jobs_per_s) if tried else None
                if result is not None:
                    self.results.append(result)


def low_load(mode: str, latency_ms: float, started: dict[str, float], done: dict[str, float]) -> LowLoad:
    times = [(done[call] - at) * 1000 for call, at in started.items() if call in done]
    p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
    return LowLoad(
        mode,
        latency_ms,
        len(times),
        None if p50 is None else round(p50, 1),
        None if p95 is None else round(p95, 1),
        round(min(times), 1) if times else None,
        round(max(times), 1) if times else None,
    )


# --- report ------------------------------------------------------------------------------------------------


def describe(result: Result) -> str:
    return (
        f"{result.completed}/{result.jobs} jobs in {result.seconds:.1f}s = {result.jobs_per_s:.0f} jobs/s, "
        f"p50 {result.p50_ms} ms, p95 {result.p95_ms} ms, RSS {result.rss_peak_mib:.0f} MiB"
    )


def ratios(results: list[Result]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for latency in sorted({result.latency_ms for result in results}):
        rate = {result.mode: result.jobs_per_s for result in results if result.latency_ms == latency}
        ours = rate.get("ours")
        out[f"{latency:g}"] = {
            f"ours/{other}": round(ours / rate[other], 2) if ours and rate.get(other) else None
            for other in ("naive", "sdk", "noop", "raw")
        }
    return out


def targets(
    results: list[Result], found: dict[str, dict[str, float | None]], low: list[LowLoad]
) -> list[dict[str, Any]]:
    """The speed issue's targets, at every latency measured."""
    out = []
    for latency in sorted(found, key=float):
        for other, need in (("naive", 1.0), ("sdk", 1.2), ("noop", 0.6)):
            name = f"ours >= {need:g} x {other} jobs/s at {latency} ms"
            out.append(_verdict(name, need, found[latency].get(f"ours/{other}"), higher_is_better=True))
        cpu = {r.mode: r.cpu_ms_per_job for r in results if f"{r.latency_ms:g}" == latency}
        name = f"ours' worker CPU per job below naive's at {latency} ms (ms)"
        out.append(_verdict(name, cpu.get("naive") or 0.0, cpu.get("ours") if cpu.get("naive") else None, False))
    for entry in low:
        if entry.mode == "ours":
            need = 25.0 + entry.latency_ms
            name = f"single-job p50 enqueue->202 < 25 ms + latency at {entry.latency_ms:g} ms"
            out.append(_verdict(name, need, entry.p50_ms, higher_is_better=False))
    return out


def _verdict(name: str, need: float, got: float | None, higher_is_better: bool) -> dict[str, Any]:
    if got is None:
        return {"target": name, "need": need, "got": None, "verdict": "not measured"}
    passed = got >= need if higher_is_better else got < need
    verdict = "pass" if passed else f"miss ({got / need:.2f} x the {'target' if higher_is_better else 'limit'})"
    return {"target": name, "need": need, "got": got, "verdict": verdict}


def table(run: Run) -> str:
    lines = [
        f"{'mode':<6} {'latency':>7} {'pool':<12} {'jobs':>6} {'jobs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'RSS MiB':>8}"
    ]
    for result in run.results:
        p50 = "-" if result.p50_ms is None else f"{result.p50_ms:.1f}"
        p95 = "-" if result.p95_ms is None else f"{result.p95_ms:.1f}"
        lines.append(
            f"{result.mode:<6} {result.latency_ms:>4g} ms {result.pool:<12} {result.completed:>6} "
            f"{result.jobs_per_s:>8.1f} {p50:>8} {p95:>8} {result.rss_peak_mib:>8.0f}"
        )
    found = ratios(run.results)
    lines += ["", "ratios (jobs/s):"]
    for latency, values in found.items():
        shown = ", ".join(f"{name} {'-' if value is None else f'{value:.2f}'}" for name, value in values.items())
        lines.append(f"  {latency:>3} ms: {shown}")
    if run.low_load:
        lines += ["", "one job at a time (enqueue -> 202):"]
        for entry in run.low_load:
            lines.append(
                f"  {entry.mode:<5} {entry.latency_ms:>4g} ms: {entry.jobs} jobs, p50 {entry.p50_ms} ms, "
                f"p95 {entry.p95_ms} ms"
            )
    lines += ["", "targets:"]
    for check in targets(run.results, found, run.low_load):
        lines.append(f"  {check['verdict']:<26} {check['target']} (need {check['need']:g}, got {check['got']})")
    if run.sweep:
        lines += ["", "baseline pools tried (--sweep):"]
        for result in run.sweep:
            lines.append(f"  {result.mode:<6} {result.latency_ms:>4g} ms {result.pool:<12} {result.jobs_per_s:>8.1f}")
    if run.failures:
        lines += ["", "modes that failed:"]
        lines += [f"  {f['mode']} {f['latency_ms']:g} ms {f['pool']}: {f['error'][:300]}" for f in run.failures]
    for label, summary in run.profile.items():
        lines += ["", f"py-spy {label}: {summary['samples']} samples; top own time:"]
        for entry in summary["own"][:10]:
            lines.append(f"  {entry['share'] * 100:5.1f}%  {entry['function']}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    def git(*arguments: str) -> str:
        try:
            return subprocess.run(
                ["git", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except OSError:
            return ""

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "packages": {
            name: version(name)
            for name in ("celery", "kombu", "aiohttp", "sqlalchemy", "asyncpg", "azure-communication-callautomation")
        },
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_worker_files": git("status", "--porcelain", "--", "worker").splitlines(),
    }


# --- command line --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    def listed(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
        return lambda text: [kind(item) for item in text.split(",") if item.strip()]

    def modes(text: str) -> list[str]:
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        unknown = sorted(set(chosen) - set(MODES))
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown modes: {', '.join(unknown)} (choose from {', '.join(MODES)})")
        return chosen

    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Jobs/s, time to 202 and worker RSS of ours beside noop, naive, sdk and raw, in one run.",
    )
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per mode, at least (default 2000)")
    parser.add_argument("--latency-ms", type=listed(float), default=[0.0, 50.0], help="emulator latencies (0,50)")
    parser.add_argument("--modes", type=modes, default=list(MODES), help="comma-separated (all)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes per mode (2)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--min-seconds", type=float, default=10.0, help="grow a mode's batch to run this long (10; 0: exactly --jobs)"
    )
    parser.add_argument("--max-jobs", type=int, default=50_000, help="cap on a grown batch (50000)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up jobs per mode, not measured (200)")
    parser.add_argument("--sequential", type=int, default=30, help="one-at-a-time jobs for ours and raw (30; 0: skip)")
    parser.add_argument(
        "--producers",
        type=int,
        default=5,
        help="threads enqueueing (5: the producer's ledger pool size, so it opens no connection mid-run)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for one batch, seconds (600)")
    parser.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="MODE=POOL",
        help="a baseline's pool, e.g. naive=prefork or sdk=threads:32 (default threads:64 for all)",
    )
    parser.add_argument("--sweep", action="store_true", help="run each baseline with prefork, threads:16, threads:64")
    parser.add_argument(
        "--wait-idle", type=float, default=60.0, help="before each mode, wait up to this long for other load (60)"
    )
    parser.add_argument("--idle-below", type=float, default=0.2, help="...until under this share of CPU busy (0.2)")
    parser.add_argument("--ours-concurrency", type=int, help="WORKER_CONCURRENCY for ours (its default: 64)")
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test", help="admin database")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="profile ours' workers with py-spy into DIR")
    parser.add_argument(
        "--py-spy-rate", type=int, default=20, help="samples/s (20: more falls behind on a saturated 2-core box)"
    )
    parser.add_argument("--py-spy-gil", action="store_true", help="with --py-spy: only samples holding the GIL")
    parser.add_argument(
        "--py-spy-flamegraph", action="store_true", help="with --py-spy: an SVG flame graph per worker, no summary"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs) afterwards")
    args = parser.parse_args(argv)
    pools = dict(DEFAULT_POOLS)
    for item in args.pool:
        name, _, pool = item.partition("=")
        if name not in pools:
            parser.error(f"--pool {item}: MODE is one of {', '.join(pools)}")
        pools[name] = Pool.parse(pool)
    args.pools = pools
    if args.py_spy_flamegraph and args.py_spy is None:
        parser.error("--py-spy-flamegraph needs --py-spy DIR")
    if args.jobs < 1 or args.processes < 1 or args.producers < 1 or args.warmup < 1:
        parser.error("--jobs, --processes, --producers and --warmup must be at least 1")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGINT too: a shell starts background jobs with it ignored, and Python then installs no handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="acs-bench-"))
    failed = True
    emulator: Emulator | None = None
    try:
        key = new_access_key()
        port = free_port()
        connection_string = f"endpoint=http://127.0.0.1:{port}/;accesskey={key}"
        env = child_env({"ACS_CONNECTION_STRING": connection_string, "LOG_LEVEL": "WARNING"})
        emulator = Emulator(spawn_emulator(env, port, workdir / "emulator.log"), f"http://127.0.0.1:{port}")
        log(f"emulator at {emulator.url}; working folder {workdir}")
        run = Run(args, emulator, connection_string, workdir)
        about = machine()
        run.run_all()
        report = table(run)
        print(report)
        if args.json is not None:
            found = ratios(run.results)
            document = {
                "command": " ".join(["python -m bench.throughput", *(argv if argv is not None else sys.argv[1:])]),
                "machine": about,
                "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "pools"}
                | {"pools": {name: str(pool) for name, pool in args.pools.items()}},
                "results": [asdict(result) for result in run.results],
                "sweep": [asdict(result) for result in run.sweep],
                "low_load": [asdict(entry) for entry in run.low_load],
                "ratios": found,
                "targets": targets(run.results, found, run.low_load),
                "profile": run.profile,
                "failures": run.failures,
            }
            args.json.write_text(json.dumps(document, indent=2) + "\n")
            log(f"wrote {args.json}")
        failed = False
        return 0
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    finally:
        if emulator is not None:
            emulator.close()
        if failed or args.keep:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
