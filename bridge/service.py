"""The service's lifecycle: start the sink, serve hooks, and on SIGTERM drain and flush."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from bridge import __version__
from bridge.app import TokenCheck, create_app
from bridge.codec import AvroCodec, SingleObjectEncoder, WireEncoder
from bridge.durable_spool import DurableSpool
from bridge.errors import SinkError
from bridge.intake import HandoffIntake
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.replay import Replayer
from bridge.settings import Settings
from bridge.sinks import build_sink
from bridge.sinks.base import Sink
from bridge.supervisor import Supervisor

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
    encoder = build_encoder(settings, codec)
    sink = build_sink(settings, codec=codec, encoder=encoder, metrics=metrics)
    spool = None
    if settings.spool_enabled:
        spool = DurableSpool(
            settings.spool_path,
            codec,
            max_bytes=settings.spool_max_bytes,
            max_events=settings.spool_max_events,
        )
        await spool.open()
        log.info(
            "spool %s holds %d event(s) and %d dead letter(s)",
            spool.path,
            spool.depth,
            spool.dead_letters,
        )
        if spool.dead_letters:
            log.warning(
                "%d spooled event(s) are dead letters, not sent: see "
                "`login-audit-bridge dead-letters list`",
                spool.dead_letters,
            )
    background = Supervisor(metrics)
    pipeline = Pipeline(
        sink=sink,
        metrics=metrics,
        spool=spool,
        codec=codec,
        spool_after=settings.spool_after_seconds,
        publish_timeout=settings.publish_timeout_seconds,
        background=background,
    )
    normalizer = Normalizer(sftpgo_user_fields=settings.sftpgo_user_fields)
    intake = HandoffIntake(
        settings.hook_spool_path, normalizer=normalizer, pipeline=pipeline, metrics=metrics
    )
    sink_started = asyncio.Event()
    try:
        if spool is None:
            # Without a spool there is nowhere to put events: wait for the sink.
            await _start_sink(sink, sink_started, retry=False)
        else:
            background.start("sink-start", lambda: _start_sink(sink, sink_started, retry=True))
            replayer = Replayer(
                spool,
                deliver=pipeline.deliver,
                sink_name=sink.name,
                metrics=metrics,
                publish_timeout=settings.publish_timeout_seconds,
            )
            background.start("replay", lambda: replayer.run(sink_started))
        background.start("hook-spool", lambda: intake.run(settings.hook_spool_interval_seconds))
        await _serve_until_fatal(background, _serve_http(settings, pipeline, normalizer, metrics))
    finally:
        await background.stop()
        if sink_started.is_set():
            await sink.stop()
        if spool is not None:
            await spool.close()
            if spool.depth:
                log.info("%d event(s) stay spooled for the next start", spool.depth)
    log.info("login-audit-bridge stopped")


async def _serve_until_fatal(background: Supervisor, serving: Coroutine[Any, Any, None]) -> None:
    """Serves until SIGTERM, or until a background task meets a configuration error: then
    stops serving and raises it, so the process exits with the config exit code instead of
    answering 2xx into a spool that would never drain."""
    http = asyncio.create_task(serving)
    fatal = asyncio.create_task(background.fatal_error())
    await asyncio.wait({http, fatal}, return_when=asyncio.FIRST_COMPLETED)
    if not fatal.done():
        fatal.cancel()
        await http  # its errors (e.g. cannot listen) are the caller's
        return
    # Requests still in flight are cut off unanswered: not acknowledged, so the clients retry.
    http.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await http
    raise fatal.result()


async def _start_sink(sink: Sink, started: asyncio.Event, *, retry: bool) -> None:
    """Starts the sink; with a spool to fall back on, keeps trying while the broker is away.

    A ConfigError (the registry refusing the schema or the credentials, a topic that cannot
    be created as configured) is not retried: the operator must fix something.
    """
    delay = 0.5
    while True:
        try:
            await sink.start()
        except SinkError as exc:
            if not retry:
                raise
            log.warning("%s sink not started, spooling meanwhile: %s", sink.name, exc.message)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)
            continue
        started.set()
        log.info("%s sink started", sink.name)
        return


async def _serve_http(
    settings: Settings, pipeline: Pipeline, normalizer: Normalizer, metrics: Metrics
) -> None:
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
    sockets = _bind(settings)
    server = uvicorn.Server(_uvicorn_config(app, settings))
    log.info(
        "login-audit-bridge %s serving on %s with the %s sink",
        __version__,
        ", ".join(_describe(s, settings) for s in sockets),
        pipeline.sink.name,
    )
    try:
        # uvicorn traps SIGINT/SIGTERM: it stops accepting, waits for in-flight requests
        # (up to timeout_graceful_shutdown), then returns; the caller then flushes the sink.
        with _signals_return_here():
            await server.serve(sockets=sockets)
    finally:
        _unlink_socket(settings.uds)


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
    tcp = socket.create_server(
        (settings.host, settings.port), family=family, reuse_port=settings.reuse_port
    )
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and create_server
    # leaves it 0. Without it, a response written as headers then body waits ~40 ms for the
    # client's delayed ACK on every reused connection (SFTPGo reuses them). Accepted sockets
    # inherit the option on Linux.
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
