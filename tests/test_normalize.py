"""Normalization of every shared vector, the allow-list, and the edge cases of the contract."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest

from bridge.codec import AvroCodec
from bridge.errors import InputError, InvalidField, MalformedInput
from bridge.event import UNKNOWN_USER
from bridge.mediawiki import parse_mediawiki
from bridge.normalize import (
    _EVENT_ID,
    Normalizer,
    RandomIds,
    _is_short_token,
    _parsed_address_version,
)

from conftest import (
    mediawiki_observations,
    mediawiki_payload,
    secret_strings,
    sftpgo_vectors,
    vector_body,
    vector_query,
)

CODEC = AvroCodec()
SFTPGO = sftpgo_vectors()
OBSERVED = mediawiki_observations()


def _sftpgo_event(vector: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    event = Normalizer(**kwargs).sftpgo_from_http(vector_query(vector), vector_body(vector))
    return event.record


@pytest.mark.parametrize("vector", SFTPGO, ids=[v["name"] for v in SFTPGO])
def test_sftpgo_vector_becomes_the_expected_event(vector: dict[str, Any]) -> None:
    record = _sftpgo_event(vector)
    expected = vector["expected"]
    assert record["status"] == expected["status"].capitalize()
    assert record["user"]["name"] == (expected["username"] or UNKNOWN_USER)
    assert record["src_endpoint"]["ip"] == expected["ip"]
    assert record["dst_endpoint"]["svc_name"] == expected["protocol"]
    assert record["unmapped"]["sftpgo.login_method"] == expected["login_method"]
    assert (record["status_detail"] == "no_auth_tried") is expected["auth_timeout"]


@pytest.mark.parametrize("vector", SFTPGO, ids=[v["name"] for v in SFTPGO])
def test_sftpgo_vector_validates_and_round_trips(vector: dict[str, Any]) -> None:
    record = _sftpgo_event(vector, sftpgo_user_fields=["email", "role", "groups"])
    assert CODEC.validate(record)
    decoded = CODEC.decode(CODEC.encode(record))
    assert decoded["metadata"]["uid"] == record["metadata"]["uid"]
    assert decoded["user"] == record["user"]
    assert decoded["unmapped"] == record["unmapped"]
    assert int(decoded["time"].timestamp() * 1000) == record["time"]


@pytest.mark.parametrize("vector", SFTPGO, ids=[v["name"] for v in SFTPGO])
def test_no_secret_of_a_vector_reaches_the_encoded_event(vector: dict[str, Any]) -> None:
    every_field = ["email", "role", "groups", "filesystem", "virtual_folders", "filters"]
    data = CODEC.encode(_sftpgo_event(vector, sftpgo_user_fields=every_field))
    leaked = [s for s in secret_strings(vector) if s.encode() in data]
    assert leaked == []


def test_vectors_with_secrets_exist_so_the_secret_scan_means_something() -> None:
    assert sum(len(secret_strings(v)) for v in SFTPGO) >= 5


def test_by_default_only_name_and_id_of_the_user_are_kept() -> None:
    full = next(v for v in SFTPGO if v["name"].startswith("01_"))
    record = _sftpgo_event(full)
    assert record["user"] == {
        "name": "alice",
        "uid": "42",
        "email_addr": None,
        "groups": [],
        "type_id": 1,
        "type": "User",
    }
    assert not any(k.startswith("sftpgo.user.") for k in record["unmapped"])
    assert b"alice@example.com" not in CODEC.encode(record)


def test_allow_listed_fields_are_kept_where_ocsf_puts_them() -> None:
    full = next(v for v in SFTPGO if v["name"].startswith("01_"))
    record = _sftpgo_event(full, sftpgo_user_fields=["email", "role", "groups"])
    assert record["user"]["email_addr"] == "alice@example.com"
    assert record["user"]["groups"][0] == {"name": "finance", "type": "primary"}
    assert record["unmapped"]["sftpgo.user.role"] == "eu-admins"


def test_nested_user_fields_are_never_copied_even_when_allow_listed() -> None:
    user = {"username": "eve", "filesystem": {"s3config": {"access_secret": "TOPSECRET-1"}}}
    record = (
        Normalizer(sftpgo_user_fields=["filesystem"])
        .sftpgo(
            {"ip": "192.0.2.1", "login_method": "password", "protocol": "SSH", "status": "1"}, user
        )
        .record
    )
    assert b"TOPSECRET-1" not in CODEC.encode(record)


def test_no_auth_tried_is_a_failure_that_says_the_client_never_authenticated() -> None:
    query = {"ip": "192.0.2.44", "login_method": "no_auth_tried", "protocol": "SSH", "status": "1"}
    record = Normalizer().sftpgo(query, {"username": ""}).record
    assert record["status_id"] == 2
    assert record["status_detail"] == "no_auth_tried"
    assert "before any authentication attempt" in record["message"]
    assert record["auth_protocol_id"] == 0


def test_legacy_spelling_no_auth_tryed_is_normalized() -> None:
    query = {"ip": "192.0.2.44", "login_method": "no_auth_tryed", "protocol": "FTP", "status": "0"}
    record = Normalizer().sftpgo(query, {}).record
    assert record["unmapped"]["sftpgo.login_method"] == "no_auth_tried"
    assert record["status_detail"] == "no_auth_tried"


def test_ipv6_and_unicode_survive_byte_for_byte() -> None:
    query = {"ip": "2001:db8::1", "login_method": "password", "protocol": "DAV", "status": "1"}
    name = "zoë-日本-\U0001f511"
    decoded = CODEC.decode(CODEC.encode(Normalizer().sftpgo(query, {"username": name}).record))
    assert decoded["src_endpoint"]["ip"] == "2001:db8::1"
    assert decoded["user"]["name"].encode("utf-8") == name.encode("utf-8")


def test_go_escaped_characters_in_the_user_json_are_decoded() -> None:
    query = {"ip": "192.0.2.1", "login_method": "password", "protocol": "SSH", "status": "1"}
    body = b'{"username":"a\\u003cb\\u003e\\u0026c"}'
    assert Normalizer().sftpgo_from_http(query, body).record["user"]["name"] == "a<b>&c"


def test_extra_hook_url_parameters_are_kept_as_unmapped() -> None:
    eleven = next(v for v in SFTPGO if v["name"].startswith("11_"))
    assert _sftpgo_event(eleven)["unmapped"]["sftpgo.param.source"] == "eu1"


@pytest.mark.parametrize(
    ("query", "body", "error", "field"),
    [
        (
            {"ip": "1.2.3.4", "login_method": "password", "protocol": "SSH", "status": "2"},
            b"{}",
            InvalidField,
            "status",
        ),
        ({"login_method": "password", "protocol": "SSH", "status": "1"}, b"{}", InvalidField, "ip"),
        (
            {"ip": "not-an-ip", "login_method": "password", "protocol": "SSH", "status": "1"},
            b"{}",
            InvalidField,
            "ip",
        ),
        (
            {"ip": "1.2.3.4", "login_method": "pass word", "protocol": "SSH", "status": "1"},
            b"{}",
            InvalidField,
            "login_method",
        ),
        (
            {"ip": "1.2.3.4", "login_method": "password", "protocol": "", "status": "1"},
            b"{}",
            InvalidField,
            "protocol",
        ),
        (
            {"ip": "1.2.3.4", "login_method": "password", "protocol": "SSH", "status": "1"},
            b'{"username": 5}',
            InvalidField,
            "username",
        ),
        (
            {"ip": "1.2.3.4", "login_method": "password", "protocol": "SSH", "status": "1"},
            b"[1]",
            MalformedInput,
            None,
        ),
        (
            {"ip": "1.2.3.4", "login_method": "password", "protocol": "SSH", "status": "1"},
            b"\xff\xfe{}",
            MalformedInput,
            None,
        ),
        (
            {"ip": "1.2.3.4", "login_method": "password", "protocol": "SSH", "status": "1"},
            b"[" * 100000,
            MalformedInput,
            None,
        ),
        (
            {"ip": "1.2.3.4", "login_method": "password", "protocol": "SSH", "status": "1"},
            b'{"id": NaN}',
            MalformedInput,
            None,
        ),
    ],
    ids=[
        "bad-status",
        "no-ip",
        "bad-ip",
        "bad-method",
        "no-protocol",
        "username-number",
        "not-object",
        "not-utf8",
        "too-deep",
        "nan",
    ],
)
def test_bad_sftpgo_input_raises_an_input_error_naming_the_problem(
    query: dict[str, str], body: bytes, error: type[InputError], field: str | None
) -> None:
    with pytest.raises(error) as caught:
        Normalizer().sftpgo_from_http(query, body)
    if field is not None:
        assert caught.value.detail == field


# -- MediaWiki


def _mediawiki(observation: dict[str, Any], invocation: int = 1) -> dict[str, Any]:
    body = json.dumps(mediawiki_payload(observation, invocation=invocation)).encode()
    return Normalizer().mediawiki(parse_mediawiki(body)).record


@pytest.mark.parametrize(
    "observation", OBSERVED, ids=[f"{o['case']}-{i}" for i, o in enumerate(OBSERVED)]
)
def test_every_observed_mediawiki_login_becomes_a_valid_event(observation: dict[str, Any]) -> None:
    record = _mediawiki(observation)
    assert CODEC.validate(record)
    assert record["status_id"] == (1 if observation["response"]["status"] == "PASS" else 2)
    assert record["status_detail"] == observation["response"]["message_key"]
    assert record["src_endpoint"]["ip"] == observation["ip"]
    assert record["metadata"]["correlation_uid"] == observation["request"]["request_id"]
    assert record["service"] == {"name": "MediaWiki", "uid": "my_wiki", "version": "1.39.17"}


def _case(name: str) -> list[dict[str, Any]]:
    return [o for o in OBSERVED if o["case"] == name]


def test_failed_login_keeps_the_raw_name_and_success_the_canonical_one() -> None:
    (ok,) = _case("clientlogin_ok")
    (wrong,) = _case("clientlogin_wrongpass")
    assert _mediawiki(ok)["user"] == {
        "name": "Alice",
        "uid": "3",
        "email_addr": None,
        "groups": [],
        "type_id": 1,
        "type": "User",
    }
    assert _mediawiki(wrong)["user"]["name"] == "Alice"
    assert _mediawiki(wrong)["user"]["uid"] is None


def test_blocked_user_fails_with_its_account_id() -> None:
    (blocked,) = _case("clientlogin_blocked")
    record = _mediawiki(blocked)
    assert (record["status_detail"], record["user"]["uid"]) == ("login-userblocked", "4")
    assert record["unmapped"]["mediawiki.message_params"] == '["Blocky"]'


def test_throttled_login_carries_the_duration_parameter() -> None:
    (throttled,) = _case("clientlogin_throttle_6")
    record = _mediawiki(throttled)
    assert record["status_detail"] == "login-throttled"
    assert record["unmapped"]["mediawiki.message_params"] == '[{"duration":300}]'


def test_bot_password_double_fire_is_kept_as_two_linked_events() -> None:
    first, second = _case("botpw_wrongpass")
    one, two = _mediawiki(first, 1), _mediawiki(second, 2)
    assert one["metadata"]["uid"] != two["metadata"]["uid"]
    assert one["metadata"]["correlation_uid"] == two["metadata"]["correlation_uid"]
    assert (one["unmapped"]["mediawiki.invocation"], two["unmapped"]["mediawiki.invocation"]) == (
        "1",
        "2",
    )
    assert one["unmapped"]["mediawiki.app_id"] == "Alice@harness"
    assert two["user"]["name"] == "Alice@harness"


def test_unknown_bot_password_user_with_id_zero_has_no_uid() -> None:
    first, _ = _case("botpw_nosuchuser")
    assert _mediawiki(first)["user"] == {
        "name": "Ghost",
        "uid": None,
        "email_addr": None,
        "groups": [],
        "type_id": 0,
        "type": "Unknown",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"status": "MAYBE"}, "status"),
        ({"format": "v0"}, "format"),
        ({"time": "yesterday"}, "time"),
        ({"user": {"id": "3", "name": "A"}}, "user.id"),
        ({"ip": "localhost"}, "ip"),
    ],
)
def test_mediawiki_payload_with_a_bad_field_is_refused_naming_it(
    change: dict[str, Any], field: str
) -> None:
    (ok,) = _case("clientlogin_ok")
    body = json.dumps(mediawiki_payload(ok) | change).encode()
    with pytest.raises(InvalidField) as caught:
        Normalizer().mediawiki(parse_mediawiki(body))
    assert caught.value.field == field


def test_mediawiki_payload_ignores_unknown_fields_for_forward_compatibility() -> None:
    (ok,) = _case("clientlogin_ok")
    body = json.dumps(mediawiki_payload(ok) | {"added_in_v2": [1, 2]}).encode()
    assert Normalizer().mediawiki(parse_mediawiki(body)).record["status"] == "Success"


def test_mediawiki_login_without_a_known_ip_keeps_the_event_with_a_null_ip() -> None:
    (ok,) = _case("clientlogin_ok")
    body = json.dumps(mediawiki_payload(ok) | {"ip": ""}).encode()
    record = Normalizer().mediawiki(parse_mediawiki(body)).record
    assert record["src_endpoint"]["ip"] is None
    assert record["message"].endswith("from an unknown address")


# -- fields an attacker chooses: cut to size or cleaned, flagged, never a reason to refuse

FAILED_SSH = {"ip": "203.0.113.9", "login_method": "password", "protocol": "SSH", "status": "0"}


def _sftpgo(query: dict[str, str], user: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    record = Normalizer(**kwargs).sftpgo_from_http(query, json.dumps(user).encode()).record
    assert CODEC.validate(record)
    return record


def _mediawiki_with(change: dict[str, Any]) -> dict[str, Any]:
    (failed,) = _case("clientlogin_wrongpass")
    body = json.dumps(mediawiki_payload(failed) | change).encode()
    record = Normalizer().mediawiki(parse_mediawiki(body)).record
    assert CODEC.validate(record)
    return record


def test_an_sftpgo_user_name_over_256_characters_is_kept_cut_and_flagged() -> None:
    """SFTPGo sends the name the client typed on a failed login: the attacker picks its size."""
    record = _sftpgo(FAILED_SSH, {"username": "a" * 300 + "b" * 10_000})
    assert record["user"]["name"] == "a" * 256
    assert record["status_id"] == 2
    assert record["unmapped"]["truncated"] == "user.name"
    assert "sanitized" not in record["unmapped"]


def test_an_sftpgo_user_name_with_a_lone_surrogate_is_kept_cleaned_and_flagged() -> None:
    record = Normalizer().sftpgo_from_http(FAILED_SSH, b'{"username": "eve\\ud800"}').record
    assert record["user"]["name"] == "eve\ufffd"
    assert record["unmapped"]["sanitized"] == "user.name"


def test_long_allow_listed_fields_and_too_many_groups_are_cut_and_flagged() -> None:
    user = {
        "username": "bob",
        "email": "e" * 300,
        "description": "d" * 300,
        "groups": [{"name": f"g{i}", "type": 2} for i in range(70)],
    }
    record = _sftpgo(
        {**FAILED_SSH, "source": "s" * 300},
        user,
        sftpgo_user_fields=["email", "description", "groups"],
    )
    assert len(record["user"]["email_addr"]) == 256
    assert len(record["user"]["groups"]) == 64
    assert len(record["unmapped"]["sftpgo.user.description"]) == 256
    assert len(record["unmapped"]["sftpgo.param.source"]) == 256
    assert record["unmapped"]["truncated"].split(",") == [
        "user.email_addr",
        "user.groups",
        "unmapped.sftpgo.param.source",
        "unmapped.sftpgo.user.description",
    ]


@pytest.mark.parametrize(
    ("zone", "kept", "flags"),
    [
        ("eth0", "eth0", {}),
        ("eth0\nFAKE LOG LINE", "eth0_FAKE_LOG_LINE", {"sanitized": "src_endpoint.ip"}),
        ("z" * 2000, "z" * 64, {"truncated": "src_endpoint.ip"}),
        ("z" * 33, "z" * 33, {}),
        ("\ud800", "_", {"sanitized": "src_endpoint.ip"}),
    ],
    ids=["plain", "newline", "2000-chars", "33-chars", "lone-surrogate"],
)
def test_an_ipv6_zone_id_is_kept_when_clean_and_cut_or_cleaned_and_flagged_when_not(
    zone: str, kept: str, flags: dict[str, str]
) -> None:
    """Kept in ip up to OCSF's 40 characters for address and zone, in interface_name past them."""
    record = _sftpgo({**FAILED_SSH, "ip": f"fe80::1%{zone}"}, {"username": "bob"})
    endpoint = record["src_endpoint"]
    if len(f"fe80::1%{kept}") <= 40:
        assert (endpoint["ip"], endpoint["interface_name"]) == (f"fe80::1%{kept}", None)
    else:
        assert (endpoint["ip"], endpoint["interface_name"]) == ("fe80::1", kept)
    assert {k: v for k, v in record["unmapped"].items() if k in ("truncated", "sanitized")} == flags


