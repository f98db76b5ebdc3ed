"""The one transfer request every mode sends, and its signed headers, so the emulator does the same work for each."""

from __future__ import annotations

import json
import time
import uuid

import yarl

from worker.acs import signing
from worker.acs.client import transfer_path
from worker.config import DEFAULT_API_VERSION, AcsCredentials

TARGET = "+15551234567"
#: the exact body ours sends for `TARGET` (what `worker.request.models` renders for ``4:+15551234567``)
BODY = json.dumps(
    {"targetParticipant": {"kind": "phoneNumber", "rawId": f"4:{TARGET}", "phoneNumber": {"value": TARGET}}},
    separators=(",", ":"),
).encode()


def transfer_request(credentials: AcsCredentials, call_connection_id: str) -> tuple[yarl.URL, dict[str, str]]:
    """URL and headers of one signed transfer POST of `BODY`.

    The repeatability headers are the ones ours and the SDK send too, so the emulator records and checks the same.
    """
    path = transfer_path(call_connection_id, DEFAULT_API_VERSION)
    now = time.time()
    headers = signing.sign(credentials.access_key, "POST", path, credentials.host, BODY, now)
    headers.update(
        {
            "Content-Type": "application/json",
            "Repeatability-Request-ID": str(uuid.uuid4()),
            "Repeatability-First-Sent": signing.http_date(now),
        }
    )
    return yarl.URL(credentials.endpoint + path, encoded=True), headers
