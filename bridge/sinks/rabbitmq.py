"""The RabbitMQ sink: persistent messages on a durable topic exchange, confirmed by the broker."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from yarl import URL

from bridge.codec import WireEncoder
from bridge.errors import ConfigError, SinkError, SinkRejected, SinkUnavailable
from bridge.event import EncodedEvent, LoginEvent
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.sinks.base import Sink
from bridge.tls import WatchedFiles, client_context, peer_refused_certificate, watched

log = logging.getLogger(__name__)

# aio-pika reconnects a robust connection at a fixed interval once it was up; the first
# connection in `start` backs off exponentially from FIRST_RETRY_SECONDS instead.
RECONNECT_INTERVAL_SECONDS = 2.0
FIRST_RETRY_SECONDS = 0.25

_AUTHENTICATION_ERRORS = (
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ProbableAuthenticationError,
)

# What aio-pika itself treats as a broken connection (aiormq, pamqp, socket errors), and time-outs.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    *aio_pika.exceptions.CONNECTION_EXCEPTIONS,
    TimeoutError,
)

# The `reason` label of login_audit_publish_errors_total for this sink: a bounded set.
Reason = Literal[
    "unroutable",
    "nacked",
    "timeout",
    "unauthorized",
    "authentication",
    "certificate",
    "rejected",
    "not_found",
    "transport",
    "not_started",
]


def classify(exc: BaseException) -> tuple[type[SinkError], Reason]:
    """Which of our errors an aio-pika/aiormq (or socket) exception becomes, and its label.

    Only a broker refusing *this* message for good (406 precondition failed, e.g. a message
    over max_message_size) is a rejection. Everything else is retriable, including the operator
    mistakes an operator can fix: a 403 (the user may not write to the exchange: grant it) and
    an unroutable (returned) message (no queue is bound yet: bind one). Their events wait in
    the spool, counted under their own reason, instead of being buried.
    """
    # PublishError (a Basic.Return) subclasses DeliveryError (a Basic.Nack): test it first.
    if isinstance(exc, aiormq.exceptions.PublishError):
        return SinkUnavailable, "unroutable"
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return SinkUnavailable, "nacked"
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        return SinkUnavailable, "unauthorized"
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        return SinkRejected, "rejected"
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return SinkUnavailable, "not_found"
    if isinstance(exc, TimeoutError):
        return SinkUnavailable, "timeout"
    if isinstance(exc, _AUTHENTICATION_ERRORS):
        return SinkUnavailable, "authentication"
    if certificate_refused(exc):
        return SinkUnavailable, "certificate"
    return SinkUnavailable, "transport"


def certificate_refused(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error in ``exc`` or what caused it when a certificate check failed: the bridge's
    of the broker's certificate (``ssl.SSLCertVerificationError``), or the broker's of the
    bridge's (its alert: unknown CA, bad or missing certificate). Trying again with the same
    files gets the same answer. aiormq raises its own connection error from the TLS one.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause
        if isinstance(cause, ssl.SSLError) and peer_refused_certificate(cause):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def to_sink_error(exc: BaseException) -> SinkError:
    """Our error for an exception raised by aio-pika, aiormq or the socket beneath them."""
    kind, reason = classify(exc)
    return kind(f"rabbitmq: {reason}: {_describe(exc)}", detail=type(exc).__name__)


def _describe(exc: BaseException) -> str:
    try:
        return str(exc) or type(exc).__name__
    except Exception:  # some aiormq exceptions cannot format themselves when built bare
        return type(exc).__name__


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS context for amqps:// built from the CA, certificate and key settings."""
    ca, cert, key = (
        settings.rabbitmq_ssl_ca_file,
        settings.rabbitmq_ssl_certfile,
        settings.rabbitmq_ssl_keyfile,
    )
    if URL(settings.rabbitmq_url.get_secret_value()).scheme != "amqps":
        if ca is not None or cert is not None or key is not None:
            raise ConfigError("rabbitmq_ssl_* settings need an amqps:// rabbitmq_url")
        return None
    if key is not None and cert is None:
        raise ConfigError("rabbitmq_ssl_keyfile needs rabbitmq_ssl_certfile")
    return client_context(ca, cert, key, files="rabbitmq TLS files")


