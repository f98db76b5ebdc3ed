"""What every command shares: settings from the environment, logging, and small formatting helpers."""

from __future__ import annotations

import errno
from collections.abc import Sequence

import click

from worker.config import Settings
from worker.errors import ConfigError, LedgerSchemaError
from worker.logs import configure


def settings() -> Settings:
    """Settings from the environment, with logging set up; a bad setting is a clean error, not a traceback."""
    try:
        loaded = Settings.from_env()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    configure(loaded.log_level, loaded.log_format, secrets=loaded.secrets())
    return loaded


#: why a server may fail to open its port: taken, not an address of this host, or a privileged port
LISTEN_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def explain(error: Exception) -> str | None:
    """One line for an expected failure, naming the setting to check; None for anything else (a bug)."""
    from kombu.exceptions import OperationalError as BrokerError  # noqa: PLC0415 - kombu is loaded anyway

    from worker.ledger.stores import database_error_detail  # noqa: PLC0415 - only on the way out of a failure

    if isinstance(error, ConfigError | LedgerSchemaError):
        return str(error)
    if (detail := database_error_detail(error)) is not None:
        return f"the ledger (LEDGER_URL) cannot be used: {detail}; check LEDGER_URL and that the database is up"
    if isinstance(error, BrokerError):
        return f"the broker (CELERY_BROKER_URL) cannot be reached: {error}; check CELERY_BROKER_URL and that it is up"
    return None


def listen_failure(host: str, port: int, error: OSError) -> str:
    """One line for a server that could not open its port, with the way out."""
    if error.errno == errno.EADDRINUSE:
        return f"{host}:{port} is already in use (another instance still running?): stop it or choose another port"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


def pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """``K=V`` option values as a dict."""
    found: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        found[key] = text
    return found
