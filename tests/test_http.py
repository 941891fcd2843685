"""The HTTP endpoint on a real uvicorn on loopback: answers, errors, auth, limits, TLS, metrics."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import TokenCheck, create_app
from bridge.codec import AvroCodec
from bridge.durable_spool import DurableSpool
from bridge.errors import SinkUnavailable
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.sinks.file import read_events
from bridge.sinks.memory import MemorySink

from conftest import (
    BridgeProcess,
    mediawiki_observations,
    mediawiki_payload,
    post,
    sftpgo_vectors,
    vector_body,
)
from support import free_port, serve_in_thread

OK_QUERY = "ip=198.51.100.7&login_method=password&protocol=FTP&status=0"
BOB = b'{"username":"bob","id":7}'


@dataclass
class LiveApp:
    url: str
    sink: MemorySink
    metrics: Metrics

    def hook(self, query: str = OK_QUERY) -> str:
        return f"{self.url}/v1/hooks/sftpgo?{query}"

    def metric(self, name: str, **labels: str) -> float:
        families = text_string_to_metric_families(get(f"{self.url}/metrics")[1].decode())
        for family in families:
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _app(sink: MemorySink, metrics: Metrics, *, tokens: list[str], header: str) -> Any:
    return create_app(
        pipeline=Pipeline(sink=sink, metrics=metrics, publish_timeout=5),
        normalizer=Normalizer(),
        metrics=metrics,
        tokens=TokenCheck(tokens, header=header),
        max_body_bytes=4096,
    )


@pytest.fixture
def live() -> Iterator[LiveApp]:
    sink, metrics = MemorySink(), Metrics()
    asyncio.run(sink.start())
    port = free_port()
    app = _app(sink, metrics, tokens=["old-token", "new-token"], header="Authorization")
    with serve_in_thread(app, port):
        yield LiveApp(url=f"http://127.0.0.1:{port}", sink=sink, metrics=metrics)


def test_valid_sftpgo_hook_is_stored_and_answered_with_its_event_id(live: LiveApp) -> None:
    status, body, _ = post(live.hook(), BOB, token="old-token")
    assert status == 200
    assert body["status"] == "stored"
    assert [e.event_id for e in live.sink.events] == [body["event_id"]]
    assert live.metric("login_audit_events_published_total", sink="memory", status="failure") == 1


def test_both_rotated_tokens_are_accepted_and_others_refused(live: LiveApp) -> None:
    assert post(live.hook(), BOB, token="old-token")[0] == 200
    assert post(live.hook(), BOB, token="new-token")[0] == 200
    status, body, _ = post(live.hook(), BOB, token="stale-token")
    assert (status, body["error"]) == (401, "unauthorized")
    status, body, _ = post(live.hook(), BOB, token=None)
    assert (status, body["error"]) == (401, "unauthorized")
    assert len(live.sink.events) == 2
    assert live.metric("login_audit_requests_rejected_total", reason="unauthorized") == 2


def test_malformed_json_is_a_400_naming_the_problem_and_counted(live: LiveApp) -> None:
    status, body, _ = post(live.hook(), b'{"username": ', token="new-token")
    assert status == 400
    assert body["error"] == "malformed"
    assert "not valid JSON" in body["message"]
    assert live.metric("login_audit_requests_rejected_total", reason="malformed") == 1


def test_invalid_field_is_a_400_with_the_field_named(live: LiveApp) -> None:
    status, body, _ = post(
        live.hook("ip=300.1.1.1&login_method=password&protocol=SSH&status=1"),
        BOB,
        token="new-token",
    )
    assert (status, body["error"], body["field"]) == (400, "invalid_field", "ip")


def test_repeated_query_parameter_is_refused(live: LiveApp) -> None:
    status, body, _ = post(live.hook(OK_QUERY + "&status=1"), BOB, token="new-token")
    assert (status, body["field"]) == (400, "status")


def test_body_over_the_limit_is_a_413(live: LiveApp) -> None:
    status, body, _ = post(live.hook(), b'{"username":"' + b"x" * 5000 + b'"}', token="new-token")
    assert (status, body["error"]) == (413, "too_large")


def test_wrong_content_type_is_a_415(live: LiveApp) -> None:
    status, body, _ = post(
        live.hook(), BOB, token="new-token", headers={"Content-Type": "text/plain"}
    )
    assert (status, body["error"]) == (415, "media_type")
    status, _, _ = post(
        live.hook(),
        BOB,
        token="new-token",
        headers={"Content-Type": "application/json; charset=latin-1"},
    )
    assert status == 415


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "Application/JSON; charset=UTF-8"},
        {"Content-Type": 'application/json;charset="utf-8"'},
        {"Content-Type": "application/json", "Content-Encoding": "identity"},
    ],
)
def test_json_media_types_are_accepted_in_any_spelling(
    live: LiveApp, headers: dict[str, str]
) -> None:
    assert post(live.hook(), BOB, token="new-token", headers=headers)[0] == 200


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_an_encoded_body_is_a_415_whatever_its_media_type(live: LiveApp, content_type: str) -> None:
    headers = {"Content-Type": content_type, "Content-Encoding": "gzip"}
    status, body, _ = post(live.hook(), BOB, token="new-token", headers=headers)
    assert (status, body["error"]) == (415, "media_type")
    assert "gzip" in body["message"]


def test_sink_failure_is_a_503_with_retry_after_and_nothing_is_claimed(live: LiveApp) -> None:
    live.sink.fail_with = SinkUnavailable("broker down")
    status, body, headers = post(live.hook(), BOB, token="new-token")
    assert (status, body["error"]) == (503, "sink_unavailable")
    assert headers["Retry-After"] == "5"
    assert live.metric("login_audit_requests_rejected_total", reason="sink_unavailable") == 1


def test_a_bad_request_next_to_good_ones_loses_none_of_them(live: LiveApp) -> None:
    answers = [
        post(live.hook(), body, token="new-token")[0]
        for body in (BOB, b"{broken", BOB, b"\xff", BOB)
    ]
    assert answers == [200, 400, 200, 400, 200]
    assert len(live.sink.events) == 3


def test_unknown_path_and_wrong_method_are_json_errors(live: LiveApp) -> None:
    status, body, _ = post(f"{live.url}/v1/hooks/nope", BOB)
    assert (status, body["error"]) == (404, "not_found")
    status, raw = get(f"{live.url}/v1/hooks/sftpgo")
    assert (status, json.loads(raw)["error"]) == (405, "method_not_allowed")


def test_mediawiki_hook_accepts_the_documented_payload(live: LiveApp) -> None:
    observation = mediawiki_observations()[0]
    body = json.dumps(mediawiki_payload(observation)).encode()
    status, _, _ = post(f"{live.url}/v1/hooks/mediawiki", body, token="new-token")
    assert status == 200
    assert live.sink.events[0].record["user"]["name"] == "Alice"
    assert live.sink.events[0].source == "mediawiki"


def test_readyz_follows_the_sink_and_healthz_does_not(live: LiveApp) -> None:
    assert get(f"{live.url}/readyz")[0] == 200
    asyncio.run(live.sink.stop())
    status, body = get(f"{live.url}/readyz")
    assert (status, json.loads(body)["error"]) == (503, "sink_unavailable")
    assert get(f"{live.url}/healthz")[0] == 200


def test_openapi_describes_both_hooks(live: LiveApp) -> None:
    spec = json.loads(get(f"{live.url}/openapi.json")[1])
    assert {"/v1/hooks/sftpgo", "/v1/hooks/mediawiki"} <= set(spec["paths"])


def test_custom_token_header_as_sftpgo_http_headers_sends_it() -> None:
    sink, metrics = MemorySink(), Metrics()
    asyncio.run(sink.start())
    port = free_port()
    app = _app(sink, metrics, tokens=["example-shared-token"], header="X-Sftpgo-Hook-Token")
    with serve_in_thread(app, port):
        url = f"http://127.0.0.1:{port}/v1/hooks/sftpgo?{OK_QUERY}"
        ok = post(url, BOB, token=None, headers={"X-Sftpgo-Hook-Token": "example-shared-token"})
        assert ok[0] == 200
        assert post(url, BOB, token=None, headers={"X-Sftpgo-Hook-Token": "nope"})[0] == 401


def test_mutual_tls_accepts_a_client_certificate_and_refuses_none(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    server_pem, ca_pem = tmp_path / "server.pem", tmp_path / "ca.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    sink, metrics = MemorySink(), Metrics()
    asyncio.run(sink.start())
    port = free_port()
    app = _app(sink, metrics, tokens=[], header="Authorization")
    tls = {
        "ssl_certfile": str(server_pem),
        "ssl_ca_certs": str(ca_pem),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    with serve_in_thread(app, port, **tls):
        url = f"https://127.0.0.1:{port}/v1/hooks/sftpgo?{OK_QUERY}"
        with_cert = ssl.create_default_context()
        ca.configure_trust(with_cert)
        ca.issue_cert("sftpgo.example").configure_cert(with_cert)
        request = urllib.request.Request(
            url, data=BOB, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, context=with_cert) as reply:
            assert reply.status == 200
        without_cert = ssl.create_default_context()
        ca.configure_trust(without_cert)
        refused = (ssl.SSLError, urllib.error.URLError, ConnectionError)
        with pytest.raises(refused), urllib.request.urlopen(request, context=without_cert) as reply:
            reply.read()
    assert len(sink.events) == 1


# -- the real service process


def test_service_process_stores_a_vector_in_the_file_sink(bridge: BridgeProcess) -> None:
    vector = next(v for v in sftpgo_vectors() if v["mode"] == "http")
    status, body, _ = post(
        f"{bridge.url}/v1/hooks/sftpgo?{vector['raw_query']}", vector_body(vector)
    )
    assert status == 200
    (record,) = list(read_events(bridge.events_dir))
    assert record["metadata"]["uid"] == body["event_id"]


def test_sigterm_drains_and_every_answered_event_is_on_disk(bridge: BridgeProcess) -> None:
    """Requests answered 200 before SIGTERM are in the file sink after the process exits."""
    stored: list[str] = []
    errors: list[BaseException] = []

    def client(n: int) -> None:
        for i in range(n):
            try:
                status, body, _ = post(
                    f"{bridge.url}/v1/hooks/sftpgo?{OK_QUERY}",
                    json.dumps({"username": f"u{i}"}).encode(),
                )
            except OSError as exc:  # refused once the server stops accepting
                errors.append(exc)
                return
            if status == 200:
                stored.append(body["event_id"])

    threads = [threading.Thread(target=client, args=(200,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    threading.Event().wait(0.5)
    assert bridge.stop() == 0
    for thread in threads:
        thread.join(30)
    on_disk = {r["metadata"]["uid"] for r in read_events(bridge.events_dir)}
    assert stored, "no request was answered before the stop"
    assert set(stored) <= on_disk
    assert "login-audit-bridge stopped" in bridge.logs()


def test_full_spool_answers_503_with_retry_after(tmp_path: Path) -> None:
    sink, metrics = MemorySink(), Metrics()
    spool = DurableSpool(tmp_path / "spool.sqlite3", AvroCodec(), max_bytes=1 << 20, max_events=1)

    async def prepare() -> None:
        await sink.start()
        await spool.open()

    asyncio.run(prepare())
    sink.fail_with = SinkUnavailable("broker down")
    app = create_app(
        pipeline=Pipeline(sink=sink, metrics=metrics, spool=spool, spool_after=1),
        normalizer=Normalizer(),
        metrics=metrics,
        tokens=TokenCheck([], header="Authorization"),
        max_body_bytes=4096,
    )
    port = free_port()
    with serve_in_thread(app, port):
        url = f"http://127.0.0.1:{port}/v1/hooks/sftpgo?{OK_QUERY}"
        assert post(url, BOB, token=None)[0] == 200  # spooled
        status, body, headers = post(url, BOB, token=None)
        assert (status, body["error"], headers["Retry-After"]) == (503, "overloaded", "5")
    assert spool.depth == 1


def test_listening_socket_disables_nagle_so_keep_alive_answers_are_not_delayed() -> None:
    """Accepted connections inherit TCP_NODELAY; without it each reused one stalls ~40 ms."""
    import socket

    from bridge.service import _bind
    from bridge.settings import Settings

    (listener,) = _bind(Settings(port=0))
    with listener:
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
