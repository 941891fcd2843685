"""uvicorn's httptools connection with the bounds it lacks: a header size cap and read deadlines.

On httptools (h11 costs about 40 % more CPU per request), uvicorn caps neither the size of a
request's headers nor the time a client may take to send them or the body: one connection could
grow the process by the size of the headers it streams, and a request sent a byte at a time held
its connection for as long as the client liked. The bounds live here, under the ASGI app,
because the app only sees a request once its headers are complete, and they apply to every
client, authenticated or not: no token has been read yet when they are needed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from starlette.types import Scope
from uvicorn._types import ASGISendEvent
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl, service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string, is_ssl
from uvicorn.server import ServerState

from bridge.app import (
    IDENTITY,
    Answer,
    Headers,
    HookEndpoints,
    Normalize,
    retry_after,
)
from bridge.loops import RunningLoop
from bridge.metrics import Metrics
from bridge.tls import RenewableServerContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may take from the bridge."""

    max_connections: int  # open at once on one listener; past it, refused before reading
    max_header_bytes: int  # the request line and the header block, together
    header_timeout: float  # seconds from connecting (or a request's first byte) to its last header
    body_timeout: float  # seconds from the last header to the body's last byte


def bounded_protocol(
    limits: ConnectionLimits, metrics: Metrics, hooks: HookEndpoints | None = None
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to give ``uvicorn.Config(http=...)``, bound to these limits.

    With ``hooks``, the hook POSTs are answered by :class:`HookCycle`, without ASGI; the app
    given to uvicorn must then be those same hooks (or wrap them).
    """

    class Protocol(BoundedHttpToolsProtocol):
        pass

    Protocol.limits = limits
    Protocol.running_loop = RunningLoop()
    Protocol.metrics = metrics
    Protocol.hooks = hooks
    return Protocol


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections whose client sends too much or too slowly.

    Headers: refused with 431 once the bytes received for a request's line and headers pass
    ``max_header_bytes`` (httptools keeps a header it is still reading inside the parser, out of
    sight, so what has been received bounds it), and with 408 if they are not complete within
    ``header_timeout``. Body: 408 if it is not complete within ``body_timeout`` of the headers.
    A deadline is put off while uvicorn itself has paused reading (a pipelined request waiting
    for the one before it): then the client is not the one being slow.
    """

    limits: ClassVar[ConnectionLimits]
    metrics: ClassVar[Metrics]
    hooks: ClassVar[HookEndpoints | None] = None

    # uvicorn's protocol factory passes no loop: the class finds it once, not per connection.
    running_loop: ClassVar[RunningLoop]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("_loop") is None:
            kwargs["_loop"] = self.running_loop()
        super().__init__(*args, **kwargs)
        # Per listener, as uvicorn counts connections (one protocol class may serve several).
        self.by_activity = _ACTIVITY.setdefault(self.server_state, OrderedDict())
        self._in_headers = False
        self._received = 0  # bytes received since the current request began, while in its headers
        # One timer per connection, re-armed only when it fires early (see _set_deadline).
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # loop time; None: no deadline
        self._deadline_seconds = 0.0
        # The function, not a bound method: a method held here made every connection a reference
        # cycle (protocol, transport, flow control, cycle) left to the garbage collector.
        self._expire: Callable[[BoundedHttpToolsProtocol], None] = _no_deadline
        self._refused = False
        # Over TLS (TlsAccept): stops counting this connection as one in its handshake.
        self.handshake_done: Callable[[], object] | None = None

    # -- the transport

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.handshake_done is not None:
            self.handshake_done()
            self.handshake_done = None
        self._connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            # Each open connection holds memory (about 6 KiB, more with a request in it) and
            # nothing else bounds how many a client storm or an attacker opens. Past the cap,
            # the least active connection with no request being served makes room: connections
            # opened and left idle (or sending headers slowly) cannot lock real hooks out, as
            # every hook sends its request at once. With none, the new one is refused unread.
            idle = self._least_active_idle()
            if idle is None:
                self._refuse(
                    "too_many_connections",
                    503,
                    f"over {self.limits.max_connections} connections open at once",
                    reason="overloaded",
                )
                return
            # Between requests of a kept-alive connection an answer would be taken for the
            # next request's: that one is only closed, as HTTP lets an idle connection be.
            between = idle.cycle is not None and not idle._in_headers
            idle._refuse(
                "evicted",
                None if between else 503,
                f"closed to make room: over {self.limits.max_connections} connections open, "
                "this one the least active without a request being served",
                reason="overloaded",
            )
        self.by_activity[self] = None
        self._set_deadline(self.limits.header_timeout, BoundedHttpToolsProtocol._headers_too_slow)

    def _connection_made(self, transport: asyncio.Transport) -> None:
        """uvicorn's ``connection_made``, with the addresses the transport already holds.

        uvicorn asks the transport for its socket and then the socket for both addresses: on
        uvloop that made a ``socket.socket`` per connection and four ``getsockname()`` and one
        ``getpeername()`` calls more than the accept's own. Both loops' TCP transports keep
        ``peername`` and ``sockname`` from the accept. With the loop asked once (RunningLoop),
        a worker's CPU per event with a new connection each, as the hooks connect, fell to 0.95x
        (bench/ingest.py --baseline). tests/test_protocol.py checks that this sets up a
        connection as uvicorn's does.
        """
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = local_address(transport.get_extra_info("sockname"))
        self.client = remote_address(transport.get_extra_info("peername"))
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.by_activity.pop(self, None)
        super().connection_lost(exc)

    def _least_active_idle(self) -> BoundedHttpToolsProtocol | None:
        """The connection to close for a new one: the least active with no request being
        served (none sent yet, only part of its headers, or its last answer written)."""
        order = self.by_activity
        # A bounded look, so that a storm against a full house of requests in flight costs a
        # few steps per connection; the busy ones looked at go to the back.
        for _ in range(min(len(order), _EVICTION_LOOKS)):
            oldest = next(iter(order))
            if oldest.cycle is None or oldest.cycle.response_complete:
                return oldest
            order.move_to_end(oldest)
        return None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_headers and not self._refused:
            self._received += len(data)
            if self._received > self.limits.max_header_bytes:
                self._headers_too_large()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers what httptools cannot parse in plain text; every answer here is JSON.
        status = 400 if self._may_answer() else None
        self._refuse("invalid_http", status, "not a valid HTTP/1.1 request", reason="malformed")

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's own warning tells the operator to install a websocket library: wrong here.
        log.debug("ignored an Upgrade header: the bridge serves no websockets")

    # -- the parser's callbacks

    def on_message_begin(self) -> None:
        if self._refused:
            return
        self.by_activity.move_to_end(self)  # in it from connection_made until refused or lost
        super().on_message_begin()
        self._in_headers = True
        self._received = 0
        self._set_deadline(self.limits.header_timeout, BoundedHttpToolsProtocol._headers_too_slow)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_headers = False
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._headers_too_large()
            return
        self._set_deadline(self.limits.body_timeout, BoundedHttpToolsProtocol._body_too_slow)
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before and type(self.cycle) is RequestResponseCycle:
            # uvicorn builds the cycle itself; its task has not run yet, so the class can still
            # change. Same layout, one method more: see OneWriteCycle.
            self.cycle.__class__ = OneWriteCycle

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn starts each request here, pipelined ones included, once its headers are in.
        hooks = self.hooks
        if hooks is None or app is service_unavailable:
            super()._start_asgi_task(cycle, app)
            return
        normalize = hooks.route(cast("Scope", cycle.scope))
        if normalize is None:
            super()._start_asgi_task(cycle, app)
            return
        cycle.__class__ = HookCycle
        assert isinstance(cycle, HookCycle)  # noqa: S101 - for the type checker
        cycle.begin(hooks, normalize)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._clear_deadline()
        super().on_message_complete()

    # -- deadlines and refusals

    def _may_answer(self) -> bool:
        """False while the answer to an earlier (pipelined) request is still to come."""
        return self.cycle is None or self.cycle.response_complete

    def _headers_too_large(self) -> None:
        self._refuse(
            "headers_too_large",
            431 if self._may_answer() else None,
            f"request line and headers over {self.limits.max_header_bytes} bytes",
        )

    def _headers_too_slow(self) -> None:
        if not self._in_headers:  # connected, sent nothing: nothing to answer
            self._refuse("header_timeout", None, "no request within the header timeout")
            return
        self._refuse(
            "header_timeout",
            408 if self._may_answer() else None,
            f"headers not complete within {self.limits.header_timeout:g} s",
        )

    def _body_too_slow(self) -> None:
        answered = self.cycle is not None and self.cycle.response_started
        self._refuse(
            "body_timeout",
            None if answered else 408,
            f"body not complete within {self.limits.body_timeout:g} s",
        )

    def _set_deadline(
        self, seconds: float, expire: Callable[[BoundedHttpToolsProtocol], None]
    ) -> None:
        # Every request sets two deadlines: a timer each (and a cancel) was 3 % of a worker's
        # CPU under load. Deadlines only move later, so the armed timer is kept when it fires
        # first; then it checks the deadline and is armed again for what is left.
        at = self.loop.time() + seconds
        self._deadline = at
        self._deadline_seconds = seconds
        self._expire = expire
        if self._timer is None or self._timer.when() > at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(at, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        at = self._deadline
        if at is None:
            return
        if self.loop.time() < at:
            self._timer = self.loop.call_at(at, self._check_deadline)
        elif self.flow.read_paused:
            # uvicorn holds the reading (a pipelined request waits), not the client
            self._set_deadline(self._deadline_seconds, self._expire)
        else:
            self._deadline = None
            self._expire(self)

    def _clear_deadline(self) -> None:
        self._deadline = None

    def _stop_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(
        self, cause: str, status: int | None, message: str, *, reason: str | None = None
    ) -> None:
        """Answers ``status`` (None: nothing) with a JSON error and closes the connection."""
        self._refused = True
        self._stop_timer()
        self.by_activity.pop(self, None)
        self.metrics.connections_closed.labels(cause).inc()
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a Unix socket client"
        if cause in _CROWDED:
            _crowd_log.closed(peer, message)
        else:
            log.warning("closed the connection from %s: %s", peer, message)
        if status is not None and not self.transport.is_closing():
            # "final": false: what is refused here is how the request was sent, never its body,
            # so a hook keeps the event (its spool is taken in without HTTP) instead of
            # setting it aside as refused.
            error = {"error": reason or cause, "message": message, "final": False}
            body = json.dumps(error).encode()
            self.transport.write(_json_answer((status, body, retry_after(status)), close=True))
        self.transport.close()


def remote_address(peername: object) -> tuple[str, int] | None:
    """The client's (host, port) from a transport's ``peername``, as uvicorn gives it in the
    ASGI scope; None over a Unix socket."""
    if isinstance(peername, (tuple, list)) and len(peername) >= 2:  # an IPv6 one has four
        return (str(peername[0]), int(peername[1]))
    return None


def local_address(sockname: object) -> tuple[str, int | None] | None:
    """The listener's (host, port) from a transport's ``sockname``, as uvicorn gives it in the
    ASGI scope; (path, None) for a Unix socket."""
    if isinstance(sockname, str):
        return (sockname, None)
    return remote_address(sockname)


# Each listener's connections (keyed by its uvicorn server state), the least active first.
_ACTIVITY: weakref.WeakKeyDictionary[ServerState, OrderedDict[BoundedHttpToolsProtocol, None]] = (
    weakref.WeakKeyDictionary()
)
# Causes logged through _CrowdLog: a connection storm makes thousands of them.
_CROWDED = ("too_many_connections", "evicted")
# How many of the least active connections are looked at for one to close (see connection_made).
_EVICTION_LOOKS = 64


class _CrowdLog:
    """Logs connections closed for crowding (refused or evicted) at most once per ``interval``
    seconds: in a storm of thousands a line each would cost more than the closing (the metric
    counts every one)."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._unlogged = 0

    def closed(self, peer: str, message: str) -> None:
        now = self._clock()
        if now < self._next:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last line)" if self._unlogged else ""
        log.warning("closed the connection from %s: %s%s", peer, message, more)
        self._next = now + self._interval
        self._unlogged = 0


_crowd_log = _CrowdLog()


def _json_answer(
    answer: Answer, *, close: bool, default_headers: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """A whole JSON answer, head and body, for one write().

    It carries the bridge's identity header, as every hook-route answer does: the hook and the
    extension trust only answers that carry it.
    """
    status, body, extra = answer
    return _json_head(status, len(body), extra, close, default_headers) + body


def _json_head(
    status: int,
    length: int,
    extra: Sequence[tuple[bytes, bytes]],
    close: bool,
    default_headers: Sequence[tuple[bytes, bytes]],
) -> bytes:
    head = [STATUS_LINE[status]]
    for name, value in (*default_headers, _JSON, (b"content-length", b"%d" % length), IDENTITY):
        head += (name, b": ", value, b"\r\n")
    for name, value in extra:
        head += (name, b": ", value, b"\r\n")
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head)


class _Heads:
    """The heads of answers without extra headers, each made once: nearly every answer is a
    200 whose body has the same length (its event id is a UUID), and building its head per
    answer was about 1 % of a worker's CPU (issue 11).

    uvicorn's default headers (the Date) change once a second: the heads made with the old
    ones are dropped then. The lengths of error bodies vary, so the heads kept are bounded too.
    """

    __slots__ = ("_defaults", "_made")

    def __init__(self) -> None:
        self._defaults: list[tuple[bytes, bytes]] = []
        self._made: dict[tuple[int, int, bool], bytes] = {}

    def answer(
        self, answer: Answer, *, close: bool, default_headers: Sequence[tuple[bytes, bytes]]
    ) -> bytes:
        """What :func:`_json_answer` gives, with the head made once per kind of answer."""
        status, body, extra = answer
        if extra:
            return _json_answer(answer, close=close, default_headers=default_headers)
        # By value, a copy kept: uvicorn could change its list in place.
        if self._defaults != default_headers:
            self._defaults = list(default_headers)
            self._made = {}
        key = (status, len(body), close)
        head = self._made.get(key)
        if head is None:
            if len(self._made) >= _MAX_HEADS:
                self._made.clear()
            head = self._made[key] = _json_head(status, len(body), (), close, default_headers)
        return head + body


_MAX_HEADS = 64
_heads = _Heads()
_JSON = (b"content-type", b"application/json")


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing a response's head and body in one write().

    uvicorn writes the status line and headers as soon as the app sends them, then the body: two
    system calls per answer, and on loopback each one also runs the receiving side's TCP work
    and wakes the client. The head is held until the first body write (or the close) instead.
    """

    _head: bytes | None = None

    async def send(self, message: ASGISendEvent) -> None:
        transport = self.transport
        if message["type"] == "http.response.start" and not self.response_started:
            holder = _HeadHolder(transport)
            self.transport = holder  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            self._head = holder.head
            return
        head, self._head = self._head, None
        if head is None:
            await super().send(message)
            return
        joined = _HeadFirst(transport, head)
        self.transport = joined  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
            joined.flush()  # a HEAD answer, or a body that uvicorn refused, writes nothing


class _HeadHolder:
    """Stands in for the transport while uvicorn writes a response's head: keeps it."""

    __slots__ = ("_transport", "head")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        self.head = data if self.head is None else self.head + data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _HeadFirst:
    """Stands in for the transport while uvicorn writes a body: the held head goes first."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self._transport = transport
        self._head: bytes | None = head

    def write(self, data: bytes) -> None:
        head, self._head = self._head, None
        self._transport.write(data if head is None else head + data)

    def flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HookCycle(RequestResponseCycle):
    """A hook POST answered by callbacks, without ASGI: no task, no coroutine, no messages.

    uvicorn's cycle runs the app as a task per request that awaits its body and the event's
    durability, and formats the answer from ASGI messages; for the hook routes that was about
    a fifth of the CPU per event (issue 11). Here the parser's callbacks drive the request:
    headers checked (``admit``), body gathered up to the limit, event handed to the pipeline
    (``take``, with the other requests of the same turn of the loop), and the answer written in
    one piece when the event is durable (``answer``). The connection's own bookkeeping is
    uvicorn's: this class keeps the attributes it reads (``body``, ``more_body``,
    ``disconnected``, ``response_complete``, ``keep_alive``) and calls ``on_response`` as its
    cycle does, so keep-alive, pipelining and graceful shutdown behave as for any other request.
    """

    _hooks: HookEndpoints
    _normalize: Normalize
    _scope: Scope
    _headers: Headers
    _taken: bool

    def begin(self, hooks: HookEndpoints, normalize: Normalize) -> None:
        self._hooks = hooks
        self._scope = cast("Scope", self.scope)
        self._normalize = normalize
        self._taken = False  # the body has been read, or the request answered without it
        self._headers, refused = hooks.admit(self._scope)
        if refused is not None:
            self._taken = True
            self._write_answer(refused)
            return
        # uvicorn's parser callbacks (on_body, on_message_complete, connection_lost) set the
        # cycle's message event: here that is the cue to look at the body again.
        self.message_event = _Cue(self._progress)  # type: ignore[assignment]
        self._progress()

    def _progress(self) -> None:
        if self._taken:
            return
        if self.disconnected:  # gone before the whole body came: nothing was accepted
            self._taken = True
            self._finish()
            return
        refused = self._hooks.over_limit(self._scope, len(self.body))
        if refused is not None:
            self._taken = True
            self._write_answer(refused)
            return
        if self.more_body:
            if self.waiting_for_100_continue and not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.waiting_for_100_continue = False
            # uvicorn pauses reading past 64 KiB of body until the app takes it; the body is
            # bounded by the limit checked above instead.
            self.flow.resume_reading()
            return
        self._taken = True
        body = bytes(self.body)
        self.body = bytearray()
        self._hooks.take(self._scope, self._headers, body, self._normalize, self._write_answer)

    def _write_answer(self, answer: Answer) -> None:
        # Closing: refused meanwhile (a pipelined request's header deadline), or shut down.
        if self.disconnected or self.response_complete or self.transport.is_closing():
            self._finish()
            return
        status = answer[0]
        self.response_started = True
        self.waiting_for_100_continue = False
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status,
            )
        close = not self.keep_alive
        self.transport.write(
            _heads.answer(answer, close=close, default_headers=self.default_headers)
        )
        self.response_complete = True
        if close:
            self.transport.close()
        if self.flow.write_paused:
            # The client is not reading its answers: take its next request only once it has.
            task = asyncio.ensure_future(self._respond_when_drained())
            _DRAINING.add(task)
            task.add_done_callback(_DRAINING.discard)
            return
        self.on_response()
        self._finish()

    async def _respond_when_drained(self) -> None:
        try:
            await self.flow.drain()
            self.on_response()
        finally:
            self._finish()

    def _finish(self) -> None:
        # The cycle and its connection refer to each other (on_response, the cue's callback):
        # cut those links once done, as uvicorn's run_asgi does, so that each request's objects
        # go when the next request replaces it, not at the next garbage collection.
        self.message_event = _SPENT  # type: ignore[assignment]
        self.on_response = _nothing


class _Cue:
    """Stands in for the cycle's asyncio.Event: each ``set()`` runs the callback."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def set(self) -> None:
        self._callback()


def _nothing() -> None:
    return None


def _no_deadline(_protocol: BoundedHttpToolsProtocol) -> None:
    return None


_SPENT = _Cue(_nothing)
_DRAINING: set[asyncio.Task[None]] = set()


# -- TLS: each handshake counted against the connection cap from its accept


def tls_handshake_class(base: type[Any]) -> type[Any]:
    """``base``, the loop's own TLS protocol class (uvloop's or asyncio's ``SSLProtocol``), which
    keeps its TCP transport where :class:`TlsAccept` can close it: neither exposes its own."""

    class Handshake(base):  # type: ignore[misc]
        tcp: asyncio.BaseTransport | None = None
        evicted = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.tcp = transport
            super().connection_made(transport)
            if self.evicted:  # made room for a connection accepted in the same turn of the loop
                transport.close()

        def evict(self) -> None:
            self.evicted = True
            if self.tcp is not None:
                self.tcp.close()

    return Handshake


class TlsAccept:
    """The protocol factory of a TLS listener: the loop's own TLS protocol around each accepted
    connection, counted against the listener's ``max_connections`` from the accept on.

    A loop's ``create_server(ssl=...)`` runs the handshake before the connection class sees
    the connection: a client that connected and sent nothing (or part of a ClientHello) held
    about 52 KiB until the handshake timeout, outside the cap, so a few hundred connections a
    second filled a worker past its memory limit. Here the listener is plain TCP and this
    factory wraps each connection itself, as the loop would: a connection in its handshake
    counts beside the established ones, and past the cap the oldest still in its handshake is
    closed to make room, the newest being the one a hook, which handshakes at once, is making.
    The handshake's end is counted too: a failed one (``tls_handshake_failed``: a client
    certificate refused, not TLS at all) or one over ``handshake_timeout`` would otherwise be
    seen nowhere, the loops logging them only at debug level.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext | RenewableServerContext,
        *,
        handshake_timeout: float | None,
        handshake_class: type[Any],
    ) -> None:
        self._loop = loop
        self._factory = factory
        self._renewable = context if isinstance(context, RenewableServerContext) else None
        self._context = context.context if isinstance(context, RenewableServerContext) else context
        self._timeout = handshake_timeout
        self._handshake_class = handshake_class
        self._handshaking: OrderedDict[Any, None] = OrderedDict()  # the oldest first

    def __call__(self) -> asyncio.BaseProtocol:
        app = self._factory()
        if self._renewable is not None:
            self._context, renewal = self._renewable.current()
            if renewal is not None and isinstance(app, BoundedHttpToolsProtocol):
                app.metrics.tls_certificate_renewals.labels("https", renewal).inc()
        waiter = self._loop.create_future()
        handshake = self._handshake_class(
            self._loop,
            app,
            self._context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=self._timeout,
        )
        self._handshaking[handshake] = None
        if isinstance(app, BoundedHttpToolsProtocol):
            # At once, not from the waiter's callbacks, which run a turn later: a connection
            # accepted in between must not take this one, done, for one still in its handshake.
            app.handshake_done = functools.partial(self._handshaking.pop, handshake, None)
            waiter.add_done_callback(functools.partial(self._ended, handshake, app.metrics))
            self._make_room(app)
        else:
            waiter.add_done_callback(lambda _: self._handshaking.pop(handshake, None))
        return cast(asyncio.BaseProtocol, handshake)

    def _make_room(self, app: BoundedHttpToolsProtocol) -> None:
        cap = app.limits.max_connections
        # Never the new connection itself: with every connection established and busy, it goes
        # on to the connection class's own cap, which answers it 503 over TLS.
        if len(self._handshaking) + len(app.connections) <= cap or len(self._handshaking) < 2:
            return
        oldest = next(iter(self._handshaking))
        del self._handshaking[oldest]
        oldest.evict()
        app.metrics.connections_closed.labels("evicted").inc()
        _crowd_log.closed(
            _peer(oldest.tcp),
            f"closed to make room: over {cap} connections open, this one the oldest still in "
            "its TLS handshake",
        )

    def _ended(self, handshake: Any, metrics: Metrics, waiter: asyncio.Future[None]) -> None:
        if self._handshaking.pop(handshake, _EVICTED) is _EVICTED or waiter.cancelled():
            return
        exc = waiter.exception()
        if isinstance(exc, ConnectionAbortedError):  # the loops' handshake timeout
            within = f" within {self._timeout:g} s" if self._timeout is not None else ""
            cause, message = "handshake_timeout", f"no TLS handshake{within}"
        elif isinstance(exc, ssl.SSLError):
            cause, message = "tls_handshake_failed", f"TLS handshake failed: {exc}"
        else:  # done, or the client went away: nothing the bridge closed
            return
        metrics.connections_closed.labels(cause).inc()
        _crowd_log.closed(_peer(handshake.tcp), message)


def _peer(transport: asyncio.BaseTransport | None) -> str:
    peer = remote_address(transport.get_extra_info("peername")) if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if peer else "a client"


_EVICTED = object()
