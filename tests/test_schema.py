"""The event schema: documented, fingerprinted, and evolvable without breaking readers."""

from __future__ import annotations

import copy
import io
import json
import subprocess
from typing import Any

import fastavro
import pytest
from fastavro.schema import parse_schema

from bridge.codec import AvroCodec, schema_text
from bridge.errors import MalformedInput
from bridge.normalize import Normalizer

from conftest import BIN, REPO

QUERY = {"ip": "192.0.2.1", "login_method": "password", "protocol": "SSH", "status": "0"}


def _fields(schema: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, list):
        for branch in schema:
            found += _fields(branch, where)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            for field in schema["fields"]:
                found.append((f"{where}.{field['name']}".lstrip("."), field))
                found += _fields(field["type"], f"{where}.{field['name']}")
        elif schema.get("type") in ("array", "map"):
            found += _fields(schema.get("items") or schema.get("values"), where)
    return found


def test_every_field_and_record_of_the_schema_has_a_doc() -> None:
    schema = json.loads(schema_text())
    undocumented = [name for name, field in _fields(schema) if not field.get("doc")]
    assert undocumented == []


def test_the_packaged_schema_is_the_file_in_schemas() -> None:
    assert json.loads(schema_text()) == json.loads((REPO / "schemas/login_audit.avsc").read_text())


def test_ocsf_constants_are_declared_in_the_record() -> None:
    event = Normalizer().sftpgo(QUERY, {"username": "bob"})
    assert (event.record["class_uid"], event.record["type_uid"]) == (3002, 300201)
    assert (event.record["category_uid"], event.record["activity_id"]) == (3, 1)
    assert event.record["logon_type_id"] == 3


def test_schema_command_prints_the_schema_and_its_fingerprint() -> None:
    run = subprocess.run(
        [str(BIN / "login-audit-bridge"), "schema"], capture_output=True, text=True, check=True
    )
    codec = AvroCodec()
    assert json.loads(run.stdout) == codec.schema
    assert f"CRC-64-AVRO fingerprint: {codec.fingerprint_hex}" in run.stderr
    only = subprocess.run(
        [str(BIN / "login-audit-bridge"), "schema", "--fingerprint"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert only.stdout.strip() == codec.fingerprint_hex


def test_single_object_encoding_starts_with_marker_and_fingerprint() -> None:
    codec = AvroCodec()
    data = codec.encode(Normalizer().sftpgo(QUERY, {"username": "bob"}).record)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == codec.fingerprint
    assert codec.decode(data)["user"]["name"] == "bob"


def test_decoding_bytes_of_another_schema_is_refused_with_our_error() -> None:
    codec = AvroCodec()
    data = codec.encode(Normalizer().sftpgo(QUERY, {}).record)
    with pytest.raises(MalformedInput, match="unknown schema"):
        codec.decode(data[:2] + b"\x00" * 8 + data[10:])
    with pytest.raises(MalformedInput, match="single-object"):
        codec.decode(b"\x00" + data[1:])


def _v2_schema() -> dict[str, Any]:
    """v1 plus a defaulted field, as the schema may grow."""
    schema: dict[str, Any] = copy.deepcopy(json.loads(schema_text()))
    schema["fields"].append(
        {"name": "risk_score", "type": ["null", "int"], "default": None, "doc": "test field"}
    )
    return schema


def test_a_v1_reader_reads_what_a_v2_writer_wrote() -> None:
    v1, v2 = parse_schema(json.loads(schema_text())), parse_schema(_v2_schema())
    record = Normalizer().sftpgo(QUERY, {"username": "bob"}).record | {"risk_score": 7}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, v2, record)
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, v2, v1)
    assert isinstance(read, dict)
    assert read["user"]["name"] == "bob"
    assert "risk_score" not in read


def test_a_v2_reader_reads_what_a_v1_writer_wrote_with_the_default() -> None:
    v1, v2 = parse_schema(json.loads(schema_text())), parse_schema(_v2_schema())
    record = Normalizer().sftpgo(QUERY, {"username": "bob"}).record
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, v1, record)
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, v1, v2)
    assert isinstance(read, dict)
    assert read["risk_score"] is None
    assert read["src_endpoint"]["ip"] == "192.0.2.1"
