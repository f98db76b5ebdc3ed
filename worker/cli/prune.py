"""`acs-transfer prune`: delete finished jobs older than a cutoff, so the ledger does not grow without bound."""

from __future__ import annotations

import time

import click

from worker.cli.common import settings
from worker.ledger import SyncLedger, op_prune

BATCH = 1000


@click.command()
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0, min_open=True),
    required=True,
    help="Days since a finished job last changed (transferred, transfer_failed, failed, dead, accepted).",
)
def prune(days: float) -> None:
    """Delete finished jobs (with their history and events) older than --older-than days. Workers do the
    same on their own when JOB_RETENTION_DAYS is set."""
    ledger = SyncLedger(settings().ledger_url)
    cutoff = time.time() - days * 86400
    deleted = 0
    try:
        while True:
            pruned = ledger.run(op_prune, cutoff, BATCH)  # short transactions: workers keep writing meanwhile
            deleted += pruned
            if pruned < BATCH:
                break
    finally:
        ledger.close()
    click.echo(f"deleted {deleted} finished jobs older than {days:g} days")
