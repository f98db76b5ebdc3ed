"""acs-transfer: idempotent Azure Communication Services call transfers through a message queue."""

from __future__ import annotations

__version__ = "0.1.0"
