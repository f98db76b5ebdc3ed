"""The Dockerfile, read for the properties the image must have (no engine runs here), and its commands run here.

The image installs this package from its wheel, so its console scripts are the ones this environment has:
running `celery -A worker worker` and `acs-transfer healthcheck` here runs what the container runs.
"""

from __future__ import annotations

import base64
import re
import secrets
import signal
import time
import tomllib
import uuid
from pathlib import Path

import kombu
import pytest

from tests.container import ROOT, SECRET_NAME, Stage, dockerfile, env_pairs, run_command, spawn_command
from worker.cli import main as cli_main
from worker.ledger import SyncLedger
from worker.processes import free_port, stop

BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|cmake|build-essential|python3?-dev|libpq-dev|cargo|rustc|git)\b")
CREDENTIAL_IN_VALUE = re.compile(r"://[^/\s:@]+:[^/\s@]+@|accesskey=|password=", re.IGNORECASE)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile()


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_multi_stage_build_installs_the_wheel_into_a_slim_final_stage(stages: list[Stage], final: Stage) -> None:
    assert len(stages) >= 2, "a build stage and a runtime stage"
    assert "slim" in final.base.split(":")[-1], f"final base {final.base} is not a slim image"
    builders = {stage.name for stage in stages[:-1] if stage.name}
    assert any("pip wheel" in run.body for stage in stages[:-1] for run in stage.all("RUN")), "no wheel is built"
    installs = [run for run in final.all("RUN") if "pip install" in run.body]
    assert len(installs) == 1
    install = installs[0]
    # Only wheels from an earlier stage: --no-index means nothing is fetched or built in the final image.
    assert "--no-index" in install.body
    assert "--find-links" in install.body
    mount = install.flags.get("mount", "")
    copied = [c for c in final.all("COPY") if c.flags.get("from") in builders]
    assert f"from={next(iter(builders))}" in mount or copied, "the wheels do not come from the build stage"
    # The source tree stays in the build stage: the final stage gets no COPY from the build context.
    assert all("from" in item.flags for item in final.all("COPY"))


def test_final_stage_runs_as_a_non_root_user_set_before_its_command(final: Stage) -> None:
    user_at, cmd_at = final.index("USER"), final.index("CMD")
    assert user_at >= 0, "no USER in the final stage"
    assert cmd_at > user_at
    user = final.instructions[user_at].body.split(":")[0]
    assert user not in {"root", "0"}
    # Numeric, so Kubernetes' runAsNonRoot can check it, and the account exists with that uid.
    assert user.isdigit(), f"USER {user} is not numeric"
    assert any(f"--uid {user}" in run.body for run in final.all("RUN")), f"no account with uid {user} is created"


def test_no_build_tools_in_the_final_stage(final: Stage) -> None:
    for run in final.all("RUN"):
        assert "apt-get install" not in run.body, run.body
        assert "apk add" not in run.body, run.body
        found = BUILD_TOOLS.findall(run.body)
        assert not found, f"build tools in the final stage: {found}"
    assert not any(part in final.base for part in ("-dev", "buildpack")), final.base


def test_no_secrets_in_env_or_arg(stages: list[Stage]) -> None:
    for stage in stages:
        for instruction in stage.all("ENV") + stage.all("ARG"):
            for name, value in env_pairs(instruction).items():
                assert not SECRET_NAME.search(name), f"{instruction.keyword} {name}: secrets come from the runtime"
                assert not CREDENTIAL_IN_VALUE.search(value), f"{name} holds a credential"


def test_every_command_in_the_dockerfile_exists(final: Stage) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts = project["scripts"]
    dependencies = {re.split(r"[<>=\[ ;]", item, maxsplit=1)[0].lower() for item in project["dependencies"]}
    for keyword in ("CMD", "HEALTHCHECK"):
        argv = final.instructions[final.index(keyword)].argv()
        program = argv[0]
        # Installed by this package (a console script) or by one of its dependencies (celery).
        assert program in scripts or program in dependencies, f"{keyword} runs {program}, which nothing installs"
        result = run_command([*argv, "--help"])
        assert result.returncode == 0, f"{argv}: {result.stderr[-2000:]}"
    assert scripts["acs-transfer"] == "worker.cli:main"
    assert {"healthcheck", "serve", "emulator", "config"} <= set(cli_main.commands)


