"""Everything the emulator remembers, in one object that in-process tests can read directly."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from worker.emulator.callbacks import CallbackSender, CallbackSigner
from worker.emulator.config import EmulatorConfig
from worker.emulator.effects import EffectsLedger
from worker.emulator.entra import EntraIssuer
from worker.emulator.faults import Fault, FaultDispenser, FaultPlan
from worker.emulator.repeatability import RepeatabilityStore


@dataclass
class LoggedRequest:
    """One transfer request as seen at the door; filled in as it is answered."""

    at: float
    call_connection_id: str
    request_id: str | None
    first_sent: str | None
    status: int | None = None  # None: no answer (dropped, timed out, or still running)
    repeatability_result: str | None = None
    fault: Fault | None = None
    fault_applied: bool = False
    answered_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        fault: dict[str, Any] | None = None
        if self.fault is not None:
            fault = {"kind": self.fault.kind, "stage": self.fault.stage, "applied": self.fault_applied}
            if self.fault.status is not None:
                fault["status"] = self.fault.status
        return {
            "at": self.at,
            "callConnectionId": self.call_connection_id,
            "requestId": self.request_id,
            "firstSent": self.first_sent,
            "status": self.status,
            "repeatabilityResult": self.repeatability_result,
            "fault": fault,
            "answeredAt": self.answered_at,
        }


class EmulatorState:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.repeatability = RepeatabilityStore(config.window)
        self.effects = EffectsLedger()
        self.requests: deque[LoggedRequest] = deque(maxlen=config.max_logged_requests)
        self.requests_seen = 0
        #: applied faults by "<status or kind> <stage>", over every request (the log keeps only the latest)
        self.faults_applied: Counter[str] = Counter()
        self.faults = FaultDispenser(config.faults)
        self.callbacks = CallbackSender(CallbackSigner(config.callback_issuer, config.resource_id))
        self.callbacks.reseed(config.faults.seed)
        self.entra = EntraIssuer(config.entra)
        # Handlers still running (latency, hangs): closed explicitly on shutdown, since a handler whose client
        # went away is no longer tracked by aiohttp yet may sleep for a fault's full duration.
        self.running: set[asyncio.Task[Any]] = set()

    @property
    def fault_plan(self) -> FaultPlan:
        return self.faults.plan

    def set_fault_plan(self, plan: FaultPlan) -> None:
        """Replace the plan; its scripts start over and its random sequences are reseeded."""
        self.faults.load(plan)
        self.callbacks.reseed(plan.seed)

    def log(self, entry: LoggedRequest) -> LoggedRequest:
        self.requests.append(entry)
        self.requests_seen += 1
        return entry

    def count_fault(self, entry: LoggedRequest) -> None:
        if entry.fault is not None and entry.fault_applied:
            what = entry.fault.kind if entry.fault.status is None else str(entry.fault.status)
            self.faults_applied[f"{what} {entry.fault.stage}"] += 1

    def reset(self) -> None:
        """Forget records, effects and the request log, and clear the fault plan."""
        self.repeatability.clear()
        self.effects.clear()
        self.requests.clear()
        self.requests_seen = 0
        self.faults_applied.clear()
        self.callbacks.clear()
        self.set_fault_plan(FaultPlan())
