"""The fault plan: which transfer requests fail, how, and at which stage.

JSON form (``PUT /_emulator/faults``; every key optional)::

    {"latency_ms": 50, "seed": 7,
     "script":  [FAULT, ...],                      # consumed in order, one per transfer request, any call
     "by_call": {"<callConnectionId>": [FAULT, ...]},  # consumed first for requests on that call
     "random":  {"rate": 0.1, "faults": [FAULT, ...]}, # otherwise, with probability rate, one at random
     "callbacks": {"fail_rate": 0.1, "fail_calls": ["call-7"], "failure": {"code": 487, "subCode": 0,
                   "message": "..."}, "delay_ms": 20, "duplicate_rate": 0.05, "drop_rate": 0.0,
                   "early_rate": 0.05, "late_rate": 0.05, "late_ms": 20000, "drop_answered_only": false}}
                                                   # outcome events of each executed transfer

    FAULT = {"kind": "status", "status": 503, "stage": "before"|"after"|"after_5xx"|"answer",
             "retry_after": 1.5, "retry_after_header": "Retry-After"|"retry-after-ms"|"x-ms-retry-after-ms"}
          | {"kind": "timeout", "stage": "before"|"after"|"after_5xx", "seconds": 30}
          | {"kind": "drop", "stage": "before"|"after"|"after_5xx"}

``stage`` defaults to ``before``, ``seconds`` to 30 and ``retry_after_header`` to ``Retry-After``.

Stages: ``before`` the front door fails the request, nothing is executed or recorded; ``after`` the
transfer takes effect and ACS records its 202, then the front door hides it (a retry is answered 202 from the
record); ``after_5xx`` the transfer takes effect, then ACS itself fails the request with a 5xx, which is what
it records (the fault's status; 500 behind a timeout or a dropped connection): a retry of that id is executed
again and meets a call that has moved, 404 "call not found"; ``answer`` ACS answers the status without effect.

Outcome events: a transfer fails (``CallTransferFailed``, the call does not move) for ``fail_calls`` and with
probability ``fail_rate``; its event is posted after ``delay_ms``, or, with ``late_rate``, after up to
``late_ms``; with ``early_rate`` it is delivered before the 202 is answered; ``duplicate_rate`` posts it twice
and ``drop_rate`` never (with ``drop_answered_only``, only the events of transfers whose 202 went out unhidden
are dropped, so every transfer whose answer was lost still has its event). With a ``seed`` each of these is
drawn per call, request id and execution (whether the transfer fails: per call and request id, so executing it
again fails it again), and a run decides the same for the same transfer whatever order requests arrive in.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

FaultKind = Literal["status", "timeout", "drop"]
FaultStage = Literal["before", "after", "after_5xx", "answer"]

KINDS: tuple[FaultKind, ...] = ("status", "timeout", "drop")
STAGES: tuple[FaultStage, ...] = ("before", "after", "after_5xx", "answer")
RETRY_AFTER_HEADERS = ("Retry-After", "retry-after-ms", "x-ms-retry-after-ms")
MAX_SECONDS = 3600.0

_FAULT_KEYS: dict[str, frozenset[str]] = {
    "status": frozenset({"kind", "stage", "status", "retry_after", "retry_after_header"}),
    "timeout": frozenset({"kind", "stage", "seconds"}),
    "drop": frozenset({"kind", "stage"}),
}
_PLAN_KEYS = frozenset({"latency_ms", "seed", "script", "by_call", "random", "callbacks"})
_CALLBACK_RATES = ("fail_rate", "duplicate_rate", "drop_rate", "early_rate", "late_rate")
_CALLBACK_KEYS = frozenset({*_CALLBACK_RATES, "fail_calls", "failure", "delay_ms", "late_ms", "drop_answered_only"})
_DEFAULT_FAILURE = {"code": 487, "subCode": 0, "message": "The transfer target did not answer."}


class FaultPlanError(ValueError):
    """A fault plan is malformed; `field` names where (e.g. ``script[2].status``)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class Fault:
    """One injected failure. Build it directly or with `Fault.from_json`; the constructor validates."""

    kind: FaultKind
    stage: FaultStage = "before"
    status: int | None = None
    retry_after: float | None = None
    retry_after_header: str = "Retry-After"
    seconds: float = 30.0

    def __post_init__(self) -> None:
        _check_fault(self, "fault")

    @classmethod
    def from_json(cls, data: object, where: str = "fault") -> Fault:
        if not isinstance(data, Mapping):
            raise FaultPlanError(where, "must be an object")
        kind = data.get("kind")
        if kind not in KINDS:
            raise FaultPlanError(f"{where}.kind", f"must be one of {', '.join(KINDS)}")
        extra = sorted(str(key) for key in data if key not in _FAULT_KEYS[kind])
        if extra:
            raise FaultPlanError(f"{where}.{extra[0]}", f"is not a property of a {kind} fault")
        stage = data.get("stage", "before")
        if stage not in STAGES:
            raise FaultPlanError(f"{where}.stage", f"must be one of {', '.join(STAGES)}")
        header = data.get("retry_after_header", "Retry-After")
        if not isinstance(header, str):
            raise FaultPlanError(f"{where}.retry_after_header", f"must be one of {', '.join(RETRY_AFTER_HEADERS)}")
        if "retry_after_header" in data and "retry_after" not in data:
            raise FaultPlanError(f"{where}.retry_after_header", "needs retry_after")
        seconds = _number_or_none(data, "seconds", where) if "seconds" in data else 30.0
        if seconds is None:
            raise FaultPlanError(f"{where}.seconds", "must be a number")
        try:
            return cls(
                kind=kind,
                stage=stage,
                status=data.get("status"),
                retry_after=_number_or_none(data, "retry_after", where),
                retry_after_header=header,
                seconds=seconds,
            )
        except FaultPlanError as error:  # the constructor says "fault.status": report the JSON path instead
            raise FaultPlanError(where + error.field.removeprefix("fault"), error.problem) from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "stage": self.stage}
        if self.kind == "status":
            out["status"] = self.status
            if self.retry_after is not None:
                out["retry_after"] = self.retry_after
                out["retry_after_header"] = self.retry_after_header
        elif self.kind == "timeout":
            out["seconds"] = self.seconds
        return out

    def retry_headers(self) -> dict[str, str]:
        """The retry hint this fault sends; none when `retry_after` is unset (e.g. a bare 429)."""
        if self.retry_after is None:
            return {}
        if self.retry_after_header == "Retry-After":
            seconds = self.retry_after
            return {"Retry-After": str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"}
        return {self.retry_after_header: str(round(self.retry_after * 1000))}


def _number_or_none(data: Mapping[Any, Any], name: str, where: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultPlanError(f"{where}.{name}", "must be a number")
    return float(value)


def _check_fault(fault: Fault, where: str) -> None:
    if fault.kind not in KINDS:
        raise FaultPlanError(f"{where}.kind", f"must be one of {', '.join(KINDS)}")
    if fault.stage not in STAGES:
        raise FaultPlanError(f"{where}.stage", f"must be one of {', '.join(STAGES)}")
    if fault.stage == "answer" and fault.kind != "status":
        raise FaultPlanError(f"{where}.stage", "answer is only for status faults (ACS itself answers)")
    if fault.stage == "after_5xx" and fault.kind == "status" and not 500 <= (fault.status or 0) <= 599:
        raise FaultPlanError(f"{where}.status", "must be from 500 to 599 at stage after_5xx (ACS records a 5xx)")
    if fault.kind == "status":
        status = fault.status
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise FaultPlanError(f"{where}.status", "must be an integer from 400 to 599")
    elif fault.status is not None:
        raise FaultPlanError(f"{where}.status", f"is not a property of a {fault.kind} fault")
    if fault.retry_after is not None and not 0 <= fault.retry_after <= MAX_SECONDS:
        raise FaultPlanError(f"{where}.retry_after", f"must be from 0 to {MAX_SECONDS:g} seconds")
    if fault.retry_after_header not in RETRY_AFTER_HEADERS:
        raise FaultPlanError(f"{where}.retry_after_header", f"must be one of {', '.join(RETRY_AFTER_HEADERS)}")
    if not (isinstance(fault.seconds, int | float) and 0 <= fault.seconds <= MAX_SECONDS):
        raise FaultPlanError(f"{where}.seconds", f"must be a number from 0 to {MAX_SECONDS:g}")


@dataclass(frozen=True)
class RandomFaults:
    """With probability `rate`, a request not covered by a script gets one of `faults`, chosen at random."""

    rate: float
    faults: tuple[Fault, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "faults", tuple(self.faults))
        if isinstance(self.rate, bool) or not isinstance(self.rate, int | float) or not 0 <= self.rate <= 1:
            raise FaultPlanError("random.rate", "must be a number from 0 to 1")
        if self.rate > 0 and not self.faults:
            raise FaultPlanError("random.faults", "must list at least one fault when rate > 0")

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "faults": [fault.to_json() for fault in self.faults]}


@dataclass(frozen=True)
class CallbackPlan:
    """How outcome events are delivered: which transfers fail, with what result, late, twice or never."""

    fail_rate: float = 0.0
    fail_calls: frozenset[str] = frozenset()
    failure: Mapping[str, Any] = field(default_factory=lambda: dict(_DEFAULT_FAILURE))
    delay_ms: float = 0.0
    duplicate_rate: float = 0.0
    drop_rate: float = 0.0
    early_rate: float = 0.0
    late_rate: float = 0.0
    late_ms: float = 0.0
    drop_answered_only: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.drop_answered_only, bool):
            raise FaultPlanError("callbacks.drop_answered_only", "must be true or false")
        for name in _CALLBACK_RATES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise FaultPlanError(f"callbacks.{name}", "must be a number from 0 to 1")
        for name in ("delay_ms", "late_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_SECONDS * 1000:
                raise FaultPlanError(f"callbacks.{name}", f"must be a number from 0 to {MAX_SECONDS * 1000:g}")
        if not isinstance(self.failure, Mapping) or not isinstance(self.failure.get("code"), int):
            raise FaultPlanError("callbacks.failure", "must be an object with an integer code, subCode and a message")
        object.__setattr__(self, "failure", MappingProxyType(dict(self.failure)))
        object.__setattr__(self, "fail_calls", frozenset(self.fail_calls))

    def __hash__(self) -> int:
        rates = tuple(getattr(self, name) for name in _CALLBACK_RATES)
        failure = tuple(sorted(self.failure.items(), key=str))
        return hash((*rates, self.fail_calls, self.delay_ms, self.late_ms, self.drop_answered_only, failure))

    @classmethod
    def from_json(cls, data: object) -> CallbackPlan:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise FaultPlanError("callbacks", "must be an object")
        extra = sorted(str(key) for key in data if key not in _CALLBACK_KEYS)
        if extra:
            raise FaultPlanError(
                f"callbacks.{extra[0]}", f"is not a callbacks field ({', '.join(sorted(_CALLBACK_KEYS))})"
            )
        calls = data.get("fail_calls", [])
        if not isinstance(calls, list) or not all(isinstance(call, str) for call in calls):
            raise FaultPlanError("callbacks.fail_calls", "must be a list of call connection ids")
        failure = data.get("failure", {})
        if not isinstance(failure, Mapping):
            raise FaultPlanError("callbacks.failure", "must be an object with code, subCode and message")
        return cls(
            fail_rate=data.get("fail_rate", 0.0),
            fail_calls=frozenset(calls),
            failure={**_DEFAULT_FAILURE, **failure},
            delay_ms=data.get("delay_ms", 0.0),
            duplicate_rate=data.get("duplicate_rate", 0.0),
            drop_rate=data.get("drop_rate", 0.0),
            early_rate=data.get("early_rate", 0.0),
            late_rate=data.get("late_rate", 0.0),
            late_ms=data.get("late_ms", 0.0),
            drop_answered_only=data.get("drop_answered_only", False),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fail_rate": self.fail_rate,
            "fail_calls": sorted(self.fail_calls),
            "failure": dict(self.failure),
            "delay_ms": self.delay_ms,
            "duplicate_rate": self.duplicate_rate,
            "drop_rate": self.drop_rate,
            "early_rate": self.early_rate,
            "late_rate": self.late_rate,
            "late_ms": self.late_ms,
            "drop_answered_only": self.drop_answered_only,
        }


@dataclass(frozen=True)
class FaultPlan:
    """Latency plus the faults to inject. Immutable: the consumption state lives in `FaultDispenser`."""

    latency_ms: float = 0.0
    seed: int | None = None
    script: Sequence[Fault] = ()
    by_call: Mapping[str, Sequence[Fault]] = field(default_factory=dict)
    random: RandomFaults | None = None
    callbacks: CallbackPlan = field(default_factory=CallbackPlan)

    def __post_init__(self) -> None:
        object.__setattr__(self, "script", tuple(self.script))
        frozen = {str(call): tuple(faults) for call, faults in self.by_call.items()}
        object.__setattr__(self, "by_call", MappingProxyType(frozen))
        latency = self.latency_ms
        if isinstance(latency, bool) or not isinstance(latency, int | float) or not 0 <= latency <= MAX_SECONDS * 1000:
            raise FaultPlanError("latency_ms", f"must be a number from 0 to {MAX_SECONDS * 1000:g}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise FaultPlanError("seed", "must be an integer or null")

    def __hash__(self) -> int:
        return hash((self.latency_ms, self.seed, self.script, tuple(self.by_call.items()), self.random, self.callbacks))

    @property
    def latency(self) -> float:
        """Seconds each executed request stays in progress before it takes effect."""
        return self.latency_ms / 1000

    @classmethod
    def from_json(cls, data: object) -> FaultPlan:
        """Parse and validate the JSON form; `FaultPlanError` names the first bad field."""
        if not isinstance(data, Mapping):
            raise FaultPlanError("(plan)", "must be a JSON object")
        extra = sorted(str(key) for key in data if key not in _PLAN_KEYS)
        if extra:
            raise FaultPlanError(extra[0], f"is not a fault plan field (expected {', '.join(sorted(_PLAN_KEYS))})")
        latency = data.get("latency_ms", 0)
        if isinstance(latency, bool) or not isinstance(latency, int | float) or not math.isfinite(latency):
            raise FaultPlanError("latency_ms", "must be a number")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise FaultPlanError("seed", "must be an integer or null")
        script = _fault_list(data.get("script", []), "script")
        by_call_data = data.get("by_call", {})
        if not isinstance(by_call_data, Mapping):
            raise FaultPlanError("by_call", "must be an object of callConnectionId to a list of faults")
        by_call = {str(call): _fault_list(faults, f"by_call[{call!r}]") for call, faults in by_call_data.items()}
        return cls(
            latency_ms=float(latency),
            seed=seed,
            script=script,
            by_call=by_call,
            random=_random_faults(data.get("random")),
            callbacks=CallbackPlan.from_json(data.get("callbacks")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "seed": self.seed,
            "script": [fault.to_json() for fault in self.script],
            "by_call": {call: [fault.to_json() for fault in faults] for call, faults in self.by_call.items()},
            "random": None if self.random is None else self.random.to_json(),
            "callbacks": self.callbacks.to_json(),
        }


def _fault_list(data: object, where: str) -> tuple[Fault, ...]:
    if not isinstance(data, list):
        raise FaultPlanError(where, "must be a list of faults")
    return tuple(Fault.from_json(item, f"{where}[{index}]") for index, item in enumerate(data))


def _random_faults(data: object) -> RandomFaults | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise FaultPlanError("random", "must be an object with rate and faults")
    extra = sorted(str(key) for key in data if key not in {"rate", "faults"})
    if extra:
        raise FaultPlanError(f"random.{extra[0]}", "is not a property of random (expected rate, faults)")
    rate = data.get("rate")
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise FaultPlanError("random.rate", "must be a number from 0 to 1")
    return RandomFaults(float(rate), _fault_list(data.get("faults", []), "random.faults"))


class FaultDispenser:
    """Hands out the plan's faults, one decision per transfer request, in arrival order."""

    def __init__(self, plan: FaultPlan) -> None:
        self.load(plan)

    def load(self, plan: FaultPlan) -> None:
        """Replace the plan and restart its scripts and its random sequence."""
        self.plan = plan
        self._script = deque(plan.script)
        self._by_call = {call: deque(faults) for call, faults in plan.by_call.items()}
        # Not security-relevant: a seeded generator makes random fault runs reproducible.
        self._random = random.Random(plan.seed)

    def next_for(self, call_connection_id: str) -> Fault | None:
        queue = self._by_call.get(call_connection_id)
        if queue:
            return queue.popleft()
        if self._script:
            return self._script.popleft()
        chance = self.plan.random
        if chance is not None and chance.rate > 0 and self._random.random() < chance.rate:
            return self._random.choice(chance.faults)
        return None

    def remaining(self) -> dict[str, Any]:
        return {
            "script": len(self._script),
            "by_call": {call: len(queue) for call, queue in self._by_call.items()},
        }
