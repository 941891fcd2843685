"""Hook POSTs answered by the bridge's connection class itself (bridge.protocol.HookCycle).

The connection is driven in-process on a recording transport, with the real app, normalizer
and pipeline in front of an in-memory sink whose acknowledgements the test releases: so each
test sees exactly what reaches the socket, and when, relative to the event becoming durable.
The same routes through a real bridge process are covered by test_http.py, test_edge.py and
the broker tests.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import weakref
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from bridge.app import HookEndpoints, TokenCheck, create_app
from bridge.event import EncodedEvent, LoginEvent
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.protocol import ConnectionLimits, HookCycle, bounded_protocol
from bridge.sinks.memory import MemorySink

from support import RecordingTransport

LIMITS = ConnectionLimits(
    max_connections=64, max_header_bytes=8192, header_timeout=5.0, body_timeout=5.0
)
QUERY = b"ip=198.51.100.7&login_method=password&protocol=FTP&status=0"
BODY = b'{"username":"bob","id":7}'
TOKEN = b"s3cret"


class HeldSink(MemorySink):
    """Acknowledges an event only when the test says so (``release``)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[LoginEvent, asyncio.Future[None]]] = []

    def submit(self, encoded: EncodedEvent) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held.append((encoded.event, future))
        return future

    def release(self) -> None:
        for event, future in self.held:
            self.events.append(event)
            future.set_result(None)
        self.held.clear()


def request(
    body: bytes = BODY,
    *,
    token: bytes = TOKEN,
    extra: bytes = b"",
    length: int | None = None,
) -> bytes:
    declared = len(body) if length is None else length
    return (
        b"POST /v1/hooks/sftpgo?" + QUERY + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + token + b"\r\n"
        b"Content-Length: %d\r\n" % declared + extra + b"\r\n" + body
    )


class Connection:
    def __init__(
        self,
        sink: MemorySink,
        *,
        max_body: int = 4096,
        max_in_flight: int = 4096,
        beside: Connection | None = None,
    ) -> None:
        """A connection to its own app, or with ``beside``, to that connection's app."""
        if beside is None:
            metrics = Metrics()
            app = create_app(
                pipeline=Pipeline(sink=sink, metrics=metrics, publish_timeout=5),
                normalizer=Normalizer(),
                metrics=metrics,
                tokens=TokenCheck([TOKEN.decode()], header="Authorization"),
                max_body_bytes=max_body,
                max_in_flight=max_in_flight,
            )
        else:
            app, metrics = beside.hooks, beside.metrics
        config = uvicorn.Config(app=app, lifespan="off", log_level="warning")
        config.load()
        self.hooks: HookEndpoints = app
        self.metrics: Metrics = metrics
        protocol_class = bounded_protocol(LIMITS, metrics, hooks=app)
        self.protocol: HttpToolsProtocol = protocol_class(
            config=config, server_state=ServerState(), app_state={}
        )
        self.transport = RecordingTransport()
        self.protocol.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def answers(self) -> list[bytes]:
        return [w for w in self.transport.writes if w.startswith(b"HTTP/1.1 ")]


async def held_connection(*, max_body: int = 4096) -> tuple[HeldSink, Connection]:
    sink = HeldSink()
    await sink.start()
    return sink, Connection(sink, max_body=max_body)


def status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_hook_post_is_answered_once_its_event_is_durable_in_one_write_without_a_task() -> None:
    async def scenario() -> None:
        sink, connection = await held_connection()
        connection.send(request())
        await settle()
        assert isinstance(connection.protocol.cycle, HookCycle)
        assert not connection.protocol.tasks  # no ASGI task per request
        assert connection.transport.writes == []  # nothing answered before the event is durable
        sink.release()
        await settle()
        [answer] = connection.transport.writes
        status, body = status_and_body(answer)
        assert status == 200
        assert body == {"status": "stored", "event_id": sink.events[0].event_id}
        assert b"\r\nx-login-audit-bridge: " in answer
        assert not connection.transport.closed  # keep-alive

    asyncio.run(scenario())


def test_pipelined_hook_posts_are_answered_in_order_each_after_its_own_event() -> None:
    async def scenario() -> None:
        sink, connection = await held_connection()
        connection.send(request() + request(b"{nope") + request())
        await settle()
        assert len(sink.held) == 1  # the second waits for the first answer, as uvicorn does
        sink.release()
        await settle()
        assert len(sink.held) == 1  # the bad one was answered at once; the third is held
        sink.release()
        await settle()
        answers = [status_and_body(a) for a in connection.answers()]
        assert [status for status, _ in answers] == [200, 400, 200]
        assert [answers[0][1]["event_id"], answers[2][1]["event_id"]] == [
            e.event_id for e in sink.events
        ]

    asyncio.run(scenario())


