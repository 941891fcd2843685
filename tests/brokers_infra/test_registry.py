"""The Confluent wire format and the registry client, framing alone and against a real Apicurio.

The registry tests talk to Apicurio Registry started by `LOGIN_AUDIT_REGISTRY=1 scripts/brokers
start` (or `scripts/brokers start-registry`); they skip without it, and fail in CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from bridge.codec import AvroCodec
from bridge.errors import ConfigError, MalformedInput, SinkUnavailable
from bridge.normalize import Normalizer
from bridge.registry import (
    CONTENT_TYPE,
    MAX_WRITER_SCHEMA_CHARS,
    ConfluentRegistryEncoder,
    RegistryClient,
    bounded_writer_schema,
    decode_confluent,
    frame,
    registry_decoder,
    registry_error,
    subject_for,
    unframe,
)
from bridge.settings import load_settings

from support import free_port, reachable, skip_or_fail

# Read at import: the suite's autouse fixture scrubs BRIDGE_* before each test.
REGISTRY_URL = os.environ.get(
    "BRIDGE_TEST_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081/apis/ccompat/v7"
)

pytestmark = [pytest.mark.registry]


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    normalizer = Normalizer(sftpgo_user_fields=("username", "id"))
    query = {"ip": "192.0.2.10", "login_method": "password", "protocol": "SSH", "status": "0"}
    return normalizer.sftpgo(query, {"username": "alice", "id": 7}).record


# -- framing, no registry needed


def test_a_frame_is_magic_zero_then_the_id_big_endian_then_the_body() -> None:
    assert frame(258, b"avro") == b"\x00\x00\x00\x01\x02avro"


def test_unframe_returns_the_id_and_the_body() -> None:
    assert unframe(b"\x00\x00\x00\x01\x02avro") == (258, b"avro")


def test_single_object_encoding_is_not_taken_for_the_confluent_format(
    codec: AvroCodec, record: dict[str, Any]
) -> None:
    with pytest.raises(MalformedInput, match="magic byte 0"):
        unframe(codec.encode(record))


def test_a_message_shorter_than_the_header_is_malformed() -> None:
    with pytest.raises(MalformedInput):
        unframe(b"\x00\x00\x01")


def test_decode_asks_for_the_schema_of_the_id_in_the_frame(
    codec: AvroCodec, record: dict[str, Any]
) -> None:
    asked: list[int] = []

    def fetch(schema_id: int) -> Any:
        asked.append(schema_id)
        return codec.parsed

    decoded = decode_confluent(frame(41, codec.encode_datum(record)), fetch)

    assert asked == [41]
    assert decoded["user"]["name"] == "alice"
    assert decoded["status_id"] == 2
    assert decoded["metadata"]["uid"] == record["metadata"]["uid"]


def test_the_shipped_schema_is_an_acceptable_writer_schema(codec: AvroCodec) -> None:
    parsed = codec.parsed
    assert isinstance(parsed, dict)  # fastavro types a parsed schema as any schema form
    assert bounded_writer_schema(json.dumps(codec.schema))["name"] == parsed["name"]


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"type": "array", "items": "null"}, "items that take no bytes"),
        (
            {"type": "array", "items": {"type": "record", "name": "E", "fields": []}},
            "items that take no bytes",
        ),
        ({"type": "array", "items": {"type": "fixed", "name": "F", "size": 0}}, "no bytes"),
        (
            {"type": "record", "name": "R", "fields": [{"name": "r", "type": ["null", "R"]}]},
            "type R is recursive",
        ),
        ({"type": "array", "items": "string", "doc": "x" * MAX_WRITER_SCHEMA_CHARS}, "too large"),
        ({"type": "array", "items": {"type": "no-such-type"}}, "does not parse"),
        ("[" * 100 + "]" * 100, "nests deeper"),
    ],
    ids=["null-items", "empty-record-items", "empty-fixed", "recursive", "huge", "bad", "deep"],
)
def test_a_writer_schema_that_could_make_decoding_spin_is_refused(schema: Any, why: str) -> None:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    with pytest.raises(MalformedInput, match=why):
        bounded_writer_schema(text)


def test_a_message_of_a_schema_that_does_not_resolve_names_the_id_not_the_schemas(
    codec: AvroCodec,
) -> None:
    fields = [{"name": "y", "type": "string"}]
    other = AvroCodec({"type": "record", "name": "Other", "fields": fields})
    message = frame(9, other.encode_datum({"y": "not a login"}))
    with pytest.raises(MalformedInput) as caught:
        decode_confluent(message, lambda _: other.parsed)
    assert caught.value.message == (
        "written with schema id 9, which does not resolve to the login event schema"
    )


def test_encoding_for_a_topic_that_was_not_prepared_is_a_config_error(
    codec: AvroCodec, record: dict[str, Any]
) -> None:
    encoder = ConfluentRegistryEncoder(codec, RegistryClient("http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match=r"'login-audit\.failure'"):
        encoder.encode(record, "login-audit.failure")


def test_the_subject_follows_the_topic_name_strategy() -> None:
    assert subject_for("login-audit.success") == "login-audit.success-value"


def test_the_registered_schema_keeps_defaults_and_logical_types(codec: AvroCodec) -> None:
    encoder = ConfluentRegistryEncoder(codec, RegistryClient("http://127.0.0.1:9"))
    assert json.loads(encoder.schema_json) == codec.schema
    assert '"logicalType":"timestamp-millis"' in encoder.schema_json


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (401, ConfigError, "refused the credentials (401): Unauthorized user"),
        (403, ConfigError, "refused the credentials (403): Unauthorized user"),
        (409, ConfigError, "incompatible with the versions already registered (409)"),
        (422, ConfigError, "rejected the event schema (422): Unauthorized user"),
        (404, ConfigError, "apis/ccompat/v7"),
        (500, SinkUnavailable, "failed (500): Unauthorized user"),
        (503, SinkUnavailable, "failed (503): Unauthorized user"),
    ],
)
def test_a_refusal_becomes_our_error_with_the_registrys_message(
    status: int, error: type[Exception], words: str
) -> None:
    body = json.dumps({"error_code": status, "message": "Unauthorized user"}).encode()
    mapped = registry_error(status, body, url="http://127.0.0.1:1/apis/ccompat/v7")
    assert type(mapped) is error
    assert words in str(mapped)


def test_only_a_failing_registry_is_worth_retrying() -> None:
    url = "http://127.0.0.1:1"
    assert registry_error(503, b"", url=url).retriable is True
    assert registry_error(409, b"{}", url=url).retriable is False
    assert registry_error(401, b"{}", url=url).retriable is False


def test_a_registry_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ConfigError, match="http:// or https://"):
        RegistryClient("file:///etc/passwd")


def test_the_client_repr_shows_no_credentials() -> None:
    client = RegistryClient("http://127.0.0.1:1", username="bridge", password="hunter2")
    assert "hunter2" not in repr(client)
    assert "aHVudGVyMg" not in repr(client)  # nor its base64


def test_an_unreachable_registry_is_a_retriable_sink_error(codec: AvroCodec) -> None:
    async def scenario() -> None:
        # A port nobody listens on, on loopback: the real connection refusal, no stand-in server.
        url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
        encoder = ConfluentRegistryEncoder(codec, RegistryClient(url, timeout=2))
        with pytest.raises(SinkUnavailable, match="unreachable") as caught:
            await encoder.prepare(["login-audit.success"])
        assert caught.value.retriable is True

    asyncio.run(scenario())


class _Recorder(BaseHTTPRequestHandler):
    """Answers every request with ``server.answer`` and keeps what it was asked."""

    server: _RecordingServer

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append(
            (self.command, self.path, dict(self.headers), self.rfile.read(length))
        )
        status, headers, body = self.server.answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _RecordingServer(ThreadingHTTPServer):
    def __init__(self, answer: tuple[int, dict[str, str], bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.answer = answer
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def http_server() -> Iterator[Any]:
    """Starts loopback HTTP servers with a fixed answer; all are shut down afterwards."""
    servers: list[_RecordingServer] = []

    def start(status: int, headers: dict[str, str], body: bytes = b"") -> _RecordingServer:
        server = _RecordingServer((status, headers, body))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("call", ["register", "schema_by_id"])
def test_a_redirect_is_a_config_error_naming_the_location_and_nothing_is_sent_there(
    http_server: Any, status: int, call: str
) -> None:
    """A registry (or whoever answers at its URL) that redirects gets neither the credentials
    nor the schema, and cannot hand the bridge a schema id of its choosing."""
    elsewhere = http_server(
        200, {"Content-Type": "application/json"}, b'{"id": 1, "schema": "\\"string\\""}'
    )
    location = f"{elsewhere.url}/apis/ccompat/v7/subjects/x-value/versions"
    redirecting = http_server(status, {"Location": location})
    client = RegistryClient(redirecting.url, username="bridge", password="hunter2", timeout=5)

    with pytest.raises(ConfigError, match=rf"redirect.*\({status}\).*{location}") as caught:
        if call == "register":
            client.register("x-value", '"string"')
        else:
            client.schema_by_id(1)

    assert elsewhere.seen == []
    assert len(redirecting.seen) == 1
    assert caught.value.retriable is False


# -- against the real Apicurio Registry


@pytest.fixture(scope="module")
def registry_url() -> str:
    parts = urllib.parse.urlsplit(REGISTRY_URL)
    if not reachable(parts.hostname or "127.0.0.1", parts.port or 80):
        skip_or_fail(
            f"no Schema Registry at {REGISTRY_URL}: run `scripts/brokers start-registry` "
            '(or LOGIN_AUDIT_REGISTRY=1 scripts/brokers start) and eval "$(scripts/brokers env)"'
        )
    return REGISTRY_URL


@pytest.fixture
def topics() -> list[str]:
    unique = f"test-{uuid.uuid4().hex[:12]}"
    return [f"{unique}.success", f"{unique}.failure"]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback test URL
        return json.loads(response.read())


def _put(url: str, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="PUT",
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    urllib.request.urlopen(request, timeout=10).close()


def _latest(registry_url: str, subject: str) -> dict[str, Any]:
    latest: dict[str, Any] = _get(f"{registry_url}/subjects/{subject}/versions/latest")
    return latest


@pytest.mark.kafka
def test_prepare_registers_the_schema_under_each_topics_value_subject(
    registry_url: str, topics: list[str], codec: AvroCodec
) -> None:
    async def scenario() -> None:
        encoder = ConfluentRegistryEncoder(codec, RegistryClient(registry_url))

        await encoder.prepare(topics)

        for topic in topics:
            latest = _latest(registry_url, f"{topic}-value")
            assert latest["version"] == 1
            assert json.loads(latest["schema"]) == codec.schema
            assert encoder.schema_ref(topic) == f"registry-id:{latest['id']}"

    asyncio.run(scenario())


@pytest.mark.kafka
def test_a_restarted_bridge_finds_the_schema_and_adds_no_version(
    registry_url: str, topics: list[str], codec: AvroCodec
) -> None:
    async def scenario() -> None:
        first = ConfluentRegistryEncoder(codec, RegistryClient(registry_url))
        await first.prepare(topics)
        second = ConfluentRegistryEncoder(codec, RegistryClient(registry_url))

        await second.prepare(topics)

        assert second.schema_id(topics[0]) == first.schema_id(topics[0])
        assert _get(f"{registry_url}/subjects/{topics[0]}-value/versions") == [1]

    asyncio.run(scenario())


@pytest.mark.kafka
def test_a_message_reads_back_through_the_registry_decoder(
    registry_url: str, topics: list[str], codec: AvroCodec, record: dict[str, Any]
) -> None:
    async def scenario() -> None:
        encoder = ConfluentRegistryEncoder(codec, RegistryClient(registry_url))
        await encoder.prepare(topics)
        message = encoder.encode(record, topics[1])
        decode = registry_decoder(load_settings(schema_registry_url=registry_url))

        decoded = decode(message)

        assert message[:5] == frame(encoder.schema_id(topics[1]), b"")
        assert decoded == codec.decode_datum(codec.encode_datum(record))
        assert encoder.content_type == CONTENT_TYPE

    asyncio.run(scenario())


@pytest.mark.kafka
def test_an_incompatible_subject_stops_start_up_with_the_registrys_reason(
    registry_url: str, topics: list[str], codec: AvroCodec
) -> None:
    async def scenario() -> None:
        subject = f"{topics[0]}-value"
        other = {"type": "record", "name": "Other", "fields": [{"name": "y", "type": "string"}]}
        RegistryClient(registry_url).register(subject, json.dumps(other))
        _put(f"{registry_url}/config/{subject}", {"compatibility": "BACKWARD"})
        encoder = ConfluentRegistryEncoder(codec, RegistryClient(registry_url))

        with pytest.raises(ConfigError, match=r"incompatible .*\(409\): .*Incompatible") as caught:
            await encoder.prepare(topics[:1])

        assert caught.value.retriable is False

    asyncio.run(scenario())


@pytest.mark.kafka
def test_a_schema_the_registry_cannot_parse_is_refused_with_422(
    registry_url: str, topics: list[str]
) -> None:
    with pytest.raises(ConfigError, match=r"\(422\)"):
        RegistryClient(registry_url).register(f"{topics[0]}-value", "{not json")


@pytest.mark.kafka
def test_a_url_without_the_confluent_api_path_is_explained(
    registry_url: str, topics: list[str], codec: AvroCodec
) -> None:
    async def scenario() -> None:
        root = registry_url.split("/apis/")[0]
        encoder = ConfluentRegistryEncoder(codec, RegistryClient(root))
        with pytest.raises(ConfigError, match="Confluent-compatible API"):
            await encoder.prepare(topics[:1])

    asyncio.run(scenario())


# -- HTTPS: the registry's listener with the test brokers' CA (scripts/brokers ensure_tls)

REGISTRY_TLS_URL = os.environ.get(
    "BRIDGE_TEST_SCHEMA_REGISTRY_TLS_URL", "https://127.0.0.1:18444/apis/ccompat/v7"
)
TLS_DIR = os.environ.get("BRIDGE_TEST_TLS_DIR")


@pytest.fixture(scope="module")
def registry_tls() -> tuple[str, Path]:
    """The registry's HTTPS URL and the CA that signed its certificate."""
    parts = urllib.parse.urlsplit(REGISTRY_TLS_URL)
    ca = Path(TLS_DIR or "/nonexistent") / "ca.pem"
    if not reachable(parts.hostname or "127.0.0.1", parts.port or 443) or not ca.is_file():
        skip_or_fail(
            f"no Schema Registry HTTPS listener at {REGISTRY_TLS_URL} with its CA in "
            "BRIDGE_TEST_TLS_DIR: run LOGIN_AUDIT_REGISTRY=1 scripts/brokers start and "
            'eval "$(scripts/brokers env)"'
        )
    return REGISTRY_TLS_URL, ca


