"""`acs-transfer config`: the effective configuration, one ``VARIABLE=value`` per line, secrets masked."""

from __future__ import annotations

import click

from worker.config import read_env
from worker.effective_config import acs_authentication, effective_config


@click.command()
def config() -> None:
    """Print every setting as VARIABLE=value with its source (env or default), secrets masked; then, as a comment,
    how ACS is authenticated.

    A value that breaks a rule is marked INVALID with the rule, and the exit status is then 1."""
    entries = effective_config()
    width = max(len(f"{entry.variable}={entry.value}") for entry in entries)
    for entry in entries:
        mark = f"  INVALID: {entry.problem}" if entry.problem else ""
        click.echo(f"{entry.variable}={entry.value}".ljust(width) + f"  # {entry.source}{mark}")
    click.echo(f"# ACS authentication: {acs_authentication(read_env()[0])}")
    invalid = [entry.variable for entry in entries if entry.problem]
    if invalid:
        raise click.ClickException(f"invalid configuration: {', '.join(invalid)} (marked INVALID above)")
