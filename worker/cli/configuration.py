"""`acs-transfer config`: the effective configuration, one ``VARIABLE=value`` per line, secrets masked."""

from __future__ import annotations

import click

from worker.effective_config import effective_config
from worker.errors import ConfigError


@click.command()
def config() -> None:
    """Print every setting as VARIABLE=value with its source (env or default); secrets are masked."""
    try:
        entries = effective_config()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    width = max(len(f"{entry.variable}={entry.value}") for entry in entries)
    for entry in entries:
        click.echo(f"{entry.variable}={entry.value}".ljust(width) + f"  # {entry.source}")
