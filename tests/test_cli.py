"""The command line as a user runs it: enqueue, status, and the demo end to end."""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.ledger import State, SyncLedger, op_count_by_state


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    return {
        "ACS_TRANSFER_HOME": str(tmp_path / "home"),
        "ACS_CONNECTION_STRING": f"endpoint=http://127.0.0.1:9/;accesskey={key}",
        "CELERY_BROKER_URL": "filesystem://",
        "LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "LOG_LEVEL": "WARNING",
    }


def test_enqueue_prints_the_job_id_and_status_shows_it(env: dict[str, str]) -> None:
    runner = CliRunner()
    arguments = [
        "enqueue",
        "--call-connection-id",
        "call-cli",
        "--target",
        "4:+14255550123",
        "--sip-header",
        "X-MS-Custom-Ticket=4711",
        "--voip-header",
        "team=blue",
        "--idempotency-key",
        "cli-1",
    ]
    first = runner.invoke(main, arguments, env=env)
    assert first.exit_code == 0, first.output
    job_id = first.stdout.strip()
    again = runner.invoke(main, arguments, env=env)
    assert again.exit_code == 0
    assert again.stdout.strip() == job_id
    assert "existing job" in again.stderr
    shown = runner.invoke(main, ["status", job_id, "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.stdout)
    assert document["state"] == State.QUEUED
    assert document["idempotency_key"] == "cli-1"
    assert [step["to"] for step in document["history"]] == [State.QUEUED]
    text = runner.invoke(main, ["status", job_id], env=env)
    assert "request id" in text.stdout
    assert document["request_id"] in text.stdout
    messages = list((Path(env["ACS_TRANSFER_HOME"]) / "broker" / "queue").glob("*.msg"))
    assert len(messages) == 1  # the second enqueue published nothing
    assert document["lane"] == "live"


def test_enqueue_takes_a_lane(env: dict[str, str]) -> None:
    arguments = ["enqueue", "--call-connection-id", "call-bulk", "--target", "4:+14255550123", "--lane", "bulk"]
    done = CliRunner().invoke(main, arguments, env=env)
    assert done.exit_code == 0, done.output
    shown = CliRunner().invoke(main, ["status", done.stdout.strip(), "--json"], env=env)
    assert json.loads(shown.stdout)["lane"] == "bulk"
    wrong = CliRunner().invoke(main, [*arguments[:-1], "fast"], env=env)
    assert wrong.exit_code == 2
    assert "'fast' is not one of 'live', 'bulk'" in wrong.output


def test_enqueue_refuses_a_key_that_already_names_another_call(env: dict[str, str]) -> None:
    runner = CliRunner()
    arguments = ["enqueue", "--target", "4:+14255550123", "--idempotency-key", "cli-2"]
    first = runner.invoke(main, [*arguments, "--call-connection-id", "call-A"], env=env)
    assert first.exit_code == 0, first.output
    second = runner.invoke(main, [*arguments, "--call-connection-id", "call-B"], env=env)
    assert second.exit_code != 0
    assert second.stdout == ""  # no job id: nothing was enqueued
    (line,) = second.stderr.strip().splitlines()  # one clear line, no traceback
    assert "'cli-2' already names job" in line
    assert first.stdout.strip() in line
    ledger = SyncLedger(env["LEDGER_URL"])
    assert ledger.run(op_count_by_state, None) == {State.QUEUED: 1}
    ledger.close()


def test_enqueue_rejects_bad_input_naming_each_field_and_writes_nothing(env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        main,
        [
            "enqueue",
            "--call-connection-id",
            "call-cli",
            "--target",
            "4:5550123",
            "--source-caller-id",
            "12345",
            "--sip-header",
            "X-Other=1",
            "--callback-uri",
            "http://example.com/cb",
        ],
        env=env,
    )
    assert result.exit_code == 2
    errors = result.stderr
    for field in (
        "targetParticipant",
        "sourceCallerIdNumber",
        "customCallingContext.sipHeaders",
        "operationCallbackUri",
    ):
        assert field in errors, errors
    ledger = SyncLedger(env["LEDGER_URL"])
    assert ledger.run(op_count_by_state, None) == {}
    ledger.close()


def test_malformed_header_option_is_a_usage_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        main, ["enqueue", "--call-connection-id", "c", "--target", "4:+14255550123", "--sip-header", "novalue"], env=env
    )
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.output


def test_status_of_an_unknown_job_fails_clearly(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["status", "no-such-job"], env=env)
    assert result.exit_code == 1
    assert "no job 'no-such-job'" in result.output


def processes_with(text: str) -> list[int]:
    """Processes whose environment mentions `text` (the demo's folder is in its children's environment)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if text.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_demo_runs_end_to_end_and_leaves_no_process_behind(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo", "--jobs", "60", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "calls transferred twice                   0" in completed.stdout
    assert "result: OK" in completed.stdout
    home = re.search(r" in (\S+acs-transfer-demo-\S+)", completed.stdout)
    assert home is not None
    assert processes_with(home.group(1)) == []


def test_prune_reports_what_it_deleted_and_refuses_a_zero_age(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["prune", "--older-than", "30"], env=env)
    assert result.exit_code == 0, result.output
    assert "deleted 0 finished jobs older than 30 days" in result.stdout
    refused = CliRunner().invoke(main, ["prune", "--older-than", "0"], env=env)
    assert refused.exit_code == 2
