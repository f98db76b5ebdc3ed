"""The Celery application. `celery -A worker worker` finds it as `worker.app` and reads `celeryconfig.py`."""

from __future__ import annotations

from celery import Celery

from worker.config import Settings
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
