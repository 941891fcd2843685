"""Checks events against OCSF 1.3.0 itself: the export PyPI's ocsf-json-schema bundles.

Nothing of OCSF is copied here. The JSON Schema of class Authentication comes from the package
(``OcsfJsonSchemaEmbedded``), ``jsonschema`` validates; what JSON Schema cannot say (a caption or
name must be the caption of its ``_id``/``_uid``, unless the id is 99 Other) is read off the same
export's enums: ``auth_protocol`` of ``auth_protocol_id``, ``type_name`` of ``type_uid``, ….
Every event checked is counted; the run's summary prints the count (conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from bridge import ocsf_json

OCSF_VERSION = "1.3.0"
CLASS = "authentication"
OTHER = 99
# Events validated (and found valid) in this test run, and events the validator refused.
COUNTS = {"valid": 0, "rejected": 0}


@cache
def _export() -> dict[str, Any]:
    export: dict[str, Any] = get_ocsf_schema(OCSF_VERSION)
    return export


@cache
def _validator(profiles: tuple[str, ...]) -> jsonschema.protocols.Validator:
    schema = OcsfJsonSchemaEmbedded(_export()).get_class_schema(CLASS, list(profiles))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def ocsf_errors(event: dict[str, Any]) -> list[str]:
    """Why a rendered event is not OCSF 1.3.0 Authentication: [] when it is."""
    profiles = tuple(sorted(event.get("metadata", {}).get("profiles", ())))
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '(event)'}: {e.message[:200]}"
        for e in _validator(profiles).iter_errors(event)
    ]
    if event.get("class_uid") == _export()["classes"][CLASS]["uid"]:
        attributes = _export()["classes"][CLASS]["attributes"]
        errors += list(_caption_errors(event, attributes, ""))
    return errors


def _caption_errors(obj: dict[str, Any], attributes: dict[str, Any], at: str) -> Iterator[str]:
    for key, value in obj.items():
        spec = attributes.get(key)
        if spec is None:
            continue
        enum = spec.get("enum")
        stem = key[:-3] if key.endswith("_id") else key[:-4] if key.endswith("_uid") else None
        if enum and stem and isinstance(value, int) and value % 100 != OTHER:
            caption = enum.get(str(value), {}).get("caption")
            for sibling in (stem, stem + "_name"):
                if sibling in obj and obj[sibling] != caption:
                    yield (
                        f"{at}{sibling}: {obj[sibling]!r} is not the caption of"
                        f" {key} {value} ({caption!r})"
                    )
        if spec.get("type") == "object_t":
            nested = _export()["objects"].get(spec["object_type"], {}).get("attributes", {})
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, dict):
                    yield from _caption_errors(item, nested, f"{at}{key}.")


def assert_ocsf(record: dict[str, Any], *, datetime_profile: bool = False) -> dict[str, Any]:
    """Renders a record as the bridge hands it out and asserts it is OCSF 1.3.0; counts it."""
    return assert_ocsf_json(ocsf_json.render(record, datetime_profile=datetime_profile))


def assert_ocsf_json(event: dict[str, Any]) -> dict[str, Any]:
    """Asserts that JSON the bridge printed is OCSF 1.3.0; counts it."""
    errors = ocsf_errors(event)
    if errors:
        COUNTS["rejected"] += 1
    assert errors == [], f"not OCSF {OCSF_VERSION}: {errors}"
    COUNTS["valid"] += 1
    return event
