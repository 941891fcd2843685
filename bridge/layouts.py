"""Avro layouts: login records written with what is constant per kind of login encoded once.

See :class:`Layouts`. Used by :class:`bridge.codec.AvroCodec`; every byte is fastavro's.
"""

from __future__ import annotations

import io
import itertools
import logging
import operator
from collections.abc import Callable, Mapping
from typing import Any, cast

import fastavro
from fastavro.schema import parse_schema

log = logging.getLogger(__name__)

Record = dict[str, Any]
Getter = Callable[[Record], Any]

# What is the same for every login of one kind (source, outcome, method, service) in a record of
# schemas/login_audit.avsc. A layout holds these as bytes; what it assumed is checked per record.
# Top-level values the bridge draws from small sets: together, the key a record's layouts are
# found under.
_KEY_FIELDS = (
    "class_uid",
    "class_name",
    "category_uid",
    "category_name",
    "activity_id",
    "activity_name",
    "type_uid",
    "type_name",
    "timezone_offset",
    "severity_id",
    "severity",
    "status_id",
    "status",
    "auth_protocol_id",
    "auth_protocol",
    "logon_type_id",
    "logon_type",
    "is_remote",
    "is_mfa",
    "status_code",
)
# Whole values, compared with the layout's.
_COMPARED = ("service", "dst_endpoint")
# Constant in a layout only when null in the record it was made from: filled, they vary per login.
_WHEN_NULL = ("status_detail", "http_request", "actor")
# Fields of nested records: compared with the layout's, and (second) constant when null.
_NESTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "metadata": (
        ("version", "log_name", "product", "profiles"),
        ("correlation_uid", "original_time"),
    ),
}
MAX_LAYOUTS = 64
LAYOUTS_PER_KEY = 8
_CONSTANT_FIELD = "__constant_{}"


def avro_bytes(schema: Any, datum: Any) -> bytes:
    """fastavro's encoding of ``datum`` with the parsed ``schema``, no header."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, datum)
    return buf.getvalue()


class _Layout:
    """A writer schema in which each run of constant fields is one ``fixed`` field holding the
    run's bytes (its default), and what a record must hold for those bytes to be its own."""

    __slots__ = ("checks", "schema")

    def __init__(self, schema: dict[str, Any], checks: list[tuple[Getter, Any]]) -> None:
        self.schema = schema
        self.checks = checks

    def matches(self, record: Record) -> bool:
        # A loop, not all() over a generator: this runs for every record.
        for getter, expected in self.checks:  # noqa: SIM110
            if getter(record) != expected:
                return False
        return True

    def write(self, record: Record) -> bytes:
        return avro_bytes(self.schema, record)


class Layouts:
    """Writes login records with their constant parts encoded once, not per record.

    fastavro walks every field of every record, and most of a login record is the same for
    every login of one kind: OCSF's class and category, the outcome's severity and status, the
    service, the product. A record is written as the concatenation of its fields' encodings,
    so a run of fields with the same values always gives the same bytes. A layout is made from
    the first record of a kind: each constant run is encoded by fastavro once, and becomes one
    ``fixed`` field of a writer schema whose default is those bytes (fastavro writes a field the
    record lacks from its default, and ``fixed`` bytes as they are). Every byte still comes from
    fastavro, and a later record is written through a layout only if it holds exactly the
    values the layout was made from: its key fields select the layouts, the others are compared.
    Anything else, and any record the layout cannot take, is written by fastavro whole.

    Layouts are bounded (:data:`MAX_LAYOUTS` made in all, :data:`LAYOUTS_PER_KEY`): a sender
    varying its values makes records that are written whole, not a growing cache. A layout that
    does not give the whole writer's bytes for the record it was made from is never used.

    Values are compared as Python compares them, where ``1 == 1.0 == True``: the fields a layout
    holds are set by the bridge's own record templates (:mod:`bridge.normalize`) or read back by
    fastavro, with the schema's types, never taken from a sender as they are.
    """

    def __init__(self, schema: dict[str, Any], encode_whole: Callable[[Record], bytes]) -> None:
        self._schema = schema
        self._encode_whole = encode_whole
        self._by_key: dict[Any, list[_Layout]] = {}
        self._attempts = 0
        top = {field["name"]: field["type"] for field in schema.get("fields", ())}
        # Another schema (an older version, a test's) is written whole.
        self.enabled = {*_KEY_FIELDS, *_COMPARED, *_WHEN_NULL, *_NESTED} <= top.keys() and all(
            {*always, *when_null} <= _field_names(top[outer])
            for outer, (always, when_null) in _NESTED.items()
        )
        self._key: Getter = operator.itemgetter(*_KEY_FIELDS)

    def encode(self, record: Record) -> bytes:
        if not self.enabled:
            return self._encode_whole(record)
        try:
            key = self._key(record)
            layouts = self._by_key.get(key, ())
            for layout in layouts:
                if layout.matches(record):
                    return layout.write(record)
        except Exception:
            # A record without a field, an unhashable key value, a value fastavro refuses: the
            # whole writer gives fastavro's own answer (bytes, or its error).
            return self._encode_whole(record)
        datum = self._encode_whole(record)
        if self._attempts < MAX_LAYOUTS and len(layouts) < LAYOUTS_PER_KEY:
            self._learn(key, record, datum)
        return datum

    def _learn(self, key: Any, record: Record, datum: bytes) -> None:
        self._attempts += 1
        try:
            layout = self._make(record)
            ok = layout.write(record) == datum
        except Exception:  # a layout is only ever a shortcut: the whole writer stays
            log.debug("no Avro layout for this kind of record", exc_info=True)
            return
        if not ok:
            log.warning("an Avro layout wrote other bytes than fastavro; it is not used")
            return
        self._by_key.setdefault(key, []).append(layout)

    def _make(self, record: Record) -> _Layout:
        fields = self._schema["fields"]
        constant = {*_KEY_FIELDS, *_COMPARED, *(n for n in _WHEN_NULL if record[n] is None)}
        # The key already stands for its fields; the rest are compared, in one tuple.
        compared = operator.itemgetter(
            *(f["name"] for f in fields if f["name"] in constant and f["name"] not in _KEY_FIELDS)
        )
        checks: list[tuple[Getter, Any]] = [(compared, compared(record))]
        runs: dict[str, bytes] = {}
        writer_fields = []
        for field in _writer_fields(fields, constant, record, runs):
            name = field["name"]
            if name in _NESTED:
                field, check = _split_nested(field, record[name], runs)
                checks.append(check)
            writer_fields.append(field)
        writer = {k: v for k, v in self._schema.items() if k != "fields"}
        parsed = cast(dict[str, Any], parse_schema(writer | {"fields": writer_fields}, {}))
        _fill_runs(parsed, runs)
        return _Layout(parsed, checks)


