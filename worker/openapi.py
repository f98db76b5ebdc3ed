"""The intake API described as OpenAPI 3.1, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

_IDENTIFIER = {
    "description": "A raw id (4:+E164, 8:acs:…, 8:orgid:…, 28:orgid:…) or a CommunicationIdentifierModel object.",
    "oneOf": [{"type": "string"}, {"type": "object"}],
}
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
_TRANSFER = {
    "type": "object",
    "required": ["callConnectionId", "targetParticipant"],
    "additionalProperties": False,
    "properties": {
        "callConnectionId": {"type": "string"},
        "targetParticipant": _IDENTIFIER,
        "transferee": _IDENTIFIER,
        "operationContext": {"type": "string"},
        "operationCallbackUri": {"type": "string", "description": "https (http only to loopback)"},
        "sourceCallerIdNumber": {"description": "+E164 or {value}", "oneOf": [{"type": "string"}, {"type": "object"}]},
        "customCallingContext": {
            "type": "object",
            "properties": {
                "sipHeaders": {"type": "object", "additionalProperties": {"type": "string"}},
                "voipHeaders": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "campaign": {"type": "string"},
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
        "schemas": {"Transfer": _TRANSFER, "Job": _JOB, "Error": _ERROR},
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
                        "schema": {"type": "string", "maxLength": 512},
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
                                "properties": {
                                    "campaign": {"type": "string"},
                                    "transfers": {
                                        "type": "array",
                                        "items": {
                                            "allOf": [{"$ref": "#/components/schemas/Transfer"}],
                                            "properties": {"idempotencyKey": {"type": "string"}},
                                        },
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
