"""The ``acs-transfer`` command line."""

from __future__ import annotations

import click

from worker.cli import campaigns, configuration, dead, health, jobs, local, prune, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="acs-transfer")
def main() -> None:
    """Idempotent ACS Call Automation transfers through a message queue."""


for command in (jobs.enqueue, jobs.status, local.emulator, local.demo, serve.serve, dead.dead):
    main.add_command(command)
for command in (campaigns.submit, campaigns.campaign):
    main.add_command(command)
for command in (health.healthcheck, configuration.config, prune.prune):
    main.add_command(command)
