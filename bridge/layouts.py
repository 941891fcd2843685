"""Avro layouts: login records written with what is constant per kind of login encoded once.

See :class:`Layouts`. Used by :class:`bridge.codec.AvroCodec`; every byte is fastavro's.
"""

from __future__ import annotations

import io
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
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.schema, record)
        return buf.getvalue()


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
        names = {field["name"]: field for field in schema.get("fields", ())}
        needed = (*_KEY_FIELDS, *_COMPARED, *_WHEN_NULL, *_NESTED)
        nested_ok = all(
            isinstance(names.get(outer, {}).get("type"), dict)
            and {*always, *when_null} <= {f["name"] for f in names[outer]["type"].get("fields", ())}
            for outer, (always, when_null) in _NESTED.items()
        )
        # Another schema (an older version, a test's) is written whole.
        self.enabled = set(needed) <= names.keys() and nested_ok
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
        compared = [f["name"] for f in fields if f["name"] in constant - set(_KEY_FIELDS)]
        getter = operator.itemgetter(*compared)
        checks: list[tuple[Getter, Any]] = [(getter, getter(record))]
        runs: list[bytes] = []
        writer_fields: list[dict[str, Any]] = []
        for field, nested_constants in _in_runs(fields, constant, _NESTED):
            if isinstance(field, list):
                writer_fields.append(_run_field(field, record, runs))
            elif nested_constants is not None:
                name = field["name"]
                nested = field["type"]
                always, when_null = nested_constants
                inner = (*always, *(n for n in when_null if record[name][n] is None))
                sub = [
                    _run_field(f, record[name], runs) if isinstance(f, list) else f
                    for f, _ in _in_runs(nested["fields"], set(inner), {})
                ]
                writer_fields.append({"name": name, "type": nested | {"fields": sub}})
                inner_getter = operator.itemgetter(*inner)
                checks.append((_within(name, inner_getter), inner_getter(record[name])))
            else:
                writer_fields.append(field)
        writer = {k: v for k, v in self._schema.items() if k != "fields"}
        parsed = cast(dict[str, Any], parse_schema(writer | {"fields": writer_fields}, {}))
        _fill_runs(parsed, iter(runs))
        return _Layout(parsed, checks)


def _within(outer: str, getter: Getter) -> Getter:
    def get(record: Record) -> Any:
        return getter(record[outer])

    return get


def _in_runs(
    fields: list[dict[str, Any]], constant: set[str], nested: Mapping[str, Any]
) -> list[tuple[Any, Any]]:
    """The fields in order, each run of constant ones gathered in a list; a nested record to
    split gets its entry of ``nested`` beside it (None for every other field)."""
    out: list[tuple[Any, Any]] = []
    run: list[dict[str, Any]] = []
    for field in fields:
        if field["name"] in constant:
            run.append(field)
            continue
        if run:
            out.append((run, None))
            run = []
        out.append((field, nested.get(field["name"])))
    if run:
        out.append((run, None))
    return out


def _run_field(run: list[dict[str, Any]], datum: Record, runs: list[bytes]) -> dict[str, Any]:
    """A ``fixed`` field standing for ``run``, its bytes encoded by fastavro from ``datum``."""
    index = len(runs)
    schema = {"type": "record", "name": f"Run{index}", "fields": run}
    values = {f["name"]: datum[f["name"]] for f in run}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parse_schema(schema, named_schemas={}), values)
    runs.append(buf.getvalue())
    size = len(runs[-1])
    fixed = {"type": "fixed", "name": f"Constant{index}", "size": size}
    return {"name": _CONSTANT_FIELD.format(index), "type": fixed}


def _fill_runs(record_schema: dict[str, Any], runs: Any) -> None:
    """Gives each run's ``fixed`` field its bytes as default, in the order they were made."""
    for field in record_schema["fields"]:
        kind = field["type"]
        if isinstance(kind, dict) and kind.get("type") == "fixed":
            field["default"] = next(runs)
        elif isinstance(kind, dict) and kind.get("type") == "record":
            _fill_runs(kind, runs)
