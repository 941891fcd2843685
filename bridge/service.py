"""The service's lifecycle: start the sink, serve hooks, and on SIGTERM drain and flush."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import functools
import logging
import os
import signal
import socket
import ssl
import weakref
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import uvicorn

from bridge import __version__
from bridge.app import TokenCheck, create_admin_app, create_app
from bridge.codec import AvroCodec
from bridge.collector import collect_on_a_clock, settle_heap
from bridge.drain import drain, start_sink_within
from bridge.durable_spool import DurableSpool, SpoolLock
from bridge.encode import Encoder, build_wire_encoder
from bridge.errors import SinkError
from bridge.intake import HandoffIntake
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.protocol import ConnectionLimits, TlsAccept, bounded_protocol, tls_handshake_class
from bridge.replay import Replayer
from bridge.settings import Settings
from bridge.sinks import build_sink
from bridge.sinks.base import Sink
from bridge.supervisor import Supervisor
from bridge.tls import RenewableServerContext
from bridge.workergroup import WorkerGroup

log = logging.getLogger(__name__)

# Each HTTPS listener's renewable context, by the context uvicorn hands the loop's create_server.
RENEWABLE: weakref.WeakKeyDictionary[ssl.SSLContext, RenewableServerContext] = (
    weakref.WeakKeyDictionary()
)


def run(main: Coroutine[Any, Any, None], *, tls_handshake_timeout: float | None = None) -> None:
    """Runs ``main`` to completion on uvloop when it is installed, else on asyncio's own loop.

    ``asyncio.run`` (and uvicorn's ``Server.serve``, which the bridge calls itself) never pick
    uvloop: only uvicorn's own runner does. uvloop cut the CPU per event by about 5 % (issue 11).

    ``tls_handshake_timeout``: how long a client connecting to a TLS listener may take over its
    handshake (see :class:`_TlsServers`); None leaves the loop's own 60 s.
    """
    loop_class = event_loop_class()
    with asyncio.Runner(loop_factory=lambda: loop_class(tls_handshake_timeout)) as runner:
        runner.run(main)


def event_loop_class(*, uvloop: bool = True) -> Callable[[float | None], asyncio.AbstractEventLoop]:
    """The bridge's event loop: uvloop's when it is installed (and ``uvloop``), else asyncio's,
    with TLS servers as :class:`_TlsServers` makes them. Called with the handshake timeout."""
    base: type[asyncio.AbstractEventLoop] = asyncio.SelectorEventLoop
    handshake: type[Any] = asyncio.sslproto.SSLProtocol
    if uvloop:
        try:
            import uvloop as installed
        except ImportError:  # optional: a platform without it runs on asyncio's loop
            pass
        else:
            base = installed.Loop
            handshake = installed.loop.SSLProtocol  # type: ignore[attr-defined]
    namespace = {"handshake_class": tls_handshake_class(handshake)}
    return cast(
        Callable[[float | None], asyncio.AbstractEventLoop],
        type("Loop", (_TlsServers, base), namespace),
    )


class _TlsServers:
    """An event loop whose TLS servers count each connection against the bridge's connection
    cap from its accept (:class:`bridge.protocol.TlsAccept`), and give a client
    ``tls_handshake_timeout`` seconds for its handshake unless the caller says otherwise.

    uvicorn creates its servers itself, with ``ssl=`` and no handshake timeout: the loop would
    run each handshake out of the bridge's sight, for up to its default 60 s. Here the server
    is plain TCP and TlsAccept makes the same loop's TLS protocol around each connection.
    """

    handshake_class: type[Any]  # the loop's own TLS protocol, see tls_handshake_class

    def __init__(self, tls_handshake_timeout: float | None = None) -> None:
        super().__init__()
        self.tls_handshake_timeout = tls_handshake_timeout

    async def create_server(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any
    ) -> asyncio.AbstractServer:
        context: ssl.SSLContext | None = kwargs.pop("ssl", None)
        timeout: float | None = kwargs.pop("ssl_handshake_timeout", None)
        if context is not None:
            protocol_factory = TlsAccept(
                cast(asyncio.AbstractEventLoop, self),
                protocol_factory,
                RENEWABLE.get(context, context),
                handshake_timeout=timeout or self.tls_handshake_timeout,
                handshake_class=self.handshake_class,
            )
        return await super().create_server(  # type: ignore[misc,no-any-return]
            protocol_factory, *args, **kwargs
        )


async def serve(
    settings: Settings, *, metrics: Metrics | None = None, group: WorkerGroup | None = None
) -> None:
    """Runs until SIGINT or SIGTERM; returns once in-flight requests are answered, the spool is
    drained as far as the sink and ``shutdown_drain_seconds`` allow, and the sink is flushed.

    ``group``: this process is one worker of ``serve --workers N`` (see bridge.workergroup).

    The spool's lock is held throughout: a second bridge, or ``login-audit-bridge drain``, on
    the same data directory is refused (SpoolInUse, a ConfigError) rather than replaying the
    same events.
    """
    starting = _StopWhileStarting()
    held = SpoolLock(settings.spool_path) if settings.spool_enabled else contextlib.nullcontext()
    with held:
        await _serve_holding_the_spool(settings, metrics=metrics, group=group, starting=starting)


async def _serve_holding_the_spool(
    settings: Settings,
    *,
    metrics: Metrics | None,
    group: WorkerGroup | None,
    starting: _StopWhileStarting,
) -> None:
    metrics = metrics if metrics is not None else Metrics()
    metrics.watch_process()
    codec = AvroCodec()
    encoder = build_wire_encoder(settings, codec)
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
        encoder=Encoder(codec),
        spool_after=settings.spool_after_seconds,
        publish_timeout=settings.publish_timeout_seconds,
        background=background,
    )
    normalizer = Normalizer(sftpgo_user_fields=settings.sftpgo_user_fields)
    intake = HandoffIntake(
        settings.hook_spool_path, normalizer=normalizer, pipeline=pipeline, metrics=metrics
    )
    sink_started = asyncio.Event()
    replayer = None
    stopped = False  # by a signal, not by a fatal error
    admin = None
    try:
        # Probes and /metrics stay up until the very end, through the drain at shutdown: an
        # operator watches the spool empty, and /readyz says "stopping" meanwhile.
        admin = _AdminListeners(settings, pipeline, metrics, group)
        admin.start()
        if spool is None:
            # Without a spool there is nowhere to put events: wait for the sink.
            await starting.unless_stopped(_start_sink(sink, sink_started, retry=False))
        else:
            background.start("sink-start", lambda: _start_sink(sink, sink_started, retry=True))
            replayer = Replayer(
                spool,
                send=pipeline.resend,
                sink_name=sink.name,
                metrics=metrics,
                publish_timeout=settings.publish_timeout_seconds,
            )
            background.start("replay", lambda: replayer.run(sink_started))
        background.start("hook-spool", lambda: intake.run(settings.hook_spool_interval_seconds))
        background.start("loop-lag", metrics.watch_loop_lag)
        settle_heap()
        if settings.gc_interval_seconds > 0:
            interval = settings.gc_interval_seconds
            background.start("gc", lambda: collect_on_a_clock(interval))
        if starting.signum is None:
            await _serve_until_fatal(
                background,
                _serve_http(settings, pipeline, normalizer, metrics, group, admin.where, starting),
            )
        stopped = True
    finally:
        await background.stop()
        if stopped and replayer is not None and replayer.spool.depth:
            draining = asyncio.ensure_future(
                _drain_before_exit(
                    sink, sink_started, replayer, budget=settings.shutdown_drain_seconds
                )
            )
            with _signals_while_draining(draining), contextlib.suppress(asyncio.CancelledError):
                await draining
        if sink_started.is_set():
            await sink.stop()
        if spool is not None:
            await spool.close()
            if spool.depth:
                log.warning(
                    "%d event(s) stay in the spool %s: the next bridge on this data directory "
                    "sends them, or `login-audit-bridge drain` if none comes back",
                    spool.depth,
                    spool.path,
                )
        if admin is not None:
            await admin.stop()
    log.info("login-audit-bridge stopped")
    # Nothing is left to stop. Python gives every signal it handled its default action back
    # while the interpreter exits, so a late SIGTERM (an impatient caller repeating it) ended
    # a clean exit as "killed by SIGTERM" (-15); ignored from here on, the exit code stands.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


async def _drain_before_exit(
    sink: Sink, sink_started: asyncio.Event, replayer: Replayer, *, budget: float
) -> None:
    """Sends the spool's backlog before the process goes: its volume may not come back (a
    scaled-down StatefulSet, an emptyDir). Within ``budget`` seconds, starting the sink once
    more if it was not up; what stays is logged by the caller."""
    before = replayer.spool.depth
    if budget <= 0:
        return
    log.info(
        "draining %d spooled event(s) into the %s sink (up to %g s)", before, sink.name, budget
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    if not sink_started.is_set():
        why = await start_sink_within(sink, budget=budget)
        if why is not None:
            log.error(
                "spool not drained at shutdown: the %s sink did not start: %s", sink.name, why
            )
            return
        sink_started.set()
    left = await drain(replayer, budget=max(0.0, deadline - loop.time()))
    if left:
        log.error(
            "spool drained only in part at shutdown: %d of %d event(s) sent, %d left",
            before - left,
            before,
            left,
        )
    else:
        log.info("spool drained at shutdown: %d event(s) sent", before)


@contextlib.contextmanager
def _signals_while_draining(draining: asyncio.Future[None]) -> Iterator[None]:
    """SIGINT (an operator at a terminal) ends the drain now; SIGTERM only logs
    (``_already_stopping``, as from the first stop signal on), so an impatient second stop does
    not cut the drain short: the pod's grace period and SIGKILL bound it."""
    loop = asyncio.get_running_loop()
    signal.signal(signal.SIGTERM, _already_stopping)

    def interrupt() -> None:
        log.warning("SIGINT: drain stopped, what is left stays in the spool")
        draining.cancel()

    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


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
    settings: Settings,
    pipeline: Pipeline,
    normalizer: Normalizer,
    metrics: Metrics,
    group: WorkerGroup | None,
    admin_where: list[str],
    starting: _StopWhileStarting | None = None,
) -> None:
    """Serves the hook listeners until they stop; ``admin_where`` only completes the log line
    (the admin listeners run longer, see _AdminListeners). ``starting`` hands the stop signals
    over to the listeners (see _stop_on_signals)."""
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
        group=group,
    )
    hook_protocol = bounded_protocol(_limits(settings), metrics, hooks=app)
    # One uvicorn server per listener, because uvicorn applies one TLS setting to all of its
    # sockets: TLS (and client certificates) belong on TCP only. The Unix socket is reached by
    # the shim on the same host, which speaks plain HTTP; the admin port serves probes.
    hooks = [
        (_Listener(_uvicorn_config(app, settings, http=hook_protocol, tls=_is_tcp(s))), s)
        for s in _bind(settings)
    ]
    metrics.listen_drops.watch(sock for _, sock in hooks if _is_tcp(sock))
    where = [_describe(sock, settings) for _, sock in hooks] + admin_where
    log.info(
        "login-audit-bridge %s serving on %s with the %s sink",
        __version__,
        ", ".join(where),
        pipeline.sink.name,
    )
    try:
        with _stop_on_signals([server for server, _ in hooks], pipeline, starting):
            await _run(hooks)
    finally:
        _unlink_socket(settings.uds)


