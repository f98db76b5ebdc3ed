"""The README's configuration table and `Settings` cannot drift, and `acs-transfer config` shows no secret."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from worker.config import ENVIRONMENT, SECRET_FIELDS, Settings
from worker.effective_config import effective_config, shown

README = Path(__file__).resolve().parent.parent / "README.md"
VARIABLES = {variable: name for name, (variable, _) in ENVIRONMENT.items()}


def _table() -> list[tuple[str, str, str]]:
    """(variable, default cell, meaning) per row of the table in README's "## Configuration" section."""
    text = README.read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or cells[0] in {"variable", ""} or set(cells[0]) <= {"-"}:
            continue
        assert len(cells) == 3, f"a row needs variable, default and meaning: {line}"
        names = re.findall(r"`([A-Z0-9_]+)`", cells[0])
        assert len(names) == 1, f"one variable per row: {line}"
        rows.append((names[0], cells[1], cells[2]))
    return rows


def test_every_variable_is_documented_once_and_nothing_else_is() -> None:
    documented = [variable for variable, _, _ in _table()]
    assert len(documented) == len(set(documented)), "a variable appears twice"
    assert set(documented) - set(VARIABLES) == set(), "documented but no setting reads it"
    assert set(VARIABLES) - set(documented) == set(), "read by Settings but not in README's table"
    assert all(meaning for _, _, meaning in _table())


def test_documented_defaults_are_the_defaults() -> None:
    defaults = Settings()  # with __post_init__'s derived values (broker and ledger URLs)
    parsers = {variable: parse for _, (variable, parse) in ENVIRONMENT.items()}
    for variable, cell, _ in _table():
        actual = getattr(defaults, VARIABLES[variable])
        written = re.findall(r"`([^`]*)`", cell)
        if not written:
            # "(unset)" or "(none)": no value at all.
            assert actual in (None, ()), f"{variable}: README gives no default but the default is {actual!r}"
            continue
        # Parsed as the environment would be: `5` and 5.0 agree, `true` and True agree.
        assert parsers[variable](written[0]) == actual, f"{variable}: README says {written[0]}, code has {actual!r}"


def test_the_table_covers_every_settings_field() -> None:
    assert {item.name for item in fields(Settings)} == set(ENVIRONMENT)
    assert set(SECRET_FIELDS) <= set(ENVIRONMENT)


# --- acs-transfer config --------------------------------------------------------------------------------------

ACCESS_KEY = b"never-print-this-access-key"
SECRETS = {
    "ACS_CONNECTION_STRING": f"endpoint=https://acs.example/;accesskey={base64.b64encode(ACCESS_KEY).decode()}",
    "CELERY_BROKER_URL": "amqp://acs:broker-pw-1@rabbit.example:5672//",
    "LEDGER_URL": "postgresql://acs:ledger-pw-2@db.example/acs?password=ledger-pw-3&sslmode=require",
    "RATE_LIMIT_REDIS_URL": "redis://:redis-pw-4@redis.example:6379/0",
    "INTAKE_TOKENS": "intake-token-5,intake-token-6",
    "CALLBACK_BASE_URL": "https://hook:callback-pw-7@receiver.example",
}
LEAKS = [
    "never-print-this",
    base64.b64encode(ACCESS_KEY).decode(),
    *(f"{kind}-pw-{n}" for kind, n in [("broker", 1), ("ledger", 2), ("ledger", 3), ("redis", 4), ("callback", 7)]),
    "intake-token-5",
    "intake-token-6",
]


def _run_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if key not in VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "config"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_prints_every_variable_with_its_source_and_no_secret(tmp_path: Path) -> None:
    env = {**SECRETS, "TRANSFER_QUEUE": "queue-from-env", "ACS_TRANSFER_HOME": str(tmp_path)}
    result = _run_config(env)
    assert result.returncode == 0, result.stderr
    for leak in LEAKS:
        assert leak not in result.stdout + result.stderr, f"{leak} was printed"
    sources, values = {}, {}
    *lines, authentication = result.stdout.splitlines()
    assert authentication == "# ACS authentication: access key (ACS_CONNECTION_STRING)"
    for line in lines:
        match = re.fullmatch(r"([A-Z0-9_]+)=(.*?)\s+# (env|default)", line)
        assert match, f"not VARIABLE=value  # source: {line}"
        values[match.group(1)], sources[match.group(1)] = match.group(2), match.group(3)
    assert len(lines) == len(VARIABLES)
    assert set(sources) == set(VARIABLES), "one line per variable"
    assert sources["TRANSFER_QUEUE"] == "env"
    assert values["TRANSFER_QUEUE"] == "queue-from-env"
    assert sources["ACS_API_VERSION"] == "default"
    assert values["ACS_API_VERSION"] == Settings().api_version
    # Masked, yet still telling where things are.
    assert values["ACS_CONNECTION_STRING"] == "***"
    assert values["INTAKE_TOKENS"] == "***"
    assert values["CELERY_BROKER_URL"] == "amqp://acs:***@rabbit.example:5672//"
    assert values["LEDGER_URL"] == "postgresql://acs:***@db.example/acs?password=***&sslmode=require"
    assert values["RATE_LIMIT_REDIS_URL"] == "redis://:***@redis.example:6379/0"


def test_config_says_when_microsoft_entra_id_is_in_use(tmp_path: Path) -> None:
    endpoint = "https://acs.example.communication.azure.com"
    result = _run_config({"ACS_ENDPOINT": f"{endpoint}/", "ACS_TRANSFER_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^ACS_ENDPOINT={re.escape(endpoint)}\s+# env$", result.stdout, re.MULTILINE), result.stdout
    assert result.stdout.splitlines()[-1].startswith("# ACS authentication: Microsoft Entra ID (ACS_ENDPOINT")


def test_config_refuses_both_an_access_key_and_an_entra_id_endpoint() -> None:
    both = {"ACS_ENDPOINT": "https://acs.example", "ACS_CONNECTION_STRING": SECRETS["ACS_CONNECTION_STRING"]}
    result = _run_config(both)
    assert result.returncode == 1
    # The INVALID mark names both variables; the closing line names the one marked.
    marked = [line for line in result.stdout.splitlines() if line.startswith("ACS_ENDPOINT=")]
    assert "ACS_CONNECTION_STRING" in marked[0], result.stdout
    assert "INVALID" in marked[0], result.stdout
    assert "ACS_ENDPOINT" in result.stderr
    assert "Traceback" not in result.stderr
    assert "never-print-this" not in result.stderr


def test_config_rejects_a_bad_value_by_name() -> None:
    result = _run_config({"WORKER_CONCURRENCY": "many"})
    assert result.returncode == 1
    assert "WORKER_CONCURRENCY" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_variable_counts_as_unset() -> None:
    entries = {entry.variable: entry for entry in effective_config({"TRANSFER_QUEUE": "", "LOG_LEVEL": "debug"})}
    assert entries["TRANSFER_QUEUE"].source == "default"
    assert entries["LOG_LEVEL"].source == "env"
    assert entries["LOG_LEVEL"].value == "DEBUG"


@pytest.mark.parametrize("name", sorted(SECRET_FIELDS))
def test_every_secret_field_is_masked(name: str) -> None:
    assert shown(name, "something") == "***"
    assert shown(name, ("a", "b")) == "***"
    assert shown(name, None) == ""