def test_an_ipv6_address_with_an_empty_zone_keeps_the_address() -> None:
    record = _sftpgo({**FAILED_SSH, "ip": "fe80::1%"}, {"username": "bob"})
    assert record["src_endpoint"]["ip"] == "fe80::1"
    assert record["unmapped"]["sanitized"] == "src_endpoint.ip"


def test_a_zone_on_an_ipv4_address_is_still_refused() -> None:
    with pytest.raises(InvalidField):
        Normalizer().sftpgo_from_http({**FAILED_SSH, "ip": "192.0.2.1%eth0"}, b"{}")


def test_a_mediawiki_request_id_over_128_characters_is_kept_cut_and_flagged() -> None:
    """The wiki may take X-Request-Id from the client: the attacker picks it."""
    record = _mediawiki_with({"request_id": "r" * 129 + "x" * 5000})
    assert record["http_request"]["uid"] == "r" * 128
    assert record["metadata"]["correlation_uid"] == "r" * 128
    assert record["unmapped"]["truncated"] == "http_request.uid"


def test_an_empty_mediawiki_request_id_is_an_event_without_one() -> None:
    record = _mediawiki_with({"request_id": ""})
    assert record["http_request"]["uid"] is None
    assert record["metadata"]["correlation_uid"] is None


def test_long_mediawiki_fields_an_attacker_sends_are_cut_and_flagged() -> None:
    record = _mediawiki_with(
        {
            "username": "u" * 1000,
            "app_id": "a" * 1000,
            "user_agent": "UA" * 5000,
            "ip": "fe80::1%" + "\n" * 2000,
            "message_params": list(range(5000)),
        }
    )
    assert record["user"]["name"] == "u" * 256
    assert record["unmapped"]["mediawiki.raw_username"] == "u" * 256
    assert len(record["http_request"]["user_agent"]) == 1024
    assert record["src_endpoint"]["ip"] == "fe80::1"  # the zone is past OCSF's 40 characters
    assert record["src_endpoint"]["interface_name"] == "_" * 64
    assert record["unmapped"]["truncated"].split(",") == [
        "src_endpoint.ip",
        "unmapped.mediawiki.raw_username",
        "user.name",
        "http_request.user_agent",
        "unmapped.mediawiki.app_id",
        "unmapped.mediawiki.message_params",
    ]
    assert record["unmapped"]["sanitized"] == "src_endpoint.ip"


