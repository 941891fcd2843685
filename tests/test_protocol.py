"""The bridge's HTTP protocol on a recording transport: what reaches the socket, and in what order.

Each answer leaves in one write() (head and body together: one system call, one wake-up of the
client); these tests prove the head is never lost or reordered on the paths where no body is
written after it.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from bridge.app import Answer
from bridge.metrics import Metrics
from bridge.protocol import (
    _MAX_HEADS,
    BoundedHttpToolsProtocol,
    ConnectionLimits,
    TlsAccept,
    _CrowdLog,
    _Heads,
    _json_answer,
    bounded_protocol,
    tls_handshake_class,
)
from bridge.service import _Listener, event_loop_class

from support import RecordingTransport

T = TypeVar("T")

LIMITS = ConnectionLimits(
    max_connections=64, max_header_bytes=8192, header_timeout=5.0, body_timeout=5.0
)


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"
    await receive()
    body = b'{"hello":"%s"}' % scope["path"].encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def listening(config: uvicorn.Config, sock: socket.socket) -> AsyncIterator[None]:
    """Serves ``config`` on ``sock`` as the bridge does (its _Listener) while the block runs."""
    server = _Listener(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn's Server has a flag, no event
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await serving


def run_on_bridge_loop(uvloop: bool, main: Coroutine[Any, Any, T], handshake_timeout: float) -> T:
    """Runs ``main`` on the bridge's event loop, uvloop's or asyncio's."""
    loop_class = event_loop_class(uvloop=uvloop)
    with asyncio.Runner(loop_factory=lambda: loop_class(handshake_timeout)) as runner:
        return runner.run(main)


async def exchange(data: bytes, answers: int) -> RecordingTransport:
    config = uvicorn.Config(app=hello, lifespan="off", log_level="warning")
    config.load()
    protocol_class = bounded_protocol(LIMITS, Metrics())
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(data)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if sum(w.count(b"HTTP/1.1 ") for w in transport.writes) >= answers and (not protocol.tasks):
            break
    protocol.connection_lost(None)
    return transport


def test_an_answer_leaves_in_one_write_with_its_head_first() -> None:
    transport = asyncio.run(exchange(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 1))
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ncontent-length: 14\r\n" in head + b"\r\n"
    assert body == b'{"hello":"/a"}'


def test_a_head_request_still_gets_its_head_though_no_body_is_written() -> None:
    transport = asyncio.run(exchange(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n", 1))
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\n")


def test_connection_close_writes_the_whole_answer_before_closing() -> None:
    transport = asyncio.run(exchange(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 1))
    assert transport.closed
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b'{"hello":"/a"}')


def test_pipelined_requests_are_answered_in_order_one_write_each() -> None:
    requests = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n"
    transport = asyncio.run(exchange(requests, 2))
    assert len(transport.writes) == 2
    assert transport.writes[0].endswith(b'{"hello":"/first"}')
    assert transport.writes[1].endswith(b'{"hello":"/second"}')


def test_crowded_out_connections_are_logged_once_per_interval_with_how_many_were_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    crowd = _CrowdLog(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="bridge.protocol"):
        crowd.closed("192.0.2.1:5000", "over 3 connections open at once")
        for _ in range(41):
            now[0] += 0.1
            crowd.closed("192.0.2.1:5001", "over 3 connections open at once")
        now[0] = 110.5
        crowd.closed("192.0.2.9:6000", "over 3 connections open at once")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "closed the connection from 192.0.2.1:5000: over 3 connections open at once",
        "closed the connection from 192.0.2.9:6000: over 3 connections open at once "
        "(41 more since the last line)",
    ]


def test_the_connection_cap_and_the_eviction_are_each_listeners_own() -> None:
    """One protocol class serves every hook listener (TCP and the Unix socket): a listener
    over its cap makes room among its own connections, never another listener's."""
    limits = ConnectionLimits(
        max_connections=2, max_header_bytes=8192, header_timeout=5.0, body_timeout=5.0
    )

    async def scenario() -> tuple[list[RecordingTransport], list[RecordingTransport]]:
        config = uvicorn.Config(app=hello, lifespan="off", log_level="warning")
        config.load()
        protocol_class = bounded_protocol(limits, Metrics())
        tcp, unix = ServerState(), ServerState()

        def connect(state: ServerState) -> RecordingTransport:
            protocol = protocol_class(config=config, server_state=state, app_state={})
            transport = RecordingTransport()
            protocol.connection_made(transport)
            return transport

        on_unix = [connect(unix) for _ in range(2)]  # full, and idle
        on_tcp = [connect(tcp) for _ in range(3)]  # the third is over the TCP listener's cap
        return on_tcp, on_unix

    on_tcp, on_unix = asyncio.run(scenario())
    assert [t.closed for t in on_unix] == [False, False]
    assert [t.closed for t in on_tcp] == [True, False, False]  # its own least active made room
    assert on_tcp[0].writes[0].startswith(b"HTTP/1.1 503 ")


DATE = [(b"date", b"Wed, 02 Dec 2026 12:00:00 GMT")]
STORED = b'{"status":"stored","event_id":"%s"}'


