"""The intake API described as OpenAPI 3.1, served at ``/openapi.json``."""

from __future__ import annotations

import re
from typing import Any

from worker.ledger.limits import CAMPAIGN, IDEMPOTENCY_KEY
from worker.request.identifiers import MAX_ID_LENGTH, RAW_ID_FORMS, RAW_ID_PREFIXES
from worker.request.models import (
    MAX_CALL_CONNECTION_ID_LENGTH,
    MAX_SIP_CUSTOM_HEADERS,
    MAX_SIP_KEY_LENGTH,
    MAX_SIP_VALUE_LENGTH,
    MAX_URI_LENGTH,
    MAX_VOIP_HEADERS,
    MAX_VOIP_VALUE_LENGTH,
    SIP_CUSTOM_PREFIX,
    SIP_UUI_HEADER,
)

DEFAULT_MAX_BATCH = 1000  # INTAKE_MAX_BATCH's default; the server states its own limit in a 413

# Constraints come from the limits the validator (`worker.request.models`, `worker.request.identifiers`)
# enforces, so the document and the server cannot drift apart. JSON Schema cannot say everything the validator
# checks (a call id's length once URL-encoded, an identifier object's consistency); those rules are in the
# descriptions.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
_PRINTABLE = f"[^{_CONTROL}]"
_END = r"(?!\n)$"  # "$" alone would also match before a trailing newline, which the validator refuses
_E164 = r"\+[1-9][0-9]{1,14}"
_RAW_ID = {
    "type": "string",
    "maxLength": MAX_ID_LENGTH,
    "pattern": (
        f"^(4:{_E164}|({'|'.join(map(re.escape, RAW_ID_PREFIXES))}){_PRINTABLE}*[^\\s{_CONTROL}]{_PRINTABLE}*){_END}"
    ),
}


def _printable(max_length: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, "pattern": f"^{_PRINTABLE}*$"}


