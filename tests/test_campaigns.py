"""Campaigns end to end: `acs-transfer submit` on a file mixing good and bad rows, real workers, the emulator;
a second submit of the same file; a submit interrupted with Ctrl-C and run again; `acs-transfer campaign`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import kombu
import pytest
from click.testing import CliRunner, Result

from tests.stack import Stack
from worker.cli import main
from worker.config import Settings
from worker.ledger import Lane, State, SyncLedger, op_count_by_state
from worker.ledger.campaign import op_get_campaign, op_progress
from worker.produce.campaign_files import read_rows
from worker.produce.campaign_submit import RejectsFile, Submitter
from worker.queue.app import create_app
from worker.queue.broker import TASK_NAME, transfer_queue
from worker.queue.bulk import BatchPublisher
from worker.queue.publisher import Publisher

CAMPAIGN_CSV = (
    "ticket,callConnectionId,targetParticipant,operationContext,sip.X-MS-Custom-Ticket,voip.team\n"
    "T-1,call-c1,4:+14255550101,op-1,T-1,blue\n"
    "T-2,call-c2,8:acs:agent-2,,,\n"
    "\n"
    "T-3,call-c3,4:555,op-3,,\n"  # not E.164
    'T-4,call-c4,4:+14255550104,"note:\nline two",,\n'  # a quoted newline is fine
    "T-5,call-c5,4:+14255550105,op-5,T-5,\n"
    ",call-c6,4:+14255550106,op-6,,\n"  # no key
    "T-7,call-c7\n"  # too few cells
    "T-1,call-c1,4:+14255550101,op-1,T-1,blue\n"  # the same row again: the same job
    "T-2,call-c8,4:+14255550108,,,\n"  # T-2 again, for a different transfer
    "T-9,call-c9,4:+14255550109,op-9,X,\n"  # a SIP value is fine; this row is good
    "T-10,call-c10,4:+14255550110,,,\n"
)
GOOD_CALLS = ["call-c1", "call-c2", "call-c4", "call-c5", "call-c9", "call-c10"]


def cli_env(settings: Settings) -> dict[str, str]:
    return {**settings.to_env(), "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json"}


def submit(settings: Settings, *arguments: str) -> Result:
    return CliRunner().invoke(main, ["submit", *arguments], env=cli_env(settings))


def summary_of(output: str) -> dict[str, int]:
    counts = {}
    for line in output.splitlines():
        label, _, number = line.strip().rpartition(" ")
        if number.isdigit() and label.strip() in {"read", "valid", "rejected", "already present", "enqueued"}:
            counts[label.strip()] = int(number)
    return counts


async def test_a_mixed_file_enqueues_the_good_rows_once_and_reports_the_bad_ones(
    make_stack: Callable[[str, str], Any], tmp_path: Path
) -> None:
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    source = tmp_path / "campaign.csv"
    source.write_text(CAMPAIGN_CSV)
    rejects = tmp_path / "rejects.jsonl"
    arguments = ["--campaign", "spring", "--key-column", "ticket", "--rejects", str(rejects)]
    stack.start_worker()

    first = submit(stack.settings, str(source), *arguments)
    assert first.exit_code == 1, first.output  # some rows were rejected
    assert summary_of(first.stdout) == {"read": 11, "valid": 7, "rejected": 4, "already present": 1, "enqueued": 6}
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], [(e["field"], e["rule"]) for e in r["errors"]]) for r in lines] == [
        (5, [("targetParticipant", "phone number '555' is not E.164 (+ then 2 to 15 digits)")]),
        (9, [("ticket", "the key is empty: every row needs one")]),
        (10, [("(row)", "has 2 cells where the header has 6 columns")]),
        (12, [("ticket", "the key 'T-2' already names a different transfer in this campaign")]),
    ]
    assert lines[0]["raw"] == "T-3,call-c3,4:555,op-3,,"
    assert "line 5: targetParticipant" in first.stderr

    ledger = stack.producer.ledger
    await stack.wait_for(lambda: ledger.run(op_progress, "spring", 0.0, 1.0).active == 0, "the campaign to settle")
    assert ledger.run(op_count_by_state, "spring") == {State.ACCEPTED: 6}
    effects = stack.emulator.state.effects
    assert sorted(t.call_connection_id for t in effects.transfers) == sorted(GOOD_CALLS)
    assert effects.calls_with_more_than_one_effect() == []
    (c1,) = stack.requests_for("call-c1")
    assert c1.status == 202
    requests_before = len(stack.emulator.state.requests)

    again = submit(stack.settings, str(source), *arguments)
    assert again.exit_code == 1, again.output
    assert summary_of(again.stdout) == {"read": 11, "valid": 7, "rejected": 4, "already present": 7, "enqueued": 0}
    assert len(rejects.read_text().splitlines()) == 4  # rewritten, not appended to
    await asyncio.sleep(2.0)  # time for anything wrongly published to reach the worker and the emulator
    assert len(stack.emulator.state.requests) == requests_before
    assert effects.total_effects == 6

    shown = CliRunner().invoke(main, ["campaign", "spring", "--json"], env=cli_env(stack.settings))
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.stdout)
    assert document["counts"][State.ACCEPTED] == 6
    assert document["total"] == 6
    assert document["active"] == 0
    table = CliRunner().invoke(main, ["campaign", "spring", "--watch", "--interval", "60"], env=cli_env(stack.settings))
    assert table.exit_code == 0, table.output  # --watch ends by itself: everything has settled
    assert "accepted                 6" in table.stdout
    assert "0.1   jobs settled/s over the last 60 s" in table.stdout  # 6 jobs in the last minute


async def test_a_paced_campaign_keeps_its_rate_at_the_emulator(
    make_stack: Callable[[str, str], Any], tmp_path: Path
) -> None:
    stack: Stack = await make_stack("rabbitmq", "postgresql")
    # A warm worker: the campaign is released at its rate from the first job on, and a cold worker's first
    # request (new connections) would arrive late and shorten the span measured below.
    stack.start_worker()
    await stack.settled(stack.enqueue("call-warm-up"))
    source = tmp_path / "paced.jsonl"
    rows = [{"callConnectionId": f"call-p{i}", "targetParticipant": f"4:+1425555{i:04d}"} for i in range(8)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = submit(stack.settings, str(source), "--campaign", "paced", "--rate", "240/min")
    assert result.exit_code == 0, result.output
    assert stack.producer.ledger.run(op_get_campaign, "paced").rate == 4.0  # type: ignore[union-attr]
    ledger = stack.producer.ledger
    await stack.wait_for(lambda: ledger.run(op_progress, "paced", 0.0, 1.0).active == 0, "the campaign to settle")
    times = sorted(entry.at for entry in stack.emulator.state.requests if entry.call_connection_id != "call-warm-up")
    assert len(times) == 8
    assert times[-1] - times[0] >= 7 / 4.0 - 0.2  # one every 250 ms, not all at once


def test_an_interrupted_submit_resumes_without_sending_anything_twice(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        broker_url="filesystem://",
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        acs_connection_string="endpoint=http://127.0.0.1:9/;accesskey=a2V5",
    )
    source = tmp_path / "big.csv"
    total = 3000
    with source.open("w") as handle:
        handle.write("callConnectionId,targetParticipant\n")
        for index in range(total):
            handle.write(f"call-{index},4:+1425555{index:04d}\n")
    command = [sys.executable, "-m", "worker.cli", "submit", str(source), "--campaign", "big", "--batch-size", "50"]
    process = subprocess.Popen(
        command, env={**os.environ, **cli_env(settings)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ledger = SyncLedger(settings.ledger_url)
    try:
        while sum(ledger.run(op_count_by_state, "big").values()) < 200:
            assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, stderr
        assert "run the same command again" in stderr
        written = sum(ledger.run(op_count_by_state, "big").values())
        assert 200 <= written < total
        interrupted = summary_of(stdout)
        assert interrupted["enqueued"] == written  # the summary counts what was committed

        again = submit(settings, str(source), "--campaign", "big", "--batch-size", "50")
        assert again.exit_code == 0, again.output
        assert summary_of(again.stdout) == {
            "read": total,
            "valid": total,
            "rejected": 0,
            "already present": written,
            "enqueued": total - written,
        }
        assert ledger.run(op_count_by_state, "big") == {State.QUEUED: total}
    finally:
        ledger.close()
    # Every message on the (file-backed) queue names a different job, and every job has its message: the
    # interrupted run finished its batch before it stopped.
    messages = [json.loads(path.read_text()) for path in (settings.broker_folder / "queue").glob("*.msg")]
    ids = [message["headers"]["id"] for message in messages]
    assert len(ids) == len(set(ids)) == total


def test_a_broker_failure_leaves_the_jobs_for_the_sweeper(tmp_path: Path) -> None:
    """Publishing fails: every valid row is still written (the sweeper publishes queued jobs later), the
    summary says how many wait, and the run does not retry the broken broker batch after batch."""
    source = tmp_path / "calls.csv"
    source.write_text("callConnectionId,targetParticipant\n" + "".join(f"c-{i},4:+1425555{i:04d}\n" for i in range(25)))
    calls: list[int] = []

    def broken(job_ids: Iterable[str]) -> int:
        calls.append(len(list(job_ids)))
        raise ConnectionRefusedError("broker down")

    ledger = SyncLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        summary = Submitter(ledger, broken, "down", batch_size=10).submit(read_rows(source, "csv"))
        assert ledger.run(op_count_by_state, "down") == {State.QUEUED: 25}
    finally:
        ledger.close()
    assert summary.as_json() == {
        "read": 25,
        "valid": 25,
        "rejected": 0,
        "already_present": 0,
        "enqueued": 25,
        "unpublished": 25,
    }
    assert calls == [10]


def test_batch_publishing_sends_celerys_own_message(rabbitmq_url: str) -> None:
    """The batch publisher's messages carry what Celery's send_task would put in them, each job its own id."""
    settings = Settings(broker_url=rabbitmq_url, queue=f"acs-test-{uuid.uuid4().hex[:10]}")
    app = create_app(settings)
    batch = BatchPublisher(app, settings)  # campaigns go to the bulk lane
    queue = transfer_queue(settings, Lane.BULK)
    try:
        Publisher(app, settings).publish(["one-by-one"], Lane.BULK)
        assert batch.publish([f"job-{i}" for i in range(300)]) == 300
        assert batch.publish(["job-last"]) == 1  # the connection is kept between batches
        with kombu.Connection(rabbitmq_url) as connection:
            bound = queue(connection.default_channel)
            messages = [bound.get(no_ack=True) for _ in range(302)]
            assert bound.get(no_ack=True) is None
    finally:
        batch.close()
        with kombu.Connection(rabbitmq_url) as connection:
            queue(connection.default_channel).delete()
    reference, *ours = messages
    assert [m.headers["id"] for m in ours] == [f"job-{i}" for i in range(300)] + ["job-last"]
    for message in ours:
        assert set(message.headers) == set(reference.headers)
        assert message.headers["task"] == TASK_NAME
        assert message.headers["root_id"] == message.headers["id"]
        assert message.properties["correlation_id"] == message.headers["id"]
        assert message.properties["delivery_mode"] == 2
        assert message.content_type == reference.content_type == "application/json"
        args, kwargs, _ = json.loads(message.body)
        assert (args, kwargs) == ([], {"job_id": message.headers["id"]})


@pytest.mark.parametrize("batch_size", [1, 100])
def test_a_key_that_comes_back_for_another_call_is_a_rejected_row_naming_the_key(
    tmp_path: Path, batch_size: int
) -> None:
    """The call is not in the request body: a row whose key names an earlier row's job on another call is
    a different transfer, whether the two rows share a batch or not."""
    source = tmp_path / "calls.csv"
    source.write_text(
        "ticket,callConnectionId,targetParticipant\n"
        "T-1,call-A,4:+14255550101\n"
        "T-1,call-A,4:+14255550101\n"  # the same transfer again: already present
        "T-1,call-B,4:+14255550101\n"  # the same key, the same target, another call
    )
    published: list[str] = []

    def publish(job_ids: Iterable[str]) -> int:
        published.extend(job_ids)
        return len(published)

    rejects = RejectsFile(tmp_path / "rejects.jsonl")
    ledger = SyncLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        submitter = Submitter(ledger, publish, "keys", rejects, key_column="ticket", batch_size=batch_size)
        summary = submitter.submit(read_rows(source, "csv", key_column="ticket"))
        assert ledger.run(op_count_by_state, "keys") == {State.QUEUED: 1}
    finally:
        rejects.close()
        ledger.close()
    assert (summary.enqueued, summary.already_present, summary.rejected) == (1, 1, 1)
    (line,) = [json.loads(text) for text in rejects.path.read_text().splitlines()]
    assert line["line"] == 4
    assert line["errors"] == [
        {"field": "ticket", "rule": "the key 'T-1' already names a different transfer in this campaign"}
    ]
    assert len(published) == 1
