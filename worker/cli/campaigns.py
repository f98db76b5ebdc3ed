"""Commands for bulk campaigns: submit a file of transfers, follow a campaign's progress."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import click
from click._termui_impl import ProgressBar

from worker.cli.common import settings
from worker.ledger import State, SyncLedger
from worker.ledger.campaign import Progress, op_get_campaign, op_progress, op_save_campaign, parse_rate
from worker.produce.campaign_files import FORMATS, FileError, detect_format, read_rows
from worker.produce.campaign_submit import DEFAULT_BATCH, SHOWN_REJECTS, RejectsFile, SubmitSummary, Submitter
from worker.produce.reports import REPORT_FORMATS, write_report
from worker.request.names import campaign_problem

#: exit statuses of `submit`, for scripts
ALL_VALID, SOME_REJECTED, UNREADABLE, INTERRUPTED = 0, 1, 2, 130


def _campaign_name(_: click.Context, __: click.Parameter, value: str) -> str:
    problem = campaign_problem(value)
    if problem is not None:
        raise click.BadParameter(f"a campaign name {problem}")
    return value


def _rate(_: click.Context, __: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else parse_rate(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _report_path(_: click.Context, __: click.Parameter, value: Path | None) -> Path | None:
    if value is None:
        return None
    if value.suffix.lower() not in REPORT_FORMATS:
        raise click.BadParameter(f"{value.name!r} must end in {' or '.join(REPORT_FORMATS)}")
    folder = value.parent if str(value.parent) else Path()
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise click.BadParameter(f"cannot write in {folder}: it is missing or not writable")
    return value


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--campaign", "name", required=True, callback=_campaign_name, help="The campaign's name.")
@click.option("--rate", callback=_rate, help="Pace it: N/s, N/min or N/h (kept from an earlier submit if omitted).")
@click.option("--key-column", help="Column (CSV) or field (JSONL) naming each row; default: a hash of its content.")
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Default: FILE.rejects.jsonl (written beside, then renamed into place; never the input file).",
)
@click.option("--format", "file_format", type=click.Choice(["auto", *FORMATS]), default="auto", show_default=True)
@click.option("--batch-size", default=DEFAULT_BATCH, show_default=True, type=click.IntRange(1, 10_000))
def submit(
    file: Path,
    name: str,
    rate: float | None,
    key_column: str | None,
    rejects: Path | None,
    file_format: str,
    batch_size: int,
) -> None:
    """Enqueue every valid row of a CSV or JSONL FILE as a job of a campaign; re-running it adds only what is
    missing. Exits 0 when all rows were valid, 1 when some were rejected, 2 when the file cannot be read or has
    no rows, or its first 1,000 rows are all rejected (then nothing is enqueued and no campaign created), 130
    when interrupted (the first Ctrl-C finishes the batch in hand)."""
    from worker.queue.app import create_app  # noqa: PLC0415
    from worker.queue.bulk import BatchPublisher  # noqa: PLC0415 - keeps the other commands light

    try:
        file_format = detect_format(file, file_format)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    rejects = rejects or file.with_name(file.name + ".rejects.jsonl")
    if rejects.exists() and os.path.samefile(rejects, file):
        raise click.BadParameter("names the input file: give another path", param_hint="--rejects")
    loaded = settings()
    try:
        rejects_file = RejectsFile(rejects)
    except OSError as error:
        raise click.BadParameter(f"cannot write beside {rejects}: {error.strerror}", param_hint="--rejects") from None
    ledger = SyncLedger(loaded.ledger_url)
    publisher = BatchPublisher(create_app(loaded), loaded)

    def save_campaign() -> None:
        ledger.run(op_save_campaign, name, rate, str(file), time.time())

    submitter = Submitter(
        ledger, publisher.publish, name, rejects_file, key_column, batch_size, loaded.callback_base_url, save_campaign
    )
    status = ALL_VALID

    def stop(_signal: int, _frame: FrameType | None) -> None:
        # The first Ctrl-C finishes the batch in hand (no half-published batch, no half-written message file);
        # a second one stops at once.
        if submitter.stopping:
            raise KeyboardInterrupt
        submitter.stopping = True
        click.echo("\nstopping after this batch (Ctrl-C again to stop at once)", err=True)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        size = file.stat().st_size
        bar: ProgressBar[int] = click.progressbar(
            length=max(1, size),
            label=f"campaign {name}",
            file=sys.stderr,
            hidden=not sys.stderr.isatty(),
            update_min_steps=max(1, size // 500),
            item_show_func=lambda _: f"{submitter.summary.read} rows, {submitter.summary.rejected} rejected",
        )
        with bar:
            submitter.submit(read_rows(file, file_format, key_column, bar.update))
    except FileError as error:
        for reject in submitter.summary.rejects[:3]:
            click.echo(f"rejected {reject}", err=True)
        click.echo(f"error: {file}: {error}", err=True)
        status = UNREADABLE
    except KeyboardInterrupt:
        submitter.stopping = True
    finally:
        signal.signal(signal.SIGINT, previous)
        if status == UNREADABLE:
            rejects_file.discard()
        else:
            rejects_file.close()
        publisher.close()
        ledger.close()
    if status == UNREADABLE:
        sys.exit(status)  # nothing was enqueued: the file is refused whole
    if submitter.stopping:
        click.echo("interrupted: run the same command again to enqueue the rest", err=True)
        status = INTERRUPTED
    _print_summary(name, submitter.summary, rejects_file.path)
    if status == ALL_VALID and submitter.summary.rejected:
        status = SOME_REJECTED
    sys.exit(status)


def _print_summary(name: str, summary: SubmitSummary, rejects: Path) -> None:
    for reject in summary.rejects:
        click.echo(f"rejected {reject}", err=True)
    if summary.rejected > SHOWN_REJECTS:
        click.echo(f"... and {summary.rejected - SHOWN_REJECTS} more", err=True)
    rows = [
        ("read", summary.read),
        ("valid", summary.valid),
        ("rejected", summary.rejected),
        ("already present", summary.already_present),
        ("enqueued", summary.enqueued),
    ]
    click.echo(f"campaign {name}")
    for label, count in rows:
        click.echo(f"  {label:<16}{count:>10}")
    if summary.rejected:
        click.echo(f"rejected rows are in {rejects}")
    if summary.unpublished:
        click.echo(f"{summary.unpublished} enqueued jobs are not published yet (broker unavailable): workers will")
        click.echo("publish them once it is back (their sweeper re-publishes queued jobs)")


@click.command()
@click.argument("name")
@click.option("--watch", is_flag=True, help="Refresh until every job has settled (or Ctrl-C).")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.1), help="Rate window, seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON (once, or a line per refresh).")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    callback=_report_path,
    help="Write one row per job (final state, ACS result, attempts, timings) to FILE: .csv, or .json.",
)
def campaign(name: str, watch: bool, interval: float, as_json: bool, report: Path | None) -> None:
    """Show a campaign's jobs by state and how many settle per second."""
    ledger = SyncLedger(settings().ledger_url)
    try:
        record = ledger.run(op_get_campaign, name)
        progress = ledger.run(op_progress, name, time.time(), interval)
        if record is None and progress.total == 0:
            raise click.ClickException(f"no campaign {name!r}")
        rate = f"paced at {record.rate:g}/s" if record is not None and record.rate else "not paced"
        created = datetime.fromtimestamp(record.created_at, UTC).isoformat(timespec="seconds") if record else "-"
        header = f"campaign {name}  ({rate}; created {created})"
        live = watch and sys.stdout.isatty() and not as_json
        drawn = 0
        while True:
            lines = [json.dumps(_document(name, progress))] if as_json else [header, *_table(progress)]
            if live and drawn:
                click.echo(f"\x1b[{drawn}F\x1b[J", nl=False)  # back over the last frame
            click.echo("\n".join(lines))
            drawn = len(lines)
            if not watch or progress.active == 0:
                break
            time.sleep(interval if not live else min(interval, 1.0))
            progress = ledger.run(op_progress, name, time.time(), interval)
        if report is not None:
            _write_report(ledger, name, report)
    finally:
        ledger.close()