def _limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        max_connections=settings.max_connections,
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
    )


class _AdminListeners:
    """The admin port (probes, /metrics) and, in a worker of ``serve --workers``, its local
    socket for the other workers: plain HTTP, started before the hook listeners and stopped
    after the shutdown drain, so they answer while the spool empties."""

    def __init__(
        self, settings: Settings, pipeline: Pipeline, metrics: Metrics, group: WorkerGroup | None
    ) -> None:
        protocol = bounded_protocol(_limits(settings), metrics)
        self._servers: list[tuple[uvicorn.Server, socket.socket]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._local: Path | None = None
        if settings.admin_port is not None:
            admin_app = create_admin_app(pipeline=pipeline, metrics=metrics, group=group)
            config = _uvicorn_config(admin_app, settings, http=protocol, tls=False)
            self._servers.append((_Listener(config), _bind_admin(settings)))
        if group is not None:
            # Where the other workers ask this one for its own readiness and metrics only.
            self._local = group.socket(group.index)
            local_app = create_admin_app(pipeline=pipeline, metrics=metrics)
            config = _uvicorn_config(local_app, settings, http=protocol, tls=False)
            self._servers.append((_Listener(config), _unix_listener(self._local, 0o600)))
        self.where = [_describe(sock, settings, admin=True) for _, sock in self._servers]

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(server.serve(sockets=[sock])) for server, sock in self._servers
        ]

    async def stop(self) -> None:
        """Stops them; never raises, so that it cannot hide why the bridge is stopping."""
        for server, _ in self._servers:
            server.should_exit = True
        for outcome in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.error("an admin listener failed: %r", outcome)
        for _, sock in self._servers:
            sock.close()  # uvicorn closes what it served; these may never have been served
        _unlink_socket(self._local)
        if self._local is not None:
            # The last worker out removes the group's directory (rmdir refuses while a sibling's
            # socket is in it): `serve` removes it too, but not when it was killed (SIGKILL),
            # and then its workers stop on their own (bridge.workers._die_with_parent).
            with contextlib.suppress(OSError):
                self._local.parent.rmdir()


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves the signals to _stop_on_signals: several run side by side."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _run(hooks: Sequence[tuple[uvicorn.Server, socket.socket]]) -> None:
    """Serves until the hook listeners stop."""
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in hooks]
    try:
        await asyncio.gather(*tasks)
    finally:
        for server, _ in hooks:  # if one listener failed, the others stop too
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


