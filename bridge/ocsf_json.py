"""The strict OCSF 1.3.0 JSON rendering of a decoded event, for `tail` and non-Avro consumers.

The Avro record is OCSF-shaped but Avro-typed: optional fields are null, times decode to
datetimes. OCSF JSON has no null (an attribute without a value is left out) and ``timestamp_t``
is integer milliseconds since the epoch. The rendering walks the record generically, so a field
added to the schema later (by any source) is rendered without a change here:

- ``None``, ``{}`` and ``[]`` are left out (recursively: a record left empty goes too);
- a datetime (``timestamp-millis``) becomes integer epoch milliseconds;
- with ``datetime_profile``, each top-level or ``metadata`` time also gets its ``<name>_dt``
  RFC 3339 twin and ``metadata.profiles`` names ``datetime``, as OCSF's datetime profile says.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

DATETIME_PROFILE = "datetime"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def render(record: dict[str, Any], *, datetime_profile: bool = False) -> dict[str, Any]:
    """The record as an OCSF JSON object (a new dict; the record is not changed)."""
    rendered = _object(record)
    if datetime_profile:
        _add_datetimes(rendered, record)
        metadata = rendered.setdefault("metadata", {})
        profiles = metadata.setdefault("profiles", [])
        if DATETIME_PROFILE not in profiles:
            profiles.append(DATETIME_PROFILE)
    return rendered


def dumps(record: dict[str, Any], *, datetime_profile: bool = False) -> str:
    """One JSON line (UTF-8 text as is, no spaces to spare)."""
    rendered = render(record, datetime_profile=datetime_profile)
    return json.dumps(rendered, ensure_ascii=False, separators=(",", ":"))


def epoch_ms(value: datetime) -> int:
    """Integer milliseconds since the epoch, exactly (no float rounding)."""
    delta = value - _EPOCH if value.tzinfo is not None else value - _EPOCH.replace(tzinfo=None)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _object(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        value = _value(value)
        if value is not None and value != {} and value != []:
            out[key] = value
    return out


def _value(value: Any) -> Any:
    if isinstance(value, dict):
        return _object(value)
    if isinstance(value, list):
        items = (_value(item) for item in value)
        return [item for item in items if item is not None and item != {} and item != []]
    if isinstance(value, datetime):
        return epoch_ms(value)
    return value


def _add_datetimes(rendered: dict[str, Any], record: dict[str, Any]) -> None:
    for target, source in ((rendered, record), (rendered.get("metadata"), record.get("metadata"))):
        if not isinstance(target, dict) or not isinstance(source, dict):
            continue
        for key, value in source.items():
            if isinstance(value, datetime):
                text = value.astimezone(UTC).isoformat(timespec="milliseconds")
                target[f"{key}_dt"] = text.replace("+00:00", "Z")
