"""The OpenAPI 3.1 description served at /openapi.json."""

from __future__ import annotations

from typing import Any

from bridge import __version__

_ERROR = {
    "type": "object",
    "required": ["error", "message", "final"],
    "properties": {
        "error": {"type": "string", "description": "Machine-readable reason, e.g. invalid_field."},
        "message": {"type": "string", "description": "What was wrong, for a person."},
        "field": {"type": "string", "description": "The offending field, when there is one."},
        "final": {
            "type": "boolean",
            "description": "True when the bridge would refuse this same body again (400, 413, "
            "415): a client may stop retrying. False otherwise (401, 405, 503).",
        },
    },
}
# Every answer of a hook route names the bridge, so a client can tell it from another service.
_IDENTITY = {
    "X-Login-Audit-Bridge": {
        "description": "The bridge's version; only answers carrying it come from the bridge.",
        "schema": {"type": "string"},
    }
}
_EVENT_ID = {
    "name": "X-Login-Audit-Event-Id",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "format": "uuid"},
    "description": "The event's id, fixed by the source and resent with every retry; a "
    "canonical UUID4 becomes metadata.uid, anything else is replaced by a fresh id.",
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _IDENTITY,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_HOOK_RESPONSES: dict[str, Any] = {
    "200": {
        "description": "The event is durable (fsync'd or acknowledged by the broker).",
        "headers": _IDENTITY,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Stored"}}},
    },
    "400": _error("Malformed JSON or a missing or invalid field; never retried."),
    "401": _error("Missing or unaccepted token."),
    "408": _error("Headers or body not received in time; the connection is closed."),
    "413": _error("Body over BRIDGE_MAX_BODY_BYTES."),
    "415": _error("Content-Type is not application/json (UTF-8)."),
    "431": _error(
        "Request line and headers over BRIDGE_MAX_HEADER_BYTES; the connection is closed."
    ),
    "503": _error("The event could not be made durable now; retry after Retry-After seconds."),
}

_QUERY = [
    {"name": name, "in": "query", "required": True, "schema": schema, "description": text}
    for name, schema, text in (
        ("ip", {"type": "string"}, "Client IP, IPv4 or IPv6."),
        ("login_method", {"type": "string"}, "e.g. password, publickey, no_auth_tried."),
        ("protocol", {"type": "string"}, "SSH, FTP, DAV, HTTP or OIDC."),
        ("status", {"type": "string", "enum": ["0", "1"]}, "1 success, 0 failure."),
    )
]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "login-audit-bridge",
        "version": __version__,
        "description": "Login hooks in, OCSF-shaped Avro login events out.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": _ERROR,
            "Stored": {
                "type": "object",
                "required": ["status", "event_id"],
                "properties": {
                    "status": {"const": "stored"},
                    "event_id": {"type": "string", "format": "uuid"},
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/hooks/sftpgo": {
            "post": {
                "summary": "SFTPGo post_login_hook in HTTP mode (also used by login-audit-hook).",
                "parameters": [*_QUERY, _EVENT_ID],
                "requestBody": {
                    "required": True,
                    "description": "The SFTPGo user as JSON. Only allow-listed fields are used.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": _HOOK_RESPONSES,
            }
        },
        "/v1/hooks/mediawiki": {
            "post": {
                "summary": "One AuthManagerLoginAuthenticateAudit call (docs/mediawiki-hook.md).",
                "parameters": [_EVENT_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": _HOOK_RESPONSES,
            }
        },
        "/v1/hooks/pam": {
            "post": {
                "summary": "One PAM authentication from login-audit-hook --pam (docs/pam.md).",
                "parameters": [_EVENT_ID],
                "requestBody": {
                    "required": True,
                    "description": (
                        "format 'login-audit-bridge.pam.v1', result 'success' or 'failure', and "
                        "pam_exec's facts as strings: type, service, user, rhost, ruser, tty; "
                        "host, auth_method optional."
                    ),
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": _HOOK_RESPONSES,
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness.",
                "security": [],
                "responses": {"200": {"description": "Up."}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the sink can take events.",
                "security": [],
                "responses": {"200": {"description": "Ready."}, "503": _error("Sink not ready.")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics.",
                "security": [],
                "responses": {"200": {"description": "Text exposition format."}},
            }
        },
    },
}
