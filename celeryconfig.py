"""Celery configuration read by `celery -A worker worker` (and by producers).

Every value comes from the environment through `worker.config.Settings`; see README.md for the variables.
The reasoning behind each choice (JSON only, late acks, threads feeding one event loop) is in `worker.queue.broker`.
"""

from worker.config import read_env
from worker.queue.broker import celery_config

# Not `Settings.from_env()`: a bad setting is refused with one line by the worker's start-up check
# (`worker.deliver.startup`), not with a traceback from inside Celery's option parsing.
globals().update(celery_config(read_env()[0]))
