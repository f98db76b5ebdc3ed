"""The Celery application. `celery -A worker worker` finds it as `worker.app` and reads `celeryconfig.py`."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery, signals

from worker.config import Settings
from worker.errors import ConfigError
from worker.logs import get_logger
from worker.queue.broker import celery_config


def create_app(settings: Settings | None = None) -> Celery:
    """An app for these settings; without settings, configured from `celeryconfig.py` (the environment)."""
    app = Celery("acs_transfer", include=["worker.deliver.tasks"], set_as_current=False)
    if settings is None:
        app.config_from_object("celeryconfig")
    else:
        app.config_from_object(celery_config(settings))
    return app


app = create_app()


#: pools a worker may run: one event loop per process, fed by threads (or, to debug, by the main thread alone)
POOLS = ("threads", "solo")


@signals.celeryd_init.connect
def refuse_a_bad_configuration(**_: Any) -> None:
    """Before a worker connects or consumes: every setting valid, the ACS credentials sending needs present,
    and a pool that works with one event loop per process.

    One line naming each problem, exit status 1; a worker that started anyway would fail every message it took.
    """
    try:
        Settings.from_env().acs_auth  # noqa: B018 - parsed for its checks: an access key or an Entra ID endpoint
    except ConfigError as error:
        _refuse(f"configuration error: {error}")
    pool = _pool_asked_for(sys.argv)
    if pool is not None and pool not in POOLS:
        _refuse(
            f"-P {pool} is not supported: each worker process runs one event loop that the threads pool feeds "
            "(the default; -c sets how many jobs it keeps in flight). For more cores run more worker processes, "
            "each with its own -n name."
        )


@signals.worker_ready.connect
def say_what_runs(sender: Any = None, **_: Any) -> None:
    """One line once the worker consumes: its node name, pool and effective concurrency (``-c`` or
    WORKER_CONCURRENCY), which the settings logged at start cannot tell."""
    controller = getattr(sender, "controller", None)
    get_logger(__name__).info(
        "worker.ready",
        node=getattr(sender, "hostname", None),
        pool=type(getattr(controller, "pool", None)).__module__.rpartition(".")[2] or None,
        concurrency=getattr(controller, "concurrency", None),
    )


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


def _refuse(message: str) -> None:
    sys.stderr.write(f"acs-transfer worker: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)