def _write_report(ledger: SyncLedger, name: str, path: Path) -> None:
    try:
        summary = write_report(ledger, name, path)
    except OSError as error:
        raise click.ClickException(f"cannot write the report {path}: {error.strerror or error}") from None
    click.echo(f"report: {summary.rows} jobs written to {path}")
    if summary.results:
        click.echo("  outcomes reported by ACS:")
        for result, count in summary.results.most_common(20):
            click.echo(f"  {count:>10}  {result}")


def _table(progress: Progress) -> list[str]:
    lines = [f"  {state:<16}{progress.counts.get(state, 0):>10}" for state in State]
    if progress.awaiting_dispatch:
        lines[0] += f"   {progress.awaiting_dispatch} awaiting dispatch at the campaign's rate"
    share = 100.0 * progress.final / progress.total if progress.total else 0.0
    lines.append(
        f"  {'total':<16}{progress.total:>10}   final {progress.final} ({share:.1f}%), awaiting an outcome event "
        f"{progress.awaiting_outcome}, in progress {progress.active}"
    )
    lines.append(f"  {'rate':<16}{progress.rate:>10.1f}   jobs settled/s over the last {progress.window:g} s")
    return lines


def _document(name: str, progress: Progress) -> dict[str, object]:
    return {
        "campaign": name,
        "counts": {state: progress.counts.get(state, 0) for state in State},
        "total": progress.total,
        "active": progress.active,
        "settled": progress.settled,
        "awaiting_outcome": progress.awaiting_outcome,
        "final": progress.final,
        "rate": round(progress.rate, 3),
        "window": progress.window,
        "awaiting_dispatch": progress.awaiting_dispatch,
    }
