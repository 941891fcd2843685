"""Strict OCSF 1.3.0: every event of every vector, checked by OCSF's own schema; the rendering;
the recommended attributes; and the schema's evolution from version 1 in both directions."""

from __future__ import annotations

import copy
import io
import json
import subprocess
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from fastavro.schema import parse_schema

from bridge import ocsf_json
from bridge.codec import AvroCodec, schema_text
from bridge.event import UNKNOWN_USER
from bridge.mediawiki import parse_mediawiki
from bridge.normalize import Normalizer

from conftest import (
    BIN,
    VECTORS,
    BridgeProcess,
    mediawiki_observations,
    mediawiki_payload,
    post,
    sftpgo_vectors,
    vector_body,
    vector_query,
)
from ocsf import assert_ocsf, assert_ocsf_json, ocsf_errors

CODEC = AvroCodec()
SFTPGO = sftpgo_vectors()
OBSERVED = mediawiki_observations()
FIELD_SETS = {"default": (), "extended": ("email", "role", "groups", "description")}
FAILED_SSH = {"ip": "192.0.2.1", "login_method": "password", "protocol": "SSH", "status": "0"}


def _decoded(record: dict[str, Any]) -> dict[str, Any]:
    """What a consumer decodes: the record through Avro and back."""
    return CODEC.decode(CODEC.encode(record))


@pytest.mark.parametrize("fields", FIELD_SETS, ids=list(FIELD_SETS))
@pytest.mark.parametrize("vector", SFTPGO, ids=[v["name"] for v in SFTPGO])
def test_every_sftpgo_vector_renders_as_valid_ocsf_1_3_0(
    vector: dict[str, Any], fields: str
) -> None:
    normalizer = Normalizer(sftpgo_user_fields=FIELD_SETS[fields])
    record = normalizer.sftpgo_from_http(vector_query(vector), vector_body(vector)).record
    assert_ocsf(_decoded(record))
    assert_ocsf(_decoded(record), datetime_profile=True)


@pytest.mark.parametrize("observation", OBSERVED, ids=[o["case"] for o in OBSERVED])
def test_every_observed_mediawiki_login_renders_as_valid_ocsf_1_3_0(
    observation: dict[str, Any],
) -> None:
    body = json.dumps(mediawiki_payload(observation)).encode()
    assert_ocsf(_decoded(Normalizer().mediawiki(parse_mediawiki(body)).record))


def _valid_event() -> dict[str, Any]:
    return ocsf_json.render(_decoded(Normalizer().sftpgo(FAILED_SSH, {"username": "bob"}).record))


def _broken(change: str) -> dict[str, Any]:
    event = _valid_event()
    if change == "iso-time":
        event["time"] = "2026-11-22T07:12:15.682+00:00"
    elif change == "null-written-out":
        event["status_detail"] = None
    elif change == "user-without-name-uid-or-account":
        event["user"] = {"type_id": 0}
    elif change == "caption-not-of-its-id":
        event["auth_protocol_id"], event["auth_protocol"] = 4, "IDP"
    elif change == "time-dt-without-the-datetime-profile":
        event["time_dt"] = "2026-11-22T07:12:15.682Z"
    elif change == "name-not-of-its-uid":
        event["type_name"] = "Authentication: Logoff"
    elif change == "unknown-attribute":
        event["login_method"] = "password"
    return event


@pytest.mark.parametrize(
    "change",
    [
        "iso-time",
        "null-written-out",
        "user-without-name-uid-or-account",
        "caption-not-of-its-id",
        "name-not-of-its-uid",
        "time-dt-without-the-datetime-profile",
        "unknown-attribute",
    ],
)
def test_the_validator_rejects_an_event_that_is_not_ocsf(change: str) -> None:
    """The check can fail: each way the events used to break OCSF is refused."""
    assert ocsf_errors(_valid_event()) == []
    assert ocsf_errors(_broken(change)) != []