_IDENTIFIER = {
    **_RAW_ID,
    "description": (
        f"A raw id ({RAW_ID_FORMS}). A CommunicationIdentifierModel object (ACS's swagger) is taken too; its rules "
        "(one kind, its properties agreeing with its rawId) do not fit this schema, so it is left out of it."
    ),
}


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field: null means absent, as in every other way in."""
    return {"anyOf": [schema, {"type": "null"}]}


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "rule": {"type": "string"}},
                    },
                },
            },
        }
    },
}
_REQUIRED_FIELDS = ("callConnectionId", "targetParticipant")
_TRANSFER_FIELDS: dict[str, Any] = {
    "callConnectionId": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_CALL_CONNECTION_ID_LENGTH,
        "pattern": f"^[^\\s{_CONTROL}]({_PRINTABLE}*[^\\s{_CONTROL}])?{_END}",
        "not": {"enum": [".", ".."]},
        "description": f"at most {MAX_CALL_CONNECTION_ID_LENGTH} characters once URL-encoded",
    },
    "targetParticipant": _IDENTIFIER,
    "transferee": _IDENTIFIER,
    "operationContext": {"type": "string", "pattern": "^[^\\x00]*$"},
    "operationCallbackUri": {
        "type": "string",
        "maxLength": MAX_URI_LENGTH,
        "pattern": (
            r"^(https://[A-Za-z0-9.-]+|http://(127\.0\.0\.1|localhost|\[::1\]))(:[0-9]{1,4})?"
            f"([/?#][^\\s\\\\{_CONTROL}]*)?{_END}"
        ),
        "description": "https (http only to a loopback host), without user information",
    },
    "sourceCallerIdNumber": {
        "description": "+E164, or a PhoneNumberIdentifierModel",
        "oneOf": [
            {"type": "string", "pattern": f"^(4:)?{_E164}{_END}"},
            {
                "type": "object",
                "required": ["value"],
                "additionalProperties": False,
                "properties": {"value": {"type": "string", "pattern": f"^(4:)?{_E164}{_END}"}},
            },
        ],
    },
    "customCallingContext": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "sipHeaders": {
                "type": "object",
                "maxProperties": MAX_SIP_CUSTOM_HEADERS,
                "propertyNames": {
                    "pattern": f"^({SIP_UUI_HEADER}|{SIP_CUSTOM_PREFIX}[A-Za-z0-9.!%*_+`'~-]"
                    f"{{1,{MAX_SIP_KEY_LENGTH - len(SIP_CUSTOM_PREFIX)}}}){_END}"
                },
                "additionalProperties": {
                    "type": "string",
                    "maxLength": MAX_SIP_VALUE_LENGTH,
                    "pattern": f"^{_PRINTABLE}*$",
                },
                "description": "header names are case-insensitive: each at most once",
            },
            "voipHeaders": {
                "type": "object",
                "maxProperties": MAX_VOIP_HEADERS,
                "propertyNames": {"minLength": 1, "pattern": f"^{_PRINTABLE}+$"},
                "additionalProperties": {
                    "type": "string",
                    "maxLength": MAX_VOIP_VALUE_LENGTH,
                    "pattern": f"^{_PRINTABLE}*$",
                },
            },
        },
    },
}
_CONTEXT_FIELDS = _TRANSFER_FIELDS["customCallingContext"]["properties"]
_CONTEXT_FIELDS.update({name: _optional(schema) for name, schema in _CONTEXT_FIELDS.items()})
_TRANSFER_FIELDS = {
    name: schema if name in _REQUIRED_FIELDS else _optional(schema) for name, schema in _TRANSFER_FIELDS.items()
}
# The rule of `worker.request.names`: not blank, printable, at most the ledger's width (and a campaign name
# without whitespace at its ends).
_KEY = {
    "type": "string",
    "minLength": 1,
    "maxLength": IDEMPOTENCY_KEY,
    "pattern": f"^{_PRINTABLE}*[^\\s{_CONTROL}]{_PRINTABLE}*{_END}",
}
_CAMPAIGN = {
    "type": "string",
    "minLength": 1,
    "maxLength": CAMPAIGN,
    "pattern": f"^[^\\s{_CONTROL}]({_PRINTABLE}*[^\\s{_CONTROL}])?{_END}",
}
_LANE = {"type": "string", "enum": ["live", "bulk"], "description": "live (default) or bulk"}
_TRANSFER = {
    "type": "object",
    "required": list(_REQUIRED_FIELDS),
    "additionalProperties": False,
    "properties": {**_TRANSFER_FIELDS, "campaign": _optional(_CAMPAIGN), "lane": _LANE},
}
_BATCH_ITEM = {
    "type": "object",
    "required": list(_REQUIRED_FIELDS),
    "additionalProperties": False,
    "properties": {
        **_TRANSFER_FIELDS,
        "idempotencyKey": _optional(_KEY),
    },
}
_JOB = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "state": {
            "type": "string",
            "enum": [
                "queued",
                "sending",
                "retry_wait",
                "accepted",
                "transferred",
                "transfer_failed",
                "failed",
                "unknown",
                "dead",
                "superseded",
            ],
        },
        "reason": {"type": ["string", "null"]},
        "request_id": {"type": "string"},
        "attempts": {"type": "integer"},
        "result_code": {"type": ["integer", "null"]},
        "result_message": {"type": ["string", "null"]},
    },
    "additionalProperties": True,
}


def _responses(ok: dict[str, Any]) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        **ok,
        "400": {"description": "the body is not valid JSON", **error},
        "401": {"description": "no bearer token, or one that is not in INTAKE_TOKENS", **error},
        "413": {"description": "body or batch too large", **error},
        "422": {"description": "invalid request: each broken rule with its field", **error},
    }


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": schema}}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "acs-transfer intake", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Transfer": _TRANSFER, "BatchItem": _BATCH_ITEM, "Job": _JOB, "Error": _ERROR},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/transfers": {
            "post": {
                "summary": "Enqueue one transfer",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": _KEY,
                        "description": "The same key returns the same job (200) instead of a new one (202).",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Transfer"}}},
                },
                "responses": _responses(
                    {
                        "202": _json("#/components/schemas/Job", "a new job"),
                        "200": _json("#/components/schemas/Job", "the existing job for this Idempotency-Key"),
                        "409": _json("#/components/schemas/Error", "the key names a job with another request"),
                    }
                ),
            }
        },
        "/v1/transfers:batch": {
            "post": {
                "summary": "Enqueue many transfers; each item is accepted or rejected on its own",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["transfers"],
                                "additionalProperties": False,
                                "properties": {
                                    "campaign": _CAMPAIGN,
                                    "lane": {**_LANE, "description": "bulk when a campaign is named, else live"},
                                    "transfers": {
                                        "type": "array",
                                        "maxItems": DEFAULT_MAX_BATCH,
                                        "items": {"$ref": "#/components/schemas/BatchItem"},
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": _responses({"200": {"description": "per-item results: created, exists or rejected"}}),
            }
        },
        "/v1/transfers/{job_id}": {
            "get": {
                "summary": "A job and its history",
                "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": _responses(
                    {
                        "200": _json("#/components/schemas/Job", "the job"),
                        "404": _json("#/components/schemas/Error", "no such job"),
                    }
                ),
            }
        },
        "/v1/campaigns/{name}": {
            "get": {
                "summary": "A campaign's jobs by state",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": _responses(
                    {
                        "200": {"description": "counts by state, and jobs settled per second"},
                        "404": _json("#/components/schemas/Error", "no such campaign"),
                    }
                ),
            }
        },
    },
}
