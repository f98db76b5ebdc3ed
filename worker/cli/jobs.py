"""Commands for single jobs: enqueue one, show one."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

from worker.cli.common import pairs, settings
from worker.errors import IdempotencyConflict, JobNotFound, ValidationError
from worker.ledger import SyncLedger
from worker.produce.views import history_view, job_view


@click.command()
@click.option("--call-connection-id", required=True, help="The call to transfer.")
@click.option("--target", required=True, help="Raw id of the transfer target, e.g. 4:+15551234567 or 8:acs:...")
@click.option("--transferee", help="Raw id of the participant being transferred (group calls).")
@click.option("--operation-context", help="Echoed back in the outcome events.")
@click.option("--callback-uri", help="Where ACS posts this operation's events (https).")
@click.option("--source-caller-id", help="Caller id shown to a PSTN target, +E.164.")
@click.option("--sip-header", multiple=True, metavar="K=V", help="X-MS-Custom-* or User-To-User SIP header.")
@click.option("--voip-header", multiple=True, metavar="K=V", help="VoIP custom header.")
@click.option(
    "--idempotency-key", help="Same key, same transfer: one job, sent once; reused for another call: refused."
)
@click.option("--campaign", help="Group the job under a campaign name.")
@click.option(
    "--lane",
    type=click.Choice(["live", "bulk"]),
    default="live",
    show_default=True,
    help="live: a caller waits for it; bulk: it may wait behind live work.",
)
def enqueue(
    call_connection_id: str,
    target: str,
    transferee: str | None,
    operation_context: str | None,
    callback_uri: str | None,
    source_caller_id: str | None,
    sip_header: Sequence[str],
    voip_header: Sequence[str],
    idempotency_key: str | None,
    campaign: str | None,
    lane: str,
) -> None:
    """Enqueue one transfer and print its job id."""
    from worker.produce.producer import Producer, transfer_message  # noqa: PLC0415 - keeps the other commands light

    message = transfer_message(
        call_connection_id,
        target,
        transferee=transferee,
        operation_context=operation_context,
        callback_uri=callback_uri,
        source_caller_id=source_caller_id,
        sip_headers=pairs(sip_header, "--sip-header"),
        voip_headers=pairs(voip_header, "--voip-header"),
    )
    producer = Producer(settings())
    try:
        result = producer.enqueue(message, idempotency_key=idempotency_key, campaign=campaign, lane=lane)
    except ValidationError as error:
        for issue in error.issues:
            click.echo(f"error: {issue}", err=True)
        sys.exit(2)
    except IdempotencyConflict as error:
        raise click.ClickException(str(error)) from None
    finally:
        producer.close()
    click.echo(result.job_id)
    if not result.published:
        click.echo(
            "warning: the broker (CELERY_BROKER_URL) did not take the message; the job is saved and a worker "
            "publishes it once the broker answers (check that it is up)",
            err=True,
        )
    if not result.created:
        click.echo(f"(existing job for this idempotency key, state {result.job.state})", err=True)


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job and its history as JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job's state and why, attempts, request id, first-sent, last answer, outcome and history."""
    show_job(job_id, as_json)


def show_job(job_id: str, as_json: bool) -> None:
    ledger = SyncLedger(settings().ledger_url)
    try:
        job = ledger.get(job_id)
        events = ledger.events(job_id)
    except JobNotFound as error:
        raise click.ClickException(str(error)) from None
    finally:
        ledger.close()
    document = job_view(job)
    if as_json:
        click.echo(json.dumps({**document, "history": history_view(events)}, indent=2))
        return
    shown = {key.replace("_", " "): value for key, value in document.items() if value is not None}
    width = max(len(name) for name in shown)
    for name, value in shown.items():
        click.echo(f"{name:<{width}}  {value}")
    click.echo("history:")
    for step in history_view(events):
        detail = f"  {step['detail']}" if step["detail"] else ""
        click.echo(f"  {step['at']}  {step['from'] or '-'} -> {step['to']}{detail}")
