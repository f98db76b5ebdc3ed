"""Settings: the only reader of ``os.environ``.

Every field has an embedded default that needs no server (a file-backed broker and a SQLite ledger under
``ACS_TRANSFER_HOME``), so one machine runs everything with nothing to install. Secrets never appear in a repr.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from worker.errors import ConfigError
from worker.redact import mask_url

DEFAULT_API_VERSION = "2024-09-15"
DEFAULT_QUEUE = "acs-transfer"
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
T = TypeVar("T")


def _host_header(endpoint: str) -> str:
    """``host[:port]`` of `endpoint` as the Host header carries it: a default port is left out."""
    url = urlsplit(endpoint)
    default_port = {"http": 80, "https": 443}[url.scheme]
    netloc = url.netloc.rpartition("@")[2]
    return netloc.removesuffix(f":{default_port}") if url.port == default_port else netloc


@dataclass(frozen=True)
class AcsCredentials:
    """Where ACS lives and the key that signs requests to it."""

    endpoint: str
    access_key: bytes = field(repr=False)

    @property
    def host(self) -> str:
        """``host[:port]`` as the Host header carries it: a default port is left out."""
        return _host_header(self.endpoint)

    @classmethod
    def from_connection_string(cls, text: str) -> AcsCredentials:
        parts: dict[str, str] = {}
        for element in text.split(";"):
            name, _, value = element.strip().partition("=")
            if name:
                parts[name.strip().lower()] = value.strip()
        endpoint, key = parts.get("endpoint", ""), parts.get("accesskey", "")
        if not endpoint or not key:
            raise ConfigError("ACS_CONNECTION_STRING must look like endpoint=https://<resource>/;accesskey=<key>")
        url = urlsplit(endpoint)
        if url.scheme not in {"http", "https"} or not url.hostname:
            raise ConfigError("ACS_CONNECTION_STRING endpoint must be an http(s) URL with a host")
        try:
            decoded = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("ACS_CONNECTION_STRING accesskey is not valid base64") from None
        if not decoded:
            raise ConfigError("ACS_CONNECTION_STRING accesskey is empty")
        return cls(urlunsplit((url.scheme, url.netloc, "", "", "")), decoded)

    def connection_string(self) -> str:
        return f"endpoint={self.endpoint}/;accesskey={base64.b64encode(self.access_key).decode()}"


@dataclass(frozen=True)
class EntraIdEndpoint:
    """Where ACS lives when requests carry a Microsoft Entra ID token (azure-identity's DefaultAzureCredential)."""

    endpoint: str

    @property
    def host(self) -> str:
        return _host_header(self.endpoint)

    @classmethod
    def parse(cls, text: str) -> EntraIdEndpoint:
        """An ``https://<resource>.communication.azure.com`` URL; plain http only to a loopback host (tokens are
        bearer secrets)."""
        shown = f"ACS_ENDPOINT={mask_url(text)!r}"
        try:
            url = urlsplit(text.strip())
            _ = url.port  # raises on a malformed port
        except ValueError:
            raise ConfigError(f"{shown} is not a URL") from None
        if url.scheme not in {"http", "https"} or not url.hostname or url.username or url.password:
            raise ConfigError(f"{shown} must be https://<resource>.communication.azure.com")
        if url.scheme == "http" and url.hostname not in _LOOPBACK_HOSTS:
            raise ConfigError(f"{shown} must use https (plain http only to a loopback host)")
        if url.path.strip("/") or url.query or url.fragment:
            raise ConfigError(f"{shown} must be the resource's base URL, without a path or query")
        return cls(urlunsplit((url.scheme, url.netloc, "", "", "")))


#: how requests to ACS are authenticated
AcsAuth = AcsCredentials | EntraIdEndpoint


def _masked_url(url: str) -> str:
    # Also masks a libpq ``?password=`` parameter, which would otherwise reach the worker's start-up log line.
    return mask_url(url)


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with its environment variable in `ENVIRONMENT`."""

    home: Path = Path(".acs-transfer")
    acs_connection_string: str | None = field(default=None, repr=False)
    acs_endpoint: str | None = None
    api_version: str = DEFAULT_API_VERSION
    broker_url: str = ""
    ledger_url: str = ""
    queue: str = DEFAULT_QUEUE
    bulk_queue: str = ""
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    max_connections: int = 100
    repeatability_window: float = 300.0
    window_safety_margin: float = 30.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    claim_lease: float = 30.0
    sweep_interval: float = 5.0
    republish_after: float = 30.0
    republish_queued_after: float = 300.0
    worker_concurrency: int = 64
    log_level: str = "INFO"
    log_format: str = "auto"
    # Outcome events (callbacks) and reconciliation
    callback_base_url: str | None = None
    acs_resource_id: str | None = None
    callback_issuer: str = "https://acscallautomation.communication.azure.com"
    callback_jwks_url: str = "https://acscallautomation.communication.azure.com/calling/keys"
    callback_verify: bool = True
    reconcile_after: float = 1800.0
    # The HTTP server (intake and callbacks)
    serve_host: str = "127.0.0.1"
    serve_port: int = 8080
    intake_tokens: tuple[str, ...] = field(default=(), repr=False)
    intake_max_batch: int = 1000
    intake_max_body: int = 4 * 1024 * 1024
    # Pacing: a global limit of transfers per second, shared through Redis when RATE_LIMIT_REDIS_URL is set
    rate_limit: float = 0.0
    rate_limit_burst: float = 0.0
    rate_limit_redis_url: str | None = None
    # Operations
    worker_metrics_port: int = 0
    task_events: bool = False
    job_retention_days: float = 0.0

    def __post_init__(self) -> None:
        if not self.broker_url:
            object.__setattr__(self, "broker_url", "filesystem://")
        if not self.bulk_queue:
            object.__setattr__(self, "bulk_queue", f"{self.queue}.bulk")
        if not self.ledger_url:
            object.__setattr__(self, "ledger_url", f"sqlite:///{(self.home / 'ledger.db').as_posix()}")
        if self.window_safety_margin >= self.repeatability_window:
            raise ConfigError("REPEATABILITY_SAFETY_MARGIN must be smaller than REPEATABILITY_WINDOW")
        if self.log_format not in {"auto", "json", "console"}:
            raise ConfigError("LOG_FORMAT must be auto, json or console")
        if self.acs_endpoint:
            if self.acs_connection_string:
                raise ConfigError(_BOTH_ACS_AUTH)
            object.__setattr__(self, "acs_endpoint", EntraIdEndpoint.parse(self.acs_endpoint).endpoint)

    @property
    def acs(self) -> AcsCredentials:
        """The access key (HMAC) credentials; raises when ACS_CONNECTION_STRING is not what is configured."""
        if not self.acs_connection_string:
            raise ConfigError("ACS_CONNECTION_STRING is not set: endpoint=https://<resource>/;accesskey=<key>")
        return AcsCredentials.from_connection_string(self.acs_connection_string)

    @property
    def acs_auth(self) -> AcsAuth:
        """How the worker authenticates to ACS: exactly one of ACS_CONNECTION_STRING and ACS_ENDPOINT."""
        if self.acs_endpoint:
            return EntraIdEndpoint.parse(self.acs_endpoint)
        if self.acs_connection_string:
            return self.acs
        raise ConfigError(_NO_ACS_AUTH)

    @property
    def broker_folder(self) -> Path:
        """Where the embedded file-backed broker keeps its messages."""
        return self.home / "broker"

    @property
    def send_deadline(self) -> float:
        """Seconds after First-Sent within which an attempt may still start."""
        return self.repeatability_window - self.window_safety_margin

    def __repr__(self) -> str:
        shown = []
        for item in fields(self):
            value: Any = getattr(self, item.name)
            if item.name in SECRET_FIELDS:
                value = "***" if value else value
            elif item.name in {"broker_url", "ledger_url", "rate_limit_redis_url"} and value:
                value = _masked_url(value)
            shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, to configure a child process the same way."""
        env = {}
        for name, (variable, _) in ENVIRONMENT.items():
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = ",".join(value)
            if value is not None:
                env[variable] = str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (variable, parse) in ENVIRONMENT.items():
            raw = env.get(variable)
            if raw is None or raw == "":
                continue
            try:
                values[name] = parse(raw)
            except ValueError:
                raise ConfigError(f"{variable}={raw!r} is not a valid {parse.__name__}") from None
        return cls(**values)


_BOTH_ACS_AUTH = "set only one of ACS_CONNECTION_STRING (access key) and ACS_ENDPOINT (Microsoft Entra ID), not both"
_NO_ACS_AUTH = (
    "set ACS_CONNECTION_STRING (endpoint=https://<resource>/;accesskey=<key>) or ACS_ENDPOINT "
    "(https://<resource>.communication.azure.com, authenticated with Microsoft Entra ID)"
)


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = kind(raw)
        if value <= 0:  # type: ignore[operator]
            raise ValueError(raw)
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _text(raw: str) -> str:
    return raw


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _non_negative(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(raw)
    return value


_text.__name__ = "string"
_flag.__name__ = "boolean (true/false)"
_list.__name__ = "comma-separated list"
_non_negative.__name__ = "non-negative number"
_port.__name__ = "port number"

#: fields whose values are secrets: masked in every repr and in `acs-transfer config`
SECRET_FIELDS = frozenset({"acs_connection_string", "intake_tokens"})

#: field name -> (environment variable, parser)
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "home": ("ACS_TRANSFER_HOME", Path),
    "acs_connection_string": ("ACS_CONNECTION_STRING", _text),
    "acs_endpoint": ("ACS_ENDPOINT", _text),
    "api_version": ("ACS_API_VERSION", _text),
    "broker_url": ("CELERY_BROKER_URL", _text),
    "ledger_url": ("LEDGER_URL", _text),
    "queue": ("TRANSFER_QUEUE", _text),
    "bulk_queue": ("BULK_QUEUE", _text),
    "connect_timeout": ("ACS_CONNECT_TIMEOUT", _positive(float)),
    "request_timeout": ("ACS_REQUEST_TIMEOUT", _positive(float)),
    "max_connections": ("ACS_MAX_CONNECTIONS", _positive(int)),
    "repeatability_window": ("REPEATABILITY_WINDOW", _positive(float)),
    "window_safety_margin": ("REPEATABILITY_SAFETY_MARGIN", float),
    "backoff_base": ("RETRY_BACKOFF_BASE", _positive(float)),
    "backoff_cap": ("RETRY_BACKOFF_CAP", _positive(float)),
    "claim_lease": ("CLAIM_LEASE", _positive(float)),
    "sweep_interval": ("SWEEP_INTERVAL", _positive(float)),
    "republish_after": ("REPUBLISH_AFTER", _positive(float)),
    "republish_queued_after": ("REPUBLISH_QUEUED_AFTER", _positive(float)),
    "worker_concurrency": ("WORKER_CONCURRENCY", _positive(int)),
    "log_level": ("LOG_LEVEL", str.upper),
    "log_format": ("LOG_FORMAT", str.lower),
    "callback_base_url": ("CALLBACK_BASE_URL", _text),
    "acs_resource_id": ("ACS_RESOURCE_ID", _text),
    "callback_issuer": ("CALLBACK_ISSUER", _text),
    "callback_jwks_url": ("CALLBACK_JWKS_URL", _text),
    "callback_verify": ("CALLBACK_VERIFY", _flag),
    "reconcile_after": ("RECONCILE_AFTER", _positive(float)),
    "serve_host": ("SERVE_HOST", _text),
    "serve_port": ("SERVE_PORT", _port),
    "intake_tokens": ("INTAKE_TOKENS", _list),
    "intake_max_batch": ("INTAKE_MAX_BATCH", _positive(int)),
    "intake_max_body": ("INTAKE_MAX_BODY_BYTES", _positive(int)),
    "rate_limit": ("RATE_LIMIT", _non_negative),
    "rate_limit_burst": ("RATE_LIMIT_BURST", _non_negative),
    "rate_limit_redis_url": ("RATE_LIMIT_REDIS_URL", _text),
    "worker_metrics_port": ("WORKER_METRICS_PORT", _port),
    "task_events": ("TASK_EVENTS", _flag),
    "job_retention_days": ("JOB_RETENTION_DAYS", _non_negative),
}


def fields_set_in_environment(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Names of the fields whose variable the environment sets (an empty value counts as unset, as in `from_env`)."""
    env = os.environ if environ is None else environ
    return frozenset(name for name, (variable, _) in ENVIRONMENT.items() if env.get(variable))
