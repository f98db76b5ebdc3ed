"""Campaign reports: one row per job with its final state, ACS's result code and message, attempts, timings."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from tests.stack import Stack
from worker.cli import main
from worker.ledger import State
from worker.produce.reports import COLUMNS


async def test_report_has_every_job_with_its_outcome(make_stack: Callable[..., Any], tmp_path: Path) -> None:
    stack: Stack = await make_stack("filesystem", "sqlite", serve=True)
    failure = {"code": 486, "subCode": 8522, "message": "Target busy"}
    await stack.set_faults(
        {
            # Events come after the 202 is recorded, so every accepted job has its accepted time too.
            "callbacks": {"fail_calls": ["rep-busy"], "failure": failure, "delay_ms": 300},
            "by_call": {
                "rep-gone": [{"kind": "status", "status": 404, "stage": "answer"}],
                "rep-retry": [{"kind": "status", "status": 503, "stage": "before"}],
            },
        }
    )
    stack.start_worker()
    calls = ["rep-ok", "rep-busy", "rep-gone", "rep-retry"]
    ids = {
        call: stack.producer.enqueue(
            {"callConnectionId": call, "targetParticipant": "4:+14255550123"}, campaign="rep", idempotency_key=call
        ).job_id
        for call in calls
    }
    final = {
        "rep-ok": State.TRANSFERRED,
        "rep-busy": State.TRANSFER_FAILED,
        "rep-gone": State.FAILED,
        "rep-retry": State.TRANSFERRED,
    }
    for call, state in final.items():
        await stack.wait_for(lambda c=call, s=state: stack.job(ids[c]).state == s, f"{call} to be {state}")

    env = {**stack.settings.to_env(), "LOG_LEVEL": "WARNING"}
    for name in ("report.csv", "report.json"):
        result = CliRunner().invoke(main, ["campaign", "rep", "--report", str(tmp_path / name)], env=env)
        assert result.exit_code == 0, result.output
        assert "4 jobs written" in result.stdout
        assert "486/8522 Target busy" in result.stdout
    with (tmp_path / "report.csv").open(newline="") as handle:
        rows = {row["call_connection_id"]: row for row in csv.DictReader(handle)}
    assert list(next(iter(rows.values())).keys()) == list(COLUMNS)
    documents = {row["call_connection_id"]: row for row in json.loads((tmp_path / "report.json").read_text())}
    assert set(rows) == set(documents) == set(calls)
    assert documents["rep-ok"]["result_code"] == 200
    assert (documents["rep-busy"]["result_code"], documents["rep-busy"]["result_message"]) == (486, "Target busy")
    assert (documents["rep-gone"]["state"], documents["rep-gone"]["last_status"]) == (State.FAILED, 404)
    assert documents["rep-retry"]["attempts"] == 2
    assert documents["rep-ok"]["attempts"] == 1
    assert documents["rep-ok"]["ms_to_accepted"] >= 0
    assert documents["rep-ok"]["ms_to_outcome"] >= documents["rep-ok"]["ms_to_accepted"]
    assert rows["rep-busy"]["state"] == State.TRANSFER_FAILED
    assert rows["rep-gone"]["last_error"] == "NotFound"
