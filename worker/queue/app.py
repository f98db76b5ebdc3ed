"""The Celery application. `celery -A worker worker` finds it as `worker.app` and reads `celeryconfig.py`."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from worker.config import Settings, read_env
from worker.logs import get_logger
from worker.queue.broker import celery_broker_url, celery_config


def create_app(settings: Settings | None = None) -> Celery:
    """An app for these settings; without settings, configured from `celeryconfig.py` (the environment)."""
    app = Celery("acs_transfer", include=["worker.deliver.tasks"], set_as_current=False)
    if settings is None:
        app.config_from_object("celeryconfig")
    else:
        app.config_from_object(celery_config(settings))
    _name_the_broker_as_configured(settings or read_env()[0])
    return app


def _name_the_broker_as_configured(settings: Settings) -> None:
    """Celery reads CELERY_BROKER_URL itself, ahead of its configuration, so `filesystem://` there would undo
    the host `celery_broker_url` adds. Only an equal value is replaced: the same broker, spelled as configured."""
    configured = celery_broker_url(settings)
    if os.environ.get("CELERY_BROKER_URL") == settings.broker_url != configured:
        os.environ["CELERY_BROKER_URL"] = configured


app = create_app()


@signals.worker_ready.connect
def say_what_runs(sender: Any = None, **_: Any) -> None:
    """One line once the worker consumes: its node name, pool and effective concurrency (``-c`` or
    WORKER_CONCURRENCY), which the settings logged at start cannot tell, and where a retry waits (Celery's
    delayed delivery, which the worker leaves out, would suggest the broker)."""
    controller = getattr(sender, "controller", None)
    get_logger(__name__).info(
        "worker.ready",
        node=getattr(sender, "hostname", None),
        pool=type(getattr(controller, "pool", None)).__module__.rpartition(".")[2] or None,
        concurrency=getattr(controller, "concurrency", None),
        retries="wait in the worker that holds the message, which stays unacknowledged until its job settles",
    )
