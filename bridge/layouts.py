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
from fastavro.schema import expand_schema, parse_schema

try:
    # fastavro's compiled writer of one value: what its record writer calls for each field. Not
    # in fastavro's public API; without it (a build with no compiled writer, a release that moved
    # it), a layout's values are written by schemaless_writer, as one record, and the bytes are
    # the same (every layout is checked against the whole writer before it is used).
    from fastavro._write import write_data as _write_value  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - the locked fastavro has it
    _write_value = None

log = logging.getLogger(__name__)

Record = dict[str, Any]
Getter = Callable[[Record], Any]
# Where a value is in a record: field names, and indexes into arrays.
Path = tuple[str | int, ...]
# What a layout checks in a record, in order: at ``path``, the fields named (their values as a
# tuple), whether it is null (_NULL) or its length (_LENGTH); and what that must equal.
Check = tuple[Path, tuple[str, ...] | str, Any]
_NULL = "null"
_LENGTH = "length"

# How each field of a record of schemas/login_audit.avsc is written through a layout. Every
# field a rule does not name, at any depth, is PER_LOGIN: a field added to the schema is written
# per record until a rule says otherwise, never taken as constant by mistake.
KEY = "key"  # one of the values a record's layouts are found under: encoded once
COMPARED = "compared"  # encoded once; a record's value must equal the layout's
WHEN_EMPTY = "when empty"  # as COMPARED when null or empty in the layout's record, else PER_LOGIN
PER_LOGIN = "per login"  # written by fastavro for every record


class Each:
    """The rule of an array of records: its items' fields by ``rules``; its length compared."""

    __slots__ = ("rules",)

    def __init__(self, rules: Rules) -> None:
        self.rules = rules


# A dict: a nested record, its fields by their rules; for an optional record (a union of null
# and a record), null is compared, and a record has its fields written by the rules.
Rule = str | Each | dict[str, Any]
Rules = dict[str, Rule]

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
# What differs per login is PER_LOGIN; what differs per kind of login (the source's service, the
# failure reason's presence, the observables' kinds) is compared, so that each kind gets a layout.
RULES: Rules = {
    **dict.fromkeys(_KEY_FIELDS, KEY),
    "time": PER_LOGIN,
    "message": PER_LOGIN,
    "status_detail": WHEN_EMPTY,
    "user": {
        "name": PER_LOGIN,
        "uid": PER_LOGIN,
        "email_addr": WHEN_EMPTY,
        "groups": WHEN_EMPTY,
        "type_id": COMPARED,
        "type": COMPARED,
    },
    "src_endpoint": {"ip": PER_LOGIN, "interface_name": WHEN_EMPTY},
    "dst_endpoint": COMPARED,
    "service": COMPARED,
    "http_request": {"user_agent": PER_LOGIN, "uid": PER_LOGIN},
    "metadata": {
        "uid": PER_LOGIN,
        "version": COMPARED,
        "log_name": COMPARED,
        "logged_time": PER_LOGIN,
        "correlation_uid": WHEN_EMPTY,
        "product": COMPARED,
        "profiles": COMPARED,
        "original_time": WHEN_EMPTY,
    },
    "unmapped": PER_LOGIN,
    "observables": Each(
        {"name": COMPARED, "type_id": COMPARED, "type": COMPARED, "value": PER_LOGIN}
    ),
    "actor": {"user": {"name": PER_LOGIN, "uid": PER_LOGIN}},
}
# One key holds a layout per kind it sees: per SFTPGo protocol, known or unknown user, with or
# without a name in the observables (up to 15 for failed password logins over all five
# protocols), per PAM service. A kind past the bound is written whole: right, only slower.
MAX_LAYOUTS = 128
LAYOUTS_PER_KEY = 16
_CONSTANT_FIELD = "__constant_{}"
_EMPTY: tuple[Any, ...] = (None, [], {})
# A per-login timestamp is written as the long it is; fastavro's logical-type step only converts
# a datetime, which the bridge never puts in a record, and which a layout then refuses (the whole
# writer converts it).
_PLAIN_LOGICAL = {"timestamp-millis", "timestamp-micros"}
# fastavro's record writer turns a float or double field's value into a float before writing it
# (so that "NaN" is one); a layout writes its values one by one, without that step.
_CONVERTED_BY_RECORD = {"float", "double"}
# schemaless_writer's own options, with which it writes every value of a record.
_WRITER_OPTIONS = {"strict": False, "strict_allow_default": False, "disable_tuple_notation": False}


