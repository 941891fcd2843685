"""Avro layouts (bridge/layouts.py) write exactly fastavro's bytes, and only where they may.

A layout writes a record's constant runs as bytes encoded once; everything here compares its
output with fastavro's whole writer on the same schema, byte for byte. The property tests of
tests/test_properties.py make the same comparison for every record they build.
"""

from __future__ import annotations

import copy
import io
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import fastavro
import pytest

from bridge import layouts
from bridge.codec import AvroCodec
from bridge.normalize import Normalizer

from conftest import mediawiki_events, sftpgo_events

Record = dict[str, Any]
DATA = Path(__file__).parent / "data"


def fastavro_bytes(codec: AvroCodec, record: Record) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, codec.parsed, record)
    return buf.getvalue()


def vector_records() -> list[Record]:
    normalizer = Normalizer(sftpgo_user_fields=("email", "role", "groups"))
    return [event.record for event in sftpgo_events(normalizer) + mediawiki_events(normalizer)]


class CountingWhole:
    """The codec's whole writer, counting the records that needed it."""

    def __init__(self, codec: AvroCodec) -> None:
        self.calls = 0
        self._whole = codec._layouts._encode_whole
        codec._layouts._encode_whole = self

    def __call__(self, record: Record) -> bytes:
        self.calls += 1
        return self._whole(record)


def _sftpgo(user: str, ip: str = "192.0.2.1", **query: str) -> Record:
    facts = {"ip": ip, "login_method": "password", "protocol": "SSH", "status": "1"} | query
    return Normalizer().sftpgo(facts, {"username": user, "id": 7}).record


def test_every_vector_record_is_written_with_fastavros_bytes_twice_over() -> None:
    codec = AvroCodec()
    records = vector_records()
    # The second pass goes through the layouts the first one made.
    for record in records + records:
        assert codec.encode_datum(record) == fastavro_bytes(codec, record)
    assert codec._layouts._by_key, "no layout was made for the vectors"


def test_a_second_login_of_the_same_kind_is_written_through_a_layout() -> None:
    codec = AvroCodec()
    whole = CountingWhole(codec)
    first, second = _sftpgo("alice", "192.0.2.1"), _sftpgo("bob", "2001:db8::7")
    codec.encode_datum(first)
    assert whole.calls == 1
    assert codec.encode_datum(second) == fastavro_bytes(codec, second)
    assert whole.calls == 1
    assert codec.decode_datum(codec.encode_datum(second))["user"]["name"] == "bob"


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["service"].update(version="2.6.0"),
        lambda r: r["dst_endpoint"].update(port=2022),
        lambda r: r["metadata"]["product"].update(name="Other"),
        lambda r: r["metadata"].update(profiles=["host"]),
        lambda r: r["metadata"].update(correlation_uid="req-1"),
        lambda r: r.update(http_request={"user_agent": "curl/8", "uid": None}),
        lambda r: r.update(status_detail="wrongpassword"),
        lambda r: r.update(actor={"user": {"name": "root", "uid": None}}),
        lambda r: r["observables"].pop(),
        lambda r: r["observables"][0].update(name="user.name", type_id=4, type="User Name"),
        lambda r: r["user"].update(type_id=0, type="Unknown"),
        lambda r: r["user"].update(email_addr="alice@example.com"),
        lambda r: r["user"].update(groups=[{"name": "staff", "type": None}]),
        lambda r: r["src_endpoint"].update(interface_name="eth0"),
    ],
    ids=[
        "service",
        "dst_endpoint",
        "product",
        "profiles",
        "correlation_uid",
        "http_request",
        "status_detail",
        "actor",
        "observables_length",
        "observable_kind",
        "user_type",
        "email_addr",
        "groups",
        "interface_name",
    ],
)
def test_a_record_differing_from_its_layout_in_a_constant_part_gets_its_own_bytes(
    change: Any,
) -> None:
    codec = AvroCodec()
    first = _sftpgo("alice")
    codec.encode_datum(first)
    codec.encode_datum(first)
    other = copy.deepcopy(first)
    change(other)
    assert codec.encode_datum(other) == fastavro_bytes(codec, other)
    assert codec.encode_datum(first) == fastavro_bytes(codec, first)


def test_a_login_differing_in_every_per_login_value_is_written_through_the_layout() -> None:
    codec = AvroCodec()
    whole = CountingWhole(codec)
    first = _sftpgo("alice", "192.0.2.1")
    codec.encode_datum(first)
    second = _sftpgo("bob", "2001:db8::7")
    second["time"] += 1000
    second["metadata"]["logged_time"] += 2000
    second["user"]["uid"] = None
    second["unmapped"]["sftpgo.extra"] = "x"
    assert codec.encode_datum(second) == fastavro_bytes(codec, second)
    assert whole.calls == 1
    decoded = codec.decode_datum(codec.encode_datum(second))
    assert decoded["observables"][1]["value"] == "bob"
    assert decoded["metadata"]["uid"] == second["metadata"]["uid"] != first["metadata"]["uid"]