@pytest.mark.kafka
def test_a_registry_over_https_with_its_ca_registers_the_schema_and_decodes(
    registry_tls: tuple[str, Path], topics: list[str], codec: AvroCodec, record: dict[str, Any]
) -> None:
    url, ca = registry_tls
    settings = load_settings(schema_registry_url=url, schema_registry_ssl_ca_location=ca)

    async def scenario() -> None:
        encoder = ConfluentRegistryEncoder.from_settings(settings, codec=codec)
        await encoder.prepare(topics)
        message = encoder.encode(record, topics[0])

        assert registry_decoder(settings)(message) == codec.decode_datum(codec.encode_datum(record))

    asyncio.run(scenario())


@pytest.mark.kafka
def test_a_registry_whose_certificate_the_bridge_cannot_check_is_named_as_such(
    registry_tls: tuple[str, Path], topics: list[str], codec: AvroCodec, tmp_path: Path
) -> None:
    url, _ = registry_tls
    stranger = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    settings = load_settings(schema_registry_url=url, schema_registry_ssl_ca_location=stranger)

    async def scenario() -> None:
        encoder = ConfluentRegistryEncoder.from_settings(settings, codec=codec)
        with pytest.raises(SinkUnavailable, match="TLS certificate check failed") as caught:
            await encoder.prepare(topics)
        assert "certificate verify failed" in str(caught.value)

    asyncio.run(scenario())


