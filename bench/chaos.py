"""Chaos run: campaigns of transfers through the whole system while it is broken on purpose, then a strict audit.

    python -m bench.chaos --jobs 5000 --broker rabbitmq --seed 7 [--workers 3] [--duration-limit 1800]

Everything runs on loopback, in processes of its own: a private broker (a second RabbitMQ node or a Redis
server), a private PostgreSQL cluster for the ledger, the ACS emulator, `acs-transfer serve` receiving the
emulator's signed outcome events (tokens verified against the emulator's JWKS), and several worker processes.
The jobs are fed as two campaigns, one paced (a campaign rate) and one not. While they flow, and at points
of the run drawn from the seed, it

- kills worker processes with SIGKILL (and starts a new one a moment later);
- restarts the broker (RabbitMQ ``stop_app``/``start_app``; Redis killed and started empty, losing every message);
- pauses the ledger database (SIGSTOP of every PostgreSQL process, then SIGCONT);
- kills the workers' ledger connections (``pg_terminate_backend`` of their backends);
- makes the emulator fail: 5xx and timeouts before the transfer takes effect and after it (with ACS's record
  a 202, or a 5xx so the retry is executed again and meets a call that moved: 404), 429 bursts with
  Retry-After, dropped connections, latency spikes, calls that no longer exist (404), and outcome events that
  report a failed transfer, come before the 202, late, twice or never;
- replays the dead jobs, as an operator would (``dead replay``), while outcome events still arrive.

Then it waits until every job is final and audits each one against the emulator's record of what it did
(every effect, every failed transfer, every outcome event posted or dropped: the ground truth):

- lost: a job not final at the end, or left ``accepted`` although its outcome event was delivered;
- doubled: a call that took effect more than once (a replacement and its original are one call);
- wrong: a final state the truth contradicts. A transfer that took effect must end ``transferred``; one that
  did not must end ``failed`` or ``transfer_failed``, or ``dead`` only when no attempt ever got a definite
  answer (those are counted and shown);
- unexplained: a job that did not succeed without a recorded reason (and ACS's code, where there was one).

A job left ``accepted`` because its outcome event was deliberately never posted is counted apart (it is all
the worker can know), as are ``dead`` jobs no attempt got an answer for. The table names each wrong job with
the reason and its history. Exit status 1 if anything is lost, doubled, wrong or unexplained, 0 otherwise.
The run is bounded: by --duration-limit in time, by --jobs in work; every child is killed on the way out.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog

from bench.support import ROOT, group_pids, percentile
from tests.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis  # the private instances live with the tests
from worker.config import Settings
from worker.emulator.config import DEFAULT_RESOURCE_ID
from worker.errors import JobNotFound, ReplayRefused
from worker.ledger import SETTLED_STATES, State, SyncLedger, job_events, jobs
from worker.ledger.campaign import op_save_campaign
from worker.logs import configure
from worker.processes import child_env, free_port, kill, spawn_emulator, spawn_worker, stop, wait_for_http
from worker.produce.producer import Producer
from worker.produce.replay import replay

CAMPAIGN = "chaos"
PACED_CAMPAIGN = "chaos-paced"
CAMPAIGNS = (CAMPAIGN, PACED_CAMPAIGN)
#: seconds a timeout fault hangs: longer than the workers' request timeout, so the worker gives up first
HANG_SECONDS = 4.0
REQUEST_TIMEOUT = 2.0
#: the workers are told ACS's window is this short, so jobs caught by an outage go unknown, then dead (after
#: RECONCILE_AFTER), and are replayed within the run; the emulator keeps ACS's 5 minutes
REPEATABILITY_WINDOW = 20.0
WINDOW_SAFETY_MARGIN = 2.0
RECONCILE_AFTER = 20.0
#: an ACS outage (every request refused at the front door, a few taking effect unanswered) outlasting the window
OUTAGE_SECONDS = REPEATABILITY_WINDOW + 4.0
#: the producer stops enqueueing while this many jobs are unsettled: the campaign is fed while it runs
BACKLOG = 300
GONE_CALL_SHARE = 0.02
#: every how many seconds the operator replays the dead jobs, and prints progress
REPLAY_EVERY = 10.0
PROGRESS_EVERY = 10.0
#: an answer that settles what ACS did with the request (not 408, 409 in progress, 412, 429, 5xx)
NOT_DEFINITE = frozenset({408, 409, 412, 429})
EXAMPLES = 5
ACTIVE = (State.QUEUED, State.SENDING, State.RETRY_WAIT, State.UNKNOWN)
KNOWN = frozenset(State)


def is_definite(status: int | None) -> bool:
    return status is not None and (200 <= status < 300 or (400 <= status < 500 and status not in NOT_DEFINITE))


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
    db_connection_kills: int = 1
    replays: bool = True
    paced_share: float = 0.25  # of the jobs, fed to the paced campaign
    concurrency: int = 32
    rate: float = 20.0  # jobs per second the producer feeds: the run lasts about jobs / rate seconds
    log_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.broker not in {"rabbitmq", "redis"}:
            raise ValueError("broker must be rabbitmq or redis")
        if self.jobs < 1 or self.workers < 1 or self.rate <= 0:
            raise ValueError("jobs and workers must be at least 1, and the rate positive")
        if not 0 <= self.paced_share <= 1:
            raise ValueError("paced_share must be from 0 to 1")

    @property
    def paced_rate(self) -> float:
        """The paced campaign's rate: its share of the feed, with room for retries."""
        return max(1.0, self.rate * self.paced_share * 1.5)


