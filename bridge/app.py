"""The HTTP endpoint: hook requests in, 200 once their event is durable, JSON errors otherwise."""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import unquote_plus

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge import __version__
from bridge.errors import (
    BodyTooLarge,
    BridgeError,
    InvalidField,
    MalformedInput,
    MethodNotAllowed,
    Overloaded,
    SinkUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from bridge.event import EncodedEvent, LoginEvent
from bridge.loops import RunningLoop
from bridge.mediawiki import parse_mediawiki
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.openapi import OPENAPI
from bridge.pipeline import Pipeline
from bridge.settings import UNSENDABLE_CHARACTERS, printable_ascii
from bridge.sftpgo import EVENT_ID_HEADER, IDENTITY_HEADER
from bridge.workergroup import WorkerGroup

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"
RETRY_STATUSES = (429, 503)  # the answers that tell a client to come back later
SFTPGO_PATH = "/v1/hooks/sftpgo"
MEDIAWIKI_PATH = "/v1/hooks/mediawiki"
PAM_PATH = "/v1/hooks/pam"
_CLIENT_REASONS = {404: "not_found", 405: "method_not_allowed"}
# The answers this bridge would give again for the same body: a client may stop retrying them.
# Everything else (401 token, 405 method, 503 overload...) can change without the body changing.
FINAL_STATUSES = (400, 413, 415)
# On every answer of a hook route: a 404 or a 2xx without it came from something else.
IDENTITY = (IDENTITY_HEADER.lower().encode(), __version__.encode())
_EVENT_ID = EVENT_ID_HEADER.lower().encode("latin-1")


class TokenCheck:
    """Bearer tokens compared in constant time; several may be valid at once (rotation)."""

    def __init__(self, tokens: Sequence[str], *, header: str) -> None:
        if any(not t.strip() for t in tokens):
            raise ValueError("an empty token would accept a request that carries none")
        if not all(printable_ascii(t.strip()) for t in tokens):
            raise ValueError(f"auth_tokens {UNSENDABLE_CHARACTERS}")
        self._tokens = [t.strip().encode() for t in tokens]
        self.header = header.lower()
        # As the request's headers are held (bridge.app.Headers): lower-cased bytes.
        self.header_key = self.header.encode("latin-1")
        self._bearer = self.header == "authorization"

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def check(self, value: str) -> None:
        """``value`` is the token header's value ("" when absent)."""
        if not self._tokens:
            return
        if self._bearer:
            scheme, _, value = value.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthorized(f"missing '{self.header}: Bearer <token>' header")
        candidate = value.strip().encode()
        if not candidate:
            raise Unauthorized(f"no token in the '{self.header}' header")
        # Compare with every token, with no early exit, so timing says nothing about which.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        if not matched:
            raise Unauthorized("token not accepted")


# An answer: status, JSON body, headers beyond content-type, content-length and the identity.
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
# A hook request's headers as the server gives them: lower-cased names, values as sent. Only
# the few the bridge reads are ever decoded (latin-1, HTTP's own header encoding).
Headers = dict[bytes, bytes]
# Reads one hook request (scope, headers, body) into its event; raises BridgeError if it cannot.
Normalize = Callable[[Scope, Headers, bytes], LoginEvent]


# Where a hook request's answer goes: the connection's writer, or the ASGI cycle's future.
Reply = Callable[[Answer], None]


class HookEndpoints:
    """The hook routes, in front of Starlette for everything else.

    The hooks are the hot path. A hook request is handled in three steps that need no ASGI:
    ``admit`` (the headers: token, media type, declared size), ``take`` (the bounded body
    becomes an event handed to the pipeline) and the answer given to the request's ``reply``
    (once the event is durable, or cannot be). The bridge's own connection class drives them
    from the HTTP parser's callbacks (:class:`bridge.protocol.HookCycle`); ``__call__`` drives
    the same steps as an ASGI app, for any other server. Starlette's request objects, middleware
    and router once took about a third of the CPU per event, and uvicorn's ASGI cycle and task a
    fifth of what was left (py-spy, bench/ingest.py); the other routes stay on Starlette.
    """

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        normalizer: Normalizer,
        metrics: Metrics,
        tokens: TokenCheck,
        max_body_bytes: int,
        max_in_flight: int,
        fallback: ASGIApp,
    ) -> None:
        self._pipeline = pipeline
        self._normalizer = normalizer
        self._metrics = metrics
        self._tokens = tokens
        self._max_body = max_body_bytes
        self._max_in_flight = max_in_flight
        self._fallback = fallback
        self._in_flight = 0
        self._taken: list[tuple[Scope, Headers, bytes, Normalize, Reply]] = []
        self._loop = RunningLoop()
        # Read at each scrape: Gauge.inc()/dec() take a lock twice per request (5 % of the CPU).
        metrics.requests_in_flight.set_function(lambda: self._in_flight)
        self._routes: dict[str, Normalize] = {
            SFTPGO_PATH: self._sftpgo,
            MEDIAWIKI_PATH: self._mediawiki,
            PAM_PATH: self._pam,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The hook POSTs reach here only when served by something other than the bridge's own
        # connection class (bridge.protocol.HookCycle answers them without ASGI): other
        # servers, tests. Both paths go through admit, take and answer.
        normalize = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if normalize is None:
            await self._fallback(scope, receive, send)
            return
        if scope["method"] == "POST":
            status, body, extra = await self._handle(scope, receive, normalize)
        else:
            status, body, extra = self._reject(scope, MethodNotAllowed("only POST is accepted"))
            extra.append((b"allow", b"POST"))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            IDENTITY,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers + extra})
        await send({"type": "http.response.body", "body": body})

    def route(self, scope: Scope) -> Normalize | None:
        """How to read a request, when it is a hook POST; None for anything else."""
        if scope["method"] != "POST":
            return None
        return self._routes.get(scope["path"])

    def admit(self, scope: Scope) -> tuple[Headers, Answer | None]:
        """The request's headers, and the refusal if they alone rule it out (token, media type,
        declared size): checked before the body is read, or a 100 Continue asks for it."""
        # As a dict of what was sent, the last of a repeated name winning: decoding every name
        # and value into a dict of str was about 1 % of a worker's CPU (issue 11).
        headers: Headers = dict(scope["headers"])
        try:
            self._tokens.check(_text(headers.get(self._tokens.header_key, b"")))
            _check_media_type(headers)
            declared = _text(headers.get(b"content-length", b""))
            # isdigit() alone also accepts digits int() refuses, such as "²".
            if declared.isascii() and declared.isdigit() and int(declared) > self._max_body:
                raise BodyTooLarge(
                    f"body of {declared} bytes is over the {self._max_body} byte limit"
                )
        except BridgeError as exc:
            return headers, self._reject(scope, exc)
        return headers, None

    def over_limit(self, scope: Scope, size: int) -> Answer | None:
        """The refusal of a body that has grown past the limit while being received."""
        if size <= self._max_body:
            return None
        return self._reject(scope, BodyTooLarge(f"body is over the {self._max_body} byte limit"))

    def take(
        self, scope: Scope, headers: Headers, body: bytes, normalize: Normalize, reply: Reply
    ) -> None:
        """Reads the event and hands it to the pipeline; ``reply`` gets the answer: a refusal,
        or, once the event is durable or cannot be, 200 or the error's status (500 for a bug).

        Not at once: the requests whose bodies complete in one turn of the loop are taken
        together at its end, each step for all of them before the next (normalize, encode,
        submit). Interleaved with the other requests' HTTP work, each step found its code and
        tables cold every time: the same steps cost two to three times what they do in a loop
        of their own (issue 11, bench/stages.py), and taking a turn's requests together cut
        the CPU per event by about a fifth (bench/ingest.py --paired). Only the order of work
        changes: each request is refused, or accepted, alone.

        Counted in flight only once accepted: a client still sending its body (or not allowed
        to) holds no slot, so slow or unauthenticated clients cannot turn real events into 503s.
        """
        self._taken.append((scope, headers, body, normalize, reply))
        if len(self._taken) == 1:
            self._loop().call_soon(self._take_all)

    def _take_all(self) -> None:
        taken, self._taken = self._taken, []
        room = self._max_in_flight - self._in_flight
        events: list[tuple[Scope, LoginEvent, Reply]] = []
        for scope, headers, body, normalize, reply in taken:
            try:
                if len(events) >= room:
                    raise Overloaded("too many requests in flight")
                events.append((scope, normalize(scope, headers, body), reply))
            except Exception as exc:
                self._refuse(scope, reply, exc)
        pipeline = self._pipeline
        prepared: list[tuple[Scope, EncodedEvent, Reply]] = []
        for scope, event, reply in events:
            try:
                prepared.append((scope, pipeline.prepare(event), reply))
            except Exception as exc:
                self._refuse(scope, reply, exc)
        for scope, encoded, reply in prepared:
            try:
                durable = pipeline.submit_prepared(encoded)
            except Exception as exc:
                self._refuse(scope, reply, exc)
                continue
            self._in_flight += 1
            durable.add_done_callback(
                functools.partial(self._reply, scope, encoded.event.event_id, reply)
            )

    def _refuse(self, scope: Scope, reply: Reply, exc: Exception) -> None:
        """Answers a request that was not accepted: its error, or a 500 for a bug."""
        if isinstance(exc, BridgeError):
            answer = self._reject(scope, exc)
        else:
            log.error("a hook request failed unexpectedly", exc_info=exc)
            answer = INTERNAL_ERROR
        _give(reply, answer)

    def _reply(
        self, scope: Scope, event_id: str, reply: Reply, durable: asyncio.Future[None]
    ) -> None:
        self._in_flight -= 1
        try:
            answer = self.answer(scope, event_id, durable)
        except Exception:
            log.exception("event %s: the pipeline failed unexpectedly", event_id)
            answer = INTERNAL_ERROR
        _give(reply, answer)

    def answer(self, scope: Scope, event_id: str, durable: asyncio.Future[None]) -> Answer:
        """The answer once the event is durable (200) or cannot be (the error's own status).

        Anything but a BridgeError is a bug: it is raised, and the server answers 500.
        """
        if durable.cancelled():
            return self._reject(scope, SinkUnavailable("the event was not stored: shutting down"))
        error = durable.exception()
        if error is None:
            return 200, b'{"status":"stored","event_id":"%s"}' % event_id.encode(), []
        if isinstance(error, BridgeError):
            return self._reject(scope, error)
        raise error

    def _sftpgo(self, scope: Scope, headers: Headers, body: bytes) -> LoginEvent:
        return self._normalizer.sftpgo_from_http(
            _single_valued_query(scope), body, event_id=_source_event_id(headers)
        )

    def _mediawiki(self, scope: Scope, headers: Headers, body: bytes) -> LoginEvent:
        return self._normalizer.mediawiki(parse_mediawiki(body), event_id=_source_event_id(headers))

    def _pam(self, scope: Scope, headers: Headers, body: bytes) -> LoginEvent:
        return self._normalizer.pam_from_http(body, event_id=_source_event_id(headers))

    async def _handle(self, scope: Scope, receive: Receive, normalize: Normalize) -> Answer:
        headers, refused = self.admit(scope)
        if refused is not None:
            return refused
        try:
            body = await self._read_body(receive)
        except BridgeError as exc:
            return self._reject(scope, exc)
        # Cancelling this request does not cancel the event: it is made durable all the same.
        answered: asyncio.Future[Answer] = self._loop().create_future()
        self.take(scope, headers, body, normalize, functools.partial(_settle, answered))
        return await answered

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise MalformedInput("the client went away before sending the whole body")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise BodyTooLarge(f"body is over the {self._max_body} byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _reject(self, scope: Scope, exc: BridgeError) -> Answer:
        self._metrics.requests_rejected.labels(exc.reason).inc()
        client = scope["client"][0] if scope.get("client") else "unknown"
        # The message names the problem, never the body: the body may carry secrets.
        log.warning(
            "rejected %s %s from %s: %s (%d)",
            scope["method"],
            scope["path"],
            client,
            exc.message,
            exc.http_status,
        )
        body = _error_body(exc.http_status, exc.reason, exc.message, exc.detail)
        return exc.http_status, body, retry_after(exc.http_status)


def _give(reply: Reply, answer: Answer) -> None:
    # The other requests taken with this one still get theirs if one reply fails.
    try:
        reply(answer)
    except Exception:
        log.exception("a hook request's answer could not be given")


def _settle(answered: asyncio.Future[Answer], answer: Answer) -> None:
    if not answered.done():  # else the request was cancelled (its client went away)
        answered.set_result(answer)


def retry_after(status: int) -> list[tuple[bytes, bytes]]:
    """The Retry-After header of an answer that tells the client to come back, else none."""
    return [(b"retry-after", RETRY_AFTER_SECONDS.encode())] if status in RETRY_STATUSES else []


def _error_body(status: int, reason: str, message: str, detail: str | None) -> bytes:
    body: dict[str, str | bool] = {
        "error": reason,
        "message": message,
        "final": status in FINAL_STATUSES,
    }
    if detail is not None:
        body["field"] = detail
    return json.dumps(body).encode()


# The answer to a request the bridge failed on itself (a bug): retrying may well succeed.
INTERNAL_ERROR: Answer = (
    500,
    _error_body(500, "internal", "the bridge failed to handle the request", None),
    [],
)


def error_response(status: int, reason: str, message: str, detail: str | None = None) -> Response:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status in RETRY_STATUSES else None
    return Response(
        _error_body(status, reason, message, detail),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _text(value: bytes) -> str:
    # latin-1 is HTTP's own header encoding: every byte is a character, nothing fails.
    return value.decode("latin-1")


def _source_event_id(headers: Headers) -> str | None:
    """The event id the source fixed for this event, if it sent one."""
    value = headers.get(_EVENT_ID)
    return None if value is None else _text(value)


def _check_media_type(headers: Headers) -> None:
    content_type = headers.get(b"content-type", b"")
    if content_type == b"application/json" and b"content-encoding" not in headers:
        return  # what every hook sends
    media_type, _, params = _text(content_type).partition(";")
    if media_type.strip().lower() != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {media_type.strip()[:64]!r}"
        )
    charset = params.strip().lower().removeprefix("charset=").strip('"')
    if params.strip() and charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("the only accepted charset is utf-8")
    encoding = _text(headers.get(b"content-encoding", b"identity")).lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding[:32]!r} is not accepted")


