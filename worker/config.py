"""Settings: the only reader of ``os.environ``.

Every field has an embedded default that needs no server (a file-backed broker and a SQLite ledger under
``ACS_TRANSFER_HOME``), so one machine runs everything with nothing to install. Secrets never appear in a repr.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from worker.errors import ConfigError, Issue
from worker.redact import mask_url, url_secrets

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
        parsed = _parse_connection_string(text)
        if isinstance(parsed, str):
            raise ConfigError(f"ACS_CONNECTION_STRING {parsed}", [Issue("ACS_CONNECTION_STRING", parsed)])
        return parsed

    def connection_string(self) -> str:
        return f"endpoint={self.endpoint}/;accesskey={base64.b64encode(self.access_key).decode()}"


def _parse_connection_string(text: str) -> AcsCredentials | str:
    """The credentials in a connection string, or the rule it breaks (never echoing the key)."""
    parts: dict[str, str] = {}
    for element in text.split(";"):
        name, _, value = element.strip().partition("=")
        if name:
            parts[name.strip().lower()] = value.strip()
    endpoint, key = parts.get("endpoint", ""), parts.get("accesskey", "")
    if not endpoint or not key:
        return "must look like endpoint=https://<resource>/;accesskey=<base64 key>"
    url = urlsplit(endpoint)
    if url.scheme not in {"http", "https"} or not url.hostname:
        return "endpoint must be an https URL with a host"
    if url.scheme == "http" and not _is_local_host(url.hostname):
        return "endpoint must use https (http only to a loopback host or a local service name without dots)"
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return "accesskey is not valid base64"
    if not decoded:
        return "accesskey is empty"
    return AcsCredentials(urlunsplit((url.scheme, url.netloc, "", "", "")), decoded)


def _is_local_host(host: str) -> bool:
    """Loopback, or a single-label name such as a compose service (``emulator``); ACS itself is never either."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost") or "." not in host


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
        elif self.ledger_url.startswith("postgres://"):  # the spelling Heroku and others hand out
            object.__setattr__(self, "ledger_url", "postgresql://" + self.ledger_url.removeprefix("postgres://"))
        if self.acs_endpoint and _endpoint_rule(self) is None:
            object.__setattr__(self, "acs_endpoint", EntraIdEndpoint.parse(self.acs_endpoint).endpoint)

    def problems(self) -> list[Issue]:
        """Every rule of `RULES` these settings break, each naming its variable."""
        return [Issue(rule.variable, broken) for rule in RULES if (broken := rule.broken(self)) is not None]

    def check(self) -> Settings:
        """These settings, if they break no rule; else `ConfigError` naming every variable and rule."""
        issues = self.problems()
        if issues:
            raise ConfigError(_summary(issues), issues)
        return self

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

    def secrets(self) -> list[str | bytes | None]:
        """Every secret value these settings hold, for the log scrubber: the access key (as bytes, so each of its
        spellings is caught), whole secret fields, and the passwords inside URLs."""
        found: list[str | bytes | None] = [self.acs_connection_string, *self.intake_tokens]
        if self.acs_connection_string and isinstance(
            parsed := _parse_connection_string(self.acs_connection_string), AcsCredentials
        ):
            found.append(parsed.access_key)
        for url in (self.broker_url, self.ledger_url, self.rate_limit_redis_url):
            found += url_secrets(url or "")
        return found

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
        """Settings from the environment, checked completely: `ConfigError` names every bad variable."""
        settings, issues = read_env(environ)
        if issues:
            raise ConfigError(_summary(issues), issues)
        return settings


