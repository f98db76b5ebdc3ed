"""The ``acs-transfer`` command line."""

from __future__ import annotations

from typing import Any

import click

from worker.cli import campaigns, configuration, dead, health, jobs, local, prune, serve
from worker.cli.common import explain


class Commands(click.Group):
    """Every command's expected failures (configuration, database, broker) end in one line and exit status 1;
    with --debug (or ACS_TRANSFER_DEBUG=1) in the traceback as well."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as error:
            message = explain(error)
            if message is None or ctx.params.get("debug"):
                raise
            raise click.ClickException(message) from None


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="acs-transfer")
@click.option(
    "--debug", is_flag=True, envvar="ACS_TRANSFER_DEBUG", help="Show the traceback of an error (ACS_TRANSFER_DEBUG=1)."
)
def main(debug: bool) -> None:
    """Idempotent ACS Call Automation transfers through a message queue.

    Exit statuses: 0 done; 1 a failure named in one line (configuration, database, broker, a refused request);
    2 a usage error or invalid input; submit adds 1 for rejected rows and 130 when interrupted."""


for command in (jobs.enqueue, jobs.status, local.emulator, local.demo, serve.serve, dead.dead):
    main.add_command(command)
for command in (campaigns.submit, campaigns.campaign):
    main.add_command(command)
for command in (health.healthcheck, configuration.config, prune.prune):
    main.add_command(command)
