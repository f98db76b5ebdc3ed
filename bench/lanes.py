"""Lanes under load: does a live transfer still go at once while a campaign runs? Not a timed test.

    python -m bench.lanes [--broker-url amqp://...] [--rows 5000] [--paced-seconds 60] [--rate 20]
                          [--workers 1 2] [--latency-ms 20] [--json out.json]

For each worker count (1 and 2 processes, default settings otherwise) and each layout (two lanes, and the
same code with one lane: BULK_QUEUE set to TRANSFER_QUEUE), on a fresh ledger and queue:
(a) an unpaced campaign of `--rows` jobs (`--single-lane-rows` on one lane, if given), once alone and once
    with a live transfer enqueued every second;
(b) a campaign paced at `--rate` for `--paced-seconds`, with a live transfer every second.
A live job's time is from just before its enqueue call to the emulator answering its first 202 (the
emulator's request log, as bench/throughput.py reads it); a campaign's throughput is its jobs over its first
to last 202; a paced campaign's rate is its jobs over its first to last arrival at the emulator.
Targets: live p99 <= 1 s plus the emulator's latency; unpaced throughput with live traffic >= 90% of it
alone; paced rate within 5% of the rate asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import kombu
import psycopg

from bench.support import Emulator, first_accepted, first_arrivals, percentile, wait_until
from worker.config import Settings
from worker.ledger import Lane
from worker.ledger.campaign import op_save_campaign
from worker.processes import child_env, free_port, new_access_key, spawn_emulator, spawn_worker, stop
from worker.produce.producer import Producer
from worker.queue.app import create_app
from worker.queue.broker import lane_queues
from worker.queue.bulk import BatchPublisher
from worker.request.job import prepare_job
from worker.request.models import parse_transfer

TARGET = "4:+14255550100"
BATCH = 1000


def log(message: str) -> None:
    print(f"[lanes] {message}", file=sys.stderr, flush=True)


@dataclass
class Result:
    workers: int
    lanes: int
    unpaced_alone_per_s: float = 0.0
    unpaced_with_live_per_s: float = 0.0
    live_during_unpaced_ms: dict[str, float | None] = field(default_factory=dict)
    paced_rate_per_s: float = 0.0
    live_during_paced_ms: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Deployment:
    """A fresh database and queue, and `workers` worker processes on them."""

    def __init__(self, args: argparse.Namespace, connection_string: str, folder: Path, workers: int, lanes: int):
        self.name = f"bench-lanes-{uuid.uuid4().hex[:8]}"
        self.lanes = lanes
        self.folder = folder / self.name
        self.folder.mkdir(parents=True)
        self._admin = args.postgres_url
        self.database = self.name.replace("-", "_")
        with psycopg.connect(self._admin, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        self.settings = Settings(
            home=self.folder / "home",
            acs_connection_string=connection_string,
            broker_url=args.broker_url,
            ledger_url=f"{self._admin.rpartition('/')[0]}/{self.database}",
            queue=self.name,
            bulk_queue=self.name if lanes == 1 else "",
        )
        self.producer = Producer(self.settings)
        self.keep = False
        self.processes = []
        env = child_env({**self.settings.to_env(), "LOG_FORMAT": "json"})
        logs = [self.folder / f"worker-{index}.log" for index in range(workers)]
        for path in logs:
            self.processes.append(spawn_worker(env, path))
        wait_until(lambda: all(p.exists() and '"worker.started"' in p.read_text() for p in logs), 90, 0.2, "workers")

    def campaign(self, name: str, calls: Sequence[str], rate: float | None) -> None:
        """Write the campaign's jobs; publish them unless paced (the dispatcher does)."""
        ledger = self.producer.ledger
        ledger.run(op_save_campaign, name, rate, None, time.time())
        lane = Lane.BULK if self.settings.bulk_queue != self.settings.queue else Lane.LIVE
        new = [
            prepare_job(
                parse_transfer({"callConnectionId": call, "targetParticipant": TARGET}), campaign=name, lane=lane
            )
            for call in calls
        ]
        # Batch by batch, as `acs-transfer submit` does: a job written long before its message is published
        # looks lost to the sweeper (REPUBLISH_AFTER), which would publish it twice.
        publisher = BatchPublisher(create_app(self.settings), self.settings, lane=lane)
        try:
            for start in range(0, len(new), BATCH):
                created = ledger.create_jobs(new[start : start + BATCH])
                due = [job.id for job, is_new in created if is_new and job.published_at is not None]
                if due:
                    publisher.publish(due)
        finally:
            publisher.close()

    def close(self) -> None:
        for process in self.processes:
            stop(process)
        self.producer.close()
        if self.settings.broker_url.startswith("amqp"):
            with contextlib.suppress(Exception), kombu.Connection(self.settings.broker_url) as connection:
                for queue in lane_queues(self.settings):
                    queue(connection.default_channel).delete()
        if self.keep:
            return
        with contextlib.suppress(Exception), psycopg.connect(self._admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


@contextlib.contextmanager
def live_traffic(deployment: Deployment, every: float) -> Iterator[dict[str, float]]:
    """Enqueue a live transfer every `every` seconds until the block ends; yields call -> enqueue time."""
    enqueued: dict[str, float] = {}
    stopping = threading.Event()

    def run() -> None:
        while not stopping.is_set():
            call = f"live-{uuid.uuid4().hex[:10]}"
            enqueued[call] = time.time()
            deployment.producer.enqueue({"callConnectionId": call, "targetParticipant": TARGET})
            stopping.wait(every)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield enqueued
    finally:
        stopping.set()
        thread.join()


def wait_for_calls(emulator: Emulator, calls: set[str], timeout: float) -> dict[str, float]:
    """Wait until every call has its 202; call -> when it was answered.

    The whole request log is read only once the emulator has seen as many requests as there are calls (live
    and retried requests count too), then every 2 s: serialising 100,000 entries every second would take CPU
    from the workers being measured. Live transfers enqueued after the campaign's last 202 are left out of the
    figures (`during`)."""
    deadline = time.monotonic() + timeout
    while True:
        timed_out = time.monotonic() > deadline
        if timed_out or emulator.requests_seen() >= len(calls):
            answered, _, _ = first_accepted(emulator.requests())
            missing = len(calls - answered.keys())
            if not missing:
                return answered
            if timed_out:
                raise TimeoutError(f"{missing} of {len(calls)} jobs not accepted within {timeout:.0f}s")
            time.sleep(2.0)
        else:
            time.sleep(1.0)


def during(enqueued: dict[str, float], answered: dict[str, float], calls: Sequence[str]) -> dict[str, float]:
    """The live transfers enqueued before the campaign's last 202: the ones that met the campaign."""
    last = max(answered[call] for call in calls)
    return {call: at for call, at in enqueued.items() if at <= last}


def live_latencies(enqueued: dict[str, float], answered: dict[str, float]) -> dict[str, float | None]:
    times = [(answered[call] - at) * 1000 for call, at in enqueued.items() if call in answered]
    worst = max(times) if times else None
    return {
        "count": len(times),
        "p50": _round(percentile(times, 0.5)),
        "p99": _round(percentile(times, 0.99)),
        "max": _round(worst),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def throughput(calls: Sequence[str], answered: dict[str, float]) -> float:
    times = sorted(answered[call] for call in calls)
    return (len(times) - 1) / max(times[-1] - times[0], 1e-6)


def unpaced(deployment: Deployment, emulator: Emulator, args: argparse.Namespace, live: bool) -> tuple[float, dict]:
    rows = args.rows if deployment.lanes == 2 else args.single_lane_rows or args.rows
    calls = [f"u-{uuid.uuid4().hex[:12]}" for _ in range(rows)]
    emulator.reset(args.latency_ms)
    with contextlib.ExitStack() as stack:
        enqueued = stack.enter_context(live_traffic(deployment, args.live_every)) if live else {}
        deployment.campaign(f"unpaced-{uuid.uuid4().hex[:6]}", calls, None)
        answered = wait_for_calls(emulator, set(calls), args.timeout)
    answered = wait_for_calls(emulator, set(calls) | set(enqueued), 60)
    return throughput(calls, answered), live_latencies(during(enqueued, answered, calls), answered)


def paced(deployment: Deployment, emulator: Emulator, args: argparse.Namespace) -> tuple[float, dict]:
    calls = [f"p-{uuid.uuid4().hex[:12]}" for _ in range(int(args.rate * args.paced_seconds))]
    emulator.reset(args.latency_ms)
    with live_traffic(deployment, args.live_every) as enqueued:
        deployment.campaign(f"paced-{uuid.uuid4().hex[:6]}", calls, args.rate)
        wait_for_calls(emulator, set(calls), args.paced_seconds * 3 + 60)
    requests = emulator.requests()
    answered, _, _ = first_accepted(requests)
    arrived = sorted(first_arrivals(r for r in requests if r["callConnectionId"] in set(calls)).values())
    rate = (len(arrived) - 1) / max(arrived[-1] - arrived[0], 1e-6)
    return rate, live_latencies(during(enqueued, answered, calls), answered)


def measure(args: argparse.Namespace, emulator: Emulator, connection_string: str, folder: Path) -> list[Result]:
    results = []
    for workers in args.workers:
        for lanes in (2, 1):
            log(f"{workers} worker process(es), {lanes} lane(s)")
            result = Result(workers, lanes)
            deployment = Deployment(args, connection_string, folder, workers, lanes)
            try:
                result.unpaced_alone_per_s, _ = unpaced(deployment, emulator, args, live=False)
                log(f"  unpaced alone: {result.unpaced_alone_per_s:.0f} jobs/s")
                result.unpaced_with_live_per_s, result.live_during_unpaced_ms = unpaced(
                    deployment, emulator, args, live=True
                )
                log(
                    f"  unpaced with live: {result.unpaced_with_live_per_s:.0f}/s, live {result.live_during_unpaced_ms}"
                )
                if args.paced_seconds > 0:
                    result.paced_rate_per_s, result.live_during_paced_ms = paced(deployment, emulator, args)
                    log(f"  paced: {result.paced_rate_per_s:.2f}/s, live {result.live_during_paced_ms}")
            except TimeoutError as error:
                result.notes.append(str(error))
                log(f"  {error}")
                if args.keep:
                    deployment.keep = True
                    log(f"  kept: database {deployment.database}, logs in {deployment.folder}")
            finally:
                deployment.close()
            results.append(result)
    return results


def table(results: list[Result], args: argparse.Namespace) -> str:
    header = (
        f"{'procs':>5} {'lanes':>5} | {'unpaced alone/s':>15} {'with live/s':>11} {'ratio':>6} | "
        f"{'live p50 ms':>11} {'live p99 ms':>11} | {'paced /s':>8} {'vs asked':>8} | "
        f"{'live p50 ms':>11} {'live p99 ms':>11}"
    )
    lines = [
        f"unpaced campaign {args.rows} rows (one lane: {args.single_lane_rows or args.rows}); "
        f"paced {args.rate:g}/s for {args.paced_seconds:g} s; "
        f"live every {args.live_every:g} s; emulator latency {args.latency_ms:g} ms",
        "".ljust(14) + "| (a) unpaced campaign" + " " * 41 + "| (b) paced campaign",
        header,
        "-" * len(header),
    ]
    for r in results:
        ratio = r.unpaced_with_live_per_s / r.unpaced_alone_per_s if r.unpaced_alone_per_s else 0.0
        off = r.paced_rate_per_s / args.rate - 1 if args.rate else 0.0
        lines.append(
            f"{r.workers:>5} {r.lanes:>5} | {r.unpaced_alone_per_s:>15.0f} {r.unpaced_with_live_per_s:>11.0f} "
            f"{ratio:>6.0%} | {_ms(r.live_during_unpaced_ms, 'p50')} {_ms(r.live_during_unpaced_ms, 'p99')} | "
            f"{r.paced_rate_per_s:>8.2f} {off:>+8.1%} | {_ms(r.live_during_paced_ms, 'p50')} "
            f"{_ms(r.live_during_paced_ms, 'p99')}"
        )
        lines += [f"      note: {note}" for note in r.notes]
    return "\n".join(lines)


def _ms(values: dict[str, Any], key: str) -> str:
    value = values.get(key)
    return f"{value:>11.0f}" if value is not None else f"{'-':>11}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=5000, help="the unpaced campaign's size")
    parser.add_argument(
        "--single-lane-rows", type=int, default=0, help="the campaign's size on one lane (0: --rows), to save time"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="the paced campaign's rate, per second")
    parser.add_argument("--paced-seconds", type=float, default=60.0, help="how long the paced campaign runs (0: skip)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker process counts to run")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the emulator's answer latency")
    parser.add_argument("--live-every", type=float, default=1.0, help="seconds between two live transfers")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for one campaign")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the ledgers and the logs of a failed run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    folder = Path(tempfile.mkdtemp(prefix="acs-bench-lanes-"))
    emulator: Emulator | None = None
    try:
        port = free_port()
        connection_string = f"endpoint=http://127.0.0.1:{port}/;accesskey={new_access_key()}"
        env = child_env({"ACS_CONNECTION_STRING": connection_string, "LOG_LEVEL": "WARNING"})
        # Keep every request of the largest phase (campaign, live calls and retries): the audit reads them all.
        logged = str(max(100_000, 3 * max(args.rows, args.single_lane_rows, int(args.rate * args.paced_seconds))))
        emulator = Emulator(
            spawn_emulator(env, port, folder / "emulator.log", ["--max-logged-requests", logged]),
            f"http://127.0.0.1:{port}",
        )
        results = measure(args, emulator, connection_string, folder)
        print(table(results, args))
        if args.json is not None:
            document = {"settings": {k: str(v) for k, v in vars(args).items()}, "results": [asdict(r) for r in results]}
            args.json.write_text(json.dumps(document, indent=2) + "\n")
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if emulator is not None:
            emulator.close()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
