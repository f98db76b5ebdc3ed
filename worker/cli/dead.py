"""`acs-transfer dead ...`: inspect failed and dead jobs, and replay them on purpose."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import click

from worker.cli.common import settings
from worker.cli.jobs import show_job
from worker.errors import JobNotFound, ReplayRefused
from worker.ledger import (
    REPLAYABLE_STATES,
    SyncLedger,
    op_dead_messages,
    op_jobs_in_states,
    op_replays_sent_twice,
)
from worker.ledger.operations import op_dead_message


@click.group()
def dead() -> None:
    """Jobs that need an operator: dead (outcome never known), failed (ACS refused them), and replayed jobs
    that turned out transferred after their replay was sent; and messages that were not jobs at all (dead
    messages)."""


@dead.command("list")
@click.option("--campaign", help="Only jobs of this campaign.")
@click.option("--limit", default=200, show_default=True, help="At most this many, most recent first.")
def list_jobs(campaign: str | None, limit: int) -> None:
    """List dead and failed jobs with ACS's error code and message, or why they died; then replayed jobs that
    turned out transferred after their replay was sent (the call may have been transferred twice)."""
    ledger = SyncLedger(settings().ledger_url)
    try:
        found = ledger.run(op_jobs_in_states, REPLAYABLE_STATES, campaign, limit)
        doubled = ledger.run(op_replays_sent_twice, campaign, limit)
    finally:
        ledger.close()
    if not found:
        click.echo("no failed or dead jobs")
    for job in found:
        answer = last_answer(job.last_status, job.last_error)
        replayed = f"  replayed as {job.replayed_by}" if job.replayed_by else ""
        click.echo(f"{job.id}  {job.state:<6}  {job.call_connection_id}  {answer}  {job.reason or ''}{replayed}")
    if doubled:
        click.echo("transferred after their replay was sent (check whether the call was transferred twice):")
    for job in doubled:
        click.echo(f"{job.id}  {job.state}  {job.call_connection_id}  replayed as {job.replayed_by}  {job.reason}")


def last_answer(status: int | None, error: str | None) -> str:
    """``404 CallNotFound``, ``503``, or the reason there was none; ACS's error code is often the status again."""
    if status is None:
        return error or "-"
    return str(status) if error in (None, "", str(status)) else f"{status} {error}"


@dead.command("messages")
@click.argument("message_id", type=int, required=False)
@click.option("--limit", default=200, show_default=True, help="At most this many, most recent first.")
def messages(message_id: int | None, limit: int) -> None:
    """Messages the workers could not use (undecodable, unknown task, malformed job), with why; with an ID, one
    of them with its payload."""
    ledger = SyncLedger(settings().ledger_url)
    try:
        found = ledger.run(op_dead_message, message_id) if message_id is not None else None
        listed = ledger.run(op_dead_messages, limit) if message_id is None else []
    finally:
        ledger.close()
    if message_id is not None:
        if found is None:
            raise click.ClickException(f"no dead message {message_id} (see acs-transfer dead messages)")
        for name in ("id", "at", "message_id", "reason"):
            click.echo(f"{name.replace('_', ' '):<11}{_shown(name, found[name])}")
        click.echo("payload:")
        click.echo(found["payload"] or "(none)")
        return
    if not listed:
        click.echo("no dead messages")
        return
    for row in listed:
        click.echo(f"{row['id']:>6}  {_shown('at', row['at'])}  {row['message_id'] or '-'}  {row['reason']}")


def _shown(name: str, value: object) -> str:
    if name == "at" and isinstance(value, float):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    return "-" if value is None else str(value)


@dead.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
def show(job_id: str, as_json: bool) -> None:
    """Everything about one job, with its history."""
    show_job(job_id, as_json)


@dead.command("replay")
@click.argument("job_ids", nargs=-1)
@click.option("--campaign", help="Replay every failed or dead job of this campaign not replayed yet.")
@click.option("--reason", default="operator replay", show_default=True, help="Recorded on both jobs.")
def replay_command(job_ids: Sequence[str], campaign: str | None, reason: str) -> None:
    """Send failed or dead jobs again as new jobs, each under a NEW request id, linked to the original."""
    from worker.produce.replay import replay  # noqa: PLC0415
    from worker.queue.app import create_app  # noqa: PLC0415 - publishing only for this command
    from worker.queue.publisher import Publisher  # noqa: PLC0415

    if not job_ids and not campaign:
        raise click.UsageError(
            "give the ids of the jobs to replay (acs-transfer dead list shows them) or --campaign NAME"
        )
    if job_ids and campaign:
        raise click.UsageError("give job ids or --campaign, not both")
    config = settings()
    ledger = SyncLedger(config.ledger_url)
    publisher = Publisher(create_app(config), config)
    try:
        if campaign:
            candidates = ledger.run(op_jobs_in_states, REPLAYABLE_STATES, campaign, 1_000_000)
            job_ids = [job.id for job in candidates if job.replayed_by is None]
        refused = 0
        for job_id in job_ids:
            try:
                done = replay(ledger, publisher, job_id, reason, config.callback_base_url)
            except (JobNotFound, ReplayRefused) as error:
                click.echo(f"{job_id}: not replayed: {error}", err=True)
                refused += 1
                continue
            click.echo(f"{job_id} -> {done.replacement.id}")
            if done.effect_unknown:
                click.echo(
                    f"  warning: {job_id}'s outcome was unknown; if it did take effect the call is transferred twice",
                    err=True,
                )
    finally:
        ledger.close()
    if refused:
        raise SystemExit(1)