def _field_names(record_schema: Any) -> set[str]:
    """The names of a record schema's fields; none for any other type."""
    if not isinstance(record_schema, dict):
        return set()
    return {field["name"] for field in record_schema.get("fields", ())}


def _writer_fields(
    fields: list[dict[str, Any]], constant: set[str], datum: Record, runs: dict[str, bytes]
) -> list[dict[str, Any]]:
    """``fields`` in order, each run of ``constant`` ones replaced by one ``fixed`` field whose
    bytes fastavro encodes from ``datum`` (kept in ``runs`` under that field's name)."""
    out: list[dict[str, Any]] = []
    for is_constant, group in itertools.groupby(fields, key=lambda f: f["name"] in constant):
        if is_constant:
            out.append(_run_field(list(group), datum, runs))
        else:
            out.extend(group)
    return out


def _split_nested(
    field: dict[str, Any], datum: Record, runs: dict[str, bytes]
) -> tuple[dict[str, Any], tuple[Getter, Any]]:
    """A nested record's field with its constant runs (see _NESTED) made ``fixed`` fields, and
    the check a record's ``datum`` there must pass."""
    name = field["name"]
    always, when_null = _NESTED[name]
    inner = (*always, *(n for n in when_null if datum[n] is None))
    nested = field["type"]
    sub = _writer_fields(nested["fields"], set(inner), datum, runs)
    getter = operator.itemgetter(*inner)
    return {"name": name, "type": nested | {"fields": sub}}, (_within(name, getter), getter(datum))


def _within(outer: str, getter: Getter) -> Getter:
    def get(record: Record) -> Any:
        return getter(record[outer])

    return get


def _run_field(run: list[dict[str, Any]], datum: Record, runs: dict[str, bytes]) -> dict[str, Any]:
    """A ``fixed`` field standing for ``run``, its bytes encoded by fastavro from ``datum``."""
    index = len(runs)
    schema = {"type": "record", "name": f"Run{index}", "fields": run}
    values = {f["name"]: datum[f["name"]] for f in run}
    encoded = avro_bytes(parse_schema(schema, named_schemas={}), values)
    name = _CONSTANT_FIELD.format(index)
    runs[name] = encoded
    fixed = {"type": "fixed", "name": f"Constant{index}", "size": len(encoded)}
    return {"name": name, "type": fixed}


def _fill_runs(record_schema: dict[str, Any], runs: Mapping[str, bytes]) -> None:
    """Gives each run's ``fixed`` field its bytes as default (fastavro writes the default of a
    field the record lacks), in the parsed schema, nested records included."""
    for field in record_schema["fields"]:
        kind = field["type"]
        if field["name"] in runs:
            field["default"] = runs[field["name"]]
        elif isinstance(kind, dict) and kind.get("type") == "record":
            _fill_runs(kind, runs)
