"""What every command shares: settings from the environment, logging, and small formatting helpers."""

from __future__ import annotations

from collections.abc import Sequence

import click

from worker.config import Settings
from worker.errors import ConfigError
from worker.logs import configure, register_secret


def settings() -> Settings:
    """Settings from the environment, with logging set up; a bad setting is a clean error, not a traceback."""
    try:
        loaded = Settings.from_env()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    register_secret(loaded.acs_connection_string)
    configure(loaded.log_level, loaded.log_format)
    return loaded


def pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """``K=V`` option values as a dict."""
    found: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        found[key] = text
    return found