# -- a client certificate: Apicurio's build fixes client-auth to none (quarkus.http.ssl.client-auth
# is a build-time property), so the certificate is shown to a TLS server that requires one, in
# front of a registry's answer; the API itself is Apicurio's above.


@pytest.fixture
def mtls_registry(tmp_path: Path) -> Iterator[tuple[str, trustme.CA]]:
    """An HTTPS URL whose server requires a client certificate of the CA it returns."""
    ca = trustme.CA()
    body = json.dumps({"subject": "s", "version": 1, "id": 7, "schema": '"string"'}).encode()
    server = _RecordingServer((200, {"Content-Type": "application/json"}, body))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    # TLS 1.2: the client certificate is checked inside the handshake, so the refusal reaches
    # the client as the server's alert every time. Under TLS 1.3 it comes after the client's
    # side of the handshake, and the request written meanwhile may meet a reset instead.
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/apis/ccompat/v7", ca
    finally:
        server.shutdown()
        server.server_close()


def _client_files(ca: trustme.CA, folder: Path) -> tuple[Path, Path, Path]:
    leaf = ca.issue_cert("bridge-client")
    ca_pem, cert, key = folder / "ca.pem", folder / "client.pem", folder / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return ca_pem, cert, key


def test_a_registry_that_requires_a_client_certificate_gets_the_bridges(
    mtls_registry: tuple[str, trustme.CA], tmp_path: Path
) -> None:
    url, ca = mtls_registry
    ca_pem, cert, key = _client_files(ca, tmp_path)
    ca.cert_pem.write_to_path(str(ca_pem))
    settings = load_settings(
        schema_registry_url=url,
        schema_registry_ssl_ca_location=ca_pem,
        schema_registry_ssl_certificate_location=cert,
        schema_registry_ssl_key_location=key,
    )

    assert RegistryClient.from_settings(settings).lookup("s", '"string"') == 7


