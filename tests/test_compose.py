"""compose.yaml, read as Compose would (no engine runs here), and the commands of its project services run here."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.container import (
    ROOT,
    SECRET_NAME,
    compose,
    dockerfile,
    interpolate,
    run_command,
    service_env,
    spawn_command,
)
from worker.config import ENVIRONMENT
from worker.emulator.config import DEFAULT_RESOURCE_ID
from worker.processes import free_port, stop

#: variables a project service may set besides the settings (the interpreter's own)
NOT_SETTINGS = {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
BACKING = {"rabbitmq", "postgres"}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def _uses_project_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return build is not None and (build == "." or (isinstance(build, dict) and build.get("context") == "."))


def _project_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services.items() if _uses_project_image(service)}


def _command(service: dict[str, Any]) -> list[str]:
    """The service's argv: its own command, else the image's CMD."""
    command = service.get("command")
    if command is None:
        final = dockerfile()[-1]
        return final.instructions[final.index("CMD")].argv()
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    return [interpolate(str(part)) for part in command]


def test_the_stack_has_every_role(services: dict[str, Any]) -> None:
    assert {"rabbitmq", "postgres", "redis", "emulator", "worker", "serve", "flower"} <= set(services)
    project = _project_services(services)
    assert {"emulator", "worker", "serve"} <= set(project)
    # One image for every role: the same build, told apart only by the command.
    assert len({(str(s.get("image")), str(s.get("build"))) for s in project.values()}) == 1


def test_every_project_service_runs_a_command_that_exists(services: dict[str, Any]) -> None:
    roles = {}
    for name, service in _project_services(services).items():
        argv = _command(service)
        result = run_command([*argv, "--help"])
        assert result.returncode == 0, f"{name}: {argv} does not run here: {result.stderr[-2000:]}"
        roles[name] = argv[:4] if argv[0] == "celery" else argv[:2]
    assert roles["worker"] == ["celery", "-A", "worker", "worker"]
    assert roles["serve"] == ["acs-transfer", "serve"]
    assert roles["emulator"] == ["acs-transfer", "emulator"]


def test_workers_start_only_after_healthy_backing_services(services: dict[str, Any]) -> None:
    for name in ("worker", "serve"):
        depends = services[name]["depends_on"]
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a list"
        for backing in BACKING:
            assert depends[backing]["condition"] == "service_healthy", f"{name} does not wait for {backing}"
    # A service_healthy condition on a service without a health check would never be met.
    image_has_healthcheck = dockerfile()[-1].index("HEALTHCHECK") >= 0
    for name, service in services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            if condition.get("condition") == "service_healthy":
                checked = "healthcheck" in services[target] or (
                    _uses_project_image(services[target]) and image_has_healthcheck
                )
                assert checked, f"{name} waits for {target} to be healthy, but {target} has no health check"


def test_project_services_without_a_broker_and_ledger_bring_their_own_healthcheck(services: dict[str, Any]) -> None:
    # The image's check looks at CELERY_BROKER_URL and LEDGER_URL; a role without them would never be healthy.
    for name, service in _project_services(services).items():
        env = service_env(service)
        if not {"CELERY_BROKER_URL", "LEDGER_URL"} <= set(env):
            assert "healthcheck" in service, f"{name} inherits the broker/ledger health check it cannot pass"


def test_project_services_are_configured_only_by_known_variables(services: dict[str, Any]) -> None:
    known = {variable for variable, _ in ENVIRONMENT.values()}
    for name, service in _project_services(services).items():
        unknown = set(service_env(service)) - known - NOT_SETTINGS
        assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"
        assert "env_file" not in service or service["env_file"] is None
    worker = service_env(services["worker"])
    assert urlsplit(worker["CELERY_BROKER_URL"]).hostname == "rabbitmq"
    assert urlsplit(worker["LEDGER_URL"]).hostname == "postgres"
    assert "endpoint=http://emulator:8089/" in worker["ACS_CONNECTION_STRING"]
    # The server verifies outcome events against the emulator's keys, for the emulator's resource.
    serve = service_env(services["serve"])
    assert serve["ACS_RESOURCE_ID"] == DEFAULT_RESOURCE_ID
    assert serve["CALLBACK_JWKS_URL"] == "http://emulator:8089/calling/keys"


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in (*_strings(key), *_strings(value))]
    if isinstance(node, list):
        return [text for item in node for text in _strings(item)]
    return []


def _secrets_in(text: str) -> list[str]:
    """Credentials inside a value: URL passwords and ACS access keys (decoded)."""
    found = [match for match in re.findall(r"://[^/\s:@]+:([^/\s@]+)@", text) if match]
    for key in re.findall(r"accesskey=([A-Za-z0-9+/=]+)", text, re.IGNORECASE):
        found.append(base64.b64decode(key).decode(errors="replace"))
    return found


def test_no_secrets_baked_in_except_local_development_defaults(services: dict[str, Any]) -> None:
    document = compose()
    for raw in _strings(document):
        for secret in _secrets_in(interpolate(raw)):
            assert "local-dev" in secret, f"a real-looking credential in compose.yaml: {raw}"
            # Overridable from the environment: the credential sits in a ${VAR:-default}.
            assert "${" in raw, f"a credential that cannot be overridden: {raw}"
    for name, service in services.items():
        environment = service.get("environment") or {}
        for variable, value in environment.items():
            if SECRET_NAME.search(variable) and variable != "ACS_RESOURCE_ID":
                assert str(value).startswith("${"), f"{name}: {variable} is not taken from the environment"
                default = interpolate(str(value))
                for secret in _secrets_in(default) or [default]:
                    assert "local-dev" in secret, f"{name}: {variable} default is not a local development value"
    # No .env file is committed beside compose.yaml to carry them instead.
    assert not (ROOT / ".env").exists()


def test_readme_scale_command_names_a_scalable_service(services: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"docker compose [^\n`]*--scale (\w[\w-]*)=(\d+)", readme)
    assert commands, "README shows no `docker compose up --scale worker=N`"
    for name, count in commands:
        assert name in services, f"README scales {name}, which compose.yaml does not have"
        service = services[name]
        assert int(count) > 1
        # Replicas cannot share a container name or a fixed host port.
        assert "container_name" not in service
        assert not service.get("ports"), f"{name} publishes host ports: a second replica could not start"
    assert ("worker", "4") in commands


def test_emulator_service_command_and_healthcheck_work_as_written(services: dict[str, Any], tmp_path: Path) -> None:
    emulator = services["emulator"]
    port = free_port()
    # Compose's own argv and health check, on a free port instead of 8089 so nothing here collides.
    argv = [str(port) if part == "8089" else part for part in _command(emulator)]
    argv = ["127.0.0.1" if part == "0.0.0.0" else part for part in argv]
    check = [part.replace(":8089/", f":{port}/") for part in emulator["healthcheck"]["test"][1:]]
    process = spawn_command(argv, service_env(emulator), tmp_path / "emulator.log")
    try:
        deadline = time.monotonic() + 20
        while (result := run_command(check)).returncode != 0:
            assert process.poll() is None, (tmp_path / "emulator.log").read_text()[-2000:]
            assert time.monotonic() < deadline, result.stderr[-2000:]
            time.sleep(0.2)
    finally:
        stop(process)
