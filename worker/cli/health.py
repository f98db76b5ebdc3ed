"""`acs-transfer healthcheck`: the container's HEALTHCHECK, exit 0 when the broker, the ledger and ACS
authentication pass, else 1."""

from __future__ import annotations

import sys

import click

from worker.cli.common import settings


@click.command()
@click.option("--timeout", default=5.0, show_default=True, help="Seconds each check may take.")
@click.option(
    "--check",
    "names",
    multiple=True,
    type=click.Choice(["broker", "ledger", "acs"]),
    help="Run only this check (repeatable); default: all.",
)
def healthcheck(timeout: float, names: tuple[str, ...]) -> None:
    """Check that the broker (CELERY_BROKER_URL) and the ledger (LEDGER_URL) answer, and say how ACS is
    authenticated (getting a token under Microsoft Entra ID); exit 0 if all pass, else 1."""
    from worker.health import CHECKS, run_checks  # noqa: PLC0415 - kombu and SQLAlchemy only for this command

    results = run_checks(settings(), timeout, names or tuple(CHECKS))
    for result in results:
        state = "ok" if result.ok else "FAIL"
        click.echo(f"{result.name:<7} {state:<5} {result.detail}  ({result.duration_ms:.0f} ms)")
    failed = [result.name for result in results if not result.ok]
    if failed:
        click.echo(f"unhealthy: {', '.join(failed)}", err=True)
        sys.exit(1)