def _single_valued_query(scope: Scope) -> dict[str, str]:
    raw: bytes = scope["query_string"]
    return single_valued_query(raw.decode("latin-1"))


def single_valued_query(query: str) -> dict[str, str]:
    """``dict(parse_qsl(query, keep_blank_values=True))``, refusing a name given twice and an
    empty query, in one pass that unquotes only the parts that need it.

    The raw query is latin-1, each part percent-decoded as UTF-8, as Starlette does. parse_qsl
    unquotes every name and value in Python (3 % of a worker's CPU); SFTPGo's query needs it at
    most for the address (an IPv6 address's colons are sent as %3A).
    """
    # What parse_qsl does to each name and value: "+" is a space, then UTF-8 unquoting that
    # replaces what does not decode (unquote_plus); a part without either is left as it is.
    escaped = "%" in query or "+" in query
    fields: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if escaped:
            name, value = _unquote(name), _unquote(value)
        if name in fields:
            raise InvalidField(name, "is given more than once")
        fields[name] = value
    if not fields:
        raise MalformedInput("no query string: expected ip, login_method, protocol and status")
    return fields


def _unquote(text: str) -> str:
    return unquote_plus(text) if "%" in text or "+" in text else text


def create_app(
    *,
    pipeline: Pipeline,
    normalizer: Normalizer,
    metrics: Metrics,
    tokens: TokenCheck,
    max_body_bytes: int,
    max_in_flight: int = 4096,
    group: WorkerGroup | None = None,
) -> HookEndpoints:
    """The main port: the hooks, the admin routes (see create_admin_app) and the OpenAPI spec."""

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    routes = [
        *_admin_routes(pipeline, metrics, group),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    others = Starlette(routes=routes, exception_handlers={HTTPException: _json_errors(metrics)})
    return HookEndpoints(
        pipeline=pipeline,
        normalizer=normalizer,
        metrics=metrics,
        tokens=tokens,
        max_body_bytes=max_body_bytes,
        max_in_flight=max_in_flight,
        fallback=others,
    )


def create_admin_app(
    *, pipeline: Pipeline, metrics: Metrics, group: WorkerGroup | None = None
) -> ASGIApp:
    """The admin port: health, readiness and metrics, for probes and scrapers without a token.

    They stay on the main port as well: they carry no secret and no event, and whatever already
    reaches the main port (tests, a load balancer's health check, an existing scrape) keeps
    working. The admin port is for what cannot present the main port's token or client
    certificate: Kubernetes probes and a Prometheus without one.

    ``group``: under ``serve --workers N``, /readyz and /metrics answer for every worker (see
    bridge.workergroup); without it, for this process only (as on a worker's admin socket).
    """
    return Starlette(
        routes=_admin_routes(pipeline, metrics, group),
        exception_handlers={HTTPException: _json_errors(None)},
    )


def _admin_routes(
    pipeline: Pipeline, metrics: Metrics, group: WorkerGroup | None = None
) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        sink = pipeline.sink
        unready = pipeline.unready()
        if unready is not None:
            return error_response(503, *unready)
        sink_ready = sink.ready()
        spooled = pipeline.spool.depth if pipeline.spool is not None else 0
        ready = {"status": "ready", "sink": sink.name, "sink_ready": sink_ready, "spooled": spooled}
        if group is None:
            return JSONResponse(ready)
        others = await group.readiness()
        if isinstance(others, tuple):
            return error_response(503, *others)
        whole = {
            "sink_ready": sink_ready and others.sink_ready,
            "spooled": spooled + others.spooled,
            "workers": group.count,
        }
        return JSONResponse(ready | whole)

    async def metrics_endpoint(request: Request) -> Response:
        own = generate_latest(metrics.registry)
        body = own if group is None else await group.metrics(own)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


def _json_errors(metrics: Metrics | None) -> Callable[[Request, Exception], Awaitable[Response]]:
    """Starlette's 404/405 as the bridge's JSON errors; counted on the main port only."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # noqa: S101 - Starlette routes only these here
        reason = _CLIENT_REASONS.get(exc.status_code, "invalid")
        if metrics is not None:
            metrics.requests_rejected.labels(reason).inc()
        return error_response(exc.status_code, reason, str(exc.detail), None)

    return http_error