def avro_bytes(schema: Any, datum: Any) -> bytes:
    """fastavro's encoding of ``datum`` with the parsed ``schema``, no header."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, datum)
    return buf.getvalue()


class _Layout:
    """A flat writer schema: each run of constant bytes one ``fixed`` field holding them (its
    default), each per-login value one field; the reader that checks that a record holds what
    those bytes say (see :func:`_datum_reader`) and reads its per-login values; and the writer
    of that flat record (see :func:`_flat_writer`)."""

    __slots__ = ("datum", "schema", "write_flat")

    def __init__(
        self,
        schema: dict[str, Any],
        named_schemas: dict[str, Any],
        checks: list[Check],
        values: list[tuple[str, Path]],
    ) -> None:
        self.schema = schema
        self.datum = _datum_reader(checks, values)
        self.write_flat: Callable[[Record], bytes] = (
            _flat_writer(schema, named_schemas)
            if _write_value is not None
            else lambda datum: avro_bytes(schema, datum)
        )

    def write(self, record: Record) -> bytes | None:
        """The record's bytes, or None when it is not of this layout's kind."""
        datum = self.datum(record)
        return None if datum is None else self.write_flat(datum)


class Layouts:
    """Writes login records with their constant parts encoded once, not per record.

    fastavro walks every field of every record, nested records and arrays included, and most of
    a login record is the same for every login of one kind: OCSF's class and category, the
    outcome's severity and status, the service, the product, the observables' kinds. Avro writes
    a record as the concatenation of its fields' encodings, a nested record's with no framing of
    its own, an array as its length, its items and a zero, and an optional record as its
    position in its union and then its fields. So a layout, made from the first record of a
    kind, is flat: each run of constant parts (:data:`RULES`), at any depth, is encoded by
    fastavro once and becomes one ``fixed`` field of a writer schema whose default is those
    bytes (fastavro writes a field the datum lacks from its default, and ``fixed`` bytes as they
    are); each per-login value becomes one field of that writer, with its own type, taken from
    wherever it is in the record. The layout then writes that flat record as its bytes in order:
    each run as it is, each value by fastavro's writer of one value with its field's type
    (:func:`_flat_writer`). Every byte still comes from fastavro, and a later record is
    written through a layout only if it holds exactly the constant values the layout was made
    from: its key fields select the layouts, the others are compared, and so are the lengths of
    the arrays and the presence of the optional records it flattened. Anything else, and any
    record the layout cannot take, is written by fastavro whole.

    Layouts are bounded (:data:`MAX_LAYOUTS` made in all, :data:`LAYOUTS_PER_KEY`): a sender
    varying its values makes records that are written whole, not a growing cache. A layout that
    does not give the whole writer's bytes for the record it was made from is never used.

    Values are compared as Python compares them, where ``1 == 1.0 == True``: the fields a layout
    holds are set by the bridge's own record templates (:mod:`bridge.normalize`) or read back by
    fastavro, with the schema's types, never taken from a sender as they are.
    """

    def __init__(self, schema: dict[str, Any], encode_whole: Callable[[Record], bytes]) -> None:
        self._encode_whole = encode_whole
        self._by_key: dict[Any, list[_Layout]] = {}
        self._attempts = 0
        top = {field["name"] for field in schema.get("fields", ())}
        # Another schema (an older version, a test's) is written whole.
        self.enabled = RULES.keys() <= top
        # Named types written out wherever they are used: each piece is a schema of its own.
        expanded = cast(dict[str, Any], expand_schema(schema)) if self.enabled else {}
        self._fields: list[dict[str, Any]] = expanded.get("fields", [])
        self._key: Getter = operator.itemgetter(*_KEY_FIELDS)

    def encode(self, record: Record) -> bytes:
        if not self.enabled:
            return self._encode_whole(record)
        try:
            key = self._key(record)
            layouts = self._by_key.get(key, ())
            for layout in layouts:
                written = layout.write(record)
                if written is not None:
                    return written
        except Exception:
            # A record without a field, an unhashable key value, a value fastavro refuses: the
            # whole writer gives fastavro's own answer (bytes, or its error).
            return self._encode_whole(record)
        whole = self._encode_whole(record)
        if self._attempts < MAX_LAYOUTS and len(layouts) < LAYOUTS_PER_KEY:
            self._learn(key, record, whole)
        return whole

    def _learn(self, key: Any, record: Record, whole: bytes) -> None:
        self._attempts += 1
        try:
            layout = self._make(record)
            ok = layout.write(record) == whole
        except Exception:  # a layout is only ever a shortcut: the whole writer stays
            log.debug("no Avro layout for this kind of record", exc_info=True)
            return
        if not ok:
            log.warning("an Avro layout wrote other bytes than fastavro; it is not used")
            return
        self._by_key.setdefault(key, []).append(layout)

    def _make(self, record: Record) -> _Layout:
        plan = _Plan()
        plan.walk(self._fields, RULES, record, ())
        writer = plan.writer_fields()
        named: dict[str, Any] = {}
        flat = {"type": "record", "name": "Layout", "fields": writer}
        parsed = cast(dict[str, Any], parse_schema(flat, named_schemas=named))
        _fill_runs(parsed, plan.runs)
        return _Layout(parsed, named, plan.checks, plan.values)


class _Plan:
    """A layout in the making: the writer's fields in the record's byte order, the constant
    runs' bytes by field name, the checks and where each per-login value is."""

    def __init__(self) -> None:
        self.fields: list[dict[str, Any]] = []
        self.runs: dict[str, bytes] = {}
        self.checks: list[Check] = []
        self.values: list[tuple[str, Path]] = []  # each per-login value's writer field and path
        self._run = bytearray()

    def walk(self, fields: list[dict[str, Any]], rules: Rules, datum: Record, path: Path) -> None:
        """Plans ``fields`` of a record whose value in the layout's record is ``datum``."""
        # This record's own comparison goes before those of what it holds: it is read first,
        # and it tells most kinds apart.
        first_check = len(self.checks)
        compared: list[str] = []
        for field in fields:
            name, kind = field["name"], field["type"]
            rule = rules.get(name, PER_LOGIN)
            value = datum[name]
            here = (*path, name)
            optional = _optional_record(kind)
            if isinstance(rule, dict) and _is_a("record", kind) and isinstance(value, dict):
                self.walk(kind["fields"], rule, value, here)
            elif isinstance(rule, dict) and optional is not None and isinstance(value, dict):
                branch, record = optional
                # Before the fields' checks, which read into the record.
                self.checks.append((here, _NULL, False))
                self._run += _piece("long", branch)
                self.walk(record["fields"], rule, value, here)
            elif isinstance(rule, Each) and _is_a("array", kind) and value:
                items = kind["items"]
                if not _is_a("record", items) or not isinstance(value, list):
                    self._per_login(here, kind)
                    continue
                # Before the items' checks, which read the items by index.
                self.checks.append((here, _LENGTH, len(value)))
                self._run += _piece("long", len(value))
                for index, item in enumerate(value):
                    self.walk(items["fields"], rule.rules, item, (*here, index))
                self._run += _piece("long", 0)
            elif (
                rule in (KEY, COMPARED)
                or isinstance(rule, Each)
                or (rule == WHEN_EMPTY and value in _EMPTY)
                or (isinstance(rule, dict) and optional is not None and value is None)
            ):
                if rule != KEY:
                    compared.append(name)
                self._run += _piece(kind, value)
            else:
                self._per_login(here, kind)
        if compared:
            names = tuple(compared)
            self.checks.insert(first_check, (path, names, tuple(datum[n] for n in names)))

    def _per_login(self, path: Path, kind: Any) -> None:
        self._end_run()
        name = f"value{len(self.values)}"
        if isinstance(kind, dict) and kind.get("logicalType") in _PLAIN_LOGICAL:
            kind = kind["type"]
        if isinstance(kind, str) and kind in _CONVERTED_BY_RECORD:
            raise ValueError(f"a per-login {kind} is written by fastavro's record writer only")
        self.fields.append({"name": name, "type": kind})
        self.values.append((name, path))

    def _end_run(self) -> None:
        if not self._run:
            return
        index = len(self.runs)
        name = _CONSTANT_FIELD.format(index)
        self.runs[name] = bytes(self._run)
        fixed = {"type": "fixed", "name": f"Constant{index}", "size": len(self._run)}
        self.fields.append({"name": name, "type": fixed})
        self._run = bytearray()

    def writer_fields(self) -> list[dict[str, Any]]:
        self._end_run()
        return self.fields


