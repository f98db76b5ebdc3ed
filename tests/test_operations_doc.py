"""docs/operations.md and README's "Deploying" work as written: their manifests agree with the code, every
command they show exists here, and the README's first campaign runs."""

from __future__ import annotations

import re
import shlex
import subprocess
import uuid
from pathlib import Path
from typing import Any

import kombu
import pytest
import yaml

from tests.container import ROOT, compose, dockerfile, run_command
from worker.config import ENVIRONMENT, Settings
from worker.ledger import SyncLedger, op_count_by_state
from worker.ledger.dispatch import op_paced_backlog
from worker.queue.broker import celery_config

OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"
VARIABLES = {variable for variable, _ in ENVIRONMENT.values()}
#: upper-case names in the text that are not settings
NOT_VARIABLES = {"PRECONDITION_FAILED", "LLEN"}
#: azure-identity's own variables, and OpenSSL's
NOT_VARIABLES |= {
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "SSL_CERT_FILE",
}


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def _manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for block in _blocks(OPERATIONS.read_text(), "yaml"):
        for document in yaml.safe_load_all(block):
            found[document["kind"]] = document
    return found


def _deploying_section() -> str:
    return README.read_text().split("\n## Deploying\n", 1)[1].split("\n## ", 1)[0]


def _commands(text: str) -> list[list[str]]:
    """Every `acs-transfer ...` and `celery -A worker ...` command in code blocks and inline code."""
    found = []
    for block in _blocks(text, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            for program in ("acs-transfer ", "celery -A worker "):
                if program in line:
                    found.append(shlex.split(line[line.index(program) :].split("#")[0]))
    for inline in re.findall(r"`((?:acs-transfer|celery -A worker) [^`]*)`", text):
        found.append(shlex.split(inline))
    return found


def test_the_guide_covers_what_operators_ask() -> None:
    text = OPERATIONS.read_text()
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    for needed in ("Many workers", "Autoscaling", "Stopping a worker", "Upgrades", "Capacity planning"):
        assert any(needed in heading for heading in headings), f"no section on {needed}"
    assert "README.md#configuration" in text, "the guide must point at the configuration table"
    assert "bench/throughput.py" in text, "capacity planning does not say where its figures come from"
    assert re.search(r"\d+(\u2013\d+)? transfers a second", text), "capacity planning has no measured throughput"


def test_every_variable_named_in_the_guide_exists() -> None:
    for text in (OPERATIONS.read_text(), _deploying_section()):
        named = set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", text)) | set(
            re.findall(r"\b([A-Z]{3,}_[A-Z0-9_]{3,})\b", text)
        )
        unknown = named - VARIABLES - NOT_VARIABLES
        assert not unknown, f"the text names variables no setting reads: {sorted(unknown)}"


def test_the_keda_example_matches_the_worker() -> None:
    manifests = _manifests()
    scaled, deployment = manifests["ScaledObject"], manifests["Deployment"]
    defaults = Settings()
    config = celery_config(defaults)
    triggers = scaled["spec"]["triggers"]
    # One trigger per lane.
    assert [trigger["metadata"]["queueName"] for trigger in triggers] == [defaults.queue, defaults.bulk_queue]
    for trigger in triggers:
        assert trigger["type"] == "rabbitmq"
        metadata = trigger["metadata"]
        # Counting unacked messages: prefetched and in-flight jobs are still work to do.
        assert metadata["protocol"] == "http"
        assert metadata.get("excludeUnacknowledged", "false") == "false"
        assert int(metadata["value"]) == defaults.worker_concurrency * config["worker_prefetch_multiplier"]
        assert trigger["authenticationRef"]["name"] == manifests["TriggerAuthentication"]["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] >= 1, "scaling to zero would stop the sweeper"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_the_deployment_example_matches_the_image_and_compose() -> None:
    deployment = _manifests()["Deployment"]["spec"]
    pod = deployment["template"]["spec"]
    (container,) = pod["containers"]
    final = dockerfile()[-1]
    healthcheck = final.instructions[final.index("HEALTHCHECK")].argv()
    assert container["readinessProbe"]["exec"]["command"] == healthcheck
    assert "livenessProbe" not in container
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert final.instructions[final.index("USER")].body.split(":")[0].isdigit()
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > Settings().request_timeout
    assert f"{grace}s" == compose()["services"]["worker"]["stop_grace_period"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("source", ["docs/operations.md", "README.md"])
def test_every_command_shown_exists(source: str) -> None:
    text = (ROOT / source).read_text()
    commands = _commands(text if source.startswith("docs") else _deploying_section())
    assert commands
    for argv in commands:
        result = run_command([*argv, "--help"])
        assert result.returncode == 0, f"{shlex.join(argv)}: {result.stderr[-1500:]}"


def test_the_readme_first_campaign_runs_as_written(rabbitmq_url: str, postgres_url: str, tmp_path: Path) -> None:
    (block,) = [b for b in _blocks(_deploying_section(), "sh") if "submit" in b]
    lines = block.replace("\\\n", " ").splitlines()
    # The file is made by the README's own shell lines.
    for line in lines:
        if not line.startswith("docker "):
            subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True)
    submit = next(shlex.split(line[line.index("acs-transfer ") :]) for line in lines if " submit " in line)
    submit = [str(tmp_path / "calls.csv") if part == "/tmp/calls.csv" else part for part in submit]
    queue = f"acs-readme-{uuid.uuid4().hex[:8]}"
    env = {
        "CELERY_BROKER_URL": rabbitmq_url,
        "LEDGER_URL": postgres_url,
        "TRANSFER_QUEUE": queue,
        "ACS_TRANSFER_HOME": str(tmp_path / "home"),
    }
    try:
        result = run_command(submit, env, timeout=120)
        assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
        ledger = SyncLedger(postgres_url)
        try:
            assert ledger.run(op_count_by_state, "first") == {"queued": 500}
            # Paced: the jobs wait in the ledger for the workers' dispatcher, which publishes them at 20/s.
            assert ledger.run(op_paced_backlog) == [("first", 20.0)]
        finally:
            ledger.close()
        campaign = next(shlex.split(line[line.index("acs-transfer ") :]) for line in lines if " campaign " in line)
        shown = run_command([part for part in campaign if part != "--watch"], env)
        assert shown.returncode == 0, shown.stderr
        assert "500" in shown.stdout
    finally:
        with kombu.Connection(rabbitmq_url) as connection:
            for name in (queue, f"{queue}.bulk"):
                kombu.Queue(name, queue_arguments={"x-queue-type": "quorum"})(connection.default_channel).delete()
