"""The effective configuration: every variable in `ENVIRONMENT`, its value as the process sees it, and where
the value came from. Secrets are masked, so the report is safe to paste into a ticket."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.config import ENVIRONMENT, SECRET_FIELDS, Settings, fields_set_in_environment
from worker.redact import MASK, mask_url


@dataclass(frozen=True)
class Entry:
    variable: str
    value: str
    source: str  # "env" or "default"


def shown(name: str, value: Any) -> str:
    """A settings value as text, with secrets masked: secret fields whole, passwords inside any URL."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = ",".join(value)
    text = str(value)
    if name in SECRET_FIELDS:
        return MASK if text else ""
    return mask_url(text) if "://" in text else text


def acs_authentication(settings: Settings) -> str:
    """Which way the worker authenticates to ACS, as `acs-transfer config` reports it."""
    if settings.acs_endpoint:
        return "Microsoft Entra ID (ACS_ENDPOINT; credential: azure-identity DefaultAzureCredential)"
    if settings.acs_connection_string:
        return "access key (ACS_CONNECTION_STRING)"
    return "not configured: set ACS_CONNECTION_STRING or ACS_ENDPOINT to send transfers"


def effective_config(environ: Mapping[str, str] | None = None) -> list[Entry]:
    """One entry per variable, in `ENVIRONMENT` order (`environ` defaults to the process's environment).

    Raises `ConfigError` as `Settings.from_env` does.
    """
    settings = Settings.from_env(environ)
    from_env = fields_set_in_environment(environ)
    return [
        Entry(variable, shown(name, getattr(settings, name)), "env" if name in from_env else "default")
        for name, (variable, _) in ENVIRONMENT.items()
    ]