def _is_a(avro_type: str, kind: Any) -> bool:
    return isinstance(kind, dict) and kind.get("type") == avro_type


def _optional_record(kind: Any) -> tuple[int, dict[str, Any]] | None:
    """For a union of null and one record: the record's position in it, and its schema."""
    if not isinstance(kind, list) or len(kind) != 2 or "null" not in kind:
        return None
    branch = 1 - kind.index("null")
    return (branch, kind[branch]) if _is_a("record", kind[branch]) else None


def _piece(kind: Any, value: Any) -> bytes:
    """fastavro's bytes for one value of type ``kind``: a field's share of its record's bytes."""
    schema = {"type": "record", "name": "Piece", "fields": [{"name": "value", "type": kind}]}
    return avro_bytes(parse_schema(schema, named_schemas={}), {"value": value})


def _datum_reader(
    checks: list[Check], values: list[tuple[str, Path]]
) -> Callable[[Record], Record | None]:
    """One function per layout: None if a record fails one of the layout's checks (in their
    order), else the writer's datum, its per-login values by field name.

    Straight-line code, generated once per layout as dataclasses and namedtuple generate their
    methods: each check one comparison, each value one subscript of its enclosing record, which
    is looked up once. A function per path, walked in a loop, cost 2.7 µs for an SFTPGo login,
    this 0.9 (timeit, in-process). Only literals go into the source: the writer's field names,
    and the schema's field names and array indexes of each path (``repr`` of a str or an int).
    What a check compares with stays a Python object (``expected{n}``), never source.
    """
    lines = ["def read(record):"]
    namespace: dict[str, Any] = {}
    for number, (path, test, expected) in enumerate(checks):
        here = "record" + "".join(f"[{_literal(step)}]" for step in path)
        if test == _NULL:
            read = f"({here} is None)"
        elif test == _LENGTH:
            read = f"len({here})"
        else:
            read = "(" + "".join(f"{here}[{_literal(name)}], " for name in test) + ")"
        namespace[f"expected{number}"] = expected
        lines += [f"    if {read} != expected{number}:", "        return None"]
    records: dict[Path, str] = {(): "record"}

    def enclosing(path: Path) -> str:
        if path not in records:
            outer = enclosing(path[:-1])
            records[path] = f"record{len(records)}"
            lines.append(f"    {records[path]} = {outer}[{_literal(path[-1])}]")
        return records[path]

    items = []
    for name, path in values:
        if not path:
            raise ValueError("a per-login value needs a path")
        items.append(f"{_literal(name)}: {enclosing(path[:-1])}[{_literal(path[-1])}]")
    lines.append("    return {" + ", ".join(items) + "}")
    exec("\n".join(lines), namespace)  # noqa: S102 - literals only, see above
    return cast(Callable[[Record], Record | None], namespace["read"])


