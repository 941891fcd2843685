"""Avro encoding of login events: the schema parsed once, single-object encoding on the wire."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from bridge.errors import MalformedInput
from bridge.layouts import Layouts, avro_bytes

SCHEMA_FILE = "login_audit.avsc"
# Avro single-object encoding: https://avro.apache.org/docs/1.11.1/specification/#single-object-encoding
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONTENT_TYPE = "application/vnd.apache.avro+binary"


def schema_text() -> str:
    """The schema as shipped: inside the wheel, or ``schemas/`` beside the package in a checkout."""
    packaged = resources.files("bridge").joinpath("schemas", SCHEMA_FILE)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parent.parent / "schemas" / SCHEMA_FILE
    return checkout.read_text(encoding="utf-8")


def _load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_text())
    return schema


class AvroCodec:
    """Encodes and decodes events for one schema; build it once and share it."""

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self.schema: dict[str, Any] = schema if schema is not None else _load_schema()
        self.parsed = parse_schema(self.schema)
        self.canonical_form: str = to_parsing_canonical_form(self.parsed)
        # fastavro already spells the CRC-64-AVRO fingerprint in the little-endian byte order
        # that single-object encoding puts on the wire.
        self.fingerprint: bytes = bytes.fromhex(fingerprint(self.canonical_form, "CRC-64-AVRO"))
        self._header = SINGLE_OBJECT_MAGIC + self.fingerprint
        self._layouts = Layouts(self.schema, self._encode_whole)

    @cached_property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    def encode_datum(self, record: dict[str, Any]) -> bytes:
        """The record's Avro binary body, with no header.

        The same bytes as fastavro's writer with the schema gives, written through a layout
        (:class:`Layouts`) when the record's constant parts match one.
        """
        return self._layouts.encode(record)

    def _encode_whole(self, record: dict[str, Any]) -> bytes:
        return avro_bytes(self.parsed, record)

    def encode(self, record: dict[str, Any]) -> bytes:
        """Avro single-object encoding: ``C3 01`` + 8-byte fingerprint + body."""
        return self._header + self.encode_datum(record)

    def single_object(self, datum: bytes) -> bytes:
        """An already encoded body in single-object encoding."""
        return self._header + datum

    def decode_datum(self, body: bytes, *, writer_schema: Any = None) -> dict[str, Any]:
        return self.decode_datum_whole(body, writer_schema=writer_schema)[0]

    def decode_datum_whole(
        self, body: bytes, *, writer_schema: Any = None
    ) -> tuple[dict[str, Any], bool]:
        """The record, and whether it took the whole body (no bytes left past it)."""
        writer = writer_schema if writer_schema is not None else self.parsed
        buffer = io.BytesIO(body)
        record = fastavro.schemaless_reader(buffer, writer, self.parsed)
        if not isinstance(record, dict):
            raise MalformedInput("Avro body is not a login event record")
        return record, buffer.tell() == len(body)

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decodes single-object encoding written with this schema."""
        if data[:2] != SINGLE_OBJECT_MAGIC:
            raise MalformedInput("not Avro single-object encoding (no C3 01 marker)")
        if data[2:10] != self.fingerprint:
            raise MalformedInput(f"written with an unknown schema (fingerprint {data[2:10].hex()})")
        return self.decode_datum(data[10:])

    def validate(self, record: dict[str, Any]) -> bool:
        ok: bool = fastavro.validation.validate(record, self.parsed, raise_errors=True)
        return ok


class WireEncoder(Protocol):
    """How broker sinks turn a record into message bytes for one topic or routing key."""

    content_type: str

    async def prepare(self, topics: Sequence[str]) -> None:
        """Does any network set-up (e.g. registering the schema) before the first encode."""

    def schema_ref(self, topic: str) -> str:
        """What identifies the writer schema in a message header: fingerprint or registry id."""

    def frame(self, datum: bytes, topic: str) -> bytes:
        """The message value for an encoded body (see :mod:`bridge.encode`)."""

    def encode(self, record: dict[str, Any], topic: str) -> bytes:
        """The message value for a record (readers and tools; sinks use ``frame``)."""


class SingleObjectEncoder:
    """The default wire format without a Schema Registry: Avro single-object encoding."""

    content_type = CONTENT_TYPE

    def __init__(self, codec: AvroCodec) -> None:
        self.codec = codec

    async def prepare(self, topics: Sequence[str]) -> None:
        return None

    def schema_ref(self, topic: str) -> str:
        return f"CRC-64-AVRO:{self.codec.fingerprint_hex}"

    def frame(self, datum: bytes, topic: str) -> bytes:
        return self.codec.single_object(datum)

    def encode(self, record: dict[str, Any], topic: str) -> bytes:
        return self.codec.encode(record)
