"""The effective configuration: every variable in `ENVIRONMENT`, its value as the process sees it, and where
the value came from. Secrets are masked, so the report is safe to paste into a ticket."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.config import ENVIRONMENT, SECRET_FIELDS, Settings, fields_set_in_environment, read_env
from worker.redact import MASK, mask_url


@dataclass(frozen=True)
class Entry:
    variable: str
    value: str
    source: str  # "env" or "default"
    problem: str = ""  # the rule the value breaks, if it breaks one


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
    """One entry per variable, in `ENVIRONMENT` order (`environ` defaults to the process's environment), each
    with the rule it breaks, if any: a value that does not parse is shown as given (masked if secret)."""
    env = os.environ if environ is None else environ
    settings, issues = read_env(env)
    problems = {issue.field: issue.rule for issue in issues}
    from_env = fields_set_in_environment(env)
    entries = []
    for name, (variable, parse) in ENVIRONMENT.items():
        value: Any = getattr(settings, name)
        if variable in problems and name in from_env:
            try:
                parse(env[variable])
            except ValueError:
                value = env[variable]
        source = "env" if name in from_env else "default"
        entries.append(Entry(variable, shown(name, value), source, problems.get(variable, "")))
    return entries
