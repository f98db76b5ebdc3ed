"""The worker's start-up gate: nothing is consumed until the settings, the pool and ACS authentication are right.

On `celeryd_init`, before the worker connects: every setting, then (under Microsoft Entra ID) a token for ACS.
Each mistake is one line and the exit status 1; a worker that started anyway would fail every message it took.
The gate also takes over logging from Celery, so that Celery's own lines join the project's stream (`worker.logs`).
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from celery import signals
from celery.apps import worker as celery_worker

from worker.acs.entra import START_CHECK_SECONDS, TokenUnavailable, check_token
from worker.config import Settings
from worker.errors import ConfigError
from worker.logs import configure, get_logger

log = get_logger(__name__)

#: whether this worker's lines are JSON, so Celery's printed banner and stop message become log events
_json_lines = [False]

#: pools a worker may run: job messages run on the process's event loop whatever the pool; these two leave it be
POOLS = ("threads", "solo")


@signals.celeryd_init.connect
def gate(instance: Any = None, options: dict[str, Any] | None = None, **_: Any) -> None:
    settings = _checked_settings()
    json_lines = configure(
        settings.log_level,
        settings.log_format,
        library_level=(options or {}).get("loglevel") or "WARNING",
        secrets=settings.secrets(),
    )
    _json_lines[0] = json_lines
    if json_lines and instance is not None:
        instance.quiet = True  # the banner is printed, not logged: `_log_the_banner` logs it instead
    if settings.acs_endpoint:
        _check_entra_token(settings)


def _checked_settings() -> Settings:
    try:
        settings = Settings.from_env()
        settings.acs_auth  # noqa: B018 - parsed for its checks: an access key or an Entra ID endpoint
    except ConfigError as error:
        _refuse(*(f"configuration error: {issue}" for issue in error.issues or [error]))
    pool = _pool_asked_for(sys.argv)
    if pool is not None and pool not in POOLS:
        _refuse(
            f"-P {pool} is not supported: each worker process runs its jobs on one event loop "
            "(-c sets how many messages it takes at a time from each queue). For more cores run more worker processes, "
            "each with its own -n name."
        )
    return settings


def _check_entra_token(settings: Settings) -> None:
    try:
        detail = check_token(max(settings.request_timeout, START_CHECK_SECONDS))
    except TokenUnavailable as error:
        log.error("worker.refused", reason=str(error))
        raise SystemExit(1) from None
    log.info("worker.credential", detail=detail)


@signals.setup_logging.connect
def _logging_is_configured(**_: Any) -> None:
    """Connected so that Celery leaves logging alone: `gate` has configured it (a receiver here tells Celery not
    to install its own handlers on the root logger, which would print plain text beside the JSON lines)."""


@signals.celeryd_after_setup.connect
def _log_the_banner(instance: Any = None, **_: Any) -> None:
    if instance is not None and _json_lines[0]:
        log.info("worker.banner", banner=instance.startup_info(artlines=False))


@signals.worker_ready.connect
def _quiet_the_stop(sender: Any = None, **_: Any) -> None:
    """Celery writes "Warm shutdown" on SIGTERM straight to stdout; with JSON lines the ``worker.stopped`` event
    says it instead. (The handler is Celery's own, installed again without its message.)"""
    controller = getattr(sender, "controller", None)
    if controller is not None and _json_lines[0]:
        celery_worker.install_worker_term_handler(controller, verbose=False)  # type: ignore[attr-defined]


def _pool_asked_for(argv: list[str]) -> str | None:
    """The pool named on the command line. Celery reads an explicit ``-P prefork`` as its default and quietly
    takes the configured threads pool instead, so the command line is the only place to see it."""
    for index, argument in enumerate(argv):
        if argument in {"-P", "--pool"} and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--pool="):
            return argument.partition("=")[2]
        if argument.startswith("-P") and len(argument) > 2:
            return argument[2:]
    return None


def _refuse(*lines: str) -> NoReturn:
    sys.stderr.write("".join(f"acs-transfer worker: {line}\n" for line in lines))
    sys.stderr.flush()
    raise SystemExit(1)
