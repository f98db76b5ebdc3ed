"""Fail fast, speak plainly: every process refuses a bad configuration at start with one line naming the variable
and its rule, and every command turns an expected failure into one line (a traceback only with --debug)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.config import ENVIRONMENT, Settings, read_env
from worker.errors import ConfigError, ValidationError
from worker.ledger import State
from worker.ledger.limits import CAMPAIGN, IDEMPOTENCY_KEY
from worker.produce.producer import Producer

VARIABLES = {variable for variable, _ in ENVIRONMENT.values()}
KEY = base64.b64encode(secrets.token_bytes(32)).decode()


def clean_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The test process's environment without any setting, plus a home and ledger of the test's own."""
    base = {key: value for key, value in os.environ.items() if key not in VARIABLES and key != "ACS_TRANSFER_DEBUG"}
    return {
        **base,
        "ACS_TRANSFER_HOME": str(tmp_path / "home"),
        "LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "ACS_CONNECTION_STRING": f"endpoint=http://127.0.0.1:9/;accesskey={KEY}",
        "LOG_LEVEL": "WARNING",
        **overrides,
    }


def run(command: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def cli(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "worker.cli", *arguments], env)


def issues_of(environ: dict[str, str]) -> dict[str, str]:
    return {issue.field: issue.rule for issue in read_env(environ)[1]}


# --- the rules ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("ACS_CONNECTION_STRING", "endpoint=http://acs.example.com/;accesskey=aGVsbG8=", "https"),
        ("ACS_CONNECTION_STRING", "endpoint=https://acs.example.com/;accesskey=", "endpoint=https://"),
        ("ACS_CONNECTION_STRING", "endpoint=https://acs.example.com/;accesskey=!!", "base64"),
        ("LOG_LEVEL", "loud", "DEBUG, INFO, WARNING, ERROR"),
        ("LOG_FORMAT", "xml", "auto, json, console"),
        ("CELERY_BROKER_URL", "kafka://broker:9092", "amqp://"),
        ("LEDGER_URL", "mysql://u@h/db", "postgresql://"),
        ("REPEATABILITY_SAFETY_MARGIN", "-1", "non-negative"),
        ("REPEATABILITY_SAFETY_MARGIN", "300", "below REPEATABILITY_WINDOW"),
        ("RECONCILE_AFTER", "60", "at least REPEATABILITY_WINDOW"),
        ("WORKER_CONCURRENCY", "0", "positive"),
        ("SERVE_PORT", "70000", "port"),
        ("CALLBACK_BASE_URL", "receiver.example", "http(s) URL"),
        ("RATE_LIMIT_REDIS_URL", "http://redis", "redis://"),
    ],
)
def test_each_rule_names_its_variable(variable: str, value: str, said: str) -> None:
    found = issues_of({variable: value})
    assert list(found) == [variable]
    assert said in found[variable]
    assert "aGVsbG8=" not in found[variable]
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value).startswith(f"{variable}: ")


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://acs.example.com",
        "http://127.0.0.1:8089",
        "http://localhost:8089",
        "http://[::1]:8089",
        "http://emulator:8089",
    ],
)
def test_https_or_http_only_to_a_local_host(endpoint: str) -> None:
    assert issues_of({"ACS_CONNECTION_STRING": f"endpoint={endpoint}/;accesskey={KEY}"}) == {}


def test_every_problem_is_reported_at_once_and_postgres_is_an_alias() -> None:
    found = issues_of({"LOG_LEVEL": "loud", "CELERY_BROKER_URL": "kafka://x", "WORKER_CONCURRENCY": "many"})
    assert set(found) == {"LOG_LEVEL", "CELERY_BROKER_URL", "WORKER_CONCURRENCY"}
    settings = Settings.from_env({"LEDGER_URL": "postgres://acs@db.example/acs"})
    assert settings.ledger_url == "postgresql://acs@db.example/acs"