def test_healthcheck_command_is_the_one_documented(final: Stage) -> None:
    healthcheck = final.instructions[final.index("HEALTHCHECK")]
    assert healthcheck.argv()[:2] == ["acs-transfer", "healthcheck"]
    timeout = float(healthcheck.flags["timeout"].rstrip("s"))
    argv = healthcheck.argv()
    check_timeout = float(argv[argv.index("--timeout") + 1])
    # Two checks, each bounded: the probe finishes before the engine gives up on it.
    assert 2 * check_timeout < timeout


def test_dockerignore_admits_only_what_the_build_copies(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: everything is excluded first"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for stage in stages:
        for copy in stage.all("COPY"):
            if "from" in copy.flags:
                continue
            *sources, _ = copy.body.split()
            for source in sources:
                assert source.rstrip("/").removeprefix("./") in allowed, f"COPY {source} is excluded by .dockerignore"
                assert (ROOT / source).exists()
    assert not allowed & {".env", ".git", ".venv", ".acs-transfer", "tests", "bench"}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert all(package.split(".")[0] in allowed for package in packages)


# --- the image's commands, run here against real services ----------------------------------------------------


def _healthcheck_argv(final: Stage) -> list[str]:
    return final.instructions[final.index("HEALTHCHECK")].argv()


def test_healthcheck_passes_when_broker_and_ledger_answer(
    final: Stage, rabbitmq_url: str, postgres_url: str, tmp_path: Path
) -> None:
    env = {"CELERY_BROKER_URL": rabbitmq_url, "LEDGER_URL": postgres_url, "ACS_TRANSFER_HOME": str(tmp_path)}
    # Reachable, but no worker has created the ledger's tables yet: not healthy, and it says why.
    before = run_command(_healthcheck_argv(final), env)
    assert before.returncode == 1
    assert "no jobs table" in before.stdout
    assert re.search(r"^broker\s+ok\b", before.stdout, re.MULTILINE), before.stdout
    SyncLedger(postgres_url).close()
    after = run_command(_healthcheck_argv(final), env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert re.search(r"^broker\s+ok\b", after.stdout, re.MULTILINE)
    assert re.search(r"^ledger\s+ok\b", after.stdout, re.MULTILINE)
    assert ":guest@" not in after.stdout, "the broker password is shown"


def test_healthcheck_fails_clearly_when_pointed_at_closed_ports(final: Stage, tmp_path: Path) -> None:
    closed = free_port()  # bound and released: nothing listens there
    env = {
        "CELERY_BROKER_URL": f"amqp://acs:hunter2@127.0.0.1:{closed}//",
        "LEDGER_URL": f"postgresql://acs:hunter2@127.0.0.1:{closed}/acs",
        "ACS_TRANSFER_HOME": str(tmp_path),
    }
    started = time.monotonic()
    result = run_command(_healthcheck_argv(final), env)
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    for name in ("broker", "ledger"):
        assert " FAIL " in lines[name]
        assert "refused" in lines[name].lower(), lines[name]
    assert "unhealthy: broker, ledger" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_healthcheck_fails_for_a_missing_embedded_ledger(final: Stage, tmp_path: Path) -> None:
    result = run_command(_healthcheck_argv(final), {"ACS_TRANSFER_HOME": str(tmp_path / "nothing-here")})
    assert result.returncode == 1
    assert "no ledger file" in result.stdout
    assert not (tmp_path / "nothing-here" / "ledger.db").exists(), "a health check must not create the ledger"


def test_default_command_runs_a_worker_that_passes_the_healthcheck_and_stops_on_sigterm(
    final: Stage, rabbitmq_url: str, postgres_url: str, tmp_path: Path
) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    queue = f"acs-docker-{uuid.uuid4().hex[:8]}"
    env = {
        **{name: value for item in final.all("ENV") for name, value in env_pairs(item).items()},
        "ACS_TRANSFER_HOME": str(tmp_path),
        "CELERY_BROKER_URL": rabbitmq_url,
        "LEDGER_URL": postgres_url,
        "TRANSFER_QUEUE": queue,
        "ACS_CONNECTION_STRING": f"endpoint=http://127.0.0.1:{free_port()}/;accesskey={key}",
    }
    argv = final.instructions[final.index("CMD")].argv()
    assert argv[:4] == ["celery", "-A", "worker", "worker"]
    process = spawn_command(argv, env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            result = run_command(_healthcheck_argv(final), env)
            if result.returncode == 0:
                break
            assert process.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, result.stdout
            time.sleep(0.5)
        assert stop(process, timeout=20, sig=signal.SIGTERM) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        stop(process)
        with kombu.Connection(rabbitmq_url) as connection:
            kombu.Queue(queue, queue_arguments={"x-queue-type": "quorum"})(connection.default_channel).delete()
