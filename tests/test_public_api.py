"""The package's published shape, pinned: what `import worker` offers, and how Celery finds the app and its task.

Modules may move between the stage folders (docs/architecture.md); these must not change with them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from celery.utils.imports import symbol_by_name

import worker
from worker.deliver.messages import BadMessage
from worker.errors import LedgerUrlError
from worker.ledger import SyncLedger
from worker.produce.campaign_files import FileError
from worker.queue.broker import TASK_NAME


def test_the_public_api_is_what_worker_exports() -> None:
    assert sorted(worker.__all__) == [
        "ConfigError",
        "IdempotencyConflict",
        "JobNotFound",
        "Producer",
        "TransferError",
        "TransferRequest",
        "ValidationError",
        "app",
        "enqueue_transfer",
        "parse_transfer",
    ]
    for name in worker.__all__:
        assert getattr(worker, name) is not None, name


def test_celery_finds_the_app_its_task_by_name_and_the_recording_consumer() -> None:
    app = worker.app
    app.loader.import_default_modules()
    assert TASK_NAME in app.tasks
    assert symbol_by_name(app.conf.worker_consumer).__name__ == "RecordingConsumer"


def test_importing_the_package_loads_no_broker_database_or_http_library() -> None:
    heavy = "('celery', 'kombu', 'sqlalchemy', 'aiohttp')"
    probe = f"import sys, worker; print(sorted(m for m in {heavy} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]"


def test_every_error_raised_on_purpose_is_a_transfer_error() -> None:
    assert all(issubclass(error, worker.TransferError) for error in (BadMessage, FileError, LedgerUrlError))
    with pytest.raises(LedgerUrlError, match="LEDGER_URL must be sqlite"):
        SyncLedger("mysql://localhost/db")
