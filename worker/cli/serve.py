"""`acs-transfer serve`: the outcome-event receiver and the HTTP intake."""

from __future__ import annotations

import click

from worker.cli.common import settings
from worker.errors import ConfigError


@click.command()
def serve() -> None:
    """Run the HTTP server (SERVE_HOST:SERVE_PORT): outcome events from ACS, and the intake API."""
    from worker.serve.server import run_server  # noqa: PLC0415 - aiohttp server only for this command

    try:
        run_server(settings())
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