@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize("defaults", [[], DATE, [*DATE, (b"server", b"x")]])
def test_answers_from_heads_made_once_are_byte_for_byte_those_built_whole(
    close: bool, defaults: list[tuple[bytes, bytes]]
) -> None:
    heads = _Heads()
    answers: list[Answer] = [
        (200, STORED % b"56a0b94c-e3e1-40c4-b963-cd9a85011347", []),
        # Same status and length, another body: the head is reused, the body is this one.
        (200, STORED % b"0f3c1d2e-5b6a-4c7d-8e9f-a0b1c2d3e4f5", []),
        (400, b'{"error":"malformed"}', []),
        (503, b'{"error":"sink_unavailable"}', [(b"retry-after", b"5")]),
        (200, b"{}", []),
    ]
    for answer in answers * 2:
        assert heads.answer(answer, close=close, default_headers=defaults) == _json_answer(
            answer, close=close, default_headers=defaults
        )


def test_an_answer_carries_the_date_uvicorn_gives_it_now() -> None:
    heads = _Heads()
    answer: Answer = (200, STORED % b"56a0b94c-e3e1-40c4-b963-cd9a85011347", [])
    defaults = list(DATE)
    assert b"12:00:00 GMT" in heads.answer(answer, close=False, default_headers=defaults)
    later = [(b"date", b"Wed, 02 Dec 2026 12:00:01 GMT")]
    assert b"12:00:01 GMT" in heads.answer(answer, close=False, default_headers=later)
    defaults[0] = (b"date", b"Wed, 02 Dec 2026 12:00:02 GMT")  # changed in place
    assert b"12:00:02 GMT" in heads.answer(answer, close=False, default_headers=defaults)


def test_heads_kept_for_answers_of_many_lengths_are_bounded() -> None:
    heads = _Heads()
    for length in range(3 * _MAX_HEADS):
        answer: Answer = (400, b"x" * length, [])
        assert heads.answer(answer, close=False, default_headers=DATE) == _json_answer(
            answer, close=False, default_headers=DATE
        )
        assert len(heads._made) <= _MAX_HEADS


# -- a TLS listener, on each loop the bridge may run on


@pytest.mark.parametrize("uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_on_tls_connections_still_in_their_handshake_count_against_the_cap(
    uvloop: bool, tmp_path: Path
) -> None:
    """Clients that connect and never handshake fill no worker: past the cap the oldest still
    in its handshake is closed, and a real client's handshake and request go through."""
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    limits = ConnectionLimits(
        max_connections=3, max_header_bytes=8192, header_timeout=30.0, body_timeout=30.0
    )
    metrics = Metrics()

    async def scenario() -> tuple[list[bool], bytes]:
        config = uvicorn.Config(
            app=hello,
            lifespan="off",
            log_config=None,
            http=bounded_protocol(limits, metrics),
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
        )
        sock = socket.create_server(("127.0.0.1", 0))
        async with listening(config, sock):
            port = sock.getsockname()[1]
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(6)]
            await asyncio.sleep(0.5)
            # The first three were closed for the last three: each reads its end of stream now.
            closed = []
            for reader, _ in silent:
                try:
                    closed.append(await asyncio.wait_for(reader.read(1), 0.5) == b"")
                except TimeoutError:
                    closed.append(False)
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            writer.write(b"GET /hook HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            for _, silent_writer in silent:
                silent_writer.close()
        return closed, answer

    closed, answer = run_on_bridge_loop(uvloop, scenario(), 30.0)
    assert closed == [True, True, True, False, False, False]
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'{"hello":"/hook"}')
    # Three for the silent ones, one more for the real client's own handshake.
    evicted = metrics.connections_closed.labels("evicted")._value.get()
    assert evicted == 4


def test_on_tls_a_connection_whose_handshake_just_ended_is_not_taken_for_one_still_in_it(
    tmp_path: Path,
) -> None:
    """The loop tells of a handshake's end through a future whose callbacks run a turn later;
    a connection accepted in that turn must make room among those still in their handshake."""
    limits = ConnectionLimits(
        max_connections=2, max_header_bytes=8192, header_timeout=5.0, body_timeout=5.0
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_context)

    async def scenario() -> list[bool]:
        config = uvicorn.Config(app=hello, lifespan="off", log_level="warning")
        config.load()
        protocol_class = bounded_protocol(limits, Metrics())
        state = ServerState()
        made: list[BoundedHttpToolsProtocol] = []

        def factory() -> BoundedHttpToolsProtocol:
            made.append(protocol_class(config=config, server_state=state, app_state={}))
            return made[-1]

        accept = TlsAccept(
            asyncio.get_running_loop(),
            factory,
            server_context,
            handshake_timeout=5.0,
            handshake_class=tls_handshake_class(asyncio.sslproto.SSLProtocol),
        )
        handshakes = [accept(), accept()]
        tcp = [RecordingTransport(), RecordingTransport(), RecordingTransport()]
        made[0].connection_made(RecordingTransport())  # the first one's handshake is done
        handshakes.append(accept())  # one established, two in their handshake: over the cap
        for handshake, transport in zip(handshakes, tcp, strict=True):
            handshake.connection_made(transport)  # the loop's own step, once accepted
        closed = [transport.closed for transport in tcp]
        for handshake in handshakes:
            handshake.connection_lost(None)
        return closed

    assert asyncio.run(scenario()) == [False, True, False]