# What stops the bridge: SIGTERM from a supervisor or Kubernetes, SIGINT from a terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_on_signals(
    servers: Sequence[uvicorn.Server],
    pipeline: Pipeline | None = None,
    starting: _StopWhileStarting | None = None,
) -> Iterator[None]:
    """SIGINT or SIGTERM stops every hook listener gracefully; a second SIGINT forces it.

    /readyz turns 503 first, so a load balancer still probing stops routing hooks here.

    Each listener then stops accepting and waits for its requests in flight (up to
    timeout_graceful_shutdown); ``serve`` returns and flushes the sink. The handlers that were
    installed before are put back afterwards, and the signal is not raised again: the process
    must not die before the flush.
    """

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        _log_soon(logging.INFO, "received %s: draining and flushing", signal.Signals(signum).name)
        if pipeline is not None:
            pipeline.stopping = True
        for server in servers:
            if server.should_exit and signum == signal.SIGINT:
                server.force_exit = True
            server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    if starting is not None:
        # Taken over from the start-up's handlers, which put back the ones from before them;
        # a signal they caught since the bridge decided to serve stops the listeners now.
        previous = starting.hand_over()
        if starting.signum is not None:
            stop(starting.signum, None)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # Stopping already: a second SIGTERM (an impatient caller) must not kill the process
            # with the default action while it drains its spool and flushes its sink.
            signal.signal(sig, _already_stopping if stopping and sig == signal.SIGTERM else handler)


