"""Secrets never reach logs, errors or reprs; every attempt and transition is a structured event."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import aiohttp
import pytest
import structlog

from worker.acs.client import AcsClient
from worker.config import AcsCredentials, Settings
from worker.deliver.transfer import Context, send_job
from worker.emulator import EmulatorConfig, start_emulator
from worker.errors import ConfigError
from worker.ledger import Ledger, State, SyncLedger
from worker.logs import register_secret, scrub_secrets
from worker.request.job import prepare_job
from worker.request.models import parse_transfer


def secret_forms(key: bytes, connection_string: str) -> list[str]:
    encoded = base64.b64encode(key).decode()
    return [encoded, key.hex(), connection_string, "Signature=", "HMAC-SHA256"]


async def test_a_full_run_with_faults_and_a_rejected_signature_logs_no_secret(sqlite_url: str) -> None:
    key, wrong_key = secrets.token_bytes(32), secrets.token_bytes(32)
    async with await start_emulator(EmulatorConfig(access_key=key)) as emulator:
        plan = {"by_call": {"call-a": [{"kind": "status", "status": 503, "stage": "after", "retry_after": 0.1}]}}
        async with aiohttp.ClientSession() as session:
            await session.put(f"{emulator.url}/_emulator/faults", json=plan)
        captured: list[dict[str, Any]] = []
        for call, signing_key in (("call-a", key), ("call-b", wrong_key)):
            connection_string = f"endpoint={emulator.url}/;accesskey={base64.b64encode(signing_key).decode()}"
            settings = Settings(acs_connection_string=connection_string, ledger_url=sqlite_url, backoff_base=0.05)
            register_secret(settings.acs.access_key)
            register_secret(connection_string)
            ledger = await Ledger.open(sqlite_url)
            client = AcsClient(settings.acs, settings.api_version, 1, 2, 4)
            request = parse_transfer({"callConnectionId": call, "targetParticipant": "4:+15551234567"})
            sync = SyncLedger(sqlite_url)
            ((job, _),) = sync.create_jobs([prepare_job(request)])
            sync.close()
            with structlog.testing.capture_logs(
                processors=[structlog.contextvars.merge_contextvars, scrub_secrets]
            ) as logs:
                done = await send_job(job.id, Context(settings, ledger, client, "w"))
            captured += logs
            assert done is not None
            await client.close()
            await ledger.close()
            text = json.dumps(captured, default=str) + repr(settings) + repr(client) + repr(done)
            for form in secret_forms(signing_key, connection_string):
                assert form not in text, form
        assert {entry["event"] for entry in captured} >= {"acs.attempt", "job.transition"}
        states = [entry["to_state"] for entry in captured if entry["event"] == "job.transition"]
        assert states[-1] == State.FAILED  # the wrong key: 401 is permanent, and explained
        assert any(entry.get("status") == 401 for entry in captured)


def test_registered_secrets_are_scrubbed_wherever_they_appear() -> None:
    key = secrets.token_bytes(24)
    register_secret(key)
    leaked = {"event": "oops", "detail": f"key was {base64.b64encode(key).decode()}", "nested": [key.hex()]}
    scrubbed = scrub_secrets(None, "info", leaked)
    assert base64.b64encode(key).decode() not in json.dumps(scrubbed)
    assert key.hex() not in json.dumps(scrubbed)
    assert "***" in scrubbed["detail"]


def test_settings_and_credentials_hide_secrets() -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    connection_string = f"endpoint=https://x.communication.azure.com/;accesskey={key}"
    settings = Settings(acs_connection_string=connection_string, ledger_url="postgresql://app:pw-123456@db/acs")
    shown = repr(settings) + repr(settings.acs) + str(settings.acs)
    assert key not in shown
    assert "pw-123456" not in shown
    assert "x.communication.azure.com" in repr(settings.acs)


@pytest.mark.parametrize(
    "text",
    [
        "endpoint=https://x/",
        "accesskey=abc",
        "endpoint=ftp://x/;accesskey=aGVsbG8=",
        "endpoint=https://x/;accesskey=!!",
    ],
)
def test_bad_connection_strings_are_explained_without_echoing_the_key(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AcsCredentials.from_connection_string(text)
    assert "ACS_CONNECTION_STRING" in str(caught.value)
    assert "!!" not in str(caught.value)
    assert "aGVsbG8=" not in str(caught.value)
