"""Celery configuration read by `celery -A worker worker` (and by producers).

Every value comes from the environment through `worker.config.Settings`; see README.md for the variables.
The reasoning behind each choice (JSON only, late acks, threads feeding one event loop) is in `worker.broker`.
"""

from worker.broker import celery_config
from worker.config import Settings

globals().update(celery_config(Settings.from_env()))