def test_fresh_event_ids_are_distinct_canonical_uuid4_also_in_a_forked_child() -> None:
    """Ids come from a pool of OS random bytes read in bulk; each is what uuid4() would give."""
    ids = RandomIds()
    drawn = [ids() for _ in range(5000)]
    assert len(set(drawn)) == len(drawn)
    for text in drawn:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
        assert _EVENT_ID.fullmatch(text)
    ids()  # the pool now holds bytes a child must not reuse
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, ids().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    in_child = os.read(read, 64).decode()
    os.close(read)
    assert in_child != ids()


# -- records built from templates (bridge.normalize._templates)


def _events_of_every_source(normalizer: Normalizer) -> list[dict[str, Any]]:
    """One record per source, with every mutable sub-object the record can hold filled in."""
    full = next(v for v in SFTPGO if v["name"].startswith("01_"))
    (throttled,) = _case("clientlogin_throttle_6")  # with message parameters
    pam = {
        "format": "login-audit-bridge.pam.v1",
        "result": "failure",
        "service": "sudo",
        "user": "root",
        "ruser": "alice",  # an actor, a dict holding a dict
        "rhost": "",
        "type": "auth",
        "tty": "/dev/pts/3",
        "host": "web-1",
    }
    body = json.dumps(mediawiki_payload(throttled)).encode()
    return [
        normalizer.sftpgo_from_http(vector_query(full), vector_body(full)).record,
        normalizer.mediawiki(parse_mediawiki(body)).record,
        normalizer.pam(pam).record,
    ]


