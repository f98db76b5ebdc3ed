"""`acs-transfer demo`: the whole system on one machine with nothing installed.

Starts the emulator and a worker (embedded file broker, SQLite ledger, in a fresh folder), enqueues transfers
while the emulator injects faults (5xx before and after the effect, 429 with Retry-After, dropped connections,
timeouts, and a few calls that no longer exist), waits until every job has settled, and checks each outcome
against the emulator's effects ledger: every accepted transfer took effect exactly once, nothing else did.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.config import Settings
from worker.ledger import SETTLED_STATES, State, SyncLedger, op_count_by_state
from worker.ledger.outcomes import op_job_timings
from worker.processes import child_env, free_port, new_access_key, spawn_emulator, spawn_worker, stop
from worker.produce.producer import Producer

GONE_CALL_SHARE = 0.02


def demo_faults(rate: float, latency_ms: int, seed: int, gone_calls: list[str]) -> dict[str, Any]:
    return {
        "latency_ms": latency_ms,
        "seed": seed,
        "random": {
            "rate": rate,
            "faults": [
                {"kind": "status", "status": 503, "stage": "after"},
                {"kind": "status", "status": 500, "stage": "before"},
                {"kind": "status", "status": 429, "stage": "before", "retry_after": 0.3},
                {"kind": "status", "status": 502, "stage": "before"},
                {"kind": "drop", "stage": "after"},
                {"kind": "timeout", "stage": "before", "seconds": 3},
            ],
        },
        "by_call": {call: [{"kind": "status", "status": 404, "stage": "answer"}] for call in gone_calls},
    }


@dataclass
class DemoSummary:
    jobs: int
    states: dict[str, int]
    retried: int
    effects: dict[str, int]
    doubled: list[str]
    wrong_effects: list[str]
    p50_ms: float | None
    p95_ms: float | None
    elapsed: float

    @property
    def ok(self) -> bool:
        settled = sum(self.states.get(state, 0) for state in SETTLED_STATES)
        return settled == self.jobs and not self.doubled and not self.wrong_effects


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _http_json(url: str, method: str = "GET", payload: object | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback emulator
        return json.loads(response.read() or b"null")


def _progress(counts: dict[str, int], total: int, started: float) -> None:
    settled = sum(counts.get(state, 0) for state in SETTLED_STATES)
    shown = "  ".join(f"{state} {counts[state]}" for state in State if counts.get(state))
    line = f"\r{settled}/{total} settled  {shown}  ({time.monotonic() - started:.1f}s)"
    if sys.stderr.isatty():
        print(line.ljust(100), end="", file=sys.stderr, flush=True)


def _summarise(ledger: SyncLedger, emulator_url: str, total: int, elapsed: float) -> DemoSummary:
    rows = ledger.run(op_job_timings)
    effects_by_call: dict[str, int] = _http_json(f"{emulator_url}/_emulator/transfers")["effectsByCall"]
    states: dict[str, int] = {}
    effects: dict[str, int] = {}
    wrong: list[str] = []
    latencies: list[float] = []
    for call, state, _attempts, created_at, accepted_at in rows:
        states[state] = states.get(state, 0) + 1
        count = effects_by_call.get(call, 0)
        effects[str(count)] = effects.get(str(count), 0) + 1
        expected = {1} if state in {State.ACCEPTED, State.TRANSFERRED} else {0} if state == State.FAILED else {0, 1}
        if count not in expected:
            wrong.append(f"{call}: {state} with {count} effects")
        if accepted_at is not None:
            latencies.append((accepted_at - created_at) * 1000)
    retried = sum(1 for row in rows if row.attempts > 1)
    doubled = [call for call, count in effects_by_call.items() if count > 1]
    p50, p95 = _percentile(latencies, 0.5), _percentile(latencies, 0.95)
    return DemoSummary(total, states, retried, effects, doubled, wrong, p50, p95, elapsed)


def _print_summary(summary: DemoSummary, seed: int) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    rows = [
        ("jobs", str(summary.jobs)),
        *((state, str(summary.states[state])) for state in State if summary.states.get(state)),
        ("retried (more than one attempt)", str(summary.retried)),
        *((f"jobs whose call took effect {count}x", str(number)) for count, number in sorted(summary.effects.items())),
        ("calls transferred twice", str(len(summary.doubled))),
        ("outcomes that disagree with the emulator", str(len(summary.wrong_effects))),
        ("time to accepted p50", ms(summary.p50_ms)),
        ("time to accepted p95", ms(summary.p95_ms)),
        ("wall time", f"{summary.elapsed:.1f} s"),
        ("fault seed", str(seed)),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for problem in (summary.doubled + summary.wrong_effects)[:20]:
        print(f"  problem: {problem}")
    print(
        "\nresult:",
        "OK - every job settled, every accepted transfer took effect exactly once" if summary.ok else "FAILED",
    )


def run_demo(
    jobs: int, fault_rate: float, latency_ms: int, seed: int | None, timeout: float, keep: bool = False
) -> int:
    seed = seed if seed is not None else random.SystemRandom().randrange(1_000_000)
    home = Path(tempfile.mkdtemp(prefix="acs-transfer-demo-"))
    port = free_port()
    settings = Settings(
        home=home,
        acs_connection_string=f"endpoint=http://127.0.0.1:{port}/;accesskey={new_access_key()}",
        broker_url="filesystem://",
        ledger_url=f"sqlite:///{home / 'ledger.db'}",
        request_timeout=2.0,
        backoff_base=0.1,
        backoff_cap=1.0,
        claim_lease=5.0,
        sweep_interval=1.0,
        republish_after=5.0,
        log_level="WARNING",
    )
    env = child_env({**settings.to_env(), "LOG_FORMAT": "json"})
    print(f"demo: {jobs} transfers, fault rate {fault_rate:.0%}, latency {latency_ms} ms, seed {seed}, in {home}")
    emulator = spawn_emulator(env, port, home / "emulator.log")
    worker = spawn_worker(env, home / "worker.log")
    producer = Producer(settings)
    ok = False
    try:
        rng = random.Random(seed)
        calls = [f"demo-call-{index:05d}" for index in range(jobs)]
        gone = [call for call in calls if rng.random() < GONE_CALL_SHARE]
        emulator_url = f"http://127.0.0.1:{port}"
        _http_json(f"{emulator_url}/_emulator/faults", "PUT", demo_faults(fault_rate, latency_ms, seed, gone))
        started = time.monotonic()
        for index, call in enumerate(calls):
            producer.enqueue(
                {"callConnectionId": call, "targetParticipant": f"4:+1555{index:07d}", "operationContext": call},
                idempotency_key=f"demo-{seed}-{call}",
                campaign="demo",
            )
        deadline = started + timeout
        while True:
            counts = producer.ledger.run(op_count_by_state, "demo")
            _progress(counts, jobs, started)
            if sum(counts.get(state, 0) for state in SETTLED_STATES) >= jobs or time.monotonic() > deadline:
                break
            if worker.poll() is not None:
                print(f"\nworker exited with {worker.returncode}; see {home / 'worker.log'}", file=sys.stderr)
                break
            time.sleep(0.2)
        summary = _summarise(producer.ledger, emulator_url, jobs, time.monotonic() - started)
        _print_summary(summary, seed)
        ok = summary.ok
    finally:
        producer.close()
        stop(worker)
        stop(emulator)
        if ok and not keep:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"logs and ledger kept in {home}", file=sys.stderr)
    return 0 if ok else 1
