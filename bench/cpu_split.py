"""The whole system's CPU per job, by part: workers, producer, PostgreSQL, RabbitMQ, the emulator. Not a test.

    python -m bench.cpu_split [--mode ours] [--latency-ms 50] [--timeout 300]

Runs `python -m bench.throughput` for one mode (a child process) and samples every process's CPU time from
/proc each second, with the number of requests the emulator has answered. Only the seconds in which requests
were being answered count, so start-up and teardown are left out; the result is each part's CPU over those
seconds divided by the requests answered in them. The benchmark's own polling counts with the producer
threads, which run in its process. docs/performance.md shows what the figures mean.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.support import ROOT, cpu_seconds, requests_seen

#: (part, test on the process's name and command line), first match wins
PARTS: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("postgresql", lambda name, command: name == "postgres"),
    ("rabbitmq", lambda name, command: name == "beam.smp" or "rabbitmq" in command),
    ("emulator", lambda name, command: "worker.cli emulator" in command),
    ("workers", lambda name, command: "celery" in command or "bench.baselines" in command),
    ("producer and benchmark", lambda name, command: "bench.throughput" in command),
)


def processes() -> dict[int, tuple[str, float, str]]:
    """pid -> (part, CPU seconds so far, command line), for every process on the machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue  # it ended meanwhile
        part = next((part for part, test in PARTS if test(name, command)), "other")
        found[int(entry.name)] = (part, cpu_seconds(int(entry.name)), command)
    return found


def answered(snapshot: dict[int, tuple[str, float, str]]) -> tuple[str, int] | None:
    """(the emulator's port, requests it has seen), or None while no emulator answers."""
    for part, _, command in snapshot.values():
        port = re.search(r"--port (\d+)", command)
        if part == "emulator" and port:
            try:
                return port.group(1), requests_seen(f"http://127.0.0.1:{port.group(1)}")
            except OSError:
                return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_split", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="ours", help="a mode of bench.throughput (ours)")
    parser.add_argument("--latency-ms", default="50", help="the emulator's latency (50)")
    parser.add_argument("--timeout", type=float, default=300.0, help="stop after this many seconds (300)")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "bench.throughput", "--modes", args.mode, "--latency-ms", args.latency_ms]
    command += ["--jobs", "3000", "--min-seconds", "15", "--sequential", "0", "--wait-idle", "10"]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    totals: dict[str, float] = {}
    requests = 0
    previous: tuple[tuple[str, int] | None, dict[int, tuple[str, float, str]]] | None = None
    deadline = time.monotonic() + args.timeout
    try:
        while child.poll() is None and time.monotonic() < deadline:
            snapshot = processes()
            seen = answered(snapshot)
            if previous is not None and seen is not None and previous[0] is not None and previous[0][0] == seen[0]:
                new = seen[1] - previous[0][1]
                if new > 20:  # a second with jobs being answered
                    requests += new
                    for pid, (part, cpu, _) in snapshot.items():
                        before = previous[1].get(pid)
                        totals[part] = totals.get(part, 0.0) + cpu - (before[1] if before else 0.0)
            previous = (seen, snapshot)
            time.sleep(1.0)
    finally:
        if child.poll() is None:
            child.terminate()
        child.wait(60)
    if not requests:
        print("no requests were answered while sampling", file=sys.stderr)
        return 1
    print(f"{args.mode} at {args.latency_ms} ms: {requests} requests answered in the sampled seconds")
    for part, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {part:24} {seconds * 1000 / requests:6.2f} ms CPU per request")
    print(f"  {'total':24} {sum(totals.values()) * 1000 / requests:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
