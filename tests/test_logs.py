"""Secrets never reach logs, errors or reprs; every attempt and transition is a structured event."""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import kombu
import pytest
import structlog

from worker.acs.client import AcsClient
from worker.config import AcsCredentials, Settings
from worker.deliver.transfer import Context, send_job
from worker.emulator import EmulatorConfig, start_emulator
from worker.errors import ConfigError
from worker.ledger import Ledger, State, SyncLedger
from worker.logs import configure, get_logger, register_secret, scrub_secrets
from worker.processes import child_env, stop
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


def test_library_lines_and_warnings_share_the_stream_the_scrubber_and_the_levels() -> None:
    key = secrets.token_bytes(32)
    settings = Settings(acs_connection_string=f"endpoint=https://x/;accesskey={base64.b64encode(key).decode()}")
    stream = io.StringIO()
    # pytest records each test's warnings with a showwarning of its own; undo an earlier test's capture so that
    # configure() installs logging's over this test's recorder, as it does once in a real process.
    logging.captureWarnings(False)
    try:
        configure("ERROR", "json", stream, library_level="INFO", secrets=settings.secrets())
        logging.getLogger("kombu").info("leaked key %s", base64.b64encode(key).decode())
        logging.getLogger("sqlalchemy.engine").debug("below the library level")
        get_logger("worker.test").warning("below the project's level")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"a warning quoting {key.hex()}", UserWarning, stacklevel=1)
    finally:
        configure()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [("kombu", "info"), ("py.warnings", "warning")]
    assert lines[0]["event"] == "leaked key ***"
    assert key.hex() not in lines[1]["event"]
    assert "***" in lines[1]["event"]


# A real worker on RabbitMQ: Celery's own start-up lines, a warning and a library line quoting secrets.
_WORKER = """
import logging, os, sys, warnings
from celery import signals
from worker import app

@signals.worker_ready.connect
def leak(**_):
    logging.getLogger("kombu").warning("connection string: %s", os.environ["ACS_CONNECTION_STRING"])
    warnings.warn("broker at " + os.environ["CELERY_BROKER_URL"], UserWarning, stacklevel=1)

app.worker_main(sys.argv[1:])
"""


def test_every_line_a_worker_prints_is_json_and_scrubbed(tmp_path: Path, rabbitmq_url: str) -> None:

    key = base64.b64encode(secrets.token_bytes(32)).decode()
    queue = f"acs-logs-{secrets.token_hex(4)}"
    settings = Settings(
        home=tmp_path,
        acs_connection_string=f"endpoint=http://127.0.0.1:9/;accesskey={key}",
        broker_url=rabbitmq_url,
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        queue=queue,
    )
    env = child_env({**settings.to_env(), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
    log = tmp_path / "worker.log"
    command = [sys.executable, "-c", _WORKER, "worker", "-n", f"{queue}@%h", "--loglevel", "INFO", "-c", "2"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(log, "connection string", process)
    finally:
        assert stop(process) == 0
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line, or this raises
    events = {line["event"] for line in lines}
    assert {"worker.banner", "worker.ready", "worker.stopped"} <= events
    assert any(line.get("logger", "").startswith("celery") for line in lines), events  # Celery's own lines
    (leak,) = [line for line in lines if line.get("logger") == "kombu"]
    assert leak["event"] == "connection string: ***"
    assert any(line.get("logger") == "py.warnings" and "broker at amqp://" in line["event"] for line in lines)
    assert key not in text
    with kombu.Connection(rabbitmq_url) as connection:
        for name in (queue, f"{queue}.bulk"):
            connection.default_channel.queue_delete(name)


def _wait_for(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert process.poll() is None, path.read_text()
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.2)