class _StopWhileStarting:
    """SIGINT and SIGTERM from the start of ``serve`` until the hook listeners take them over.

    Before, the signal's default action ended a bridge still starting: unlogged, exit -15, and
    without the stop's clean-up. A worker of ``serve --workers`` signalled then (by its parent,
    or by its parent's death) left its socket and the group's directory behind, and a bridge
    without a spool waiting for its broker could not be stopped, only killed. Now the signal is
    logged and recorded; a wait for the sink ends at once, and the bridge goes through the same
    clean-up as after serving, without serving.

    Created on the loop, in the main thread (signal handlers can only be set there).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._loop = asyncio.get_running_loop()
        self._waiting: asyncio.Future[Any] | None = None
        self._previous = {sig: signal.signal(sig, self._stop) for sig in STOP_SIGNALS}

    def _stop(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        _log_soon(logging.INFO, "received %s while starting: stopping", signal.Signals(signum).name)
        if self._waiting is not None:
            # A handler runs between any two bytecodes, maybe inside the loop's own code.
            self._loop.call_soon_threadsafe(self._waiting.cancel)

    async def unless_stopped(self, step: Coroutine[Any, Any, None]) -> None:
        """Runs ``step``; a stop signal cancels it, and it returns early instead of raising."""
        if self.signum is not None:
            step.close()
            return
        self._waiting = asyncio.ensure_future(step)
        try:
            await self._waiting
        except asyncio.CancelledError:
            if self.signum is None:  # cancelled from elsewhere: not this class's to swallow
                raise
        finally:
            self._waiting = None

    def hand_over(self) -> dict[signal.Signals, Any]:
        """The handlers from before this one, for the caller to put back when it is done with
        the signals (it has installed its own)."""
        return self._previous


def _already_stopping(signum: int, frame: object) -> None:
    _log_soon(
        logging.WARNING,
        "already stopping: draining the spool and flushing the sink first (SIGINT stops the drain)",
    )


def _log_soon(level: int, message: str, *args: object) -> None:
    """Logs from a signal handler, through the loop.

    A handler runs between any two bytecodes of the main thread, also while logging is writing
    to stderr: logging there again failed ("reentrant call inside BufferedWriter") and the line
    was lost. The loop writes it instead, right after.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop: the bridge is past stopping, nothing to say
    loop.call_soon_threadsafe(functools.partial(log.log, level, message, *args))


