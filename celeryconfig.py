"""Celery configuration read by `celery -A worker worker` (and by producers).

Every value comes from the environment through `worker.config.Settings`; see README.md for the variables.
The reasoning behind each choice (JSON only, late acks, threads feeding one event loop) is in `worker.queue.broker`.
"""

from worker.config import Settings
from worker.queue.broker import celery_config

globals().update(celery_config(Settings.from_env()))