def test_a_client_certificate_the_registry_does_not_accept_is_named_as_such(
    mtls_registry: tuple[str, trustme.CA], tmp_path: Path
) -> None:
    url, ca = mtls_registry
    ca_pem, cert, key = _client_files(trustme.CA(), tmp_path)  # another CA's
    ca.cert_pem.write_to_path(str(ca_pem))
    client = RegistryClient(url, ca_location=ca_pem, certificate_location=cert, key_location=key)

    with pytest.raises(SinkUnavailable, match="did not accept the bridge's client certificate"):
        client.lookup("s", '"string"')


def test_a_registry_client_key_without_its_certificate_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs schema_registry_ssl_certificate_location"):
        RegistryClient("https://127.0.0.1:1/apis/ccompat/v7", key_location=tmp_path / "k.pem")


def test_a_registry_client_certificate_with_a_plain_http_url_is_a_config_error(
    tmp_path: Path,
) -> None:
    leaf = trustme.CA().issue_cert("bridge-client")
    certificate = tmp_path / "client.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(certificate))

    with pytest.raises(ConfigError, match="certificate_location needs an https:// registry URL"):
        RegistryClient("http://127.0.0.1:1/apis/ccompat/v7", certificate_location=certificate)


def test_a_registry_ca_with_a_plain_http_url_is_a_config_error(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))

    with pytest.raises(ConfigError, match="needs an https:// registry URL"):
        RegistryClient("http://127.0.0.1:1/apis/ccompat/v7", ca_location=ca)


def test_a_registry_ca_file_that_does_not_load_is_a_config_error(tmp_path: Path) -> None:
    ca = tmp_path / "not-a-ca.pem"
    ca.write_text("not a certificate\n")

    with pytest.raises(ConfigError, match="schema_registry_ssl_ca_location"):
        RegistryClient("https://127.0.0.1:1/apis/ccompat/v7", ca_location=ca)
