"""The Celery application. `celery -A worker worker` finds it as `worker.app` and reads `celeryconfig.py`."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from worker.config import Settings
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
