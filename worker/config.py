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
        return _valid("ACS_CONNECTION_STRING", _parse_connection_string(text))

    def connection_string(self) -> str:
        return f"endpoint={self.endpoint}/;accesskey={base64.b64encode(self.access_key).decode()}"


def _valid(variable: str, parsed: T | str) -> T:
    """What a ``_parse_*`` function found, or `ConfigError` naming `variable` and the rule its value breaks."""
    if isinstance(parsed, str):
        raise ConfigError(f"{variable} {parsed}", [Issue(variable, parsed)])
    return parsed


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
        return _valid("ACS_ENDPOINT", _parse_endpoint(text))


def _parse_endpoint(text: str) -> EntraIdEndpoint | str:
    """An ``https://<resource>.communication.azure.com`` URL, or the rule it breaks (never echoing a password);
    plain http only to a loopback host (tokens are bearer secrets)."""
    try:
        url = urlsplit(text.strip())
        _ = url.port  # raises on a malformed port
    except ValueError:
        return "is not a URL"
    if url.scheme not in {"http", "https"} or not url.hostname or url.username or url.password:
        return "must be https://<resource>.communication.azure.com"
    if url.scheme == "http" and url.hostname not in _LOOPBACK_HOSTS:
        return "must use https (plain http only to a loopback host)"
    if url.path.strip("/") or url.query or url.fragment:
        return "must be the resource's base URL, without a path or query"
    return EntraIdEndpoint(urlunsplit((url.scheme, url.netloc, "", "", "")))


#: how requests to ACS are authenticated
AcsAuth = AcsCredentials | EntraIdEndpoint


def _masked_url(url: str) -> str:
    # Also masks a libpq ``?password=`` parameter, which would otherwise reach the worker's start-up log line.
    return mask_url(url)


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


def _setting(variable: str, parse: Callable[[str], T], default: T, *, secret: bool = False) -> T:
    """A `Settings` field with the environment variable that sets it and the parser of its text; a secret is
    masked in every repr and in `acs-transfer config`."""
    return field(default=default, metadata={"variable": variable, "parse": parse, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Everything configurable: each field names its environment variable and parser (see `ENVIRONMENT`)."""

    home: Path = _setting("ACS_TRANSFER_HOME", Path, Path(".acs-transfer"))
    acs_connection_string: str | None = _setting("ACS_CONNECTION_STRING", _text, None, secret=True)
    acs_endpoint: str | None = _setting("ACS_ENDPOINT", _text, None)
    api_version: str = _setting("ACS_API_VERSION", _text, DEFAULT_API_VERSION)
    broker_url: str = _setting("CELERY_BROKER_URL", _text, "")
    ledger_url: str = _setting("LEDGER_URL", _text, "")
    queue: str = _setting("TRANSFER_QUEUE", _text, DEFAULT_QUEUE)
    bulk_queue: str = _setting("BULK_QUEUE", _text, "")
    connect_timeout: float = _setting("ACS_CONNECT_TIMEOUT", _positive(float), 5.0)
    request_timeout: float = _setting("ACS_REQUEST_TIMEOUT", _positive(float), 10.0)
    max_connections: int = _setting("ACS_MAX_CONNECTIONS", _positive(int), 100)
    repeatability_window: float = _setting("REPEATABILITY_WINDOW", _positive(float), 300.0)
    window_safety_margin: float = _setting("REPEATABILITY_SAFETY_MARGIN", _non_negative, 30.0)
    backoff_base: float = _setting("RETRY_BACKOFF_BASE", _positive(float), 0.5)
    backoff_cap: float = _setting("RETRY_BACKOFF_CAP", _positive(float), 30.0)
    claim_lease: float = _setting("CLAIM_LEASE", _positive(float), 30.0)
    sweep_interval: float = _setting("SWEEP_INTERVAL", _positive(float), 5.0)
    republish_after: float = _setting("REPUBLISH_AFTER", _positive(float), 30.0)
    worker_concurrency: int = _setting("WORKER_CONCURRENCY", _positive(int), 64)
    log_level: str = _setting("LOG_LEVEL", str.upper, "INFO")
    log_format: str = _setting("LOG_FORMAT", str.lower, "auto")
    # Outcome events (callbacks) and reconciliation
    callback_base_url: str | None = _setting("CALLBACK_BASE_URL", _text, None)
    acs_resource_id: str | None = _setting("ACS_RESOURCE_ID", _text, None)
    callback_issuer: str = _setting("CALLBACK_ISSUER", _text, "https://acscallautomation.communication.azure.com")
    callback_jwks_url: str = _setting(
        "CALLBACK_JWKS_URL", _text, "https://acscallautomation.communication.azure.com/calling/keys"
    )
    callback_verify: bool = _setting("CALLBACK_VERIFY", _flag, True)
    reconcile_after: float = _setting("RECONCILE_AFTER", _positive(float), 1800.0)
    # The HTTP server (intake and callbacks)
    serve_host: str = _setting("SERVE_HOST", _text, "127.0.0.1")
    serve_port: int = _setting("SERVE_PORT", _port, 8080)
    intake_tokens: tuple[str, ...] = _setting("INTAKE_TOKENS", _list, (), secret=True)
    intake_max_batch: int = _setting("INTAKE_MAX_BATCH", _positive(int), 1000)
    intake_max_body: int = _setting("INTAKE_MAX_BODY_BYTES", _positive(int), 4 * 1024 * 1024)
    # Pacing: a global limit of transfers per second, shared through Redis when RATE_LIMIT_REDIS_URL is set
    rate_limit: float = _setting("RATE_LIMIT", _non_negative, 0.0)
    rate_limit_burst: float = _setting("RATE_LIMIT_BURST", _non_negative, 0.0)
    rate_limit_redis_url: str | None = _setting("RATE_LIMIT_REDIS_URL", _text, None)
    # Operations
    worker_metrics_port: int = _setting("WORKER_METRICS_PORT", _port, 0)
    task_events: bool = _setting("TASK_EVENTS", _flag, False)
    job_retention_days: float = _setting("JOB_RETENTION_DAYS", _non_negative, 0.0)

    def __post_init__(self) -> None:
        if not self.broker_url:
            object.__setattr__(self, "broker_url", "filesystem://")
        if not self.bulk_queue:
            object.__setattr__(self, "bulk_queue", f"{self.queue}.bulk")
        if not self.ledger_url:
            object.__setattr__(self, "ledger_url", f"sqlite:///{(self.home / 'ledger.db').as_posix()}")
        elif self.ledger_url.startswith("postgres://"):  # the spelling Heroku and others hand out
            object.__setattr__(self, "ledger_url", "postgresql://" + self.ledger_url.removeprefix("postgres://"))
        if self.acs_endpoint and isinstance(endpoint := _parse_endpoint(self.acs_endpoint), EntraIdEndpoint):
            object.__setattr__(self, "acs_endpoint", endpoint.endpoint)

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
    parsed = _parse_endpoint(settings.acs_endpoint)
    return parsed if isinstance(parsed, str) else None


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


#: field name -> (environment variable, parser), as each field declares them
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    item.name: (item.metadata["variable"], item.metadata["parse"]) for item in fields(Settings)
}
#: fields whose values are secrets: masked in every repr and in `acs-transfer config`
SECRET_FIELDS = frozenset(item.name for item in fields(Settings) if item.metadata["secret"])


def fields_set_in_environment(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Names of the fields whose variable the environment sets (an empty value counts as unset, as in `from_env`)."""
    env = os.environ if environ is None else environ
    return frozenset(name for name, (variable, _) in ENVIRONMENT.items() if env.get(variable))
