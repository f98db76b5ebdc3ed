"""Commands for single jobs: enqueue one, show one."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

from worker.cli.common import pairs, settings, when
from worker.errors import IdempotencyConflict, JobNotFound, ValidationError
from worker.ledger import SyncLedger


@click.command()
@click.option("--call-connection-id", required=True, help="The call to transfer.")
@click.option("--target", required=True, help="Raw id of the transfer target, e.g. 4:+15551234567 or 8:acs:...")
@click.option("--transferee", help="Raw id of the participant being transferred (group calls).")
@click.option("--operation-context", help="Echoed back in the outcome events.")
@click.option("--callback-uri", help="Where ACS posts this operation's events (https).")
@click.option("--source-caller-id", help="Caller id shown to a PSTN target, +E.164.")
@click.option("--sip-header", multiple=True, metavar="K=V", help="X-MS-Custom-* or User-To-User SIP header.")
@click.option("--voip-header", multiple=True, metavar="K=V", help="VoIP custom header.")
@click.option("--idempotency-key", help="Same key, same job: enqueueing again sends nothing again.")
@click.option("--campaign", help="Group the job under a campaign name.")
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
) -> None:
    """Enqueue one transfer and print its job id."""
    from worker.producer import Producer, transfer_message  # noqa: PLC0415 - keeps the other commands light

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
        result = producer.enqueue(message, idempotency_key=idempotency_key, campaign=campaign)
    except ValidationError as error:
        for issue in error.issues:
            click.echo(f"error: {issue}", err=True)
        sys.exit(2)
    except IdempotencyConflict as error:
        raise click.ClickException(str(error)) from None
    finally:
        producer.close()
    click.echo(result.job_id)
    if not result.created:
        click.echo(f"(existing job for this idempotency key, state {result.job.state})", err=True)


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job and its history as JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job's state, attempts, request id, first-sent, last answer and history."""
    from worker.signing import http_date  # noqa: PLC0415

    ledger = SyncLedger(settings().ledger_url)
    try:
        job = ledger.get(job_id)
        events = ledger.events(job_id)
    except JobNotFound as error:
        raise click.ClickException(str(error)) from None
    finally:
        ledger.close()
    first_sent = http_date(job.first_sent) if job.first_sent is not None else None
    if as_json:
        document = {
            "job_id": job.id,
            "state": job.state,
            "attempts": job.attempts,
            "request_id": job.request_id,
            "first_sent": first_sent,
            "call_connection_id": job.call_connection_id,
            "idempotency_key": job.idempotency_key,
            "campaign": job.campaign,
            "last_status": job.last_status,
            "last_error": job.last_error,
            "last_message": job.last_message,
            "reason": job.reason,
            "created_at": when(job.created_at),
            "accepted_at": when(job.accepted_at),
            "history": [
                {"at": when(e.at), "from": e.from_state, "to": e.to_state, "attempt": e.attempt, "detail": e.detail}
                for e in events
            ],
        }
        click.echo(json.dumps(document, indent=2))
        return
    rows = [
        ("job", job.id),
        ("state", job.state),
        ("attempts", str(job.attempts)),
        ("request id", job.request_id),
        ("first sent", first_sent or "-"),
        ("call", job.call_connection_id),
        ("idempotency key", job.idempotency_key or "-"),
        ("campaign", job.campaign or "-"),
        ("reason", job.reason or "-"),
        ("last answer", job.last_message or "-"),
        ("created", when(job.created_at)),
        ("accepted", when(job.accepted_at)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    click.echo("history:")
    for event in events:
        detail = f"  {event.detail}" if event.detail else ""
        click.echo(f"  {when(event.at)}  {event.from_state or '-'} -> {event.to_state}{detail}")
