"""Memory and ledger size over a long run: does a worker's RSS stay flat, and does retention bound the ledger?

    python -m bench.memory [--jobs 20000] [--warmup 2000] [--retention-seconds 5] [--latency-ms 5]

One worker process (`celery -A worker worker`, its defaults) on RabbitMQ with its ledger on a fresh PostgreSQL
database and the emulator as a child process; jobs are enqueued by 8 threads with `Producer.enqueue`. The
worker's RSS is sampled every half second. Growth is measured from the end of the warm-up to the end of the
run (and to the peak). With a retention (JOB_RETENTION_DAYS, here given in seconds), the worker's sweeper
deletes finished jobs as it goes: the jobs table should hold about `rate x retention` rows at the end, not
`--jobs`. Loopback only; every wait is bounded; everything started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kombu
import psycopg

from worker.config import Settings
from worker.ledger import State, op_count_by_state
from worker.processes import child_env, free_port, new_access_key, spawn_emulator, spawn_worker, stop
from worker.produce.producer import Producer
from worker.queue.broker import transfer_queue

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
ACTIVE = (State.QUEUED, State.SENDING, State.RETRY_WAIT)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--retention-seconds", type=float, default=5.0)
    parser.add_argument("--latency-ms", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    name = f"bench_memory_{uuid.uuid4().hex[:8]}"
    folder = Path(f"/tmp/{name}")
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    port = free_port()
    settings = Settings(
        home=folder,
        acs_connection_string=f"endpoint=http://127.0.0.1:{port}/;accesskey={new_access_key()}",
        broker_url=RABBITMQ,
        ledger_url=POSTGRES.rsplit("/", 1)[0] + f"/{name}",
        queue=name,
        log_level="WARNING",
        sweep_interval=1.0,
        job_retention_days=args.retention_seconds / 86400,
    )
    env = child_env(settings.to_env())
    emulator = worker = None
    producer = Producer(settings)
    samples: list[tuple[int, float]] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        emulator = spawn_emulator(env, port, folder / "emulator.log")
        plan = json.dumps({"latency_ms": args.latency_ms}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/_emulator/faults",
            data=plan,
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).read()
        worker = spawn_worker(env, folder / "worker.log")
        total = args.warmup + args.jobs
        enqueued = itertools.count(1)
        last_enqueued = 0
        stop_sampling = threading.Event()

        def finished() -> int:
            # Pruned jobs are finished ones, so "finished" is what was enqueued less what is still active.
            so_far = last_enqueued  # read first: a job enqueued after this is not counted either way
            counts = producer.ledger.run(op_count_by_state, None)
            return so_far - sum(counts.get(state, 0) for state in ACTIVE)

        def enqueue(i: int) -> None:
            nonlocal last_enqueued
            producer.enqueue({"callConnectionId": f"m-{i}", "targetParticipant": "4:+14255550123"})
            last_enqueued = max(last_enqueued, next(enqueued))

        def sample() -> None:
            assert worker is not None
            while not stop_sampling.wait(0.5):
                samples.append((finished(), rss_mib(worker.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        pool = ThreadPoolExecutor(8)
        try:
            for future in [pool.submit(enqueue, i) for i in range(total)]:
                future.result()
        finally:  # on Ctrl-C, drop the jobs not yet enqueued so the clean-up below runs at once
            pool.shutdown(cancel_futures=True)
        deadline = time.monotonic() + args.timeout
        while finished() < total and time.monotonic() < deadline:
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        time.sleep(2 * args.retention_seconds + 2)  # one more sweep past the retention
        stop_sampling.set()
        sampler.join()
        rows = sum(producer.ledger.run(op_count_by_state, None).values())
    finally:
        producer.close()
        for process in (worker, emulator):
            if process is not None:
                stop(process)
        with kombu.Connection(RABBITMQ) as connection:
            transfer_queue(settings)(connection.default_channel).delete()
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    after_warmup = [rss for count, rss in samples if count >= args.warmup]
    baseline, final, peak = after_warmup[0], after_warmup[-1], max(after_warmup)
    halfway = next(rss for count, rss in samples if count >= total // 2)
    result = {
        "jobs": total,
        "seconds": round(elapsed, 1),
        "jobs_per_s": round(total / elapsed, 1),
        "rss_after_warmup_mib": round(baseline, 1),
        "rss_end_mib": round(final, 1),
        "rss_peak_mib": round(peak, 1),
        "growth_end_pct": round(100 * (final - baseline) / baseline, 1),
        "growth_peak_pct": round(100 * (peak - baseline) / baseline, 1),
        # Caches (compiled SQL, prepared statements, allocator arenas) fill early; a leak would keep growing.
        "growth_second_half_pct": round(100 * (final - halfway) / halfway, 1),
        "rss_mib_by_jobs_done": {
            done: round(next(rss for count, rss in samples if count >= done), 1)
            for done in range(args.warmup, total + 1, max(1, total // 10))
            if any(count >= done for count, _ in samples)
        },
        "retention_s": args.retention_seconds,
        "jobs_rows_at_end": rows,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"result": result, "samples": samples}))
    flat = result["growth_end_pct"] < 10
    bounded = args.retention_seconds <= 0 or rows < total / 10
    verdict = {True: "yes", False: "NO"}
    print(f"RSS flat (growth < 10% after warm-up): {verdict[flat]}; ledger bounded: {verdict[bounded]}")
    return 0 if flat and bounded else 1


if __name__ == "__main__":
    sys.exit(main())
