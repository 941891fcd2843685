"""The HTTP endpoint: hook requests in, 200 once their event is durable, JSON errors otherwise."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.errors import (
    BodyTooLarge,
    BridgeError,
    InvalidField,
    MalformedInput,
    Overloaded,
    Unauthorized,
    UnsupportedMediaType,
)
from bridge.event import LoginEvent
from bridge.mediawiki import parse_mediawiki
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.openapi import OPENAPI
from bridge.pipeline import Pipeline

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"
_CLIENT_REASONS = {404: "not_found", 405: "method_not_allowed"}


class TokenCheck:
    """Bearer tokens compared in constant time; several may be valid at once (rotation)."""

    def __init__(self, tokens: Sequence[str], *, header: str) -> None:
        self._tokens = [t.encode() for t in tokens]
        self._header = header.lower()
        self._bearer = self._header == "authorization"

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def check(self, request: Request) -> None:
        if not self._tokens:
            return
        value = request.headers.get(self._header, "")
        if self._bearer:
            scheme, _, value = value.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthorized(f"missing '{self._header}: Bearer <token>' header")
        candidate = value.strip().encode()
        # Compare with every token, with no early exit, so timing says nothing about which.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        if not matched:
            raise Unauthorized("token not accepted")


class HookEndpoints:
    """The hook routes, sharing the checks every hook request goes through."""

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        normalizer: Normalizer,
        metrics: Metrics,
        tokens: TokenCheck,
        max_body_bytes: int,
        max_in_flight: int,
    ) -> None:
        self._pipeline = pipeline
        self._normalizer = normalizer
        self._metrics = metrics
        self._tokens = tokens
        self._max_body = max_body_bytes
        self._max_in_flight = max_in_flight
        self._in_flight = 0

    async def sftpgo(self, request: Request) -> Response:
        async def normalize(body: bytes) -> LoginEvent:
            return self._normalizer.sftpgo_from_http(_single_valued_query(request), body)

        return await self._handle(request, normalize)

    async def mediawiki(self, request: Request) -> Response:
        async def normalize(body: bytes) -> LoginEvent:
            return self._normalizer.mediawiki(parse_mediawiki(body))

        return await self._handle(request, normalize)

    async def _handle(
        self, request: Request, normalize: Callable[[bytes], Awaitable[LoginEvent]]
    ) -> Response:
        if self._in_flight >= self._max_in_flight:
            return self._reject(request, Overloaded("too many requests in flight"))
        self._in_flight += 1
        self._metrics.requests_in_flight.inc()
        try:
            self._tokens.check(request)
            _check_media_type(request)
            event = await normalize(await self._read_body(request))
            await self._pipeline.publish(event)
        except BridgeError as exc:
            return self._reject(request, exc)
        finally:
            self._in_flight -= 1
            self._metrics.requests_in_flight.dec()
        return JSONResponse({"status": "stored", "event_id": event.event_id})

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise BodyTooLarge(f"body of {declared} bytes is over the {self._max_body} byte limit")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise BodyTooLarge(f"body is over the {self._max_body} byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def _reject(self, request: Request, exc: BridgeError) -> Response:
        self._metrics.requests_rejected.labels(exc.reason).inc()
        client = request.client.host if request.client else "unknown"
        # The message names the problem, never the body: the body may carry secrets.
        log.warning(
            "rejected %s %s from %s: %s (%d)",
            request.method,
            request.url.path,
            client,
            exc.message,
            exc.http_status,
        )
        return error_response(exc.http_status, exc.reason, exc.message, exc.detail)


def error_response(status: int, reason: str, message: str, detail: str | None = None) -> Response:
    body: dict[str, str] = {"error": reason, "message": message}
    if detail is not None:
        body["field"] = detail
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status in (429, 503) else None
    return JSONResponse(body, status_code=status, headers=headers)


def _check_media_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media_type, _, params = content_type.partition(";")
    if media_type.strip().lower() != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {media_type.strip()[:64]!r}"
        )
    charset = params.strip().lower().removeprefix("charset=").strip('"')
    if params.strip() and charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("the only accepted charset is utf-8")
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding[:32]!r} is not accepted")


def _single_valued_query(request: Request) -> dict[str, str]:
    query: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in query:
            raise InvalidField(key, "is given more than once")
        query[key] = value
    if not query:
        raise MalformedInput("no query string: expected ip, login_method, protocol and status")
    return query


def create_app(
    *,
    pipeline: Pipeline,
    normalizer: Normalizer,
    metrics: Metrics,
    tokens: TokenCheck,
    max_body_bytes: int,
    max_in_flight: int = 4096,
) -> Starlette:
    hooks = HookEndpoints(
        pipeline=pipeline,
        normalizer=normalizer,
        metrics=metrics,
        tokens=tokens,
        max_body_bytes=max_body_bytes,
        max_in_flight=max_in_flight,
    )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        sink = pipeline.sink
        if pipeline.ready():
            return JSONResponse(
                {
                    "status": "ready",
                    "sink": sink.name,
                    "sink_ready": sink.ready(),
                    "spooled": pipeline.spool.depth if pipeline.spool is not None else 0,
                }
            )
        return error_response(503, "sink_unavailable", f"{sink.name} sink is not ready")

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # noqa: S101 - Starlette routes only these here
        reason = _CLIENT_REASONS.get(exc.status_code, "invalid")
        metrics.requests_rejected.labels(reason).inc()
        return error_response(exc.status_code, reason, str(exc.detail), None)

    routes = [
        Route("/v1/hooks/sftpgo", hooks.sftpgo, methods=["POST"]),
        Route("/v1/hooks/mediawiki", hooks.mediawiki, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