def _containers(value: Any) -> list[Any]:
    """Every dict and list inside a record, the record itself included."""
    found = [value] if isinstance(value, dict | list) else []
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    for child in children:
        found += _containers(child)
    return found


def _scribble_on(record: dict[str, Any]) -> None:
    """Changes every dict and list of a record in place, as a careless consumer might."""
    for container in _containers(record):
        if isinstance(container, dict):
            for key in container:
                if not isinstance(container[key], dict | list):
                    container[key] = "scribbled"
            container["scribbled"] = True
        else:
            container.append("scribbled")


def test_events_share_no_mutable_object_so_changing_one_record_changes_no_other() -> None:
    """What is constant per source is built once (a template per source and outcome), but each
    event gets its own dicts and lists: a consumer that changes one record (say, adds a field
    before writing it out) changes no other record, built before or after."""
    normalizer = Normalizer(
        sftpgo_user_fields=["email", "role", "groups"],
        clock=lambda: 1_795_330_677_813,
        new_id=lambda: "5b7e0c5e-8d3a-4a51-9f0e-0c7a2b1d9e11",
    )
    pristine = json.dumps(_events_of_every_source(normalizer))
    first = _events_of_every_source(normalizer)
    second = _events_of_every_source(normalizer)
    for a, b in zip(first, second, strict=True):
        shared = {id(c) for c in _containers(a)} & {id(c) for c in _containers(b)}
        assert shared == set()
    for record in first:
        _scribble_on(record)
    assert json.dumps(second) == pristine
    assert json.dumps(_events_of_every_source(normalizer)) == pristine


def test_long_text_from_a_sender_never_enters_the_address_or_token_caches() -> None:
    """The checks of addresses and tokens are cached (the same ones come again and again), but
    text longer than any address or token is refused without the cache: a sender cannot fill
    it with large strings."""
    usual = {"ip": "192.0.2.1", "login_method": "password", "protocol": "SSH", "status": "1"}
    Normalizer().sftpgo(usual, {})  # what the cache may hold, in it before counting
    before = (_parsed_address_version.cache_info().currsize, _is_short_token.cache_info().currsize)
    long_ip = usual | {"ip": "1" * 10_000}
    long_token = usual | {"login_method": "p" * 10_000}
    for query in (long_ip, long_token):
        with pytest.raises(InvalidField):
            Normalizer().sftpgo(query, {})
    after = (_parsed_address_version.cache_info().currsize, _is_short_token.cache_info().currsize)
    assert after == before