def _server_context(
    config: uvicorn.Config, make: Callable[[], ssl.SSLContext], *, every: float
) -> ssl.SSLContext:
    """An HTTPS listener's context (uvicorn's ``ssl_context_factory``): uvicorn's own, issuing
    no TLS session tickets, and made again from the files when they change, for new connections
    (:class:`bridge.tls.RenewableServerContext`, looked for at most every ``every`` seconds).

    No client of the bridge resumes a session: SFTPGo's HTTP hook builds a new client for each
    call, the shim is a process per login, MediaWiki posts from the login's own request. Each
    connection is a full handshake either way, and the two TLS 1.3 tickets OpenSSL makes and
    sends after it by default were work for nothing: about 60 µs of the server's CPU per
    handshake (``bench/tls_handshake.py``: 294 against 355 µs with an ECDSA P-256 key). Without
    tickets, no ticket key can decrypt a recorded session later either.
    """

    def without_tickets() -> ssl.SSLContext:
        context = make()  # uvicorn's own, from the config's ssl_* files and options
        context.num_tickets = 0  # TLS 1.3
        context.options |= ssl.OP_NO_TICKET  # TLS 1.2
        return context

    first = without_tickets()
    files = [config.ssl_certfile, config.ssl_keyfile, config.ssl_ca_certs]
    RENEWABLE[first] = RenewableServerContext(
        without_tickets,
        [Path(name) for name in files if name is not None],
        first=first,
        every=every,
    )
    return first


def _uvicorn_config(
    app: object,
    settings: Settings,
    *,
    http: type[asyncio.Protocol] | None = None,
    tls: bool = True,
) -> uvicorn.Config:
    options: dict[str, object] = {}
    if tls and settings.tls_certfile is not None:
        options = {
            "ssl_certfile": str(settings.tls_certfile),
            "ssl_keyfile": str(settings.tls_keyfile),
            "ssl_context_factory": functools.partial(
                _server_context, every=settings.tls_renewal_check_seconds
            ),
        }
        if settings.tls_client_ca is not None:
            options |= {
                "ssl_ca_certs": str(settings.tls_client_ca),
                "ssl_cert_reqs": ssl.CERT_REQUIRED,
            }
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=http or "httptools",
        ws="none",  # no websockets: an upgrade would hand the connection to another protocol
        log_config=None,
        access_log=settings.access_log,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        # Typed int, but uvicorn only hands it to asyncio.wait_for: 0.5 s must stay 0.5 s.
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,  # type: ignore[arg-type]
        # uvicorn's own default, 5 s, is below every proxy's idle timeout: a proxy (or any client
        # that keeps connections) then reuses a connection just as the bridge closes it, and the
        # request fails (vegeta: "server closed idle connection", EOF; bench/ingest.py).
        timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


def _bind(settings: Settings) -> list[socket.socket]:
    """The hook listeners: TCP, and the Unix socket when one is set."""
    tcp = _tcp_listener(settings.host, settings.port, reuse_port=settings.reuse_port)
    sockets = [tcp]
    if settings.uds is not None:
        # 0o660: the SFTPGo user reaches it through the group.
        sockets.append(_unix_listener(settings.uds, 0o660))
    return sockets


def _unix_listener(path: Path, mode: int) -> socket.socket:
    _unlink_socket(path)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(path))
    os.chmod(path, mode)
    unix.listen(2048)
    return unix


def _bind_admin(settings: Settings) -> socket.socket:
    assert settings.admin_port is not None  # noqa: S101 - the caller checked
    return _tcp_listener(settings.admin_host, settings.admin_port, reuse_port=False)


def _tcp_listener(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    tcp = socket.create_server((host, port), family=family, reuse_port=reuse_port)
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and create_server
    # leaves it 0. Without it, a response written as headers then body waits ~40 ms for the
    # client's delayed ACK on every reused connection (SFTPGo reuses them). Accepted sockets
    # inherit the option on Linux.
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return tcp


def _is_tcp(sock: socket.socket) -> bool:
    return sock.family != socket.AF_UNIX


def _describe(sock: socket.socket, settings: Settings, *, admin: bool = False) -> str:
    if not _is_tcp(sock):
        return f"unix://{sock.getsockname()} ({'admin' if admin else 'plain HTTP'})"
    host, port = sock.getsockname()[:2]
    scheme = "https" if settings.tls_certfile is not None and not admin else "http"
    where = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
    return f"{where} (admin)" if admin else where


def _unlink_socket(path: Path | None) -> None:
    if path is not None and path.is_socket():
        path.unlink()