@pytest.mark.parametrize("optional", ["actor", "http_request"])
def test_an_optional_record_filled_or_null_makes_a_layout_of_each_kind(optional: str) -> None:
    # A filled one, and another with other per-login values in it.
    filled, refilled = {
        "actor": ({"user": {"name": "root", "uid": "0"}}, {"user": {"name": "adm", "uid": None}}),
        "http_request": ({"user_agent": "curl/8", "uid": "r-1"}, {"user_agent": "", "uid": None}),
    }[optional]
    codec = AvroCodec()
    whole = CountingWhole(codec)
    with_it = _sftpgo("alice")
    with_it[optional] = filled
    without = _sftpgo("bob")
    other = copy.deepcopy(with_it)
    other[optional] = refilled
    for record in (with_it, without, with_it, without, other):
        assert codec.encode_datum(record) == fastavro_bytes(codec, record)
    # One whole write each to learn the two kinds; the rest went through their layouts.
    assert whole.calls == 2


def test_a_datetime_in_a_per_login_timestamp_is_converted_as_fastavro_converts_it() -> None:
    codec = AvroCodec()
    first = _sftpgo("alice")
    codec.encode_datum(first)
    second = copy.deepcopy(first)
    second["time"] = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    assert codec.encode_datum(second) == fastavro_bytes(codec, second)


def test_failed_logins_of_every_kind_over_all_five_protocols_fit_in_their_keys_layouts() -> None:
    # Per protocol: a known user, an unknown one, and a client that gave no name (no user-name
    # observable): 15 kinds under one key, each made into a layout once.
    codec = AvroCodec()
    whole = CountingWhole(codec)
    users: list[dict[str, Any]] = [{"username": "alice", "id": 7}, {"username": "eve", "id": 0}, {}]
    records = [
        Normalizer()
        .sftpgo(
            {"ip": "192.0.2.1", "login_method": "password", "protocol": protocol, "status": "0"},
            user,
        )
        .record
        for protocol in ("SSH", "FTP", "DAV", "HTTP", "OIDC")
        for user in users
    ]
    for record in records:
        codec.encode_datum(record)
    assert whole.calls == 15
    assert [len(v) for v in codec._layouts._by_key.values()] == [15]
    for record in records:
        assert codec.encode_datum(record) == fastavro_bytes(codec, record)
    assert whole.calls == 15


def test_a_sender_varying_a_key_value_cannot_grow_the_layouts_past_their_bound() -> None:
    codec = AvroCodec()
    records = [_sftpgo("alice", login_method=f"method{i}") for i in range(3 * layouts.MAX_LAYOUTS)]
    for record in records:
        assert codec.encode_datum(record) == fastavro_bytes(codec, record)
    made = sum(len(v) for v in codec._layouts._by_key.values())
    assert made == layouts.MAX_LAYOUTS
    # Past the bound, each new kind is written whole, and right.
    assert codec.encode_datum(records[-1]) == fastavro_bytes(codec, records[-1])


def test_one_key_holds_at_most_its_share_of_layouts() -> None:
    codec = AvroCodec()
    for i in range(3 * layouts.LAYOUTS_PER_KEY):
        record = _sftpgo("alice")
        record["service"]["version"] = f"2.{i}.0"
        assert codec.encode_datum(record) == fastavro_bytes(codec, record)
    assert [len(v) for v in codec._layouts._by_key.values()] == [layouts.LAYOUTS_PER_KEY]


def test_a_layout_that_writes_other_bytes_than_fastavro_is_never_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fill_runs = layouts._fill_runs

    def spoiled(record_schema: dict[str, Any], runs: dict[str, bytes]) -> None:
        fill_runs(record_schema, {name: bytes(len(run)) for name, run in runs.items()})

    monkeypatch.setattr(layouts, "_fill_runs", spoiled)
    codec = AvroCodec()
    record = _sftpgo("alice")
    with caplog.at_level(logging.WARNING, "bridge.layouts"):
        for _ in range(3):
            assert codec.encode_datum(record) == fastavro_bytes(codec, record)
    assert not codec._layouts._by_key
    assert "other bytes than fastavro" in caplog.text


def test_a_record_fastavro_refuses_gets_fastavros_own_error_with_or_without_a_layout() -> None:
    codec = AvroCodec()
    good = _sftpgo("alice")
    codec.encode_datum(good)
    overflowing = copy.deepcopy(good)
    overflowing["time"] = 2**70
    with pytest.raises(Exception) as through_layout:
        codec.encode_datum(overflowing)
    with pytest.raises(Exception) as whole:
        fastavro_bytes(codec, overflowing)
    assert type(through_layout.value) is type(whole.value)
    assert str(through_layout.value) == str(whole.value)
    missing = copy.deepcopy(good)
    del missing["service"]
    with pytest.raises(ValueError, match="service"):
        codec.encode_datum(missing)


def test_another_schema_is_written_whole_by_fastavro() -> None:
    schema = json.loads((DATA / "login_audit.v1.avsc").read_text(encoding="utf-8"))
    codec = AvroCodec(schema)
    assert not codec._layouts.enabled


