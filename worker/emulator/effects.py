"""The effects ledger: every transfer that took effect, the ground truth tests check for doubles.

One entry per (callConnectionId, requestId) with how many times it took effect (the call moved); counts per
call connection are kept too, because a doubled transfer under two different request ids is the bug the
worker must never cause. Executions whose transfer failed (``CallTransferFailed``: the call did not move) are
kept apart, per request id: they are not effects.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TransferEffect:
    call_connection_id: str
    request_id: str | None
    body: Any
    effects: int = 0
    effect_times: list[float] = field(default_factory=list)

    @property
    def first_effect_at(self) -> float:
        return self.effect_times[0]

    @property
    def last_effect_at(self) -> float:
        return self.effect_times[-1]

    def to_json(self, body: bool = True) -> dict[str, Any]:
        out = {
            "callConnectionId": self.call_connection_id,
            "requestId": self.request_id,
            "body": self.body,
            "effects": self.effects,
            "firstEffectAt": self.first_effect_at,
            "lastEffectAt": self.last_effect_at,
        }
        if not body:
            del out["body"]
        return out


class EffectsLedger:
    def __init__(self) -> None:
        self._transfers: dict[tuple[str, str | None], TransferEffect] = {}
        self._by_call: Counter[str] = Counter()
        self._failed: Counter[tuple[str, str | None]] = Counter()

    def record_failed(self, call_connection_id: str, request_id: str | None) -> None:
        """An execution whose transfer failed: accepted, but the call did not move."""
        self._failed[(call_connection_id, request_id)] += 1

    def failed_for(self, call_connection_id: str, request_id: str | None) -> int:
        return self._failed[(call_connection_id, request_id)]

    def record(self, call_connection_id: str, request_id: str | None, body: Any, now: float) -> TransferEffect:
        key = (call_connection_id, request_id)
        entry = self._transfers.get(key)
        if entry is None:
            entry = self._transfers[key] = TransferEffect(call_connection_id, request_id, body)
        entry.effects += 1
        entry.effect_times.append(now)
        self._by_call[call_connection_id] += 1
        return entry

    def clear(self) -> None:
        self._transfers.clear()
        self._by_call.clear()
        self._failed.clear()

    @property
    def transfers(self) -> list[TransferEffect]:
        """In order of first effect."""
        return list(self._transfers.values())

    @property
    def total_effects(self) -> int:
        return sum(self._by_call.values())

    def effects_for_call(self, call_connection_id: str) -> int:
        return self._by_call[call_connection_id]

    def effects_for(self, call_connection_id: str, request_id: str | None) -> int:
        entry = self._transfers.get((call_connection_id, request_id))
        return 0 if entry is None else entry.effects

    def calls_with_more_than_one_effect(self) -> list[str]:
        return [call for call, count in self._by_call.items() if count > 1]

    def to_json(self, bodies: bool = True) -> dict[str, Any]:
        """Everything; without `bodies` the transfers leave out their request bodies (a large run's audit)."""
        return {
            "transfers": [entry.to_json(bodies) for entry in self._transfers.values()],
            "totalEffects": self.total_effects,
            "effectsByCall": dict(self._by_call),
            "callsWithMoreThanOneEffect": self.calls_with_more_than_one_effect(),
            "failedTransfers": [
                {"callConnectionId": call, "requestId": request_id, "executions": count}
                for (call, request_id), count in self._failed.items()
            ],
        }
