"""The ``acs-transfer`` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from worker.config import Settings
from worker.errors import ConfigError, IdempotencyConflict, JobNotFound, ValidationError
from worker.ledger import SyncLedger
from worker.logs import configure, register_secret


def _settings() -> Settings:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    register_secret(settings.acs_connection_string)
    configure(settings.log_level, settings.log_format)
    return settings


def _pairs(values: Sequence[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        pairs[key] = text
    return pairs


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="acs-transfer")
def main() -> None:
    """Idempotent ACS Call Automation transfers through a message queue."""


@main.command()
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
        sip_headers=_pairs(sip_header, "--sip-header"),
        voip_headers=_pairs(voip_header, "--voip-header"),
    )
    producer = Producer(_settings())
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


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job and its history as JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job's state, attempts, request id, first-sent, last answer and history."""
    from worker.signing import http_date  # noqa: PLC0415

    ledger = SyncLedger(_settings().ledger_url)
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
            "created_at": _when(job.created_at),
            "accepted_at": _when(job.accepted_at),
            "history": [
                {"at": _when(e.at), "from": e.from_state, "to": e.to_state, "attempt": e.attempt, "detail": e.detail}
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
        ("created", _when(job.created_at)),
        ("accepted", _when(job.accepted_at)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    click.echo("history:")
    for event in events:
        detail = f"  {event.detail}" if event.detail else ""
        click.echo(f"  {_when(event.at)}  {event.from_state or '-'} -> {event.to_state}{detail}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8089, show_default=True, type=int)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Serve https with this certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Private key of --tls-cert.")
@click.option("--faults", "faults_file", type=click.File(), help="Initial fault plan (JSON, as PUT /_emulator/faults).")
def emulator(host: str, port: int, tls_cert: str | None, tls_key: str | None, faults_file: Any) -> None:
    """Run the local ACS emulator, verifying signatures with the key in ACS_CONNECTION_STRING."""
    import ssl  # noqa: PLC0415

    from worker.emulator import EmulatorConfig, FaultPlan, run_emulator  # noqa: PLC0415

    settings = _settings()
    key = settings.acs.access_key
    faults = FaultPlan.from_json(json.load(faults_file)) if faults_file else FaultPlan()
    context = None
    if tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    click.echo(f"ACS emulator on {'https' if context else 'http'}://{host}:{port}", err=True)
    run_emulator(EmulatorConfig(access_key=key, faults=faults), host, port, ssl_context=context)


@main.command()
@click.option("--jobs", default=300, show_default=True, help="How many transfers to enqueue.")
@click.option("--fault-rate", default=0.3, show_default=True, help="Share of requests that meet a fault.")
@click.option("--latency-ms", default=20, show_default=True, help="Emulated ACS processing time.")
@click.option("--seed", default=None, type=int, help="Seed for the emulator's faults (printed when random).")
@click.option("--timeout", default=120.0, show_default=True, help="Give up waiting after this many seconds.")
@click.option("--keep", is_flag=True, help="Keep the demo's folder (ledger, logs) even when all went well.")
def demo(jobs: int, fault_rate: float, latency_ms: int, seed: int | None, timeout: float, keep: bool) -> None:
    """Emulator + worker + embedded broker and ledger: enqueue transfers under faults, check every outcome."""
    from worker.demo import run_demo  # noqa: PLC0415

    sys.exit(run_demo(jobs=jobs, fault_rate=fault_rate, latency_ms=latency_ms, seed=seed, timeout=timeout, keep=keep))


if __name__ == "__main__":
    main()
