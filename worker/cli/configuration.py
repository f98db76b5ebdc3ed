"""`acs-transfer config`: the effective configuration, one ``VARIABLE=value`` per line, secrets masked."""

from __future__ import annotations

import click

from worker.config import Settings
from worker.effective_config import acs_authentication, effective_config
from worker.errors import ConfigError


@click.command()
def config() -> None:
    """Print every setting as VARIABLE=value with its source (env or default), secrets masked; then, as a comment,
    how ACS is authenticated."""
    try:
        entries = effective_config()
        authentication = acs_authentication(Settings.from_env())
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    width = max(len(f"{entry.variable}={entry.value}") for entry in entries)
    for entry in entries:
        click.echo(f"{entry.variable}={entry.value}".ljust(width) + f"  # {entry.source}")
    click.echo(f"# ACS authentication: {authentication}")