def test_the_rendering_leaves_nulls_out_and_writes_times_as_integer_milliseconds() -> None:
    record = _decoded(Normalizer(clock=lambda: 1_796_145_716_504).sftpgo(FAILED_SSH, {}).record)
    assert isinstance(record["time"], datetime)
    event = ocsf_json.render(record)
    assert event["time"] == event["metadata"]["logged_time"] == 1_796_145_716_504
    assert "status_detail" not in event and "http_request" not in event
    assert event["user"] == {"name": UNKNOWN_USER, "type_id": 0, "type": "Unknown"}
    line = ocsf_json.dumps(record, datetime_profile=True)
    with_dt = json.loads(line)
    assert with_dt["time_dt"] == "2026-12-01T17:21:56.504Z"
    assert with_dt["metadata"]["profiles"] == ["datetime"]
    assert_ocsf_json(with_dt)


def test_the_rendering_renders_fields_it_does_not_know_of() -> None:
    """Generic: a field another source adds (say PAM's actor) is rendered without a change."""
    record = _decoded(Normalizer().sftpgo(FAILED_SSH, {"username": "bob"}).record)
    record["actor"] = {
        "user": {"name": "alice", "uid": None},
        "at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    assert ocsf_json.render(record)["actor"] == {"user": {"name": "alice"}, "at": 1_767_225_600_000}


def _sftpgo(query: dict[str, str], user: dict[str, Any]) -> dict[str, Any]:
    record = Normalizer().sftpgo(query, user).record
    assert_ocsf(_decoded(record))
    return record


@pytest.mark.parametrize(
    ("method", "mfa"),
    [
        ("publickey+password", True),
        ("publickey+keyboard-interactive", True),
        ("TLSCertificate+password", True),
        ("password", False),
        ("publickey", False),
        ("no_auth_tried", False),
        ("keyboard-interactive", None),
        ("IDP", None),
    ],
)
def test_is_mfa_is_true_for_combined_methods_and_unknown_where_the_hook_cannot_tell(
    method: str, mfa: bool | None
) -> None:
    assert _sftpgo({**FAILED_SSH, "login_method": method}, {"username": "bob"})["is_mfa"] is mfa


@pytest.mark.parametrize(
    ("method", "protocol_id", "caption"),
    [("no_auth_tried", 0, "Unknown"), ("IDP", 4, "OpenID"), ("publickey", 99, "publickey")],
)
def test_auth_protocol_is_the_caption_of_its_id_and_the_method_only_for_other(
    method: str, protocol_id: int, caption: str
) -> None:
    record = _sftpgo({**FAILED_SSH, "login_method": method}, {"username": "bob"})
    assert (record["auth_protocol_id"], record["auth_protocol"]) == (protocol_id, caption)
    assert record["unmapped"]["sftpgo.login_method"] == method


def test_an_sftpgo_login_carries_observables_status_code_and_user_type() -> None:
    record = _sftpgo({**FAILED_SSH, "status": "1"}, {"username": "bob", "id": 7})
    assert record["observables"] == [
        {"name": "src_endpoint.ip", "type_id": 2, "type": "IP Address", "value": "192.0.2.1"},
        {"name": "user.name", "type_id": 4, "type": "User Name", "value": "bob"},
    ]
    assert (record["status_code"], record["timezone_offset"]) == ("1", 0)
    assert (record["user"]["type_id"], record["user"]["type"]) == (1, "User")


def test_an_unknown_user_is_named_unknown_and_told_apart_from_a_typed_one() -> None:
    nameless = Normalizer().sftpgo({**FAILED_SSH, "login_method": "no_auth_tried"}, {})
    typed = Normalizer().sftpgo(FAILED_SSH, {"username": UNKNOWN_USER})
    assert nameless.record["user"]["name"] == typed.record["user"]["name"] == UNKNOWN_USER
    assert (nameless.user_name, typed.user_name) == (None, UNKNOWN_USER)
    assert [o["name"] for o in nameless.record["observables"]] == ["src_endpoint.ip"]
    assert_ocsf(_decoded(nameless.record))


def _mediawiki(change: dict[str, Any]) -> dict[str, Any]:
    failed = next(o for o in OBSERVED if o["case"] == "clientlogin_wrongpass")
    body = json.dumps(mediawiki_payload(failed) | change).encode()
    record = Normalizer().mediawiki(parse_mediawiki(body)).record
    assert_ocsf(_decoded(record))
    return record


def test_a_failed_bot_password_login_without_an_app_id_still_says_bot_password() -> None:
    """MediaWiki's second call for a failed bot password has only the User@app name."""
    record = _mediawiki({"username": "Alice@harness", "app_id": None})
    assert record["auth_protocol"] == "bot-password"
    assert _mediawiki({"username": "Alice"})["auth_protocol"] == "password"


def test_a_mediawiki_login_keeps_the_source_time_the_server_port_and_address() -> None:
    record = _mediawiki({"server": "http://192.0.2.5:8080", "time": 1_700_000_000_123})
    assert record["dst_endpoint"] | {"svc_name": "MediaWiki"} == {
        "svc_name": "MediaWiki",
        "hostname": None,
        "ip": "192.0.2.5",
        "port": 8080,
    }
    assert record["metadata"]["original_time"] == "1700000000123"
    assert record["status_code"] == "FAIL"
    named = _mediawiki({"server": "https://wiki.example.org"})["dst_endpoint"]
    assert (named["hostname"], named["ip"], named["port"]) == ("wiki.example.org", None, None)


def test_a_mediawiki_server_that_is_no_dns_name_stays_in_unmapped() -> None:
    record = _mediawiki({"server": "https://wiki_under.example"})
    assert record["dst_endpoint"]["hostname"] is None
    assert record["unmapped"]["mediawiki.server"] == "https://wiki_under.example"


# -- the schema evolves: version 1 (as released) and version 2 read each other's data

V1 = parse_schema(json.loads((VECTORS / "login_audit.v1.avsc").read_text()))
V2 = parse_schema(json.loads(schema_text()))


def _v1_record() -> dict[str, Any]:
    """A record as version 1 wrote it: none of the version 2 fields."""
    record = copy.deepcopy(Normalizer().sftpgo(FAILED_SSH, {"username": "bob"}).record)
    for field in ("is_mfa", "status_code", "timezone_offset", "observables"):
        del record[field]
    for field in ("type_id", "type"):
        del record["user"][field]
    del record["src_endpoint"]["interface_name"]
    del record["dst_endpoint"]["ip"], record["dst_endpoint"]["port"]
    del record["metadata"]["profiles"], record["metadata"]["original_time"]
    return record


def _resolve(record: dict[str, Any], writer: Any, reader: Any) -> dict[str, Any]:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, writer, record)
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, writer, reader)
    assert isinstance(read, dict)
    return read


