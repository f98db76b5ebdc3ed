"""`EmulatorConfig`: the key (and Entra ID clients) the emulator verifies, its windows and its initial fault plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.config import AcsCredentials
from worker.emulator.entra import EntraConfig
from worker.emulator.faults import FaultPlan

# Only the version whose swagger the body validator uses: accepting a newer one would validate its
# bodies against the wrong schema (later versions add properties this one forbids).
DEFAULT_API_VERSIONS = frozenset({"2024-09-15"})
DEFAULT_ISSUER = "https://acscallautomation.communication.azure.com"
DEFAULT_RESOURCE_ID = "00000000-0000-0000-0000-0000000acs01"


@dataclass(frozen=True)
class EmulatorConfig:
    access_key: bytes = field(repr=False)
    window: float = 300.0
    date_tolerance: float = 900.0
    api_versions: frozenset[str] = DEFAULT_API_VERSIONS
    faults: FaultPlan = field(default_factory=FaultPlan)
    max_logged_requests: int = 100_000
    # Outcome events are signed for this audience (the ACS resource's immutable id) by this issuer.
    resource_id: str = DEFAULT_RESOURCE_ID
    callback_issuer: str = DEFAULT_ISSUER
    # Microsoft Entra ID: the clients its token endpoint serves, and the tokens' lifetime
    entra: EntraConfig = field(default_factory=EntraConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_versions", frozenset(self.api_versions))
        if not self.access_key:
            raise ValueError("access_key must not be empty")
        if self.window <= 0 or self.date_tolerance <= 0:
            raise ValueError("window and date_tolerance must be positive")
        if not self.api_versions:
            raise ValueError("api_versions must name at least one version")
        if self.max_logged_requests < 1:
            raise ValueError("max_logged_requests must be at least 1")

    @classmethod
    def from_connection_string(cls, text: str, **options: Any) -> EmulatorConfig:
        """Verify with the key of an ``endpoint=...;accesskey=...`` string (its endpoint is ignored)."""
        return cls(access_key=AcsCredentials.from_connection_string(text).access_key, **options)
