"""The intake matches its own description: Schemathesis (checks and exceptions in schemathesis.toml) against
`acs-transfer serve` on a real port, bounded to a minute or two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from worker.config import ENVIRONMENT
from worker.processes import free_port, stop, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
VARIABLES = {variable for variable, _ in ENVIRONMENT.values()}
TOKEN = "contract-test-token"


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in VARIABLES}
    env.update(
        ACS_TRANSFER_HOME=str(tmp_path / "home"),
        LEDGER_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
        SERVE_PORT=str(port),
        CALLBACK_VERIFY="false",
        INTAKE_TOKENS=TOKEN,
        LOG_LEVEL="WARNING",
    )
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/openapi.json", server)
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--header",
                f"Authorization: Bearer {TOKEN}",
                "--max-examples",
                "15",
                "--workers",
                "1",
                "--seed",
                "1",
                "--no-color",
            ],
            cwd=ROOT,  # reads schemathesis.toml
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        stop(server)
    assert result.returncode == 0, result.stdout[-6000:]
    assert "schemathesis.toml" in result.stdout  # the checks and exceptions it names were used
    assert "No issues found" in result.stdout
