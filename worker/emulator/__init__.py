"""A local Azure Communication Services emulator for Call Automation "Transfer To Participant".

Implements ``POST /calling/callConnections/{id}:transferToParticipant`` as ACS documents it (HMAC auth or a
Microsoft Entra ID token from its own token endpoint, api-version, swagger body schema, the repeatability
contract) plus a fault plan, an effects ledger and a request log under ``/_emulator/*``, so tests, the demo and
benchmarks can run against it instead of ACS.

    emulator = await start_emulator(EmulatorConfig(access_key=key))
    ...  # send requests to emulator.url
    assert emulator.state.effects.calls_with_more_than_one_effect() == []
    await emulator.close()
"""

from __future__ import annotations

from worker.emulator.answers import EmulatorAnswer
from worker.emulator.config import DEFAULT_API_VERSIONS, EmulatorConfig
from worker.emulator.effects import EffectsLedger, TransferEffect
from worker.emulator.faults import Fault, FaultPlan, FaultPlanError, RandomFaults
from worker.emulator.runner import Emulator, run_emulator, start_emulator
from worker.emulator.server import STATE, create_emulator_app
from worker.emulator.state import EmulatorState, LoggedRequest

__all__ = [
    "DEFAULT_API_VERSIONS",
    "STATE",
    "EffectsLedger",
    "Emulator",
    "EmulatorAnswer",
    "EmulatorConfig",
    "EmulatorState",
    "Fault",
    "FaultPlan",
    "FaultPlanError",
    "LoggedRequest",
    "RandomFaults",
    "TransferEffect",
    "create_emulator_app",
    "run_emulator",
    "start_emulator",
]
