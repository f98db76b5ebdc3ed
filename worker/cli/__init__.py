"""The ``acs-transfer`` command line."""

from __future__ import annotations

import sys
import traceback
from typing import Any

import click

from worker.cli import campaigns, configuration, dead, health, jobs, local, prune, serve
from worker.cli.common import explain

#: the exit status of a command stopped by Ctrl-C (SIGINT), as a shell reports it: 128 + the signal's number
INTERRUPTED = 130


class Commands(click.Group):
    """Every command's expected failures (configuration, database, broker) end in one line and exit status 1;
    with --debug (or ACS_TRANSFER_DEBUG=1) in the traceback as well. Ctrl-C ends any command with one line and
    exit status 130 (click would print "Aborted!" and exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                traceback.print_exc()
            # On a terminal the line starts after the echoed ^C; in a log it is the one line.
            click.echo(f"{chr(10) if sys.stderr.isatty() else ''}interrupted", err=True)
            sys.exit(INTERRUPTED)
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
    2 a usage error or invalid input; 130 interrupted (Ctrl-C); submit also 1 for rejected rows."""


for command in (jobs.enqueue, jobs.status, local.emulator, local.demo, serve.serve, dead.dead):
    main.add_command(command)
for command in (campaigns.submit, campaigns.campaign):
    main.add_command(command)
for command in (health.healthcheck, configuration.config, prune.prune):
    main.add_command(command)
