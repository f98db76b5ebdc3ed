"""`acs-transfer config`: the effective configuration, one ``VARIABLE=value`` per line, secrets masked."""

from __future__ import annotations

import click

from worker.effective_config import effective_config


@click.command()
def config() -> None:
    """Print every setting as VARIABLE=value with its source (env or default); secrets are masked.

    A value that breaks a rule is marked INVALID with the rule, and the exit status is then 1."""
    entries = effective_config()
    width = max(len(f"{entry.variable}={entry.value}") for entry in entries)
    for entry in entries:
        mark = f"  INVALID: {entry.problem}" if entry.problem else ""
        click.echo(f"{entry.variable}={entry.value}".ljust(width) + f"  # {entry.source}{mark}")
    invalid = [entry.variable for entry in entries if entry.problem]
    if invalid:
        raise click.ClickException(f"invalid configuration: {', '.join(invalid)} (marked INVALID above)")
