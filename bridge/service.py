"""The service's lifecycle: start the sink, serve hooks, and on SIGTERM drain and flush."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from bridge import __version__
from bridge.app import TokenCheck, create_app
from bridge.codec import AvroCodec, SingleObjectEncoder, WireEncoder
from bridge.hookspool import HookSpool
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.settings import Settings
from bridge.sinks import build_sink

log = logging.getLogger(__name__)


def build_encoder(settings: Settings, codec: AvroCodec) -> WireEncoder:
    if settings.schema_registry_url:
        from bridge.registry import ConfluentRegistryEncoder

        return ConfluentRegistryEncoder.from_settings(settings, codec=codec)
    return SingleObjectEncoder(codec)


async def serve(settings: Settings, *, metrics: Metrics | None = None) -> None:
    """Runs until SIGINT or SIGTERM; returns once in-flight requests are answered and flushed."""
    metrics = metrics if metrics is not None else Metrics()
    codec = AvroCodec()
    sink = build_sink(
        settings, codec=codec, encoder=build_encoder(settings, codec), metrics=metrics
    )
    normalizer = Normalizer(sftpgo_user_fields=settings.sftpgo_user_fields)
    async with sink:
        pipeline = Pipeline(
            sink=sink, metrics=metrics, publish_timeout=settings.publish_timeout_seconds
        )
        tokens = TokenCheck(
            [t.get_secret_value() for t in settings.auth_tokens], header=settings.auth_header
        )
        if not tokens.enabled:
            log.warning("no BRIDGE_AUTH_TOKENS: hook requests are not authenticated")
        app = create_app(
            pipeline=pipeline,
            normalizer=normalizer,
            metrics=metrics,
            tokens=tokens,
            max_body_bytes=settings.max_body_bytes,
            max_in_flight=settings.max_in_flight,
        )
        spool = HookSpool(
            settings.hook_spool_path, normalizer=normalizer, pipeline=pipeline, metrics=metrics
        )
        spool_task = asyncio.create_task(spool.run(settings.hook_spool_interval_seconds))
        sockets = _bind(settings)
        server = uvicorn.Server(_uvicorn_config(app, settings))
        log.info(
            "login-audit-bridge %s serving on %s with the %s sink",
            __version__,
            ", ".join(_describe(s, settings) for s in sockets),
            sink.name,
        )
        try:
            # uvicorn traps SIGINT/SIGTERM: it stops accepting, waits for in-flight requests
            # (up to timeout_graceful_shutdown), then returns; the sink is flushed on exit.
            with _signals_return_here():
                await server.serve(sockets=sockets)
        finally:
            spool_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spool_task
            _unlink_socket(settings.uds)
    log.info("login-audit-bridge stopped")


@contextlib.contextmanager
def _signals_return_here() -> Iterator[None]:
    """Keeps the signal that stopped uvicorn from killing the process before the sink flushes.

    After a graceful stop uvicorn re-raises the signal it caught, under the handler that was
    installed before it started. The default handlers would end the process on the spot; these
    log it and let ``serve`` return normally.
    """

    def note(signum: int, frame: object) -> None:
        log.info("received %s: draining and flushing", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    tls: dict[str, object] = {}
    if settings.tls_certfile is not None:
        tls = {"ssl_certfile": str(settings.tls_certfile), "ssl_keyfile": str(settings.tls_keyfile)}
    if settings.tls_client_ca is not None:
        tls |= {"ssl_ca_certs": str(settings.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_config=None,
        access_log=settings.access_log,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        **tls,  # type: ignore[arg-type]
    )


def _bind(settings: Settings) -> list[socket.socket]:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    tcp = socket.create_server((settings.host, settings.port), family=family, reuse_port=False)
    sockets = [tcp]
    if settings.uds is not None:
        _unlink_socket(settings.uds)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(settings.uds))
        os.chmod(settings.uds, 0o660)  # the SFTPGo user reaches it through the group
        unix.listen(2048)
        sockets.append(unix)
    return sockets


def _describe(sock: socket.socket, settings: Settings) -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix://{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    scheme = "https" if settings.tls_certfile is not None else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _unlink_socket(path: Path | None) -> None:
    if path is not None and path.is_socket():
        path.unlink()
