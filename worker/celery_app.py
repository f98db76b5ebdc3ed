"""The Celery application. `celery -A worker worker` finds it as `worker.app` and reads `celeryconfig.py`."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery, signals

from worker.broker import celery_config
from worker.config import Settings
from worker.errors import ConfigError


def create_app(settings: Settings | None = None) -> Celery:
    """An app for these settings; without settings, configured from `celeryconfig.py` (the environment)."""
    app = Celery("acs_transfer", include=["worker.tasks"], set_as_current=False)
    if settings is None:
        app.config_from_object("celeryconfig")
    else:
        app.config_from_object(celery_config(settings))
    return app


app = create_app()


@signals.celeryd_init.connect
def refuse_a_bad_configuration(**_: Any) -> None:
    """Before a worker connects or consumes: every setting valid, and the ACS credentials sending needs present.

    One line naming each variable and its rule, exit status 1; a worker that started anyway would fail every
    message it took.
    """
    try:
        Settings.from_env().acs  # noqa: B018 - parsed for its checks
    except ConfigError as error:
        sys.stderr.write(f"acs-transfer worker: configuration error: {error}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
