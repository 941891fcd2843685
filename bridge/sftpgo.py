"""What SFTPGo's post-login hook sends, and the allow-list that decides which user fields we keep.

Standard library only and cheap to import (~0.3 ms): the hook shim loads it on every run.
"""

from __future__ import annotations

from _collections_abc import Mapping  # loaded at interpreter start; collections.abc is not

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the hook more than the rest of its spool path
    from collections.abc import Iterable
    from typing import Any

# Program mode passes the facts as environment variables; HTTP mode as these query parameters.
# The shim turns the first into the second, so the bridge has one code path for both.
ENV_TO_QUERY = (
    ("SFTPGO_LOGIND_IP", "ip"),
    ("SFTPGO_LOGIND_METHOD", "login_method"),
    ("SFTPGO_LOGIND_PROTOCOL", "protocol"),
    ("SFTPGO_LOGIND_STATUS", "status"),
)
USER_ENV = "SFTPGO_LOGIND_USER"
HOOK_FIELDS = frozenset(query for _, query in ENV_TO_QUERY)

ALWAYS_KEPT = ("username", "id")
# Top-level names an operator must never allow-list: they hold secrets (or objects full of them)
# in SFTPGo's user JSON. The allow-list design already copies nothing nested; this list turns a
# mistake like BRIDGE_SFTPGO_USER_FIELDS=password into a clear error instead of a silent risk.
SECRET_USER_FIELDS = frozenset(
    (
        "password",
        "secret",
        "access_secret",
        "session_token",
        "sse_customer_key",
        "credentials",
        "account_key",
        "sas_url",
        "passphrase",
        "private_key",
        "key_passphrase",
        "api_key",
        "totp_config",
        "recovery_codes",
        "filesystem",
        "filters",
        "virtual_folders",
    )
)
GROUP_TYPES = {1: "primary", 2: "secondary", 3: "membership"}

_Scalar = str | int | float | bool


def project_user(user: Any, fields: Iterable[str]) -> dict[str, Any]:
    """Keeps only allow-listed top-level fields of an SFTPGo user object.

    Only text, number and boolean values are copied, and of ``groups`` only each group's name
    and type: nothing nested is ever copied, because every secret SFTPGo sends (and any it adds
    in a later release) lives inside a nested object. Anything that is not a JSON object yields
    ``{}``.
    """
    # A dict first: isinstance against an ABC such as Mapping runs Python code, on every login.
    if not isinstance(user, dict) and not isinstance(user, Mapping):
        return {}
    kept: dict[str, Any] = {}
    for field in (*ALWAYS_KEPT, *fields):
        value = user.get(field)
        if field == "groups":
            groups = _project_groups(value)
            if groups:
                kept["groups"] = groups
        elif isinstance(value, _Scalar):
            kept[field] = value
    return kept


def secret_fields(fields: Iterable[str]) -> list[str]:
    """The names in ``fields`` that are known to hold secrets (case-insensitive), in order."""
    return [field for field in fields if field.strip().lower() in SECRET_USER_FIELDS]


def _project_groups(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [
        {
            "name": group["name"],
            "type": _group_type(group.get("type")),
        }
        for group in value
        if isinstance(group, Mapping) and isinstance(group.get("name"), str)
    ]


def _group_type(value: Any) -> int | None:
    # JSON true is a Python int equal to 1; it is not SFTPGo's group type 1.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# The hook routes' protocol headers, for both sources (the shim and the MediaWiki extension).
# Every answer on a hook route names the bridge, so a client can tell it from another service
# that happens to answer on the configured address.
IDENTITY_HEADER = "X-Login-Audit-Bridge"
# The event's id, fixed by the source at first capture and sent again on every retry.
EVENT_ID_HEADER = "X-Login-Audit-Event-Id"