def test_100_continue_is_sent_only_once_the_token_is_accepted() -> None:
    async def scenario() -> None:
        sink = HeldSink()
        await sink.start()
        accepted, refused = Connection(sink), Connection(sink)
        expect = b"Expect: 100-continue\r\n"
        accepted.send(request(b"", extra=expect, length=len(BODY)))
        refused.send(request(b"", token=b"wrong", extra=expect, length=len(BODY)))
        await settle()
        assert accepted.transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        [answer] = refused.transport.writes
        assert status_and_body(answer)[0] == 401
        accepted.send(BODY)
        await settle()
        sink.release()
        await settle()
        assert status_and_body(accepted.transport.writes[-1])[0] == 200
        assert len(sink.events) == 1

    asyncio.run(scenario())


def test_a_body_that_grows_past_the_limit_is_refused_and_stores_nothing() -> None:
    async def scenario() -> None:
        sink, connection = await held_connection(max_body=64)
        chunked = (
            b"POST /v1/hooks/sftpgo?" + QUERY + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer " + TOKEN + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        connection.send(chunked + b"40\r\n" + b" " * 64 + b"\r\n")
        await settle()
        assert connection.transport.writes == []  # 64 bytes: still within the limit
        connection.send(b"1\r\n \r\n")
        await settle()
        [answer] = connection.answers()
        assert status_and_body(answer) == (
            413,
            {"error": "too_large", "message": "body is over the 64 byte limit", "final": True},
        )
        assert sink.held == [] and sink.events == []

    asyncio.run(scenario())


def test_an_event_accepted_before_the_client_went_away_is_still_made_durable() -> None:
    async def scenario() -> None:
        sink, connection = await held_connection()
        connection.send(request())
        await settle()
        connection.protocol.connection_lost(None)
        connection.transport.writes.clear()
        sink.release()
        await settle()
        assert len(sink.events) == 1
        assert connection.transport.writes == []  # nothing written to a closed connection

    asyncio.run(scenario())


def test_a_client_gone_before_its_whole_body_leaves_no_event() -> None:
    async def scenario() -> None:
        sink, connection = await held_connection()
        connection.send(request()[:-5])
        await settle()
        connection.protocol.connection_lost(None)
        await settle()
        assert sink.held == [] and sink.events == []
        assert connection.answers() == []

    asyncio.run(scenario())


def test_an_answered_hook_request_is_freed_without_the_garbage_collector() -> None:
    async def scenario() -> None:
        sink = MemorySink()
        await sink.start()
        connection = Connection(sink)
        connection.send(request())
        for _ in range(50):
            await asyncio.sleep(0)
            if connection.answers():
                break
        first = weakref.ref(connection.protocol.cycle)
        connection.send(request())  # replaces the connection's cycle
        assert first() is None  # freed by reference counting: no cycle left for the collector

    gc.disable()
    try:
        asyncio.run(scenario())
    finally:
        gc.enable()


def test_a_closed_connection_is_freed_without_the_garbage_collector() -> None:
    # Every hook connects anew for each login (SFTPGo's HTTP hook closes its connections after
    # each call): a connection left in a reference cycle is garbage the collector has to find,
    # one per event (about 20 objects each, and the collections they cost).
    async def scenario() -> weakref.ref[HttpToolsProtocol]:
        sink = MemorySink()
        await sink.start()
        connection = Connection(sink)
        connection.send(request(extra=b"Connection: close\r\n"))
        for _ in range(50):
            await asyncio.sleep(0)
            if connection.transport.closed:
                break
        assert connection.transport.closed
        [answer] = connection.answers()
        assert status_and_body(answer)[0] == 200
        connection.protocol.connection_lost(None)
        return weakref.ref(connection.protocol)

    gc.disable()
    try:
        gone = asyncio.run(scenario())
        assert gone() is None  # freed by reference counting as the connection went
    finally:
        gc.enable()


def test_a_client_not_reading_its_answers_has_its_next_request_taken_once_it_does() -> None:
    async def scenario() -> None:
        sink, connection = await held_connection()
        connection.send(request() + request())
        await settle()
        connection.protocol.pause_writing()  # the socket's send buffer is full
        sink.release()
        await settle()
        assert len(connection.answers()) == 1
        assert sink.held == []  # the pipelined request waits, as its answer could not be sent
        connection.protocol.resume_writing()
        await settle()
        assert len(sink.held) == 1
        sink.release()
        await settle()
        assert [status_and_body(a)[0] for a in connection.answers()] == [200, 200]

    asyncio.run(scenario())


def test_an_answer_due_on_a_connection_closed_meanwhile_is_not_written() -> None:
    # A pipelined request's header deadline, or the server's shutdown, may close the connection
    # while an earlier request's event is still on its way: its answer has nowhere to go.
    async def scenario() -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: errors.append(context)
        )
        sink, connection = await held_connection()
        connection.send(request())
        await settle()
        connection.transport.close()
        sink.release()
        await settle()
        assert len(sink.events) == 1
        assert connection.answers() == []
        return errors

    assert asyncio.run(scenario()) == []