def test_a_version_1_reader_reads_what_version_2_writes() -> None:
    record = Normalizer().sftpgo({**FAILED_SSH, "login_method": "publickey+password"}, {"id": 3})
    read = _resolve(record.record, V2, V1)
    assert read["user"] == {"name": UNKNOWN_USER, "uid": "3", "email_addr": None, "groups": []}
    assert "is_mfa" not in read and "observables" not in read


def test_a_version_2_reader_reads_what_version_1_wrote_with_the_defaults() -> None:
    read = _resolve(_v1_record(), V1, V2)
    assert read["user"]["name"] == "bob"
    assert (read["user"]["type_id"], read["user"]["type"]) == (0, "Unknown")
    assert (read["is_mfa"], read["status_code"], read["observables"]) == (None, None, [])
    assert (read["timezone_offset"], read["metadata"]["profiles"]) == (0, [])
    assert_ocsf(read)  # an old named event, read today, is still valid OCSF


def test_tail_of_a_real_bridge_prints_valid_ocsf_for_both_sources(bridge: BridgeProcess) -> None:
    query = "ip=203.0.113.9&login_method=no_auth_tried&protocol=SSH&status=0"
    url = f"{bridge.url}/v1/hooks/sftpgo?{query}"
    assert post(url, b"{}")[0] == 200
    observation = next(o for o in OBSERVED if o["case"] == "clientlogin_ok")
    body = json.dumps(mediawiki_payload(observation)).encode()
    assert post(f"{bridge.url}/v1/hooks/mediawiki", body)[0] == 200
    for flags in ([], ["--datetime"]):
        run = subprocess.run(
            [str(BIN / "login-audit-bridge"), "tail", "--data-dir", str(bridge.data_dir), *flags],
            capture_output=True,
            text=True,
            check=True,
        )
        events = [assert_ocsf_json(json.loads(line)) for line in run.stdout.splitlines()]
        assert sorted(e["metadata"]["product"]["name"] for e in events) == ["MediaWiki", "SFTPGo"]
