"""The benchmarks still run: each is a long job outside CI, so a small run here keeps it from rotting unseen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_campaign_submit_benchmark_runs_on_a_small_file(postgres_url: str, rabbitmq_url: str) -> None:
    env = {**os.environ, "BENCH_POSTGRES_URL": postgres_url, "BENCH_RABBITMQ_URL": rabbitmq_url}
    result = subprocess.run(
        [sys.executable, "-m", "bench.campaign_submit", "--rows", "300"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "submit / plain kombu" in result.stdout
