"""The bridge's one exception tree; callers branch on ``retriable`` and ``http_status``.

    BridgeError                      retriable  http
    ├── InputError                   no         400   the caller sent something we cannot use
    │   ├── MalformedInput           no         400   not JSON, not UTF-8, wrong shape
    │   ├── InvalidField             no         400   a field is missing or has the wrong type
    │   ├── BodyTooLarge             no         413
    │   ├── UnsupportedMediaType     no         415
    │   ├── UnencodableEvent         no         400   valid input, but the event cannot be encoded
    │   └── MethodNotAllowed         no         405   a hook asked with anything but POST
    ├── Unauthorized                 no         401
    ├── ConfigError                  no          -    settings that cannot work; the CLI exits
    │   └── SpoolInUse               no          -    another process holds this spool's lock
    ├── Overloaded                   yes        503   the bridge cannot store more right now
    └── SinkError                    yes        503   a sink could not make an event durable
        ├── SinkUnavailable          yes        503   broker down, timed out, not started
        └── SinkRejected             no         503   the broker refused this event for good

Bad input is never retried; an unreachable broker always is.
"""

from __future__ import annotations

MAX_FIELD_SHOWN = 64


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    retriable: bool = False
    http_status: int = 500
    reason: str = "internal"  # the `reason` label of login_audit_requests_rejected_total

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InputError(BridgeError):
    http_status = 400
    reason = "invalid"


class MalformedInput(InputError):
    reason = "malformed"


class InvalidField(InputError):
    reason = "invalid_field"

    def __init__(self, field: str, problem: str) -> None:
        # The name may be a query key the client chose (tens of KB): the answer and the log
        # line show its start only.
        shown = field if len(field) <= MAX_FIELD_SHOWN else field[:MAX_FIELD_SHOWN] + "..."
        super().__init__(f"field {shown!r} {problem}", detail=shown)
        self.field = field


class BodyTooLarge(InputError):
    http_status = 413
    reason = "too_large"


class UnsupportedMediaType(InputError):
    http_status = 415
    reason = "media_type"


class UnencodableEvent(InputError):
    """The normalized event does not fit the Avro schema (e.g. a time beyond a long's range)."""

    reason = "unencodable"


class MethodNotAllowed(InputError):
    http_status = 405
    reason = "method_not_allowed"


class Unauthorized(BridgeError):
    http_status = 401
    reason = "unauthorized"


class ConfigError(BridgeError):
    """Settings that cannot work; raised at start-up, never while serving."""


class SpoolInUse(ConfigError):
    """Another process (a bridge, or ``login-audit-bridge drain``) holds this spool's lock."""


class Overloaded(BridgeError):
    retriable = True
    http_status = 503
    reason = "overloaded"


class SinkError(BridgeError):
    retriable = True
    http_status = 503
    reason = "sink_error"


class SinkUnavailable(SinkError):
    reason = "sink_unavailable"


class SinkRejected(SinkError):
    retriable = False
    reason = "sink_rejected"