def test_the_python_producer_checks_settings_given_in_code(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RECONCILE_AFTER"):
        Producer(Settings(home=tmp_path, reconcile_after=10.0))


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("idempotency_key", " ", "blank"),
        ("idempotency_key", "k" * (IDEMPOTENCY_KEY + 1), f"at most {IDEMPOTENCY_KEY}"),
        ("idempotency_key", "k\x00", "control characters"),
        ("idempotency_key", "k\ud800", "lone surrogates"),
        ("campaign", "", "blank"),
        ("campaign", "c" * (CAMPAIGN + 1), f"at most {CAMPAIGN}"),
        ("campaign", "c\n", "control characters"),
        ("campaign", " spring", "whitespace"),
    ],
)
def test_the_producer_refuses_a_bad_key_or_campaign_naming_the_field(
    tmp_path: Path, field: str, value: str, rule: str
) -> None:
    producer = Producer(Settings(home=tmp_path, ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}"))
    try:
        with pytest.raises(ValidationError) as raised:
            producer.enqueue({"callConnectionId": "call-1", "targetParticipant": "4:+14255550123"}, **{field: value})
    finally:
        producer.close()
    (issue,) = raised.value.issues
    assert issue.field == field
    assert rule in issue.rule


def test_enqueue_refuses_a_blank_idempotency_key_in_one_line(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    target = ["--call-connection-id", "call-1", "--target", "4:+14255550123"]
    result = cli("enqueue", *target, "--idempotency-key", " ", env=env)
    assert result.returncode == 2
    assert result.stderr == "error: idempotency_key: must not be blank\n"
    assert result.stdout == ""
    assert not (tmp_path / "ledger.db").exists() or _job_count(env) == 0  # no job was created


def _job_count(env: dict[str, str]) -> int:
    from worker.ledger import SyncLedger, op_count_by_state  # noqa: PLC0415

    ledger = SyncLedger(env["LEDGER_URL"])
    try:
        return sum(ledger.run(op_count_by_state, None).values())
    finally:
        ledger.close()


# --- processes ------------------------------------------------------------------------------------------------


def test_a_worker_with_a_bad_setting_exits_before_consuming(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    producer = Producer(Settings.from_env(env))
    try:
        job_id = producer.enqueue({"callConnectionId": "call-w", "targetParticipant": "4:+14255550123"}).job_id
    finally:
        producer.close()
    queued = list((tmp_path / "home" / "broker" / "queue").iterdir())
    assert len(queued) == 1
    command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--without-mingle", "--without-gossip"]
    for bad in ({"REPEATABILITY_SAFETY_MARGIN": "400"}, {"CELERY_BROKER_URL": "kafka://x"}):
        result = run(command, {**env, **bad}, timeout=60)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"acs-transfer worker: configuration error: {next(iter(bad))}: ")
    without_key = {key: value for key, value in env.items() if key != "ACS_CONNECTION_STRING"}
    result = run(command, without_key, timeout=60)
    assert result.returncode == 1
    assert "set ACS_CONNECTION_STRING" in result.stderr, result.stderr
    assert "or ACS_ENDPOINT" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was consumed: the message is still in the queue, the job still queued.
    assert list((tmp_path / "home" / "broker" / "queue").iterdir()) == queued
    producer = Producer(Settings.from_env(env))
    try:
        assert producer.ledger.get(job_id).state == State.QUEUED
    finally:
        producer.close()


@pytest.mark.parametrize("command", [["healthcheck"], ["serve"], ["status", "x"], ["emulator", "--port", "0"]])
def test_every_command_refuses_a_bad_setting_in_one_line(tmp_path: Path, command: list[str]) -> None:
    result = cli(*command, env=clean_env(tmp_path, CELERY_BROKER_URL="kafka://x", RECONCILE_AFTER="5"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "CELERY_BROKER_URL: scheme 'kafka' is not supported" in result.stderr
    assert "RECONCILE_AFTER: must be at least REPEATABILITY_WINDOW" in result.stderr


def test_config_marks_invalid_values(tmp_path: Path) -> None:
    result = cli("config", env=clean_env(tmp_path, LOG_LEVEL="loud", REPEATABILITY_SAFETY_MARGIN="-3"))
    assert result.returncode == 1
    lines = {line.split("=", 1)[0]: line for line in result.stdout.splitlines() if not line.startswith("#")}
    assert len(lines) == len(VARIABLES)
    assert result.stdout.splitlines()[-1].startswith("# ACS authentication: ")
    assert "INVALID: 'LOUD' is not one of" in lines["LOG_LEVEL"]
    assert lines["REPEATABILITY_SAFETY_MARGIN"].startswith("REPEATABILITY_SAFETY_MARGIN=-3 ")
    assert "INVALID" in lines["REPEATABILITY_SAFETY_MARGIN"]
    assert "INVALID" not in lines["TRANSFER_QUEUE"]
    assert "invalid configuration: REPEATABILITY_SAFETY_MARGIN, LOG_LEVEL" in result.stderr


def test_an_unreachable_ledger_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = clean_env(tmp_path, LEDGER_URL=f"postgres://acs:secret-pw@127.0.0.1:{port}/acs")
    result = cli("dead", "list", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: the ledger (LEDGER_URL) cannot be used: ")
    assert "check LEDGER_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert "secret-pw" not in result.stderr
    debug = cli("dead", "list", env={**env, "ACS_TRANSFER_DEBUG": "1"})
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(tmp_path, SERVE_PORT=str(port), CALLBACK_VERIFY="false")
        for command in (["serve"], ["emulator", "--port", str(port)]):
            result = cli(*command, env=env)
            assert result.returncode == 1
            assert f"127.0.0.1:{port} is already in use" in result.stderr, result.stderr
            assert "Traceback" not in result.stderr


# --- campaign files through `acs-transfer submit` -------------------------------------------------------------

HEADER = "callConnectionId,targetParticipant\n"


def submit(tmp_path: Path, source: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return cli("submit", str(source), "--campaign", "c1", *arguments, env=clean_env(tmp_path))


def campaign_exists(tmp_path: Path) -> bool:
    result = cli("campaign", "c1", env=clean_env(tmp_path))
    return result.returncode == 0


def summary(stdout: str) -> dict[str, int]:
    found = {}
    for line in stdout.splitlines():
        label, _, number = line.strip().rpartition(" ")
        if number.isdigit():
            found[label.strip()] = int(number)
    return found


def test_an_over_long_row_is_rejected_and_the_counters_add_up(tmp_path: Path) -> None:
    source = tmp_path / "calls.csv"
    source.write_text(HEADER + "call-1,4:+14255550101\n" + "x" * (1024 * 1024 + 5) + "\ncall-2,4:+14255550102\n")
    result = submit(tmp_path, source)
    assert result.returncode == 1, result.stderr
    counts = summary(result.stdout)
    assert counts["read"] == 3
    assert counts["enqueued"] == counts["valid"] == 2
    assert counts["rejected"] == 1
    assert "line 3 is longer than" in result.stderr


def test_a_header_only_file_creates_nothing(tmp_path: Path) -> None:
    source = tmp_path / "calls.csv"
    source.write_text(HEADER)
    result = submit(tmp_path, source)
    assert result.returncode == 2
    assert "a header but no rows" in result.stderr
    assert not campaign_exists(tmp_path)


def test_a_file_whose_first_thousand_rows_are_bad_is_refused_whole(tmp_path: Path) -> None:
    source = tmp_path / "calls.csv"
    source.write_text(HEADER + "".join(f"call-{n},not-a-target\n" for n in range(1500)) + "call-ok,4:+14255550101\n")
    rejects = tmp_path / "bad.jsonl"
    result = submit(tmp_path, source, "--rejects", str(rejects))
    assert result.returncode == 2
    assert "the first 1000 rows are all rejected: not a campaign file?" in result.stderr
    assert not rejects.exists()
    assert not campaign_exists(tmp_path)
    assert list(tmp_path.glob(".bad.jsonl.*")) == []  # no temporary file left behind


def test_rejects_never_overwrite_the_input_and_replace_an_old_file_whole(tmp_path: Path) -> None:
    source = tmp_path / "calls.csv"
    content = HEADER + "call-1,4:+14255550101\ncall-2,4:555\n"
    source.write_text(content)
    refused = submit(tmp_path, source, "--rejects", str(source))
    assert refused.returncode == 2
    assert "--rejects" in refused.stderr
    assert "names the input file" in refused.stderr
    assert source.read_text() == content
    assert not campaign_exists(tmp_path)

    rejects = tmp_path / "rejects.jsonl"
    rejects.write_text("stale\n" * 10)
    done = submit(tmp_path, source, "--rejects", str(rejects))
    assert done.returncode == 1
    assert [json.loads(line)["line"] for line in rejects.read_text().splitlines()] == [3]
    assert source.read_text() == content


def test_an_unwritable_rejects_path_is_refused_before_anything_is_enqueued(tmp_path: Path) -> None:
    source = tmp_path / "calls.csv"
    source.write_text(HEADER + "call-1,4:+14255550101\n")
    result = submit(tmp_path, source, "--rejects", str(tmp_path / "no-such-folder" / "r.jsonl"))
    assert result.returncode == 2
    assert "--rejects" in result.stderr
    assert "Traceback" not in result.stderr
    assert not campaign_exists(tmp_path)


def test_a_report_needs_a_known_extension_and_a_writable_folder(tmp_path: Path) -> None:
    source = tmp_path / "calls.csv"
    source.write_text(HEADER + "call-1,4:+14255550101\n")
    assert submit(tmp_path, source).returncode == 0
    env = clean_env(tmp_path)
    wrong = cli("campaign", "c1", "--report", str(tmp_path / "x.txt"), env=env)
    assert wrong.returncode == 2
    assert "must end in .csv or .json" in wrong.stderr
    assert not (tmp_path / "x.txt").exists()
    nowhere = cli("campaign", "c1", "--report", str(tmp_path / "missing" / "x.csv"), env=env)
    assert nowhere.returncode == 2
    assert "not writable" in nowhere.stderr
    assert cli("campaign", "c1", "--report", str(tmp_path / "x.json"), env=env).returncode == 0
    assert json.loads((tmp_path / "x.json").read_text())[0]["call_connection_id"] == "call-1"


# --- what operators see ---------------------------------------------------------------------------------------


def _ledger_sql(tmp_path: Path, statement: str, **values: object) -> None:
    import sqlalchemy as sa  # noqa: PLC0415

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text(statement), values)
    engine.dispose()


def test_dead_messages_are_listed_and_shown(tmp_path: Path) -> None:
    from worker.ledger import SyncLedger, op_record_dead_message  # noqa: PLC0415

    env = clean_env(tmp_path)
    assert cli("dead", "messages", env=env).stdout.strip() == "no dead messages"
    ledger = SyncLedger(env["LEDGER_URL"])
    try:
        ledger.run(op_record_dead_message, "msg-1", "unknown task 'x.y'", '{"body": "garbage"}', 1_700_000_000.0)
    finally:
        ledger.close()
    listed = cli("dead", "messages", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "msg-1" in listed.stdout
    assert "unknown task 'x.y'" in listed.stdout
    number = listed.stdout.split()[0]
    shown = cli("dead", "messages", number, env=env)
    assert shown.returncode == 0
    assert '{"body": "garbage"}' in shown.stdout
    assert "2023-11-14T22:13:20+00:00" in shown.stdout
    missing = cli("dead", "messages", "999", env=env)
    assert missing.returncode == 1
    assert "no dead message 999" in missing.stderr


def test_dead_list_says_a_status_once_and_replay_says_what_to_give(tmp_path: Path) -> None:
    source = tmp_path / "calls.csv"
    source.write_text(HEADER + "call-1,4:+14255550101\ncall-2,4:+14255550102\n")
    assert submit(tmp_path, source).returncode == 0
    _ledger_sql(tmp_path, "UPDATE jobs SET state = 'failed', last_status = 401, last_error = '401'")
    env = clean_env(tmp_path)
    listed = cli("dead", "list", env=env)
    assert listed.returncode == 0
    assert listed.stdout.count("  401  ") == 2, listed.stdout
    assert "401 401" not in listed.stdout
    replay = cli("dead", "replay", env=env)
    assert replay.returncode == 2
    assert "give the ids of the jobs to replay" in replay.stderr


def test_campaign_tells_accepted_from_final(tmp_path: Path) -> None:
    source = tmp_path / "calls.csv"
    source.write_text(HEADER + "call-1,4:+14255550101\ncall-2,4:+14255550102\n")
    assert submit(tmp_path, source).returncode == 0
    _ledger_sql(tmp_path, "UPDATE jobs SET state = 'accepted' WHERE call_connection_id = 'call-1'")
    _ledger_sql(tmp_path, "UPDATE jobs SET state = 'transferred' WHERE call_connection_id = 'call-2'")
    shown = cli("campaign", "c1", env=clean_env(tmp_path))
    assert "final 1 (50.0%), awaiting an outcome event 1, in progress 0" in shown.stdout
    document = json.loads(cli("campaign", "c1", "--json", env=clean_env(tmp_path)).stdout)
    assert (document["final"], document["awaiting_outcome"]) == (1, 1)


def test_serve_logs_the_address_it_listens_on(tmp_path: Path) -> None:
    from worker.processes import free_port, stop, wait_for_http  # noqa: PLC0415

    port = free_port()
    env = clean_env(tmp_path, SERVE_PORT=str(port), CALLBACK_VERIFY="false", LOG_LEVEL="INFO", LOG_FORMAT="json")
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "serve"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", None)
        listening = [json.loads(line) for line in log.read_text().splitlines() if "server.listening" in line]
        assert listening
        assert listening[0]["url"] == f"http://127.0.0.1:{port}"
    finally:
        stop(process)


# --- Ctrl-C -----------------------------------------------------------------------------------------------------


def _interrupted(
    tmp_path: Path, arguments: list[str], env: dict[str, str], ready: str | None, sig: int = signal.SIGINT
) -> tuple[int, str]:
    """Run a command until it is ready (`ready`: a URL that answers, or text on stdout), send `sig`: its exit
    status and what it wrote to stderr after the signal."""
    from worker.processes import wait_for_http  # noqa: PLC0415

    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", *arguments], env=env, stdout=stdout, stderr=stderr
        )
    try:
        if ready is not None and ready.startswith("http"):
            wait_for_http(ready, process, timeout=60)
        else:
            _wait_for_line(out, ready or "", process)
        before = len(err.read_bytes())
        process.send_signal(sig)
        status = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return status, err.read_bytes()[before:].decode()


@pytest.mark.parametrize("command", ["emulator", "serve", "campaign --watch"])
def test_ctrl_c_ends_a_command_with_one_line_and_status_130(tmp_path: Path, command: str) -> None:
    from worker.processes import free_port  # noqa: PLC0415

    port = str(free_port())
    env = clean_env(tmp_path, SERVE_PORT=port, CALLBACK_VERIFY="false")
    if command == "emulator":
        arguments, ready = ["emulator", "--port", port], f"http://127.0.0.1:{port}/_emulator/health"
    elif command == "serve":
        arguments, ready = ["serve"], f"http://127.0.0.1:{port}/healthz"
    else:
        source = tmp_path / "calls.csv"
        source.write_text(HEADER + "call-1,4:+14255550101\n")
        assert submit(tmp_path, source).returncode == 0  # no worker: the job stays queued, so --watch goes on
        arguments, ready = ["campaign", "c1", "--watch", "--interval", "0.2"], "campaign c1"
    status, said = _interrupted(tmp_path, arguments, env, ready)
    assert (status, said) == (130, "interrupted\n")


@pytest.mark.parametrize("command", ["emulator", "serve"])
def test_sigterm_still_stops_a_server_cleanly(tmp_path: Path, command: str) -> None:
    from worker.processes import free_port  # noqa: PLC0415

    port = str(free_port())
    env = clean_env(tmp_path, SERVE_PORT=port, CALLBACK_VERIFY="false")
    arguments, path = (
        (["emulator", "--port", port], "_emulator/health") if command == "emulator" else (["serve"], "healthz")
    )
    status, said = _interrupted(tmp_path, arguments, env, f"http://127.0.0.1:{port}/{path}", signal.SIGTERM)
    assert status == 0, said
    assert "Traceback" not in said
    assert "interrupted" not in said


# --- Celery's conventions -------------------------------------------------------------------------------------

CELERY = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--without-mingle", "--without-gossip"]


def test_prefork_is_refused_with_the_reason(tmp_path: Path) -> None:
    for pool in (["-P", "prefork"], ["--pool=prefork"], ["-Pprocesses"]):
        result = run([*CELERY, *pool], clean_env(tmp_path))
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "is not supported: each worker process runs its jobs on one event loop" in lines[0]


def _wait_for_line(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert process.poll() is None, path.read_text()
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.2)
    return path.read_text()


#: lines Celery or kombu would print at every start, none of them about a mistake of the operator's: no host in the
#: embedded transport's URL, and native delayed delivery (ETA tasks), which the lane queues' direct exchanges
#: cannot use and the worker does not need
START_NOISE = ("No hostname was supplied", "native delayed delivery", "ETA tasks", "block the worker")


def _start_and_read(env: dict[str, str], *arguments: str, log: Path) -> tuple[str, dict[str, object]]:
    """Start a real worker, wait until it consumes, stop it: everything it printed, and its worker.ready line."""
    from worker.processes import stop  # noqa: PLC0415

    with log.open("wb") as output:
        process = subprocess.Popen(
            [*CELERY, *arguments], env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        text = _wait_for_line(log, "worker.ready", process)
    finally:
        stop(process)
    (ready,) = [json.loads(line) for line in text.splitlines() if '"worker.ready"' in line]
    return text, ready


@pytest.mark.parametrize("broker", [None, "filesystem://"], ids=["default", "explicit"])
def test_the_start_shows_the_effective_concurrency_without_warnings(tmp_path: Path, broker: str | None) -> None:
    # Celery reads CELERY_BROKER_URL itself: an explicit `filesystem://` must not bring the hostname warning back.
    extra = {} if broker is None else {"CELERY_BROKER_URL": broker}
    env = clean_env(tmp_path, LOG_LEVEL="INFO", LOG_FORMAT="json", **extra)
    text, ready = _start_and_read(env, "-c", "4", log=tmp_path / "worker.log")
    assert (ready["pool"], ready["concurrency"]) == ("thread", 4)
    assert "concurrency: 4 (thread)" in text
    assert [noise for noise in START_NOISE if noise in text] == []


def test_a_rabbitmq_worker_starts_without_delayed_delivery_warnings(tmp_path: Path, rabbitmq_url: str) -> None:
    queue = f"acs-quiet-{secrets.token_hex(4)}"
    env = clean_env(tmp_path, LOG_LEVEL="INFO", LOG_FORMAT="json", CELERY_BROKER_URL=rabbitmq_url, TRANSFER_QUEUE=queue)
    try:
        text, ready = _start_and_read(env, "-n", f"{queue}@%h", "-c", "2", log=tmp_path / "worker.log")
    finally:
        import kombu  # noqa: PLC0415

        with kombu.Connection(rabbitmq_url) as connection:
            for name in (queue, f"{queue}.bulk"):
                connection.default_channel.queue_delete(name)
    assert [noise for noise in START_NOISE if noise in text] == []
    assert "wait in the worker" in str(ready.get("retries"))


#: a worker that says when it is ready in a file, since with everything at WARNING no line of its own says it
_MARKED_WORKER = """
import os, sys
from pathlib import Path
from celery import signals
from worker import app

@signals.worker_ready.connect
def mark(**_):
    Path(os.environ["READY_MARKER"]).write_text("ready")

app.worker_main(sys.argv[1:])
"""


@pytest.mark.parametrize("project_level", ["WARNING", None])
def test_loglevel_quiets_celery_and_log_level_the_project_as_the_readme_says(
    tmp_path: Path, project_level: str | None
) -> None:
    """README: `--loglevel` sets Celery's and every library's level, LOG_LEVEL the project's own; set both to quiet
    both (`LOG_LEVEL=WARNING celery -A worker worker --loglevel=warning`)."""
    from worker.processes import stop  # noqa: PLC0415

    env = clean_env(tmp_path, LOG_FORMAT="json", READY_MARKER=str(tmp_path / "ready"))
    env.pop("LOG_LEVEL")
    if project_level is not None:
        env["LOG_LEVEL"] = project_level
    marker, log = tmp_path / "ready", tmp_path / "worker.log"
    command = [sys.executable, "-c", _MARKED_WORKER, "worker", "--loglevel=warning", "-n", "quiet@%h"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        stop(process)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    quiet = [line for line in lines if line["level"] in {"debug", "info"}]
    if project_level is not None:
        assert quiet == []
    else:  # LOG_LEVEL's default, INFO, still shows the project's lines; Celery's stay quiet
        assert {line["event"] for line in quiet} >= {"worker.ready"}
        assert [line for line in quiet if "logger" in line] == []  # only library lines carry a logger name


def test_the_flower_extra_brings_flower(tmp_path: Path) -> None:
    """`pip install 'acs-transfer[flower]'`, resolved by pip itself (a dry run: nothing is installed)."""
    report = tmp_path / "report.json"
    project = Path(__file__).resolve().parent.parent
    result = run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--report", str(report), f"{project}[flower]"],
        {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        timeout=240,
    )
    if result.returncode != 0 and "No matching distribution" in result.stderr + result.stdout:
        pytest.skip(f"no package index reachable: {result.stderr.strip().splitlines()[-1:]}")
    assert result.returncode == 0, result.stderr
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"acs-transfer", "flower"} <= names


def test_a_second_worker_with_the_same_name_says_it_needs_its_own(tmp_path: Path, rabbitmq_url: str) -> None:
    from worker.processes import stop  # noqa: PLC0415

    node = f"dup-{secrets.token_hex(3)}@%h"
    env = clean_env(tmp_path, CELERY_BROKER_URL=rabbitmq_url, TRANSFER_QUEUE=f"acs-dup-{secrets.token_hex(4)}")
    log = tmp_path / "first.log"
    with log.open("wb") as output:
        first = subprocess.Popen(
            [*CELERY, "-n", node],
            env={**env, "LOG_LEVEL": "INFO"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_line(log, "worker.ready", first)
        second = run([*CELERY, "-n", node], env, timeout=60)
    finally:
        stop(first)
    assert second.returncode == 1
    assert "each worker on a host needs its own -n name" in second.stderr
    assert "Traceback" not in second.stderr
    # The queue of this test goes with it.
    import kombu  # noqa: PLC0415

    with kombu.Connection(rabbitmq_url) as connection:
        connection.default_channel.queue_delete(env["TRANSFER_QUEUE"])


def test_enqueue_with_the_broker_down_says_the_job_waits(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = clean_env(tmp_path, CELERY_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{port}//")
    result = cli("enqueue", "--call-connection-id", "call-1", "--target", "4:+14255550123", env=env)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert "the broker (CELERY_BROKER_URL) did not take the message" in result.stderr
    assert "Traceback" not in result.stderr
    shown = cli("status", job_id, "--json", env=env)
    assert json.loads(shown.stdout)["state"] == State.QUEUED