def test_a_layouts_reader_reads_each_value_at_its_path() -> None:
    record = {
        "time": 1,
        "user": {"name": "alice", "uid": None},
        "observables": [{"value": "192.0.2.1"}, {"value": "alice"}],
        'odd "name"\\': {"it's": 2},
    }
    read = layouts._datum_reader(
        [],
        [
            ("value0", ("time",)),
            ("value1", ("user", "name")),
            ("value2", ("user", "uid")),
            ("value3", ("observables", 1, "value")),
            ("value4", ("observables", 0, "value")),
            ("value5", ('odd "name"\\', "it's")),
        ],
    )
    assert read(record) == {
        "value0": 1,
        "value1": "alice",
        "value2": None,
        "value3": "alice",
        "value4": "192.0.2.1",
        "value5": 2,
    }
    with pytest.raises(KeyError):  # a record without the field: the caller writes it whole
        read({"time": 1})


def test_a_layouts_reader_gives_none_for_a_record_failing_any_of_its_checks() -> None:
    checks: list[layouts.Check] = [
        ((), ("class_uid", "status"), (3002, "Success")),
        (("actor",), layouts._NULL, False),
        (("actor", "user"), ("uid",), (None,)),
        (("observables",), layouts._LENGTH, 2),
    ]
    read = layouts._datum_reader(checks, [("value0", ("actor", "user", "name"))])
    record = {
        "class_uid": 3002,
        "status": "Success",
        "actor": {"user": {"name": "root", "uid": None}},
        "observables": [{}, {}],
    }
    assert read(record) == {"value0": "root"}
    failing: list[Callable[[Record], object]] = [
        lambda r: r.update(status="Failure"),
        lambda r: r.update(class_uid=3003),
        lambda r: r["actor"]["user"].update(uid="0"),
        lambda r: r["observables"].pop(),
    ]
    for change in failing:
        other = copy.deepcopy(record)
        change(other)
        assert read(other) is None
    # The null check comes first, so a record without the optional record is only not of this
    # kind: reading into it would raise.
    assert read(record | {"actor": None}) is None


@pytest.mark.parametrize("step", [True, 1.0, b"time", None])
def test_a_layouts_reader_takes_only_field_names_and_indexes_into_its_source(step: Any) -> None:
    with pytest.raises(TypeError, match="not a field name or an index"):
        layouts._datum_reader([], [("value0", ("observables", step))])
    with pytest.raises(TypeError, match="not a field name or an index"):
        layouts._datum_reader([(("observables", step), layouts._LENGTH, 1)], [])


def test_a_layouts_flat_writer_gives_fastavros_bytes_for_its_runs_and_values() -> None:
    run = {"type": "fixed", "name": "Run", "size": 3}
    schema = {
        "type": "record",
        "name": "Layout",
        "fields": [
            {"name": "__constant_0", "type": run},
            {"name": "value0", "type": "long"},
            {"name": "value1", "type": ["null", "string"]},
            {"name": "__constant_1", "type": {**run, "name": "Run1", "size": 1}},
            {"name": "value2", "type": {"type": "map", "values": "string"}},
            {"name": "value3", "type": ["null", {"type": "array", "items": "string"}]},
        ],
    }
    named: dict[str, Any] = {}
    parsed = cast(Record, fastavro.parse_schema(schema, named_schemas=named))
    layouts._fill_runs(parsed, {"__constant_0": b"\x01\x02\x03", "__constant_1": b"\xff"})
    write = layouts._flat_writer(parsed, named)
    datums: list[Record] = [
        {"value0": 0, "value1": None, "value2": {}, "value3": None},
        {"value0": -(2**63), "value1": "é\u2603", "value2": {"a": "b", "": ""}, "value3": ["x"]},
        {"value0": 2**63 - 1, "value1": "", "value2": {"k": "v" * 300}, "value3": []},
    ]
    for datum in datums:
        whole = io.BytesIO()
        fastavro.schemaless_writer(whole, parsed, datum)
        assert write(datum) == whole.getvalue()
    with pytest.raises(OverflowError):  # out of a long's range: fastavro's own refusal
        write(datums[0] | {"value0": 2**63})


def test_a_per_login_double_is_left_to_fastavros_record_writer_which_converts_it() -> None:
    schema = json.loads((Path(__file__).parent.parent / "schemas/login_audit.avsc").read_text())
    schema["fields"].append({"name": "score", "type": "double"})
    codec = AvroCodec(schema)
    assert codec._layouts.enabled
    for score in (1, 0.5, "NaN"):
        record = _sftpgo("alice") | {"score": score}
        for _ in range(2):
            assert codec.encode_datum(record) == fastavro_bytes(codec, record)
    assert not codec._layouts._by_key


def test_without_fastavros_value_writer_a_layout_writes_its_flat_record_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(layouts, "_write_value", None)
    codec = AvroCodec()
    whole = CountingWhole(codec)
    records = [_sftpgo("alice"), _sftpgo("bob", "2001:db8::1")]
    for record in records * 2:
        assert codec.encode_datum(record) == fastavro_bytes(codec, record)
    assert whole.calls == 1