def test_an_unexpected_failure_of_the_event_is_a_500_and_frees_its_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        sink, connection = await held_connection()
        connection.send(request())
        await settle()
        [(_, future)] = sink.held
        sink.held.clear()
        future.set_exception(RuntimeError("a bug in a sink"))  # not a BridgeError
        await settle()
        [answer] = connection.answers()
        status, body = status_and_body(answer)
        assert (status, body["error"]) == (500, "internal")
        assert connection.hooks._in_flight == 0
        connection.send(request())  # the connection and the bridge go on
        await settle()
        sink.release()
        await settle()
        assert [status_and_body(a)[0] for a in connection.answers()] == [500, 200]

    with caplog.at_level(logging.ERROR, logger="bridge.app"):
        asyncio.run(scenario())
    assert "the pipeline failed unexpectedly" in caplog.text


async def held_connections(count: int, **kwargs: Any) -> tuple[HeldSink, list[Connection]]:
    """``count`` connections to one app, as many clients of one worker, before a held sink."""
    sink = HeldSink()
    await sink.start()
    first = Connection(sink, **kwargs)
    return sink, [first] + [Connection(sink, beside=first) for _ in range(count - 1)]


def statuses(clients: list[Connection]) -> list[list[int]]:
    return [[status_and_body(a)[0] for a in client.answers()] for client in clients]


def test_the_requests_complete_in_one_turn_are_all_normalized_before_any_is_encoded() -> None:
    # The point of taking a turn's requests together: each step's code and tables stay warm
    # across the requests (issue 11). Done one by one, the steps would alternate.
    async def scenario() -> None:
        sink, clients = await held_connections(3)
        hooks = clients[0].hooks
        steps: list[str] = []
        normalizer, pipeline = hooks._normalizer, hooks._pipeline
        read, prepare = normalizer.sftpgo_from_http, pipeline.prepare

        def recording_read(*args: Any, **kwargs: Any) -> LoginEvent:
            steps.append("normalize")
            return read(*args, **kwargs)

        def recording_prepare(event: LoginEvent) -> EncodedEvent:
            steps.append("encode")
            return prepare(event)

        normalizer.sftpgo_from_http = recording_read  # type: ignore[method-assign]
        pipeline.prepare = recording_prepare  # type: ignore[method-assign]
        for client in clients:
            client.send(request())
        assert steps == []  # taken at the end of the turn, not as each body completes
        await settle()
        assert steps == ["normalize"] * 3 + ["encode"] * 3
        sink.release()
        await settle()
        assert statuses(clients) == [[200], [200], [200]]
        assert len(sink.events) == 3

    asyncio.run(scenario())


def test_a_request_refused_or_failing_beside_others_in_its_turn_fails_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        sink, clients = await held_connections(4)
        hooks = clients[0].hooks
        pipeline = hooks._pipeline
        prepare = pipeline.prepare

        def failing_for_carol(event: LoginEvent) -> EncodedEvent:
            if event.user_name == "carol":
                raise RuntimeError("a bug in encoding")
            return prepare(event)

        pipeline.prepare = failing_for_carol  # type: ignore[method-assign]
        clients[0].send(request())
        clients[1].send(request(b"{nope"))  # malformed: a 400
        clients[2].send(request(b'{"username":"carol","id":8}'))  # a bug: a 500
        clients[3].send(request(b'{"username":"dave","id":9}'))
        await settle()
        assert [event.user_name for event, _ in sink.held] == ["bob", "dave"]
        sink.release()
        await settle()
        assert statuses(clients) == [[200], [400], [500], [200]]
        assert hooks._in_flight == 0

    with caplog.at_level(logging.ERROR, logger="bridge.app"):
        asyncio.run(scenario())
    assert "a hook request failed unexpectedly" in caplog.text


def test_the_in_flight_limit_counts_the_requests_taken_in_the_same_turn() -> None:
    async def scenario() -> None:
        sink, clients = await held_connections(3, max_in_flight=2)
        for client in clients:
            client.send(request())
        await settle()
        assert len(sink.held) == 2
        assert statuses(clients) == [[], [], [503]]  # refused at once, not held
        sink.release()
        await settle()
        assert statuses(clients) == [[200], [200], [503]]

    asyncio.run(scenario())


class BrokenTransport(RecordingTransport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise OSError("a transport that cannot write")


def test_an_answer_that_cannot_be_written_does_not_keep_the_others_of_its_turn_from_theirs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        sink, clients = await held_connections(3)
        broken = BrokenTransport()
        clients[0].protocol.connection_made(broken)
        for client in clients:
            client.send(request(b"{nope"))  # refused in the turn's own callback
        await settle()
        assert statuses(clients[1:]) == [[400], [400]]
        for client in clients[1:]:  # and the worker goes on
            client.send(request())
        await settle()
        sink.release()
        await settle()
        assert statuses(clients[1:]) == [[400, 200], [400, 200]]

    with caplog.at_level(logging.ERROR, logger="bridge.app"):
        asyncio.run(scenario())
    assert "answer could not be given" in caplog.text