def _flat_writer(
    schema: dict[str, Any], named_schemas: dict[str, Any]
) -> Callable[[Record], bytes]:
    """One function per layout: the bytes fastavro's writer gives for the flat ``schema`` (as
    :func:`_fill_runs` leaves it: each ``fixed`` field's default its constant bytes), from the
    datum of the per-login values that :func:`_datum_reader` gives.

    A record's bytes are its fields' bytes one after the other, so this appends each constant
    run as it is and has fastavro write each value with its field's type, straight-line code as
    in :func:`_datum_reader`. Half of schemaless_writer's time for a layout went on the record
    around the values: its options and named types, the set of the datum's keys, a dispatch and
    a default for each constant (SFTPGo 18.5 -> 10.6 µs, timeit, in-process). Only the field
    names go into the source (``repr`` of a str); the bytes and the types stay Python objects.
    """
    lines = ["def write(datum):", "    out = bytearray()"]
    namespace: dict[str, Any] = {
        "write_value": _write_value,
        "named": named_schemas,
        "options": dict(_WRITER_OPTIONS),
    }
    for number, field in enumerate(schema["fields"]):
        name = field["name"]
        if type(name) is not str:
            raise TypeError(f"not a field name: {name!r}")
        if "default" in field:
            namespace[f"run{number}"] = field["default"]
            lines.append(f"    out += run{number}")
        else:
            namespace[f"type{number}"] = field["type"]
            lines.append(f"    write_value(out, datum[{name!r}], type{number}, named, '', options)")
    lines.append("    return bytes(out)")
    exec("\n".join(lines), namespace)  # noqa: S102 - field names only, see above
    return cast(Callable[[Record], bytes], namespace["write"])


def _literal(step: str | int) -> str:
    # type(), not isinstance(): a bool or a str subclass has no business in a path.
    if type(step) not in (str, int):
        raise TypeError(f"not a field name or an index: {step!r}")
    return repr(step)


def _fill_runs(record_schema: dict[str, Any], runs: Mapping[str, bytes]) -> None:
    """Gives each run's ``fixed`` field its bytes as default (fastavro writes the default of a
    field the datum lacks), in the parsed writer schema."""
    for field in record_schema["fields"]:
        if field["name"] in runs:
            field["default"] = runs[field["name"]]
