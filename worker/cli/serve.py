"""`acs-transfer serve`: the outcome-event receiver and the HTTP intake."""

from __future__ import annotations

import click

from worker.cli.common import LISTEN_ERRORS, listen_failure, settings
from worker.errors import ConfigError


@click.command()
def serve() -> None:
    """Run the HTTP server (SERVE_HOST:SERVE_PORT): outcome events from ACS, and the intake API."""
    from worker.serve.server import run_server  # noqa: PLC0415 - aiohttp server only for this command

    config = settings()
    try:
        run_server(config)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        if error.errno not in LISTEN_ERRORS:
            raise
        raise click.ClickException(listen_failure(config.serve_host, config.serve_port, error)) from None