@dataclass
class Finding:
    """One job (or call) the audit found at fault, why, and its history."""

    job_id: str
    call: str
    reason: str
    history: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.job_id} ({self.call}): {self.reason}"


@dataclass
class ChaosResult:
    config: ChaosConfig
    injected: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    effects: Counter[int] = field(default_factory=Counter)
    lost: list[Finding] = field(default_factory=list)
    doubled: list[Finding] = field(default_factory=list)
    wrong: list[Finding] = field(default_factory=list)
    unexplained: list[Finding] = field(default_factory=list)
    #: accepted, and its outcome event was deliberately never posted: all the worker can know
    accepted_event_never_posted: list[Finding] = field(default_factory=list)
    #: dead without effect, no attempt ever got a definite answer
    dead_unanswered: list[Finding] = field(default_factory=list)
    #: the duration limit struck first: the run is incomplete (and not OK), these jobs were never fed
    timed_out: bool = False
    not_fed: int = 0
    replayed: int = 0
    replay_warnings: int = 0
    retried: int = 0
    requests: int = 0
    enqueue_retries: int = 0
    p50_accepted_ms: float | None = None
    p95_accepted_ms: float | None = None
    p50_final_ms: float | None = None
    p95_final_ms: float | None = None
    peak_rss_mb: float = 0.0
    elapsed: float = 0.0
    timeline: list[str] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.wrong or self.unexplained or self.timed_out)

    def wrong_by_reason(self) -> Counter[str]:
        """Wrong outcomes grouped by the first clause of their reason (one bug, one line)."""
        return Counter(finding.reason.split(":")[0] for finding in self.wrong)

    def table(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f} ms"

        config = self.config
        rows: list[tuple[str, str]] = [
            ("broker", config.broker),
            ("seed", str(config.seed)),
            ("jobs", f"{config.jobs} ({CAMPAIGN}: unpaced; {PACED_CAMPAIGN}: paced at {config.paced_rate:g}/s)"),
            ("worker processes", str(config.workers)),
            ("faults injected", ""),
            *((f"  {kind}", str(count)) for kind, count in sorted(self.injected.items())),
            ("final states (replacements included)", ""),
            *((f"  {state}", str(count)) for state, count in sorted(self.states.items())),
            ("dead jobs replayed (of which the replay warned)", f"{self.replayed} ({self.replay_warnings})"),
            ("jobs retried (more than one attempt)", str(self.retried)),
            ("transfer requests seen by the emulator", str(self.requests)),
            ("enqueue calls retried by the producer", str(self.enqueue_retries)),
            *((f"calls that took effect {n}x", str(count)) for n, count in sorted(self.effects.items())),
            ("accepted, outcome event never posted (counted apart)", str(len(self.accepted_event_never_posted))),
            ("dead, no attempt got a definite answer (counted apart)", str(len(self.dead_unanswered))),
            ("duration limit reached: jobs never fed", str(self.not_fed) if self.timed_out else "no"),
            ("lost", str(len(self.lost))),
            ("doubled", str(len(self.doubled))),
            ("wrong", str(len(self.wrong))),
            *((f"  wrong: {reason}", str(count)) for reason, count in self.wrong_by_reason().most_common()),
            ("unexplained (non-success without a reason)", str(len(self.unexplained))),
            ("time to accepted p50 / p95", f"{ms(self.p50_accepted_ms)} / {ms(self.p95_accepted_ms)}"),
            ("time to final p50 / p95", f"{ms(self.p50_final_ms)} / {ms(self.p95_final_ms)}"),
            ("harness peak RSS", f"{self.peak_rss_mb:.0f} MB"),
            ("wall time", f"{self.elapsed:.1f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"  {name:<{width}}  {value}".rstrip() for name, value in rows]
        for title, found in (
            ("lost", self.lost),
            ("doubled", self.doubled),
            ("wrong", self.wrong),
            ("unexplained", self.unexplained),
            ("dead, never answered", self.dead_unanswered),
            ("accepted, event never posted", self.accepted_event_never_posted),
        ):
            for finding in _examples(found, title == "wrong"):
                lines.append(f"  {title}: {finding}")
                lines += [f"      {step}" for step in finding.history]
        verdict = (
            "OK: nothing lost, nothing doubled, no wrong outcome, every outcome explained" if self.ok else "FAILED"
        )
        lines.append(f"result: {verdict}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def listed(found: list[Finding]) -> list[dict[str, Any]]:
            return [{"job": f.job_id, "call": f.call, "reason": f.reason, "history": f.history} for f in found]

        return {
            "broker": self.config.broker,
            "seed": self.config.seed,
            "jobs": self.config.jobs,
            "workers": self.config.workers,
            "injected": dict(self.injected),
            "states": dict(self.states),
            "effects": {str(k): v for k, v in self.effects.items()},
            "lost": listed(self.lost),
            "doubled": listed(self.doubled),
            "wrong": listed(self.wrong),
            "wrong_by_reason": dict(self.wrong_by_reason()),
            "unexplained": listed(self.unexplained),
            "accepted_event_never_posted": len(self.accepted_event_never_posted),
            "dead_unanswered": listed(self.dead_unanswered),
            "timed_out": self.timed_out,
            "not_fed": self.not_fed,
            "replayed": self.replayed,
            "replay_warnings": self.replay_warnings,
            "retried": self.retried,
            "requests": self.requests,
            "enqueue_retries": self.enqueue_retries,
            "p50_accepted_ms": self.p50_accepted_ms,
            "p95_accepted_ms": self.p95_accepted_ms,
            "p50_final_ms": self.p50_final_ms,
            "p95_final_ms": self.p95_final_ms,
            "peak_rss_mb": self.peak_rss_mb,
            "elapsed": self.elapsed,
            "ok": self.ok,
            "timeline": self.timeline,
        }


def _examples(found: list[Finding], per_reason: bool) -> list[Finding]:
    """A few of each: for wrong outcomes, a few per reason, so every bug shows up by name."""
    if not per_reason:
        return found[:EXAMPLES]
    shown: list[Finding] = []
    seen: Counter[str] = Counter()
    for finding in found:
        key = finding.reason.split(":")[0]
        if seen[key] < EXAMPLES:
            seen[key] += 1
            shown.append(finding)
    return shown


# --- the audit ------------------------------------------------------------------------------------------


@dataclass
class JobFacts:
    """What the ledger says about one job, as the audit needs it."""

    id: str
    call: str
    request_id: str
    state: str
    attempts: int
    reason: str | None = None
    last_status: int | None = None
    result_code: int | None = None
    replay_of: str | None = None
    #: some attempt got a definite answer (202, or a 4xx other than 408/409/412/429)
    definite: bool = False


@dataclass
class CallTruth:
    """What the emulator did for one call, per request id."""

    effects: dict[str, int] = field(default_factory=dict)  # the call moved
    failed: set[str] = field(default_factory=set)  # executed, CallTransferFailed (the call did not move)
    never_posted: set[str] = field(default_factory=set)  # outcome event dropped on purpose
    delivered: dict[str, set[str]] = field(default_factory=dict)  # request id -> event types delivered (2xx)

    @property
    def total(self) -> int:
        return sum(self.effects.values())


@dataclass
class Verdict:
    lost: list[Finding] = field(default_factory=list)
    doubled: list[Finding] = field(default_factory=list)
    wrong: list[Finding] = field(default_factory=list)
    unexplained: list[Finding] = field(default_factory=list)
    accepted_event_never_posted: list[Finding] = field(default_factory=list)
    dead_unanswered: list[Finding] = field(default_factory=list)

    def add(self, other: Verdict) -> None:
        for name in self.__dataclass_fields__:
            getattr(self, name).extend(getattr(other, name))


ACCEPTED_EVENT = "Microsoft.Communication.CallTransferAccepted"
FAILED_EVENT = "Microsoft.Communication.CallTransferFailed"


def judge_call(call: str, group: list[JobFacts], truth: CallTruth) -> Verdict:
    """Judge the jobs of one call (an original and its replacements, together) against what ACS did."""
    verdict = Verdict()
    ours = {job.request_id for job in group}
    if truth.total > 1:
        parts = [f"{rid[:8]} {n}x ({_job_named(group, rid)})" for rid, n in truth.effects.items() if n]
        first = group[0]
        verdict.doubled.append(Finding(first.id, call, f"took effect {truth.total}x: " + ", ".join(parts)))
    elif any(rid not in ours for rid, n in truth.effects.items() if n):
        verdict.doubled.append(Finding(group[0].id, call, "took effect under a request id no job of it has"))
    for job in group:
        _judge_job(job, truth, verdict)
    return verdict


def _job_named(group: list[JobFacts], request_id: str) -> str:
    for job in group:
        if job.request_id == request_id:
            return f"job {job.id} {job.state}" + (f", replay of {job.replay_of}" if job.replay_of else "")
    return "no job has this request id"


def _judge_job(job: JobFacts, truth: CallTruth, verdict: Verdict) -> None:
    rid, state = job.request_id, job.state
    moved = truth.effects.get(rid, 0) > 0
    delivered = truth.delivered.get(rid, set())
    never_posted = rid in truth.never_posted and not delivered
    answer = f"HTTP {job.last_status}" if job.last_status is not None else "no answer"

    def finding(reason: str) -> Finding:
        return Finding(job.id, job.call, reason)

    if state in ACTIVE:
        verdict.lost.append(finding(f"still {state} at the end ({job.reason})"))
    elif state == State.ACCEPTED:
        if never_posted:
            verdict.accepted_event_never_posted.append(finding("accepted; its outcome event was never posted"))
        elif delivered:
            verdict.lost.append(finding(f"accepted although its {_short(delivered)} was delivered"))
        elif not moved and rid not in truth.failed:
            verdict.wrong.append(finding("accepted but ACS never executed its request id"))
        else:
            verdict.lost.append(finding("accepted; its outcome event was posted but not delivered"))
    elif moved:
        if state != State.TRANSFERRED:
            verdict.wrong.append(finding(_moved_but(job, answer, delivered, never_posted)))
    elif state == State.TRANSFERRED:
        verdict.wrong.append(finding("transferred but the call never moved under its request id"))
    elif state == State.TRANSFER_FAILED:
        if rid not in truth.failed:
            verdict.wrong.append(finding("transfer_failed but ACS has no failed transfer under its request id"))
    elif state == State.DEAD:
        if job.definite:
            verdict.wrong.append(finding(f"dead after a definite answer: last {answer} ({job.reason})"))
        elif FAILED_EVENT in delivered:
            verdict.wrong.append(finding("dead although its CallTransferFailed was delivered"))
        else:
            verdict.dead_unanswered.append(finding(f"dead, no attempt answered ({job.reason})"))
    elif state not in KNOWN and job.attempts:
        verdict.wrong.append(finding(f"{state} after {job.attempts} attempt(s), the call did not move"))
    _check_explained(job, verdict)


def _moved_but(job: JobFacts, answer: str, delivered: set[str], never_posted: bool) -> str:
    """Why a job whose transfer took effect did not end transferred: the reason names the path it took."""
    event = (
        "its outcome event was never posted"
        if never_posted
        else f"its {_short(delivered)} was delivered"
        if delivered
        else "its outcome event was not delivered"
    )
    if job.state == State.FAILED:
        return f"failed although the call was transferred: {answer} after an attempt without a definite answer; {event}"
    if job.state == State.DEAD:
        return f"dead although the call was transferred: last {answer}; {event} ({job.reason})"
    return f"{job.state} although the call was transferred: last {answer}; {event}"


def _short(types: set[str]) -> str:
    return " and ".join(sorted(kind.rpartition(".")[2] for kind in types))


def _check_explained(job: JobFacts, verdict: Verdict) -> None:
    if job.state in {State.FAILED, State.DEAD, State.TRANSFER_FAILED} and not job.reason:
        verdict.unexplained.append(Finding(job.id, job.call, f"{job.state} without a reason"))
    if job.state == State.FAILED and job.last_status is None:
        verdict.unexplained.append(Finding(job.id, job.call, "failed without ACS's status"))
    if job.state == State.TRANSFER_FAILED and job.result_code is None:
        verdict.unexplained.append(Finding(job.id, job.call, "transfer_failed without ACS's result code"))


# --- the emulator's fault plans --------------------------------------------------------------------------


def _status(status: int, stage: str = "before", **extra: Any) -> dict[str, Any]:
    return {"kind": "status", "status": status, "stage": stage, **extra}


MIXED_FAULTS = [
    _status(500, "before"),
    _status(502, "before"),
    _status(503, "after"),  # took effect, ACS recorded 202, the client sees 503: the retry is answered 202
    _status(503, "after_5xx"),  # took effect, ACS recorded 503: the retry is executed again and meets 404
    _status(500, "after_5xx"),
    _status(504, "answer"),  # ACS itself answered 504 without effect: the retry executes again
    _status(503, "before", retry_after=0.2, retry_after_header="x-ms-retry-after-ms"),
    _status(429, "before", retry_after=0.5, retry_after_header="retry-after-ms"),
    {"kind": "timeout", "stage": "before", "seconds": HANG_SECONDS},
    {"kind": "timeout", "stage": "after", "seconds": HANG_SECONDS},
    {"kind": "timeout", "stage": "after_5xx", "seconds": HANG_SECONDS},
    {"kind": "drop", "stage": "before"},
    {"kind": "drop", "stage": "after"},
    {"kind": "drop", "stage": "after_5xx"},
]
#: outcome events: some transfers fail; events come before the 202, late (but before RECONCILE_AFTER has
#: passed since the job could have gone unknown), twice or never. Never only for a transfer whose 202 went out:
#: a transfer with neither an answer nor an event is unknowable, and its replay a double nobody could avoid.
CALLBACKS = {
    "drop_answered_only": True,
    "fail_rate": 0.05,
    "duplicate_rate": 0.05,
    "drop_rate": 0.01,
    "delay_ms": 300,  # after most retries of a hidden answer: what the worker makes of the retry is tested
    "early_rate": 0.03,
    "late_rate": 0.05,
    "late_ms": 8000,
}


def fault_plan(config: ChaosConfig, gone: Iterable[str], phase: str, seed: int) -> dict[str, Any]:
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
        plan["script"] = [_status(503, "before"), _status(500, "after"), _status(503, "after_5xx")] * 20
    elif phase == "latency spike":
        plan["latency_ms"] = 400
    elif phase == "ACS outage":
        outage = [_status(503, "before")] * 19 + [{"kind": "timeout", "stage": "after_5xx", "seconds": HANG_SECONDS}]
        plan["random"] = {"rate": 1.0, "faults": outage}
    return plan


# --- helpers --------------------------------------------------------------------------------------------


def _http_json(url: str, method: str = "GET", payload: object | None = None, timeout: float = 60.0) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(order=True)
class _Event:
    at: float  # seconds after the feed starts
    kind: str = field(compare=False)


def schedule(config: ChaosConfig, rng: random.Random) -> list[_Event]:
    """When each disruption strikes, drawn from the seed: the feed's duration is cut into one slot per
    disruption (in shuffled order) and each strikes somewhere in its own slot, so they spread over the run
    instead of piling up."""
    kinds = ["kill"] * config.kills + ["broker restart"] * config.broker_restarts
    kinds += ["ledger pause"] * config.db_pauses + ["ledger connection kill"] * config.db_connection_kills
    kinds += ["429 burst", "5xx burst", "latency spike"]
    rng.shuffle(kinds)
    span = config.jobs / config.rate
    slot = span / len(kinds)
    events = [_Event(slot * (index + rng.uniform(0.15, 0.85)), kind) for index, kind in enumerate(kinds)]
    # The outage early in the feed, so plenty of jobs meet it and their replacements run before the end.
    return sorted([*events, _Event(span * rng.uniform(0.15, 0.35), "ACS outage")])


PHASES = frozenset({"429 burst", "5xx burst", "latency spike", "ACS outage"})


def _next_due(events: list[_Event], elapsed: float, phase_running: bool) -> _Event | None:
    """The next disruption due; an emulator phase waits while another phase runs (they would cut it short)."""
    for event in events:
        if event.at > elapsed:
            return None
        if not (phase_running and event.kind in PHASES):
            return event
    return None


def socket_ports(pids: Iterable[int]) -> set[int]:
    """The local TCP ports of every socket these processes hold (from /proc): which ledger backends are theirs."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


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
            repeatability_window=REPEATABILITY_WINDOW,
            window_safety_margin=WINDOW_SAFETY_MARGIN,
            reconcile_after=RECONCILE_AFTER,
            worker_concurrency=config.concurrency,
            # serve receives the emulator's events and verifies their RS256 tokens with the emulator's keys
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

    def kill_ledger_connections(self, monitor: SyncLedger) -> int:
        """pg_terminate_backend of every backend whose client is a worker process; how many were killed."""
        ports = socket_ports(group_pids(process.pid for process in self.workers if process.poll() is None))
        if not ports:
            return 0
        query = sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE client_port = ANY(:ports) AND pid <> pg_backend_pid()"
        )
        with monitor._engine.begin() as connection:
            return int(connection.execute(query, {"ports": sorted(ports)}).scalar() or 0)

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


def call_name(seed: int, index: int) -> str:
    return f"chaos-{seed}-{index:06d}"


def campaign_of(index: int, config: ChaosConfig) -> str:
    """Every job's campaign, spread evenly: a `paced_share` of them is paced."""
    paced = int((index + 1) * config.paced_share) > int(index * config.paced_share)
    return PACED_CAMPAIGN if paced else CAMPAIGN


class _Feeder(threading.Thread):
    """Enqueues the campaigns through the Python producer API at a steady rate, keeping at most BACKLOG jobs
    unsettled (a campaign is fed while it runs, through every disruption). Calls are named from their index,
    so nothing per job is kept here.

    An enqueue that fails (the ledger paused past its connection's patience) is retried with the same
    idempotency key: the producer's contract is that this creates the job at most once."""

    def __init__(self, producer: Producer, config: ChaosConfig, stop_at: float) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self.producer = producer
        self.config = config
        self.stop_at = stop_at
        self.started = time.monotonic()
        self.enqueued = 0
        self.settled = 0  # updated by the main loop
        self.retries = 0
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        config = self.config
        try:
            self.started = time.monotonic()
            for index in range(config.jobs):
                call = call_name(config.seed, index)
                ahead = self.started + index / config.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                while self.enqueued - self.settled >= BACKLOG and not self.halt.is_set():
                    time.sleep(0.05)
                while not self.halt.is_set() and time.monotonic() < self.stop_at:
                    try:
                        self.producer.enqueue(
                            {
                                "callConnectionId": call,
                                "targetParticipant": f"4:+1555{index % 10_000_000:07d}",
                                "operationContext": call,
                            },
                            idempotency_key=f"chaos-{call}",
                            campaign=campaign_of(index, config),
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


class _Operator:
    """Replays dead jobs as an operator would (`acs-transfer dead replay`), while outcome events still arrive."""

    def __init__(self, producer: Producer, settings: Settings, result: ChaosResult) -> None:
        self.producer = producer
        self.settings = settings
        self.result = result

    def dead_not_replayed(self, monitor: SyncLedger) -> list[str]:
        query = sa.select(jobs.c.id).where(
            jobs.c.campaign.in_(CAMPAIGNS), jobs.c.state == State.DEAD, jobs.c.replayed_by.is_(None)
        )
        with monitor._engine.connect() as connection:
            return list(connection.execute(query).scalars())

    def replay_dead(self, monitor: SyncLedger, say: Callable[[str], None]) -> None:
        done = warned = 0
        for job_id in self.dead_not_replayed(monitor):
            try:
                replayed = replay(
                    self.producer.ledger,
                    self.producer.publisher,
                    job_id,
                    "chaos: operator replay",
                    self.settings.callback_base_url,
                )
            except (JobNotFound, ReplayRefused):
                continue  # settled meanwhile (a late event), or replayed already
            except Exception as error:  # the ledger or broker is down right now: the next round tries again
                say(f"replay of {job_id} failed for now: {type(error).__name__}")
                return
            done += 1
            warned += replayed.effect_unknown
        if done:
            self.result.replayed += done
            self.result.replay_warnings += warned
            say(f"operator replayed {done} dead job(s) ({warned} with the effect-unknown warning)")


# --- the run --------------------------------------------------------------------------------------------


def _counts(monitor: SyncLedger) -> Counter[str]:
    query = sa.select(jobs.c.state, sa.func.count()).where(jobs.c.campaign.in_(CAMPAIGNS)).group_by(jobs.c.state)
    with monitor._engine.connect() as connection:
        return Counter({state: int(count) for state, count in connection.execute(query)})


def _pending_events(emulator_url: str) -> int:
    return int(_http_json(f"{emulator_url}/_emulator/callbacks?deliveries=false")["pending"])


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
    gone = [call_name(config.seed, index) for index in range(config.jobs) if rng.random() < GONE_CALL_SHARE]
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
    next_replay = next_progress = time.monotonic()
    try:
        cluster.start()
        assert cluster.settings is not None
        say(f"started: broker, ledger, emulator, serve (verifying the emulator's tokens), {config.workers} workers")
        _http_json(f"{cluster.emulator_url}/_emulator/faults", "PUT", fault_plan(config, gone, "base", plan_seed))
        producer = Producer(cluster.settings)
        producer.ledger.run(op_save_campaign, PACED_CAMPAIGN, config.paced_rate, "chaos", time.time())
        producer.ledger.run(op_save_campaign, CAMPAIGN, None, "chaos", time.time())
        operator = _Operator(producer, cluster.settings, result)
        feeder = _Feeder(producer, config, deadline)
        feeder.start()
        monitor = SyncLedger(cluster.settings.ledger_url)
        try:
            while time.monotonic() < deadline:
                counts = _counts(monitor)
                feeder.settled = sum(counts.get(state, 0) for state in SETTLED_STATES)
                now = time.monotonic()
                if now >= next_progress:
                    next_progress = now + PROGRESS_EVERY
                    shown = " ".join(f"{state} {counts[state]}" for state in State if counts.get(state))
                    say(f"progress: {feeder.enqueued}/{config.jobs} enqueued; {shown}; rss {_peak_rss_mb():.0f} MB")
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
                event = _next_due(events, now - feeder.started, phase_running=phase_ends is not None)
                if event is not None:
                    events.remove(event)
                    phase_ends = _strike(
                        event.kind, cluster, monitor, config, gone, rng, result, restarts, say, phase_ends
                    )
                if config.replays and now >= next_replay:
                    next_replay = now + REPLAY_EVERY
                    operator.replay_dead(monitor, say)
                if feeder.error is not None:
                    raise RuntimeError(f"the feeder failed: {feeder.error!r}")
                for process in [w for w in cluster.workers if w.poll() is not None]:
                    # Not one of ours: a worker that dies on its own is a finding, and is replaced.
                    cluster.workers.remove(process)
                    result.injected["worker exited on its own (not injected)"] += 1
                    say(f"worker {process.pid} exited on its own with {process.returncode}; starting another")
                    cluster.start_worker()
                done = not events and feeder.enqueued == config.jobs and _all_settled(counts, cluster, monitor, config)
                # Settled twice, a second apart: an outcome event scheduled a moment ago shows up in between.
                if done and quiet_since is not None and now - quiet_since >= 1.0:
                    break
                quiet_since = (quiet_since or now) if done else None
                time.sleep(0.5)
            else:
                result.timed_out = True
                say("duration limit reached: auditing what there is")
            feeder.halt.set()
            result.enqueue_retries = feeder.retries
            say("auditing every job against the emulator's record")
            _audit(monitor, cluster.emulator_url, config, result, feeder.enqueued)
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
        result.peak_rss_mb = _peak_rss_mb()
    (folder / "timeline.txt").write_text("\n".join(result.timeline) + "\n")
    (folder / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if result.ok and config.log_dir is None:
        shutil.rmtree(folder, ignore_errors=True)
        result.log_dir = None
    return result


def _strike(
    kind: str,
    cluster: _Cluster,
    monitor: SyncLedger,
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
    elif kind == "ledger connection kill":
        killed = cluster.kill_ledger_connections(monitor)
        result.injected["ledger connection kill (pg_terminate_backend)"] += 1
        result.injected["ledger connection kill: worker backends terminated"] += killed
        say(f"ledger connections of the workers killed: {killed} backend(s) terminated")
    else:
        _http_json(
            f"{cluster.emulator_url}/_emulator/faults", "PUT", fault_plan(config, gone, kind, config.seed + 1000)
        )
        result.injected[f"emulator phase: {kind}"] += 1
        lasts = OUTAGE_SECONDS if kind == "ACS outage" else rng.uniform(3.0, 8.0)
        say(f"emulator phase: {kind} for {lasts:.0f}s")
        return time.monotonic() + lasts
    return phase_ends


def _all_settled(counts: Counter[str], cluster: _Cluster, monitor: SyncLedger, config: ChaosConfig) -> bool:
    """Nothing left to happen: no job active, no outcome event on its way, no dead job left to replay."""
    if any(counts.get(state) for state in ACTIVE):
        return False
    if _pending_events(cluster.emulator_url):
        return False
    return not (config.replays and counts.get(State.DEAD) and _has_unreplayed_dead(monitor))


def _has_unreplayed_dead(monitor: SyncLedger) -> bool:
    query = sa.select(jobs.c.id).where(
        jobs.c.campaign.in_(CAMPAIGNS), jobs.c.state == State.DEAD, jobs.c.replayed_by.is_(None)
    )
    with monitor._engine.connect() as connection:
        return connection.execute(query.limit(1)).first() is not None


# --- the audit, against the emulator's record ------------------------------------------------------------


@dataclass
class RunTruth:
    """The emulator's record for the whole run, kept lean (a 100,000-job audit holds it all): effects per
    call; failed transfers and events never posted by request id (request ids are unique across calls)."""

    effects: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    never_posted: set[str] = field(default_factory=set)

    def take(self, call: str) -> CallTruth:
        """One call's truth; the call is taken out, so what is left at the end no job named."""
        effects = dict(self.effects.pop(call, []))
        return CallTruth(effects=effects, failed=self.failed, never_posted=self.never_posted)


def _truth(emulator_url: str) -> RunTruth:
    """The emulator's record: effects, failed transfers, events never posted (deliveries come per call)."""
    truth = RunTruth()
    transfers = _http_json(f"{emulator_url}/_emulator/transfers?bodies=false")
    for entry in transfers["transfers"]:
        truth.effects.setdefault(entry["callConnectionId"], []).append((entry["requestId"], int(entry["effects"])))
    truth.failed = {entry["requestId"] for entry in transfers["failedTransfers"]}
    del transfers
    dropped = _http_json(f"{emulator_url}/_emulator/callbacks?deliveries=false")["dropped"]
    truth.never_posted = {entry["requestId"] for entry in dropped}
    return truth


def _add_deliveries(emulator_url: str, call: str, truth: CallTruth) -> None:
    """The events delivered for one call, fetched only for the few jobs whose verdict depends on them."""
    query = urllib.parse.urlencode({"call": call})
    for entry in _http_json(f"{emulator_url}/_emulator/callbacks?{query}")["deliveries"]:
        if entry["status"] is not None and 200 <= entry["status"] < 300:
            truth.delivered.setdefault(entry["requestId"], set()).add(entry["type"])


def _definite_job_ids(connection: sa.Connection) -> set[str]:
    """Jobs of the run for which some attempt got a definite answer, from their history. A 4xx that made the job
    `unknown` is not one: it came after an attempt whose effect is unknown, when ACS may have executed the
    request again and met a call that had already moved, or replayed an earlier answer that never reached the
    worker (a lost 404); no client can tell the two apart, so the worker's `unknown` (then `dead`) is right."""
    status = job_events.c.status
    definite = sa.and_(
        sa.or_(
            sa.and_(status >= 200, status < 300),
            sa.and_(status >= 400, status < 500, status.not_in(sorted(NOT_DEFINITE))),
        ),
        job_events.c.to_state != State.UNKNOWN,
    )
    ours = sa.select(jobs.c.id).where(jobs.c.campaign.in_(CAMPAIGNS))
    query = sa.select(job_events.c.job_id).where(definite, job_events.c.job_id.in_(ours)).distinct()
    return set(connection.execute(query).scalars())


def _history(connection: sa.Connection, job_id: str) -> list[str]:
    query = sa.select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
    lines = []
    for row in connection.execute(query):
        answer = f" {row.status}" if row.status is not None else ""
        attempt = f" #{row.attempt}" if row.attempt is not None else ""
        lines.append(f"{row.from_state or '-'} -> {row.to_state}{attempt}{answer}: {(row.detail or '')[:140]}")
    return lines


def _emulator_history(emulator_url: str, call: str) -> list[str]:
    query = urllib.parse.urlencode({"call": call})
    logged = _http_json(f"{emulator_url}/_emulator/requests?{query}")["requests"]
    lines = []
    for entry in logged:
        fault = entry["fault"]
        what = (
            "" if not fault or not fault["applied"] else f" fault {fault.get('status', fault['kind'])} {fault['stage']}"
        )
        lines.append(f"emulator: {(entry['requestId'] or '-')[:8]} answered {entry['status']}{what}")
    return lines


def _audit(monitor: SyncLedger, emulator_url: str, config: ChaosConfig, result: ChaosResult, fed: int) -> None:
    truth = _truth(emulator_url)
    requests = _http_json(f"{emulator_url}/_emulator/requests?call=-")
    result.requests = int(requests["total"])
    for what, count in requests["faultsApplied"].items():
        result.injected[f"emulator {what}"] += count
    result.injected["emulator transfer failed (CallTransferFailed)"] += len(truth.failed)
    result.injected["emulator outcome event never posted"] += len(truth.never_posted)
    verdict = Verdict()
    accepted_ms: list[float] = []
    final_ms: list[float] = []
    columns = [jobs.c[name] for name in ("id", "call_connection_id", "request_id", "state", "attempts", "reason")]
    columns += [jobs.c[name] for name in ("last_status", "result_code", "replay_of", "created_at")]
    columns += [jobs.c.accepted_at, jobs.c.settled_at]
    query = sa.select(*columns).where(jobs.c.campaign.in_(CAMPAIGNS)).order_by(jobs.c.call_connection_id)
    seen_calls: set[str] = set()
    with monitor._engine.connect() as connection:
        definite = _definite_job_ids(connection)
        group: list[JobFacts] = []
        for row in connection.execution_options(yield_per=2000).execute(query):
            facts = JobFacts(
                row.id,
                row.call_connection_id,
                row.request_id,
                row.state,
                row.attempts,
                row.reason,
                row.last_status,
                row.result_code,
                row.replay_of,
                row.id in definite,
            )
            result.states[row.state] += 1
            result.retried += row.attempts > 1
            if row.accepted_at is not None:
                accepted_ms.append((row.accepted_at - row.created_at) * 1000)
            if row.settled_at is not None:
                final_ms.append((row.settled_at - row.created_at) * 1000)
            if group and group[0].call != facts.call:
                _judge(group, truth, emulator_url, verdict, result, seen_calls)
                group = []
            group.append(facts)
        if group:
            _judge(group, truth, emulator_url, verdict, result, seen_calls)
        for finding in _examples(verdict.wrong, per_reason=True) + verdict.lost[:EXAMPLES] + verdict.doubled[:EXAMPLES]:
            finding.history = _history(connection, finding.job_id) + _emulator_history(emulator_url, finding.call)
    for index in range(config.jobs):
        call = call_name(config.seed, index)
        if call in seen_calls:
            continue
        if index < fed:
            verdict.lost.append(Finding("-", call, "enqueued, yet no job in the ledger"))
        else:
            result.not_fed += 1
    for call, effects in truth.effects.items():  # judged calls were taken out
        if any(count for _, count in effects):
            verdict.doubled.append(Finding("-", call, "took effect but no job names the call"))
    for name in Verdict.__dataclass_fields__:
        getattr(result, name).extend(getattr(verdict, name))
    result.p50_accepted_ms = percentile(accepted_ms, 0.5)
    result.p95_accepted_ms = percentile(accepted_ms, 0.95)
    result.p50_final_ms = percentile(final_ms, 0.5)
    result.p95_final_ms = percentile(final_ms, 0.95)


def _verdict_needs_deliveries(job: JobFacts, truth: CallTruth) -> bool:
    moved = truth.effects.get(job.request_id, 0) > 0
    return job.state in (State.ACCEPTED, State.DEAD) or (moved and job.state != State.TRANSFERRED)


def _judge(
    group: list[JobFacts],
    truth: RunTruth,
    emulator_url: str,
    verdict: Verdict,
    result: ChaosResult,
    seen: set[str],
) -> None:
    call = group[0].call
    seen.add(call)
    call_truth = truth.take(call)
    if any(_verdict_needs_deliveries(job, call_truth) for job in group):
        _add_deliveries(emulator_url, call, call_truth)
    result.effects[call_truth.total] += 1
    verdict.add(judge_call(call, group, call_truth))


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
    parser.add_argument("--db-connection-kills", type=int, default=1, help="pg_terminate_backend of the workers'")
    parser.add_argument("--paced-share", type=float, default=0.25, help="share of the jobs in the paced campaign")
    parser.add_argument("--no-replays", action="store_true", help="do not replay dead jobs during the run")
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
        db_connection_kills=args.db_connection_kills,
        replays=not args.no_replays,
        paced_share=args.paced_share,
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
