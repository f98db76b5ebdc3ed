"""Microsoft Entra ID authentication end to end: the real azure-identity credentials against the emulator's token
endpoint (served over TLS, as azure-identity requires an https authority), and real worker processes.

The worker's credential is DefaultAzureCredential configured as a service principal through the environment
(AZURE_AUTHORITY_HOST pointing at the emulator, SSL_CERT_FILE trusting its self-signed certificate).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.communication.callautomation import CallAutomationClient, PhoneNumberIdentifier
from azure.identity import ClientSecretCredential as SyncClientSecretCredential
from azure.identity.aio import ClientSecretCredential, WorkloadIdentityCredential
from click.testing import CliRunner

from tests.test_emulator import _self_signed_certificate
from worker.acs.client import AcsClient, Outcome
from worker.acs.entra import SCOPE, AccessTokens, TokenUnavailable
from worker.cli import main
from worker.config import DEFAULT_API_VERSION, EntraIdEndpoint, Settings
from worker.emulator import Emulator, EmulatorConfig, FaultPlan, start_emulator
from worker.emulator.entra import AUDIENCE, DEFAULT_TENANT, REVOKED, EntraConfig, EntraIssuer
from worker.errors import ConfigError
from worker.ledger import SETTLED_STATES, Job, State
from worker.processes import child_env, free_port, spawn_worker, stop
from worker.produce.producer import Producer

KEY = b"k" * 32
CLIENT_ID = "acs-transfer-test-app"
SECRET = "client-secret-that-must-never-be-logged"
AZURE_VARIABLES = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST")


@dataclass
class Authority:
    """An emulator serving both ACS and the token endpoint over TLS, and the certificate that trusts it."""

    emulator: Emulator
    cert_file: Path

    @property
    def issuer(self) -> EntraIssuer:
        return self.emulator.state.entra

    @property
    def tenant(self) -> str:
        return self.issuer.config.tenant_id

    def credential(self, secret: str = SECRET) -> ClientSecretCredential:
        return ClientSecretCredential(
            self.tenant, CLIENT_ID, secret, authority=self.emulator.url, connection_verify=str(self.cert_file)
        )

    def worker_env(self, settings: Settings, secret: str = SECRET, level: str = "INFO") -> dict[str, str]:
        env = child_env({**settings.to_env(), "LOG_FORMAT": "json", "LOG_LEVEL": level})
        for variable in ("ACS_CONNECTION_STRING", *AZURE_VARIABLES):
            env.pop(variable, None)
        return {
            **env,
            "AZURE_AUTHORITY_HOST": self.emulator.url,
            "AZURE_TENANT_ID": self.tenant,
            "AZURE_CLIENT_ID": CLIENT_ID,
            "AZURE_CLIENT_SECRET": secret,
            "SSL_CERT_FILE": str(self.cert_file),
        }


async def _authority(tmp_path: Path, token_lifetime: int) -> Authority:
    cert_file, key_file = _self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    entra = EntraConfig(clients={CLIENT_ID: SECRET}, token_lifetime=token_lifetime)
    emulator = await start_emulator(EmulatorConfig(access_key=KEY, entra=entra), ssl_context=context)
    return Authority(emulator, cert_file)


@pytest.fixture
async def authority(tmp_path: Path) -> AsyncIterator[Authority]:
    found = await _authority(tmp_path, token_lifetime=3600)
    yield found
    await found.emulator.close()


@pytest.fixture
async def short_lived(tmp_path: Path) -> AsyncIterator[Authority]:
    """Tokens that expire every four seconds."""
    found = await _authority(tmp_path, token_lifetime=4)
    yield found
    await found.emulator.close()


# --- configuration --------------------------------------------------------------------------------------------


def test_exactly_one_of_the_access_key_and_the_entra_id_endpoint() -> None:
    connection_string = "endpoint=https://acs.example/;accesskey=a2V5"
    with pytest.raises(ConfigError, match=r"ACS_CONNECTION_STRING.*ACS_ENDPOINT"):
        Settings(acs_connection_string=connection_string, acs_endpoint="https://acs.example").check()
    with pytest.raises(ConfigError, match=r"ACS_CONNECTION_STRING.*ACS_ENDPOINT"):
        _ = Settings().acs_auth
    assert Settings(acs_endpoint="https://acs.example.communication.azure.com/").acs_auth == EntraIdEndpoint(
        "https://acs.example.communication.azure.com"
    )
    assert Settings(acs_connection_string=connection_string).acs_auth.endpoint == "https://acs.example"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("http://acs.example.communication.azure.com", "must use https"),
        ("ftp://acs.example", "must be https://"),
        ("https://acs.example/calling", "without a path"),
        ("https://user:pw-secret@acs.example", "must be https://"),
        ("https://acs.example:99999", "is not a URL"),
    ],
)
def test_a_bad_entra_id_endpoint_is_refused_by_name(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="ACS_ENDPOINT") as caught:
        Settings.from_env({"ACS_ENDPOINT": value})
    assert problem in str(caught.value)
    assert "pw-secret" not in str(caught.value)


def test_plain_http_is_allowed_only_to_a_loopback_host() -> None:
    assert Settings(acs_endpoint="http://127.0.0.1:8089").acs_endpoint == "http://127.0.0.1:8089"
    assert Settings(acs_endpoint="http://[::1]:8089").acs_endpoint == "http://[::1]:8089"


# --- the token cache ------------------------------------------------------------------------------------------


async def test_concurrent_jobs_share_one_token_request(authority: Authority) -> None:
    tokens = AccessTokens(authority.credential())
    try:
        got = await asyncio.gather(*(tokens.get() for _ in range(200)))
    finally:
        await tokens.close()
    assert len(set(got)) == 1
    assert authority.issuer.issued == 1
    assert authority.issuer.verify(got[0], time.time()) is None
    assert got[0] not in repr(tokens)


async def test_a_short_lived_token_is_refreshed_before_it_expires(short_lived: Authority) -> None:
    tokens = AccessTokens(short_lived.credential())
    used: set[str] = set()
    started = time.monotonic()
    try:
        while time.monotonic() - started < 9:
            token = await tokens.get()
            # What ACS would say on arrival a moment later: never an expired token.
            assert short_lived.issuer.verify(token, time.time() + 1) is None
            used.add(token)
            await asyncio.sleep(0.05)
    finally:
        await tokens.close()
    # Four-second tokens over nine seconds: a new one after each expiry, never one per call (~180 calls).
    assert 2 <= short_lived.issuer.issued <= 4
    assert len(used) == short_lived.issuer.issued


async def test_a_wrong_client_secret_is_one_line_that_names_the_cause_and_not_the_secret(
    authority: Authority,
) -> None:
    tokens = AccessTokens(authority.credential(secret="wrong-secret-value"))
    try:
        with pytest.raises(TokenUnavailable) as caught:
            await tokens.get()
    finally:
        await tokens.close()
    message = str(caught.value)
    assert "AADSTS7000215" in message
    assert "\n" not in message
    assert "wrong-secret-value" not in message
    assert authority.issuer.refused == 1


# --- the emulator's verification and the official SDK -------------------------------------------------------


def test_the_emulator_accepts_only_its_own_unexpired_tokens_for_acs() -> None:
    issuer = EntraIssuer(EntraConfig(clients={CLIENT_ID: SECRET}, token_lifetime=60))
    now = time.time()
    token = issuer.issue(CLIENT_ID, now)
    assert issuer.verify(token, now) is None
    foreign = EntraIssuer(EntraConfig(tenant_id=issuer.config.tenant_id)).issue(CLIENT_ID, now)
    assert issuer.verify(foreign, now) == "the token's signature does not match"
    other_tenant = EntraIssuer(EntraConfig(key=issuer.key, tenant_id="another")).issue(CLIENT_ID, now)
    assert issuer.verify(other_tenant, now) == "the token was not issued by this tenant"
    assert issuer.verify(issuer.issue(CLIENT_ID, now - 120), now) == "the token has expired"
    assert "not valid" in (issuer.verify("not-a-jwt", now) or "")
    issuer.revoke_all()
    assert issuer.verify(token, now) == REVOKED
    status, body = issuer.grant(issuer.config.tenant_id, {"grant_type": "client_credentials", "scope": "x"})
    assert (status, body["error"]) == (400, "invalid_scope")
    status, body = issuer.grant(
        issuer.config.tenant_id,
        {"grant_type": "client_credentials", "scope": f"{AUDIENCE}/.default", "client_id": CLIENT_ID},
    )
    assert (status, body["error"]) == (401, "invalid_client")


async def test_the_official_sdk_with_a_token_credential_is_accepted(authority: Authority) -> None:
    def transfer() -> None:
        credential = SyncClientSecretCredential(
            authority.tenant,
            CLIENT_ID,
            SECRET,
            authority=authority.emulator.url,
            disable_instance_discovery=True,
            connection_verify=str(authority.cert_file),
        )
        client = CallAutomationClient(
            authority.emulator.url,
            credential,
            api_version=DEFAULT_API_VERSION,
            connection_verify=str(authority.cert_file),
        )
        client.get_call_connection("sdk-entra").transfer_call_to_participant(PhoneNumberIdentifier("+15551234567"))

    await asyncio.to_thread(transfer)
    assert authority.emulator.state.effects.effects_for_call("sdk-entra") == 1
    assert authority.issuer.issued == 1


# --- real workers ---------------------------------------------------------------------------------------------


@pytest.fixture
def worker_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop(process)


def _settings(tmp_path: Path, authority: Authority, broker_url: str, ledger_url: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        acs_endpoint=authority.emulator.url,
        broker_url=broker_url,
        ledger_url=ledger_url,
        queue=f"acs-test-{uuid.uuid4().hex[:10]}",
        request_timeout=3.0,
        backoff_base=0.05,
        backoff_cap=0.5,
        claim_lease=1.0,
        sweep_interval=0.5,
        republish_after=1.5,
        worker_concurrency=16,
    )


async def _wait_for(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _log_events(log_file: Path) -> list[dict[str, Any]]:
    events = []
    for line in log_file.read_text().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


async def test_a_campaign_of_1000_jobs_under_entra_id_with_tokens_expiring_every_few_seconds(
    short_lived: Authority,
    tmp_path: Path,
    rabbitmq_url: str,
    postgres_url: str,
    worker_processes: list[subprocess.Popen[bytes]],
) -> None:
    settings = _settings(tmp_path, short_lived, rabbitmq_url, postgres_url)
    log_file = tmp_path / "worker.log"
    worker_processes.append(spawn_worker(short_lived.worker_env(settings), log_file, concurrency=16))
    source = tmp_path / "campaign.csv"
    source.write_text(
        "ticket,callConnectionId,targetParticipant\n"
        + "".join(f"T-{n},entra-call-{n},4:+1425555{n:04d}\n" for n in range(1000))
    )
    # Each transfer takes 50 ms at the emulator: the campaign outlasts several token lifetimes.
    short_lived.emulator.state.set_fault_plan(FaultPlan(latency_ms=50))
    started = time.monotonic()
    submitted = CliRunner().invoke(
        main,
        ["submit", str(source), "--campaign", "entra", "--key-column", "ticket"],
        env={**settings.to_env(), "LOG_LEVEL": "WARNING"},
    )
    assert submitted.exit_code == 0, submitted.output
    producer = Producer(settings)
    try:
        counts: dict[str, int] = {}

        def settled() -> bool:
            counts.update(_counts(producer))
            return sum(counts.get(state, 0) for state in SETTLED_STATES) == 1000

        await _wait_for(settled, "1,000 jobs to settle", timeout=240)
    finally:
        producer.close()
    elapsed = time.monotonic() - started

    assert counts.get(State.ACCEPTED) == 1000, counts
    effects = short_lived.emulator.state.effects
    assert effects.total_effects == 1000
    assert effects.calls_with_more_than_one_effect() == []
    statuses = [entry.status for entry in short_lived.emulator.state.requests]
    assert statuses.count(202) == 1000
    assert statuses.count(401) == 0, "a token expired on its way to ACS"
    assert len(statuses) == 1000, "every job sent once"
    # A token per four-second lifetime (plus the one that proved the credential at start), not one per job.
    issued = short_lived.issuer.issued
    assert elapsed > 8, "the campaign must outlast two token lifetimes to show the refresh"
    assert 3 <= issued <= elapsed / 4 + 3, (issued, elapsed)
    events = _log_events(log_file)
    assert not [e for e in events if e.get("event") == "task.infrastructure_error"]
    print(f"\n1,000 jobs under Entra ID in {elapsed:.1f}s with {issued} tokens issued (lifetime 4 s)")


def _counts(producer: Producer) -> dict[str, int]:
    from worker.ledger import op_count_by_state  # noqa: PLC0415

    result: dict[str, int] = producer.ledger.run(op_count_by_state, "entra")
    return result


async def test_a_wrong_client_secret_refuses_to_start_the_worker_with_one_line(
    authority: Authority, tmp_path: Path, rabbitmq_url: str, sqlite_url: str
) -> None:
    settings = _settings(tmp_path, authority, rabbitmq_url, sqlite_url)
    env = authority.worker_env(settings, secret="a-wrong-secret-value")
    command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "WARNING", "--concurrency", "2"]
    result = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    refusals = [line for line in output.splitlines() if "worker.refused" in line]
    assert len(refusals) == 1, output
    reason = json.loads(refusals[0])["reason"]
    assert "AADSTS7000215: Invalid client secret provided" in reason
    assert "Traceback" not in output
    assert "a-wrong-secret-value" not in output
    assert authority.emulator.state.requests_seen == 0


async def test_no_token_leaves_the_job_unsent_and_retries_it_until_one_can_be_had(
    short_lived: Authority,
    tmp_path: Path,
    rabbitmq_url: str,
    postgres_url: str,
    worker_processes: list[subprocess.Popen[bytes]],
) -> None:
    settings = _settings(tmp_path, short_lived, rabbitmq_url, postgres_url)
    log_file = tmp_path / "worker.log"
    worker_processes.append(spawn_worker(short_lived.worker_env(settings), log_file, concurrency=4))
    producer = Producer(settings)
    try:
        first = producer.enqueue({"callConnectionId": "before", "targetParticipant": "4:+15551234567"}).job_id
        await _wait_for(lambda: producer.ledger.get(first).state == State.ACCEPTED, "the first job")
        # The secret is rotated at the authority: once the cached token expires, no new one can be had.
        short_lived.issuer.clients[CLIENT_ID] = "rotated"
        await asyncio.sleep(5)
        job_id = producer.enqueue({"callConnectionId": "during", "targetParticipant": "4:+15551234567"}).job_id

        def refusals() -> list[dict[str, Any]]:
            return [e for e in _log_events(log_file) if e.get("event") == "task.infrastructure_error"]

        await _wait_for(lambda: len(refusals()) >= 2, "the message to be retried")
        job: Job = producer.ledger.get(job_id)
        assert (job.state, job.attempts, job.first_sent) == (State.QUEUED, 0, None)
        assert [e for e in short_lived.emulator.state.requests if e.call_connection_id == "during"] == []
        assert "TokenUnavailable" in refusals()[0]["error"]
        assert "AADSTS7000215" in refusals()[0]["error"]

        short_lived.issuer.clients[CLIENT_ID] = SECRET  # the operator fixes the credential
        await _wait_for(lambda: producer.ledger.get(job_id).state == State.ACCEPTED, "the job to be sent", 90)
        assert len([e for e in short_lived.emulator.state.requests if e.call_connection_id == "during"]) == 1
    finally:
        producer.close()
    assert SECRET not in log_file.read_text()


async def test_a_revoked_token_is_renewed_once_and_the_same_request_resent(
    authority: Authority,
    tmp_path: Path,
    rabbitmq_url: str,
    sqlite_url: str,
    worker_processes: list[subprocess.Popen[bytes]],
) -> None:
    settings = _settings(tmp_path, authority, rabbitmq_url, sqlite_url)
    log_file = tmp_path / "worker.log"
    env = authority.worker_env(settings, level="DEBUG")
    worker_processes.append(spawn_worker(env, log_file, concurrency=4))
    producer = Producer(settings)
    try:
        first = producer.enqueue({"callConnectionId": "first", "targetParticipant": "4:+15551234567"}).job_id
        await _wait_for(lambda: producer.ledger.get(first).state == State.ACCEPTED, "the first job")
        issued_before = authority.issuer.issued
        assert authority.issuer.revoke_all() >= 1
        job_id = producer.enqueue({"callConnectionId": "second", "targetParticipant": "4:+15551234567"}).job_id
        await _wait_for(lambda: producer.ledger.get(job_id).state in SETTLED_STATES, "the second job")
        job = producer.ledger.get(job_id)
    finally:
        producer.close()
    assert job.state == State.ACCEPTED
    assert job.attempts == 1
    sent = [e for e in authority.emulator.state.requests if e.call_connection_id == "second"]
    assert [e.status for e in sent] == [401, 202]
    assert len({(e.request_id, e.first_sent) for e in sent}) == 1
    assert authority.issuer.issued == issued_before + 1
    assert [e["event"] for e in _log_events(log_file)].count("acs.token_refused") == 1
    logged = log_file.read_text()
    assert "eyJ" not in logged, "a token (a JWT) was logged"
    assert SECRET not in logged


async def test_the_emulator_command_issues_tokens_to_the_clients_it_is_given(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed_certificate(tmp_path)
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in {"ACS_CONNECTION_STRING", "ACS_ENDPOINT"}}
    command = [sys.executable, "-m", "worker.cli", "emulator", "--port", str(port)]
    command += ["--tls-cert", str(cert_file), "--tls-key", str(key_file)]
    command += ["--entra-client", f"{CLIENT_ID}={SECRET}", "--token-lifetime", "60"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert process.stderr is not None
        lines = [(await asyncio.to_thread(process.stderr.readline)).decode() for _ in range(2)]
        assert lines[1].strip() == f"Microsoft Entra ID authority https://127.0.0.1:{port}, tenant {DEFAULT_TENANT}"
        credential = ClientSecretCredential(
            DEFAULT_TENANT, CLIENT_ID, SECRET, authority=f"https://127.0.0.1:{port}", connection_verify=str(cert_file)
        )
        async with credential:
            token = await credential.get_token_info(SCOPE)
        assert 50 <= token.expires_on - time.time() <= 61
        trusted = ssl.create_default_context(cafile=str(cert_file))
        async with aiohttp.ClientSession() as session:
            response = await session.get(f"https://127.0.0.1:{port}/_emulator/tokens", ssl=trusted)
            assert await response.json() == {"issued": 1, "refused": 0}
    finally:
        stop(process)


async def test_workload_identity_exchanges_its_federated_token_at_the_emulator(
    authority: Authority, tmp_path: Path
) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("projected-service-account-token")
    authority.issuer.clients["workload-app"] = "projected-service-account-token"
    credential = WorkloadIdentityCredential(
        tenant_id=authority.tenant,
        client_id="workload-app",
        token_file_path=str(token_file),
        authority=authority.emulator.url,
        connection_verify=str(authority.cert_file),
    )
    tokens = AccessTokens(credential)
    try:
        token = await tokens.get()
    finally:
        await tokens.close()
    assert authority.issuer.verify(token, time.time()) is None


async def test_a_token_refused_again_after_renewal_fails_as_acs_answered(authority: Authority) -> None:
    # Another emulator, with a key of its own: it refuses every token the authority issues.
    async with await start_emulator(EmulatorConfig(access_key=KEY)) as stranger:
        endpoint = EntraIdEndpoint(stranger.url)
        client = AcsClient(endpoint, DEFAULT_API_VERSION, 1.0, 3.0, 4, tokens=AccessTokens(authority.credential()))
        try:
            body = json.dumps({"targetParticipant": {"rawId": "4:+15551234567"}}).encode()
            answer = await client.transfer("refused-call", body, str(uuid.uuid4()), "Tue, 01 Dec 2026 00:00:00 GMT")
        finally:
            await client.close()
        assert (answer.outcome, answer.status) == (Outcome.PERMANENT, 401)
        assert "signature does not match" in (answer.error_message or "")
        sent = stranger.state.requests
        assert [entry.status for entry in sent] == [401, 401]
        assert len({(entry.request_id, entry.first_sent) for entry in sent}) == 1
        assert stranger.state.effects.total_effects == 0


@pytest.mark.parametrize(("secret", "healthy"), [(SECRET, True), ("a-wrong-secret-value", False)])
async def test_healthcheck_says_which_authentication_and_proves_a_token(
    authority: Authority, tmp_path: Path, secret: str, healthy: bool
) -> None:
    settings = Settings(home=tmp_path, acs_endpoint=authority.emulator.url)
    command = [sys.executable, "-m", "worker.cli", "healthcheck", "--check", "acs"]
    env = authority.worker_env(settings, secret=secret)
    result = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    (line,) = result.stdout.splitlines()
    assert line.startswith("acs     ok" if healthy else "acs     FAIL"), line
    assert f"Microsoft Entra ID (ACS_ENDPOINT) for {authority.emulator.url}" in line or not healthy
    assert ("expires in" in line) if healthy else ("AADSTS7000215" in line)
    assert result.returncode == (0 if healthy else 1)
    assert secret not in result.stdout + result.stderr
