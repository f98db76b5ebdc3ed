"""Benchmark: `acs-transfer submit` of a 100,000-row campaign against RabbitMQ and PostgreSQL on loopback.

    python -m bench.campaign_submit [--rows 100000]

Runs `submit` as a child process (no workers running), as a user would (its jobs go to the bulk lane's queue),
and prints rows/s and the child's peak memory (ru_maxrss), also for a file a tenth the size: flat memory means
the two peaks are close. Beside it, in the same run, the rate of publishing the same number of job messages
with plain kombu over one connection with publisher confirms (what `submit` does too, after validating each row
and writing it to the ledger), and the ratio of the two. Everything it creates (a PostgreSQL database, a queue,
a folder) is removed at the end; it stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import kombu
import psycopg

from worker.config import Settings
from worker.ledger import Lane, SyncLedger, op_count_by_state
from worker.ledger.campaign import op_progress
from worker.queue.broker import TASK_NAME, transfer_queue

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
CHILD_TIMEOUT = 900


def write_campaign(path: Path, rows: int) -> None:
    """Rows as a CRM export would have them: a key, the call, the target, context and custom headers."""
    with path.open("w", encoding="utf-8") as handle:
        handle.write("ticket,callConnectionId,targetParticipant,operationContext,sip.X-MS-Custom-Ticket,voip.team\n")
        for index in range(rows):
            handle.write(f"T-{index},call-{uuid.uuid4()},4:+1425{index:07d},ticket-{index},{index},blue\n")


def run_submit(path: Path, settings: Settings, campaign: str) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, stdout) of one `acs-transfer submit` child process."""
    env = {
        **os.environ,
        **settings.to_env(),
        "LOG_LEVEL": "WARNING",
        "ACS_CONNECTION_STRING": "endpoint=http://127.0.0.1:9/;accesskey=a2V5",
    }
    command = [sys.executable, "-m", "worker.cli", "submit", str(path), "--campaign", campaign]
    command += ["--key-column", "ticket"]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    elapsed = time.perf_counter() - started
    # The child has been reaped by communicate(); RUSAGE_CHILDREN keeps the largest peak of any child so far,
    # so runs go from the smallest file to the largest.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if process.returncode != 0:
        raise RuntimeError(f"submit exited with {process.returncode}: {stderr[-2000:]}")
    return elapsed, peak, stdout


def queue_depth(settings: Settings) -> int:
    queue = transfer_queue(settings, Lane.BULK)
    with kombu.Connection(settings.broker_url) as connection:
        declared = connection.default_channel.queue_declare(
            queue=queue.name, passive=True, arguments=queue.queue_arguments
        )
        return int(declared.message_count)


def purge(settings: Settings) -> None:
    with kombu.Connection(settings.broker_url) as connection:
        transfer_queue(settings, Lane.BULK)(connection.default_channel).purge()


def kombu_publish(settings: Settings, count: int, confirm_each: bool = False) -> float:
    """Seconds to publish `count` job messages with plain kombu over one connection: persistent messages on the
    same quorum queue, publisher confirms waited for once at the end (or after each message, as kombu's
    ``confirm_publish`` option does)."""
    queue = transfer_queue(settings, Lane.BULK)
    options = {"confirm_publish": True} if confirm_each else {}
    with kombu.Connection(settings.broker_url, transport_options=options) as connection:
        channel = connection.channel()
        queue(channel).declare()
        acked: list[int] = [0]
        if not confirm_each:
            channel.confirm_select()
            channel.events["basic_ack"].add(
                lambda tag, multiple: acked.__setitem__(0, tag if multiple else acked[0] + 1)
            )
        producer = kombu.Producer(channel)
        started = time.perf_counter()
        for _ in range(count):
            job_id = str(uuid.uuid4())
            producer.publish(
                json.dumps([[], {"job_id": job_id}, {}]),
                headers={"lang": "py", "task": TASK_NAME, "id": job_id, "root_id": job_id, "parent_id": None},
                content_type="application/json",
                content_encoding="utf-8",
                correlation_id=job_id,
                delivery_mode=2,
                exchange=queue.exchange,
                routing_key=queue.routing_key,
            )
        while not confirm_each and acked[0] < count:
            connection.drain_events(timeout=60)
        return time.perf_counter() - started


def show(label: str, seconds: float, count: int, unit: str, note: str) -> None:
    print(f"  {label:<28}{seconds:7.1f} s {count / seconds:9,.0f} {unit}/s   {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000)
    rows = parser.parse_args().rows
    folder = Path(tempfile.mkdtemp(prefix="acs-bench-"))
    database = f"acs_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    settings = Settings(
        home=folder / "home",
        broker_url=RABBITMQ_URL,
        ledger_url=f"{POSTGRES_URL.rpartition('/')[0]}/{database}",
        queue=f"acs-bench-{uuid.uuid4().hex[:8]}",
    )
    try:
        small, large = folder / "small.csv", folder / "large.csv"
        write_campaign(small, rows // 10)
        write_campaign(large, rows)
        small_seconds, small_peak, _ = run_submit(small, settings, "bench-small")
        purge(settings)
        seconds, peak, output = run_submit(large, settings, "bench")
        ledger = SyncLedger(settings.ledger_url)
        try:
            written = sum(ledger.run(op_count_by_state, "bench").values())
            started = time.perf_counter()
            ledger.run(op_progress, "bench", time.time(), 5.0)  # what `acs-transfer campaign` asks
            progress_ms = (time.perf_counter() - started) * 1000
        finally:
            ledger.close()
        depth = queue_depth(settings)
        if written != rows or depth != rows:
            raise RuntimeError(f"expected {rows} jobs and messages, found {written} and {depth}:\n{output}")
        purge(settings)
        kombu_seconds = kombu_publish(settings, rows)
        purge(settings)
        sample = min(rows, 2000)
        each_seconds = kombu_publish(settings, sample, confirm_each=True)
        size_mb = large.stat().st_size / 1e6
        print(f"campaign submit: {rows:,} rows (CSV, {size_mb:.1f} MB) -> RabbitMQ quorum queue + PostgreSQL")
        show("acs-transfer submit", seconds, rows, "rows", f"peak RSS {peak / 1024:.0f} MiB")
        show(f"same, {rows // 10:,} rows", small_seconds, rows // 10, "rows", f"peak RSS {small_peak / 1024:.0f} MiB")
        show("plain kombu publish", kombu_seconds, rows, "msgs", "one connection, confirms awaited at the end")
        show("kombu, confirm each", each_seconds, sample, "msgs", f"{sample:,} sent, each confirmed before the next")
        print(f"  {'submit / plain kombu':<28}{kombu_seconds / seconds:7.2f}")
        print(f"  {'campaign progress query':<28}{progress_ms:7.0f} ms over {rows:,} jobs")
    finally:
        try:
            with kombu.Connection(settings.broker_url) as connection:
                transfer_queue(settings, Lane.BULK)(connection.default_channel).delete()
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