def _serve_and_connect(
    uvloop: bool, listener: socket.socket, connect: Callable[[], socket.socket], count: int
) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
    """Serves ``hello`` with the bridge's connection class on ``listener`` and makes ``count``
    connections from a thread, one request each. Returns each request's (scope client, scope
    server) and each client socket's (own address, peer address)."""
    scopes: list[tuple[Any, Any]] = []
    seen: list[tuple[Any, Any]] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append((scope["client"], scope["server"]))
        await hello(scope, receive, send)

    def clients() -> None:
        for _ in range(count):
            with connect() as client:
                seen.append((client.getsockname(), client.getpeername()))
                client.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while client.recv(4096):
                    pass

    async def scenario() -> None:
        config = uvicorn.Config(
            app=recording, lifespan="off", log_config=None, http=bounded_protocol(LIMITS, Metrics())
        )
        async with listening(config, listener):
            await asyncio.to_thread(clients)

    run_on_bridge_loop(uvloop, scenario(), 5.0)
    return scopes, seen


@pytest.mark.parametrize("uvloop", [True, False], ids=["uvloop", "asyncio"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6", "unix"])
def test_the_scope_names_both_ends_of_the_connection_as_the_client_sees_them(
    uvloop: bool, family: str, tmp_path: Path
) -> None:
    """The connection class reads both addresses off the transport instead of uvicorn's way
    (a socket object and two more system calls per connection): the ASGI scope still carries
    what uvicorn gives, the client's (host, port) and the listener's, or a Unix socket's path."""
    if family == "unix":
        path = str(tmp_path / "hooks.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)

        def connect() -> socket.socket:
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)
            return client

    else:
        if family == "ipv6" and not socket.has_ipv6:
            pytest.skip("no IPv6 on this machine")
        host = "::1" if family == "ipv6" else "127.0.0.1"
        listener = socket.create_server(
            (host, 0), family=socket.AF_INET6 if family == "ipv6" else socket.AF_INET
        )
        port = listener.getsockname()[1]

        def connect() -> socket.socket:
            return socket.create_connection((host, port))

    listener.listen()
    scopes, seen = _serve_and_connect(uvloop, listener, connect, 3)
    if family == "unix":
        assert scopes == [(None, (path, None))] * 3
    else:
        assert scopes == [((own[0], own[1]), (peer[0], peer[1])) for own, peer in seen]


@pytest.mark.parametrize("uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_new_connections_do_not_each_ask_asyncio_for_the_running_loop(
    uvloop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 each asyncio.get_running_loop() (uvicorn's get_event_loop() calls it) is a
    getpid() system call: the connection class asks once, not once per connection."""
    asked: list[str] = []
    for name in ("get_running_loop", "get_event_loop"):
        original = getattr(asyncio, name)

        def counting(*args: Any, _name: str = name, _original: Any = original) -> Any:
            asked.append(_name)
            return _original(*args)

        monkeypatch.setattr(asyncio, name, counting)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    asked_before = len(asked)
    scopes, _ = _serve_and_connect(
        uvloop, listener, lambda: socket.create_connection(("127.0.0.1", port)), 20
    )
    assert len(scopes) == 20
    # The first connection asks (and uvicorn's start-up once): not each of the 20 (21 before).
    assert len(asked) - asked_before <= 2, asked


def test_a_connection_is_set_up_as_uvicorns_own_connection_made_does() -> None:
    """The connection class does uvicorn's connection_made itself (see _connection_made): the
    same attributes with the same values, so a uvicorn upgrade that adds one fails here."""

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], bool]:
        config = uvicorn.Config(app=hello, lifespan="off", log_level="warning")
        config.load()
        ours = bounded_protocol(LIMITS, Metrics())(
            config=config, server_state=ServerState(), app_state={}
        )
        theirs = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={})

        def set_up(
            protocol: HttpToolsProtocol, connection_made: Callable[..., None]
        ) -> dict[str, Any]:
            before = dict(vars(protocol))
            connection_made(protocol, RecordingTransport())
            return {
                k: v for k, v in vars(protocol).items() if k not in before or before[k] is not v
            }

        mine = set_up(ours, BoundedHttpToolsProtocol._connection_made)
        uvicorns = set_up(theirs, HttpToolsProtocol.connection_made)
        return mine, uvicorns, ours in ours.connections

    mine, uvicorns, counted = asyncio.run(scenario())
    assert mine.keys() == uvicorns.keys()
    assert {k: v for k, v in mine.items() if k not in ("transport", "flow")} == {
        k: v for k, v in uvicorns.items() if k not in ("transport", "flow")
    }
    assert type(mine["flow"]) is type(uvicorns["flow"])
    assert counted