def read_env(environ: Mapping[str, str] | None = None) -> tuple[Settings, list[Issue]]:
    """Settings from the environment and every rule broken, without raising; a variable that does not parse
    keeps its default (and is reported), so a report can show all of them at once."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    issues: list[Issue] = []
    for name, (variable, parse) in ENVIRONMENT.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[name] = parse(raw)
        except ValueError:
            shown = "the value" if name in SECRET_FIELDS else repr(raw)
            issues.append(Issue(variable, f"{shown} is not a valid {parse.__name__}"))
    settings = Settings(**values)
    failed = {issue.field for issue in issues}
    return settings, issues + [issue for issue in settings.problems() if issue.field not in failed]


def _summary(issues: list[Issue]) -> str:
    return "; ".join(str(issue) for issue in issues)


@dataclass(frozen=True)
class Rule:
    """One rule of a valid configuration: the variable it names and a check returning what is wrong, if anything."""

    variable: str
    broken: Callable[[Settings], str | None]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("auto", "json", "console")
#: broker URL schemes and what they are; anything else has no transport here
BROKER_SCHEMES = {
    "amqp": "RabbitMQ",
    "amqps": "RabbitMQ over TLS",
    "pyamqp": "RabbitMQ",
    "redis": "Redis",
    "rediss": "Redis over TLS",
    "filesystem": "the embedded file transport",
}
LEDGER_BACKENDS = ("sqlite", "postgresql")


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def _connection_string_rule(settings: Settings) -> str | None:
    if settings.acs_connection_string is None:
        return None  # required only to send: a worker asks for it with `Settings.acs`
    parsed = _parse_connection_string(settings.acs_connection_string)
    return parsed if isinstance(parsed, str) else None


def _endpoint_rule(settings: Settings) -> str | None:
    if not settings.acs_endpoint:
        return None
    if settings.acs_connection_string:
        return _BOTH_ACS_AUTH
    try:
        EntraIdEndpoint.parse(settings.acs_endpoint)
    except ConfigError as error:
        return str(error).removeprefix(f"ACS_ENDPOINT={mask_url(settings.acs_endpoint)!r} ")
    return None


def _one_of(value: str, allowed: tuple[str, ...]) -> str | None:
    return None if value in allowed else f"{value!r} is not one of {', '.join(allowed)}"


def _broker_rule(settings: Settings) -> str | None:
    scheme = _scheme(settings.broker_url)
    if scheme in BROKER_SCHEMES:
        return None
    return f"scheme {scheme or '(none)'!r} is not supported; use one of " + ", ".join(
        f"{name}://" for name in BROKER_SCHEMES
    )


def _ledger_rule(settings: Settings) -> str | None:
    backend = _scheme(settings.ledger_url).partition("+")[0]
    if backend not in LEDGER_BACKENDS:
        return f"must be sqlite:///PATH or postgresql://user:pass@host/db (or postgres://), not {backend or '(none)'!r}"
    return None


def _http_url_rule(value: str | None) -> str | None:
    if value is None:
        return None
    url = urlsplit(value)
    return None if url.scheme in {"http", "https"} and url.hostname else "must be an http(s) URL with a host"


def _redis_url_rule(value: str | None) -> str | None:
    if value is None or _scheme(value) in {"redis", "rediss", "unix"}:
        return None
    return "must be a redis://, rediss:// or unix:// URL"


def _margin_rule(settings: Settings) -> str | None:
    margin, window = settings.window_safety_margin, settings.repeatability_window
    if 0 <= margin < window:
        return None
    return f"must be at least 0 and below REPEATABILITY_WINDOW ({window:g}), not {margin:g}"


def _reconcile_rule(settings: Settings) -> str | None:
    # An unknown job must not reach an operator's replay while ACS may still act on its request id.
    if settings.reconcile_after >= settings.repeatability_window:
        return None
    window, waited = settings.repeatability_window, settings.reconcile_after
    return f"must be at least REPEATABILITY_WINDOW ({window:g}), not {waited:g}"


#: every rule a configuration must satisfy besides each variable's own type and range (in `ENVIRONMENT`);
#: a new setting with a rule is one more entry here
RULES: tuple[Rule, ...] = (
    Rule("ACS_CONNECTION_STRING", _connection_string_rule),
    Rule("ACS_ENDPOINT", _endpoint_rule),
    Rule("CELERY_BROKER_URL", _broker_rule),
    Rule("LEDGER_URL", _ledger_rule),
    Rule("LOG_LEVEL", lambda s: _one_of(s.log_level, LOG_LEVELS)),
    Rule("LOG_FORMAT", lambda s: _one_of(s.log_format, LOG_FORMATS)),
    Rule("REPEATABILITY_SAFETY_MARGIN", _margin_rule),
    Rule("RECONCILE_AFTER", _reconcile_rule),
    Rule("CALLBACK_BASE_URL", lambda s: _http_url_rule(s.callback_base_url)),
    Rule("CALLBACK_JWKS_URL", lambda s: _http_url_rule(s.callback_jwks_url)),
    Rule("RATE_LIMIT_REDIS_URL", lambda s: _redis_url_rule(s.rate_limit_redis_url)),
)


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
    "window_safety_margin": ("REPEATABILITY_SAFETY_MARGIN", _non_negative),
    "backoff_base": ("RETRY_BACKOFF_BASE", _positive(float)),
    "backoff_cap": ("RETRY_BACKOFF_CAP", _positive(float)),
    "claim_lease": ("CLAIM_LEASE", _positive(float)),
    "sweep_interval": ("SWEEP_INTERVAL", _positive(float)),
    "republish_after": ("REPUBLISH_AFTER", _positive(float)),
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