def redacted(url: str) -> str:
    """The URL without its password, for log lines and error messages."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


@dataclass
class _Publish:
    """One event's publish that the broker has not answered yet."""

    settled: asyncio.Event = field(default_factory=asyncio.Event)
    confirmed: bool = False


class RabbitMQSink(Sink):
    """Publishes each event under ``<status>.<source>.<protocol>``, mandatory and confirmed."""

    name: ClassVar[str] = "rabbitmq"

    def __init__(
        self,
        *,
        url: str,
        tls: ssl.SSLContext | None,
        exchange: str,
        queues: dict[str, str] | None,
        publish_timeout: float,
        encoder: WireEncoder,
        metrics: Metrics,
        renew_tls: tuple[WatchedFiles, Callable[[], ssl.SSLContext | None]] | None = None,
    ) -> None:
        self._url = url
        self._tls = tls
        # The TLS files, looked at on a timer while started, and what makes a context of them:
        # when they change, new connections (aio-pika's reconnects too) use the new context.
        self._renew_tls = renew_tls
        self._tls_timer: asyncio.TimerHandle | None = None
        self._exchange_name = exchange
        self._queues = queues
        self._publish_timeout = publish_timeout
        self._encoder = encoder
        self._metrics = metrics
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._in_flight: dict[str, _Publish] = {}  # by event id
        self._repair: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, encoder: WireEncoder, metrics: Metrics
    ) -> RabbitMQSink:
        queues = None
        if settings.rabbitmq_declare_queues:
            queues = {
                "success": settings.rabbitmq_queue_success,
                "failure": settings.rabbitmq_queue_failure,
            }
        tls = ssl_context(settings)
        files = watched(
            [
                settings.rabbitmq_ssl_ca_file,
                settings.rabbitmq_ssl_certfile,
                settings.rabbitmq_ssl_keyfile,
            ],
            every=settings.tls_renewal_check_seconds,
        )
        renew_tls = None
        if tls is not None and files is not None:
            renew_tls = (files, functools.partial(ssl_context, settings))
        return cls(
            url=settings.rabbitmq_url.get_secret_value(),
            tls=tls,
            exchange=settings.rabbitmq_exchange,
            queues=queues,
            publish_timeout=settings.publish_timeout_seconds,
            encoder=encoder,
            metrics=metrics,
            renew_tls=renew_tls,
        )

    # -- lifecycle

    async def start(self) -> None:
        """Connects within the publish timeout (with backoff), then declares the topology.

        Whatever fails on the way (the broker, the registry the encoder asks, the time limit),
        the connection opened so far is closed: the service calls start() again and again while
        something is away, and a robust connection left behind would reconnect forever.
        """
        try:
            async with asyncio.timeout(self._publish_timeout):
                self._connection = await self._connect()
                self._channel = await self._open_channel(self._connection)
                self._exchange = await self._declare(self._channel)
                await self._encoder.prepare([self._exchange_name])
            self._look_at_tls_later()
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise SinkUnavailable(
                    f"rabbitmq: no connection to {redacted(self._url)} in {self._publish_timeout}s"
                ) from exc
            if isinstance(exc, BROKER_ERRORS):
                raise to_sink_error(exc) from exc
            raise

    async def stop(self) -> None:
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None
        if self._repair is not None:
            self._repair.cancel()
            await asyncio.gather(self._repair, return_exceptions=True)
            self._repair = None
        connection = self._connection
        self._connection = self._channel = self._exchange = None
        if connection is not None:
            await connection.close()

    def ready(self) -> bool:
        connection, channel = self._connection, self._channel
        return (
            connection is not None
            and connection.connected.is_set()
            and channel is not None
            and not channel.is_closed
        )

    # -- TLS files renewed on disk

    def _look_at_tls_later(self) -> None:
        if self._renew_tls is not None:
            every = self._renew_tls[0].every
            self._tls_timer = asyncio.get_running_loop().call_later(every, self._look_at_tls)

    def _look_at_tls(self) -> None:
        """A new context for TLS files that changed (a client certificate renewed on disk),
        for the connections made from now on: the sink's own and aio-pika's reconnects of the
        current one. The connection open now keeps its session (the broker checked the
        certificate once, in the handshake)."""
        self._look_at_tls_later()
        assert self._renew_tls is not None  # noqa: S101 - only scheduled with it
        files, make = self._renew_tls
        context, outcome = files.reload(
            make,
            log=log,
            who="rabbitmq",
            keeps="connections go on with the files loaded before",
            uses="new connections use them",
        )
        if outcome is not None:
            self._metrics.tls_certificate_renewals.labels("rabbitmq", outcome).inc()
        if outcome != "renewed":
            return
        self._tls = context
        if isinstance(self._connection, aio_pika.RobustConnection):
            # What aio-pika connects with when it reconnects this robust connection.
            self._connection.kwargs["context"] = context

    async def _connect(self) -> AbstractRobustConnection:
        delay = FIRST_RETRY_SECONDS
        while True:
            # Built here rather than by connect_robust(), so that an attempt cut short (by the
            # time limit, or an error) can be closed: it would otherwise keep reconnecting.
            connection = aio_pika.RobustConnection(
                URL(self._url),
                ssl_context=self._tls,
                reconnect_interval=RECONNECT_INTERVAL_SECONDS,
                client_properties={"connection_name": "login-audit-bridge"},
            )
            try:
                await connection.connect()
                return connection
            except BaseException as exc:
                await connection.close()
                if isinstance(exc, _AUTHENTICATION_ERRORS) or certificate_refused(exc):
                    raise  # retrying will not make the credentials or certificates right
                if not isinstance(exc, aiormq.exceptions.AMQPConnectionError | OSError):
                    raise
                log.info(
                    "rabbitmq: %s unreachable (%s); retrying in %.2fs",
                    redacted(self._url),
                    _describe(exc),
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_INTERVAL_SECONDS)

    @staticmethod
    async def _open_channel(connection: AbstractRobustConnection) -> AbstractRobustChannel:
        # on_return_raises turns a Basic.Return of a mandatory message into an exception from
        # publish(), so an unroutable event fails its own send instead of vanishing.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(channel, AbstractRobustChannel)  # noqa: S101 -- typing: robust connection
        return channel

    async def _declare(self, channel: AbstractRobustChannel) -> AbstractExchange:
        exchange = await channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        for status, queue_name in (self._queues or {}).items():
            queue = await channel.declare_queue(queue_name, durable=True)
            await queue.bind(exchange, routing_key=f"{status}.#")
        return exchange

    # -- sending

    async def send(self, encoded: EncodedEvent) -> None:
        event = encoded.event
        exchange = self._exchange
        if exchange is None:
            self._metrics.publish_errors.labels(self.name, "not_started").inc()
            raise SinkUnavailable("rabbitmq sink is not started")
        message = self._message(encoded)
        try:
            # The timeout also bounds the wait for a reconnection: a robust channel that lost
            # its connection makes publish() wait until it is back.
            async with asyncio.timeout(self._publish_timeout):
                await self._publish_alone(exchange, message, event)
        except BROKER_ERRORS as exc:
            if self._channel_stuck():
                self._repair_later(exchange)
            raise self._failed(exc, event) from exc

    def _channel_stuck(self) -> bool:
        """The channel is closed while its connection is up, or the connection closed for good:
        neither comes back by itself."""
        connection, channel = self._connection, self._channel
        if connection is None or channel is None:
            return False
        return connection.is_closed or (connection.connected.is_set() and channel.is_closed)

    def _repair_later(self, broken: AbstractExchange) -> None:
        if self._repair is None or self._repair.done():
            self._repair = asyncio.create_task(self._reconnect(broken))

    async def _reconnect(self, broken: AbstractExchange) -> None:
        """If the channel is still closed a moment later, connects anew, declares the exchange,
        and only then retires the old connection.

        The broker closes a channel on a refusal (403, 404, 406), and aio-pika reopens it and
        declares the exchange again. When that declaration is refused too (the user lost its
        configure permission as well, or another refused publish slipped into the reopening),
        aio-pika gives up while the connection stays up: the channel stayed closed for good,
        and every later send failed although the permissions had long been restored. A new
        connection is used only once the exchange is declared on it.
        """
        await asyncio.sleep(RECONNECT_INTERVAL_SECONDS)  # aio-pika's own reopening goes first
        old = self._connection
        if old is None or self._exchange is not broken or not self._channel_stuck():
            return  # stopped, replaced, or reopened by aio-pika after all
        try:
            async with asyncio.timeout(self._publish_timeout):
                connection = await self._connect()
                try:
                    channel = await self._open_channel(connection)
                    exchange = await self._declare(channel)
                except BaseException:
                    await connection.close()
                    raise
        except BROKER_ERRORS as exc:
            log.warning(
                "rabbitmq: no new connection yet (%s); the next failing send tries again",
                _describe(exc),
            )
            return
        self._connection, self._channel, self._exchange = connection, channel, exchange
        log.warning("rabbitmq: the channel stayed closed; replaced it with a new connection")
        with contextlib.suppress(*BROKER_ERRORS):
            await old.close()

    async def _publish_alone(
        self, exchange: AbstractExchange, message: aio_pika.Message, event: LoginEvent
    ) -> None:
        """Publishes, unless a publish of this event is still unanswered: then waits for that.

        aiormq matches a returned (unroutable) message to its publish by ``message_id``, our
        event id, and keeps one publish per id: with two publishes of one event in flight (a
        replay while the first send still waits, a client's retry), the first one's return
        failed the second, and the first was then confirmed as delivered although the broker
        had returned it; the pipeline would then drop the spooled copy. One publish per event
        at a time cannot be mixed up, and when the earlier one was confirmed the event is
        durable: this send returns without publishing it twice.
        """
        while (earlier := self._in_flight.get(event.event_id)) is not None:
            await earlier.settled.wait()
            if earlier.confirmed:
                return
        publish = self._in_flight[event.event_id] = _Publish()
        try:
            await exchange.publish(message, routing_key=event.routing_key, mandatory=True)
            publish.confirmed = True
        finally:
            del self._in_flight[event.event_id]
            publish.settled.set()

    def _message(self, encoded: EncodedEvent) -> aio_pika.Message:
        event = encoded.event
        return aio_pika.Message(
            self._encoder.frame(encoded.datum, self._exchange_name),
            content_type=self._encoder.content_type,
            message_id=event.event_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={
                "source": event.source,
                "schema": self._encoder.schema_ref(self._exchange_name),
                "event-status": event.status,
            },
        )

    def _failed(self, exc: BaseException, event: LoginEvent) -> SinkError:
        """Counts the failure; the caller raises the result ``from`` the library's exception."""
        _, reason = classify(exc)
        self._metrics.publish_errors.labels(self.name, reason).inc()
        if reason == "unroutable":
            log.warning(
                "rabbitmq: no queue is bound for %s on exchange %s",
                event.routing_key,
                self._exchange_name,
            )
        elif reason == "unauthorized":
            # After the first refusal the broker closes the channel, and the sends behind it fail
            # as "transport" until it is reopened: this line comes once per attempt, not per event.
            log.warning(
                "rabbitmq: the broker refused to let %s publish to exchange %s (%s); events "
                "wait in the spool until the permission is granted",
                URL(self._url).user,
                self._exchange_name,
                _describe(exc),
            )
        return to_sink_error(exc)
