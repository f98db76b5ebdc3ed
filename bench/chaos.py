"""Chaos run: a campaign of transfers through the whole system while it is broken on purpose, then an audit.

    python bench/chaos.py --jobs 5000 --broker rabbitmq --seed 7 [--workers 3] [--duration-limit 1800]

Everything runs on loopback, in processes of its own: a private broker (a second RabbitMQ node or a Redis
server), a private PostgreSQL cluster for the ledger, the ACS emulator, `acs-transfer serve` receiving the
emulator's signed outcome events, and several worker processes. While the jobs flow, and at points of the
run drawn from the seed, it

- kills worker processes with SIGKILL (and starts a new one a moment later);
- restarts the broker (RabbitMQ ``stop_app``/``start_app``; Redis killed and started empty, losing every message);
- pauses the ledger database (SIGSTOP of every PostgreSQL process, then SIGCONT);
- makes the emulator fail: 5xx and timeouts before and after the transfer takes effect, 429 bursts with
  Retry-After, dropped connections, latency spikes, calls that no longer exist (404), and outcome events that
  fail, come twice or never come.

Then it waits until every job is final and audits each one against the emulator's effects ledger (the ground
truth of what ACS did) and the job ledger:

- lost: a job that is not final at the end (final: transferred, transfer_failed, failed, dead; or accepted when
  the emulator shows its outcome event was dropped or could not be delivered, since then nothing more will come);
- doubled: a call connection that took effect more than once;
- disagreeing: a final state the effects contradict (transferred/transfer_failed/accepted need exactly one
  effect, failed none, dead at most one);
- unexplained: a job that did not succeed without a recorded reason (and ACS's code, where there was one).

It prints one table and exits 1 if any job was lost, doubled, disagreeing or unexplained, 0 otherwise.
The run is bounded: by --duration-limit in time, by --jobs in work; every child is killed on the way out.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))  # the private service instances live with the tests

import sqlalchemy as sa  # noqa: E402
import structlog  # noqa: E402
from services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis  # noqa: E402

from worker.config import Settings  # noqa: E402
from worker.emulator.config import DEFAULT_RESOURCE_ID  # noqa: E402
from worker.ledger import State, SyncLedger, jobs, op_count_by_state  # noqa: E402
from worker.logs import configure  # noqa: E402
from worker.processes import child_env, free_port, kill, spawn_emulator, spawn_worker, stop, wait_for_http  # noqa: E402
from worker.producer import Producer  # noqa: E402

CAMPAIGN = "chaos"
#: seconds a timeout fault hangs: longer than the workers' request timeout, so the worker gives up first
HANG_SECONDS = 4.0
REQUEST_TIMEOUT = 2.0
#: the producer stops enqueueing while this many jobs are unsettled: the campaign is fed while it runs
BACKLOG = 300
GONE_CALL_SHARE = 0.02
FINAL = set(State.FINAL)


# --- configuration and result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int
    broker: str  # "rabbitmq" or "redis"
    seed: int
    workers: int = 3
    duration_limit: float = 600.0
    fault_rate: float = 0.15
    latency_ms: float = 20.0
    kills: int = 3
    broker_restarts: int = 1
    db_pauses: int = 1
    concurrency: int = 32
    rate: float = 20.0  # jobs per second the producer feeds: the run lasts about jobs / rate seconds
    log_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.broker not in {"rabbitmq", "redis"}:
            raise ValueError("broker must be rabbitmq or redis")
        if self.jobs < 1 or self.workers < 1 or self.rate <= 0:
            raise ValueError("jobs and workers must be at least 1, and the rate positive")


@dataclass
class ChaosResult:
    config: ChaosConfig
    injected: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    effects: Counter[int] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    disagreeing: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    accepted_event_dropped: int = 0
    accepted_event_undelivered: int = 0
    dead_effect: Counter[int] = field(default_factory=Counter)
    retried: int = 0
    requests: int = 0
    enqueue_retries: int = 0
    p50_accepted_ms: float | None = None
    p95_accepted_ms: float | None = None
    p50_final_ms: float | None = None
    p95_final_ms: float | None = None
    elapsed: float = 0.0
    timeline: list[str] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.disagreeing or self.unexplained)

    def table(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f} ms"

        config = self.config
        rows: list[tuple[str, str]] = [
            ("broker", config.broker),
            ("seed", str(config.seed)),
            ("jobs", str(config.jobs)),
            ("worker processes", str(config.workers)),
            ("faults injected", ""),
            *((f"  {kind}", str(count)) for kind, count in sorted(self.injected.items())),
            ("final states", ""),
            *((f"  {state}", str(self.states[state])) for state in State.ALL if self.states.get(state)),
            ("  accepted: outcome event dropped by the emulator", str(self.accepted_event_dropped)),
            ("  accepted: outcome event not deliverable", str(self.accepted_event_undelivered)),
            *((f"  dead with {n} effect(s)", str(count)) for n, count in sorted(self.dead_effect.items())),
            ("jobs retried (more than one attempt)", str(self.retried)),
            ("transfer requests seen by the emulator", str(self.requests)),
            ("enqueue calls retried by the producer", str(self.enqueue_retries)),
            *((f"calls that took effect {n}x", str(count)) for n, count in sorted(self.effects.items())),
            ("lost", str(len(self.lost))),
            ("doubled", str(len(self.doubled))),
            ("states the effects contradict", str(len(self.disagreeing))),
            ("non-success without a reason", str(len(self.unexplained))),
            ("time to accepted p50 / p95", f"{ms(self.p50_accepted_ms)} / {ms(self.p95_accepted_ms)}"),
            ("time to final p50 / p95", f"{ms(self.p50_final_ms)} / {ms(self.p95_final_ms)}"),
            ("wall time", f"{self.elapsed:.1f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"  {name:<{width}}  {value}".rstrip() for name, value in rows]
        for problem in (self.lost + self.doubled + self.disagreeing + self.unexplained)[:20]:
            lines.append(f"  problem: {problem}")
        verdict = "OK: nothing lost, nothing doubled, every outcome explained" if self.ok else "FAILED"
        lines.append(f"result: {verdict}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "broker": self.config.broker,
            "seed": self.config.seed,
            "jobs": self.config.jobs,
            "workers": self.config.workers,
            "injected": dict(self.injected),
            "states": dict(self.states),
            "accepted_event_dropped": self.accepted_event_dropped,
            "accepted_event_undelivered": self.accepted_event_undelivered,
            "dead_effect": {str(k): v for k, v in self.dead_effect.items()},
            "effects": {str(k): v for k, v in self.effects.items()},
            "lost": self.lost,
            "doubled": self.doubled,
            "disagreeing": self.disagreeing,
            "unexplained": self.unexplained,
            "retried": self.retried,
            "requests": self.requests,
            "enqueue_retries": self.enqueue_retries,
            "p50_accepted_ms": self.p50_accepted_ms,
            "p95_accepted_ms": self.p95_accepted_ms,
            "p50_final_ms": self.p50_final_ms,
            "p95_final_ms": self.p95_final_ms,
            "elapsed": self.elapsed,
            "ok": self.ok,
            "timeline": self.timeline,
        }


# --- the emulator's fault plans --------------------------------------------------------------------------


def _status(status: int, stage: str = "before", **extra: Any) -> dict[str, Any]:
    return {"kind": "status", "status": status, "stage": stage, **extra}


MIXED_FAULTS = [
    _status(500, "before"),
    _status(502, "before"),
    _status(503, "after"),  # took effect, the client sees 503: the retry must be answered from the record
    _status(504, "answer"),  # ACS itself answered 504 without effect: the retry executes again
    _status(503, "before", retry_after=0.2, retry_after_header="x-ms-retry-after-ms"),
    _status(429, "before", retry_after=0.5, retry_after_header="retry-after-ms"),
    {"kind": "timeout", "stage": "before", "seconds": HANG_SECONDS},
    {"kind": "timeout", "stage": "after", "seconds": HANG_SECONDS},
    {"kind": "drop", "stage": "before"},
    {"kind": "drop", "stage": "after"},
]
CALLBACKS = {"fail_rate": 0.05, "duplicate_rate": 0.05, "drop_rate": 0.01, "delay_ms": 50}


def fault_plan(config: ChaosConfig, gone: list[str], phase: str, seed: int) -> dict[str, Any]:
    """The base plan (random mixed faults), or a short phase on top of it: a 429 burst, a 5xx burst, slowness."""
    plan: dict[str, Any] = {
        "seed": seed,
        "latency_ms": config.latency_ms,
        "random": {"rate": config.fault_rate, "faults": MIXED_FAULTS},
        "by_call": {call: [_status(404, "answer")] for call in gone},
        "callbacks": CALLBACKS,
    }
    if phase == "429 burst":
        plan["script"] = [_status(429, "before", retry_after=1)] * 60
    elif phase == "5xx burst":
        plan["script"] = [_status(503, "before"), _status(500, "after"), _status(503, "after")] * 20
    elif phase == "latency spike":
        plan["latency_ms"] = 400
    return plan


# --- helpers --------------------------------------------------------------------------------------------


def _http_json(url: str, method: str = "GET", payload: object | None = None, timeout: float = 30.0) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@dataclass(order=True)
class _Event:
    at: float  # seconds after the feed starts
    kind: str = field(compare=False)


def schedule(config: ChaosConfig, rng: random.Random) -> list[_Event]:
    """When each disruption strikes, drawn from the seed: the feed's duration is cut into one slot per
    disruption (in shuffled order) and each strikes somewhere in its own slot, so they spread over the run
    instead of piling up."""
    kinds = ["kill"] * config.kills + ["broker restart"] * config.broker_restarts
    kinds += ["ledger pause"] * config.db_pauses + ["429 burst", "5xx burst", "latency spike"]
    rng.shuffle(kinds)
    span = config.jobs / config.rate
    slot = span / len(kinds)
    return [_Event(slot * (index + rng.uniform(0.15, 0.85)), kind) for index, kind in enumerate(kinds)]


class _Cluster:
    """The processes of one run, started in order and always taken down, whatever happened."""

    def __init__(self, config: ChaosConfig, folder: Path) -> None:
        self.config = config
        self.folder = folder
        self.broker: PrivateRabbitMQ | PrivateRedis | None = None
        self.postgres: PrivatePostgres | None = None
        self.emulator: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.spawned = 0
        self.settings: Settings | None = None
        self.env: dict[str, str] = {}
        self.emulator_url = ""

    def start(self) -> None:
        config = self.config
        self.broker = PrivateRabbitMQ() if config.broker == "rabbitmq" else PrivateRedis()
        self.broker.start()
        self.postgres = PrivatePostgres()
        self.postgres.start()
        emulator_port, serve_port = free_port(), free_port()
        self.emulator_url = f"http://127.0.0.1:{emulator_port}"
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.settings = Settings(
            home=self.folder / "home",
            acs_connection_string=f"endpoint={self.emulator_url}/;accesskey={key}",
            broker_url=self.broker.url,
            ledger_url=self.postgres.url,
            queue=f"acs-chaos-{uuid.uuid4().hex[:8]}",
            connect_timeout=1.0,
            request_timeout=REQUEST_TIMEOUT,
            backoff_base=0.2,
            backoff_cap=2.0,
            claim_lease=3.0,
            sweep_interval=1.0,
            republish_after=5.0,
            reconcile_after=300.0,  # at least the repeatability window: Settings refuses less
            worker_concurrency=config.concurrency,
            callback_base_url=f"http://127.0.0.1:{serve_port}",
            acs_resource_id=DEFAULT_RESOURCE_ID,
            callback_jwks_url=f"{self.emulator_url}/calling/keys",
            serve_port=serve_port,
            log_level="INFO",
            log_format="json",
            task_events=False,
        )
        self.env = child_env(self.settings.to_env())
        self.emulator = spawn_emulator(self.env, emulator_port, self.folder / "emulator.log")
        self.server = _spawn([sys.executable, "-m", "worker.cli", "serve"], self.env, self.folder / "serve.log")
        wait_for_http(f"http://127.0.0.1:{serve_port}/healthz", self.server)
        for _ in range(config.workers):
            self.start_worker()

    def start_worker(self) -> None:
        log = self.folder / f"worker-{self.spawned}.log"
        self.spawned += 1
        self.workers.append(spawn_worker(self.env, log, concurrency=self.config.concurrency))

    def kill_worker(self, rng: random.Random) -> int:
        alive = [process for process in self.workers if process.poll() is None]
        if not alive:
            return 0
        victim = rng.choice(alive)
        kill(victim)
        self.workers.remove(victim)
        return victim.pid

    def restart_broker(self, down: float) -> None:
        assert self.broker is not None
        if isinstance(self.broker, PrivateRabbitMQ):
            self.broker.stop_app()
            time.sleep(down)
            self.broker.start_app()
        else:
            self.broker.stop()  # SIGKILL: Redis keeps nothing (no RDB, no AOF), every message is gone
            time.sleep(down)
            self.broker.start()

    def pause_ledger(self, seconds: float) -> None:
        assert self.postgres is not None
        try:
            self.postgres.pause()
            time.sleep(seconds)
        finally:
            self.postgres.resume()

    def close(self) -> None:
        # The database first: a frozen PostgreSQL would hang everything below.
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.resume()
        for process in self.workers:
            with contextlib.suppress(Exception):
                stop(process, timeout=10)
        for process in (self.server, self.emulator):
            if process is not None:
                with contextlib.suppress(Exception):
                    stop(process, timeout=10)
        if self.broker is not None:
            with contextlib.suppress(Exception):
                self.broker.remove()
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.remove()


def _spawn(command: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as output:
        return subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


class _Feeder(threading.Thread):
    """Enqueues the campaign through the Python producer API at a steady rate, keeping at most BACKLOG jobs
    unsettled (a campaign is paced: it is fed while it runs, through every disruption).

    An enqueue that fails (the ledger paused past its connection's patience) is retried with the same
    idempotency key: the producer's contract is that this creates the job at most once."""

    def __init__(self, producer: Producer, calls: list[str], rate: float, stop_at: float) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self.producer = producer
        self.calls = calls
        self.rate = rate
        self.stop_at = stop_at
        self.started = time.monotonic()
        self.enqueued = 0
        self.settled = 0  # updated by the main loop
        self.retries = 0
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            self.started = time.monotonic()
            for index, call in enumerate(self.calls):
                ahead = self.started + index / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                while self.enqueued - self.settled >= BACKLOG and not self.halt.is_set():
                    time.sleep(0.05)
                while not self.halt.is_set() and time.monotonic() < self.stop_at:
                    try:
                        self.producer.enqueue(
                            {
                                "callConnectionId": call,
                                "targetParticipant": f"4:+1555{index:07d}",
                                "operationContext": call,
                            },
                            idempotency_key=f"chaos-{call}",
                            campaign=CAMPAIGN,
                        )
                        break
                    except Exception:
                        self.retries += 1
                        time.sleep(0.5)
                if self.halt.is_set() or time.monotonic() >= self.stop_at:
                    return
                self.enqueued += 1
        except BaseException as error:
            self.error = error


# --- the run --------------------------------------------------------------------------------------------


def run_chaos(config: ChaosConfig, out: Callable[[str], None] = print) -> ChaosResult:
    started = time.monotonic()
    deadline = started + config.duration_limit
    folder = Path(tempfile.mkdtemp(prefix="acs-chaos-")) if config.log_dir is None else config.log_dir
    folder.mkdir(parents=True, exist_ok=True)
    result = ChaosResult(config, log_dir=folder)

    def say(text: str) -> None:
        line = f"[{time.monotonic() - started:7.1f}s] {text}"
        result.timeline.append(line)
        out(line)

    rng = random.Random(config.seed)
    calls = [f"chaos-{config.seed}-{index:06d}" for index in range(config.jobs)]
    gone = [call for call in calls if rng.random() < GONE_CALL_SHARE]
    events = schedule(config, rng)
    say(
        f"chaos: {config.jobs} jobs on {config.broker}, {config.workers} workers, seed {config.seed}; "
        f"logs in {folder}; plan: " + ", ".join(f"{e.kind}@{e.at:.0f}s" for e in events)
    )
    cluster = _Cluster(config, folder)
    # The producer's own log lines (e.g. publishes deferred while the broker is down) go with the other logs.
    producer_log = (folder / "producer.log").open("a")
    configure("INFO", "json", stream=producer_log)
    producer: Producer | None = None
    feeder: _Feeder | None = None
    restarts: list[tuple[float, int]] = []  # (when, how many) workers to start again
    phase_ends: float | None = None
    plan_seed = config.seed
    quiet_since: float | None = None
    try:
        cluster.start()
        assert cluster.settings is not None
        say(f"started: broker, ledger, emulator, serve, {config.workers} workers")
        _http_json(f"{cluster.emulator_url}/_emulator/faults", "PUT", fault_plan(config, gone, "base", plan_seed))
        producer = Producer(cluster.settings)
        feeder = _Feeder(producer, calls, config.rate, deadline)
        feeder.start()
        monitor = SyncLedger(cluster.settings.ledger_url)
        try:
            while time.monotonic() < deadline:
                counts = monitor.run(op_count_by_state, CAMPAIGN)
                feeder.settled = sum(counts.get(state, 0) for state in State.SETTLED)
                now = time.monotonic()
                for when, count in [r for r in restarts if r[0] <= now]:
                    restarts.remove((when, count))
                    for _ in range(count):
                        cluster.start_worker()
                    say(f"started {count} worker(s) again")
                if phase_ends is not None and now >= phase_ends:
                    plan_seed += 1
                    _http_json(
                        f"{cluster.emulator_url}/_emulator/faults", "PUT", fault_plan(config, gone, "base", plan_seed)
                    )
                    phase_ends = None
                    say("emulator back to the base fault plan")
                if events and events[0].at <= now - feeder.started:
                    event = events.pop(0)
                    phase_ends = _strike(event.kind, cluster, config, gone, rng, result, restarts, say, phase_ends)
                if feeder.error is not None:
                    raise RuntimeError(f"the feeder failed: {feeder.error!r}")
                for process in [w for w in cluster.workers if w.poll() is not None]:
                    # Not one of ours: a worker that dies on its own is a finding, and is replaced.
                    cluster.workers.remove(process)
                    result.injected["worker exited on its own (not injected)"] += 1
                    say(f"worker {process.pid} exited on its own with {process.returncode}; starting another")
                    cluster.start_worker()
                done = not events and feeder.enqueued == config.jobs and _all_final(monitor, counts, cluster, config)
                # Final twice, a second apart: an outcome event scheduled a moment ago shows up in between.
                if done and quiet_since is not None and now - quiet_since >= 1.0:
                    break
                quiet_since = (quiet_since or now) if done else None
                time.sleep(0.5)
            else:
                say("duration limit reached: auditing what there is")
            feeder.halt.set()
            result.enqueue_retries = feeder.retries
            _audit(monitor, cluster.emulator_url, calls, result)
        finally:
            monitor.close()
    finally:
        if feeder is not None:
            feeder.halt.set()
            feeder.join(10)
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close()
        cluster.close()
        structlog.reset_defaults()
        producer_log.close()
        result.elapsed = time.monotonic() - started
    (folder / "timeline.txt").write_text("\n".join(result.timeline) + "\n")
    (folder / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if result.ok and config.log_dir is None:
        shutil.rmtree(folder, ignore_errors=True)
        result.log_dir = None
    return result


def _strike(
    kind: str,
    cluster: _Cluster,
    config: ChaosConfig,
    gone: list[str],
    rng: random.Random,
    result: ChaosResult,
    restarts: list[tuple[float, int]],
    say: Callable[[str], None],
    phase_ends: float | None,
) -> float | None:
    """Inflict one disruption; returns when the emulator's current fault phase ends (if one is running)."""
    if kind == "kill":
        pid = cluster.kill_worker(rng)
        delay = rng.uniform(0.5, 3.0)
        restarts.append((time.monotonic() + delay, 1))
        result.injected["worker kill -9"] += 1
        say(f"kill -9 worker {pid}; a new one starts in {delay:.1f}s")
    elif kind == "broker restart":
        down = rng.uniform(2.0, 5.0)
        say(f"broker restart: down for {down:.1f}s")
        cluster.restart_broker(down)
        result.injected[f"{config.broker} restart"] += 1
        say("broker back")
    elif kind == "ledger pause":
        seconds = rng.uniform(2.0, 5.0)
        say(f"ledger database paused (SIGSTOP) for {seconds:.1f}s")
        cluster.pause_ledger(seconds)
        result.injected["ledger database pause"] += 1
        say("ledger database resumed")
    else:
        _http_json(
            f"{cluster.emulator_url}/_emulator/faults", "PUT", fault_plan(config, gone, kind, config.seed + 1000)
        )
        result.injected[f"emulator phase: {kind}"] += 1
        say(f"emulator phase: {kind}")
        return time.monotonic() + rng.uniform(3.0, 8.0)
    return phase_ends


def _deliveries(emulator_url: str) -> dict[str, list[dict[str, Any]]]:
    by_call: dict[str, list[dict[str, Any]]] = {}
    for delivery in _http_json(f"{emulator_url}/_emulator/callbacks")["deliveries"]:
        by_call.setdefault(delivery["callConnectionId"], []).append(delivery)
    return by_call


def _delivered(deliveries: list[dict[str, Any]]) -> bool:
    return any(d["status"] is not None and 200 <= d["status"] < 300 for d in deliveries)


def _all_final(monitor: SyncLedger, counts: dict[str, int], cluster: _Cluster, config: ChaosConfig) -> bool:
    """Every job final, or accepted with an outcome event that will never come."""
    if sum(counts.get(state, 0) for state in FINAL | {State.ACCEPTED}) < config.jobs:
        return False
    if not counts.get(State.ACCEPTED):
        return True
    with monitor._engine.connect() as connection:
        accepted = connection.execute(
            sa.select(jobs.c.call_connection_id).where(jobs.c.campaign == CAMPAIGN, jobs.c.state == State.ACCEPTED)
        ).scalars()
        waiting = list(accepted)
    deliveries = _deliveries(cluster.emulator_url)
    # An event still on its way (scheduled, in flight, or delivered and being applied) is worth waiting for.
    return not any(_delivered(deliveries.get(call, [])) or _pending(deliveries.get(call)) for call in waiting)


def _pending(deliveries: list[dict[str, Any]] | None) -> bool:
    return bool(deliveries) and all(d["status"] is None and d["error"] is None for d in deliveries or [])


@contextlib.contextmanager
def _rows(monitor: SyncLedger) -> Iterator[list[Any]]:
    with monitor._engine.connect() as connection:
        yield list(connection.execute(sa.select(jobs).where(jobs.c.campaign == CAMPAIGN)))


def _audit(monitor: SyncLedger, emulator_url: str, calls: list[str], result: ChaosResult) -> None:
    effects_by_call: dict[str, int] = _http_json(f"{emulator_url}/_emulator/transfers")["effectsByCall"]
    requests = _http_json(f"{emulator_url}/_emulator/requests")
    deliveries = _deliveries(emulator_url)
    result.requests = int(requests["total"])
    for entry in requests["requests"]:
        fault = entry.get("fault")
        if fault and fault.get("applied"):
            what = fault["kind"] if fault.get("status") is None else f"{fault['status']}"
            result.injected[f"emulator {what} {fault['stage']}"] += 1
    for deliveries_of_call in deliveries.values():
        if any(d["type"].endswith("CallTransferFailed") for d in deliveries_of_call):
            result.injected["emulator outcome event: transfer failed"] += 1
        if len({d["eventId"] for d in deliveries_of_call}) < len(deliveries_of_call):
            result.injected["emulator outcome event: delivered twice"] += 1
    with _rows(monitor) as rows:
        found = {row.call_connection_id: row for row in rows}
    accepted_ms: list[float] = []
    final_ms: list[float] = []
    for call in calls:
        row = found.get(call)
        if row is None:
            result.lost.append(f"{call}: no job in the ledger")
            continue
        state = row.state
        result.states[state] += 1
        count = effects_by_call.get(call, 0)
        result.effects[count] += 1
        if row.attempts > 1:
            result.retried += 1
        if row.accepted_at is not None:
            accepted_ms.append((row.accepted_at - row.created_at) * 1000)
        if row.settled_at is not None:
            final_ms.append((row.settled_at - row.created_at) * 1000)
        where = f"{row.id} ({call})"
        if state == State.ACCEPTED:
            if not deliveries.get(call):
                result.accepted_event_dropped += 1
            elif not _delivered(deliveries[call]):
                result.accepted_event_undelivered += 1
            else:
                result.lost.append(f"{where}: accepted although its outcome event was delivered")
        elif state not in FINAL:
            result.lost.append(f"{where}: still {state} ({row.reason})")
        expected = {
            State.TRANSFERRED: {1},
            State.TRANSFER_FAILED: {1},
            State.ACCEPTED: {1},
            State.FAILED: {0},
            State.DEAD: {0, 1},
        }.get(state)
        if expected is not None and count not in expected:
            result.disagreeing.append(f"{where}: {state} but the call took effect {count}x")
        if state == State.DEAD:
            result.dead_effect[count] += 1
        if state in {State.FAILED, State.DEAD, State.TRANSFER_FAILED} and not row.reason:
            result.unexplained.append(f"{where}: {state} without a reason")
        if state == State.FAILED and row.last_status is None:
            result.unexplained.append(f"{where}: failed without ACS's status")
        if state == State.TRANSFER_FAILED and row.result_code is None:
            result.unexplained.append(f"{where}: transfer_failed without ACS's result code")
    result.doubled = [f"{call}: took effect {n}x" for call, n in effects_by_call.items() if n > 1]
    result.doubled += [f"{call}: took effect but no job names it" for call in set(effects_by_call) - set(calls)]
    result.p50_accepted_ms = _percentile(accepted_ms, 0.5)
    result.p95_accepted_ms = _percentile(accepted_ms, 0.95)
    result.p50_final_ms = _percentile(final_ms, 0.5)
    result.p95_final_ms = _percentile(final_ms, 0.95)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--broker", choices=["rabbitmq", "redis"], default="rabbitmq")
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed, printed")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--duration-limit", type=float, default=600.0, help="seconds; the run stops by then")
    parser.add_argument("--rate", type=float, default=20.0, help="jobs per second fed (the run lasts ~jobs/rate s)")
    parser.add_argument("--fault-rate", type=float, default=0.15, help="share of requests that meet a random fault")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 of a worker process (restarted after)")
    parser.add_argument("--broker-restarts", type=int, default=1)
    parser.add_argument("--db-pauses", type=int, default=1)
    parser.add_argument("--log-dir", type=Path, default=None, help="keep every log here (default: kept on failure)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    config = ChaosConfig(
        jobs=args.jobs,
        broker=args.broker,
        seed=seed,
        workers=args.workers,
        duration_limit=args.duration_limit,
        fault_rate=args.fault_rate,
        kills=args.kills,
        broker_restarts=args.broker_restarts,
        db_pauses=args.db_pauses,
        rate=args.rate,
        log_dir=args.log_dir,
    )

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    result = run_chaos(config, out=lambda line: print(line, flush=True))
    print()
    print(result.table())
    if result.log_dir is not None:
        print(f"logs in {result.log_dir}")
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
