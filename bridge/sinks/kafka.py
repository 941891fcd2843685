"""The Kafka sink: confluent-kafka's producer behind an asyncio facade, one topic per status."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports NewTopic without declaring it; the type stubs name it here.
from confluent_kafka.cimpl import NewTopic

from bridge.codec import WireEncoder
from bridge.deadlines import Deadlines
from bridge.errors import ConfigError, SinkError, SinkUnavailable
from bridge.event import EncodedEvent, LoginEvent
from bridge.logs import librdkafka_logger
from bridge.loops import to_thread_to_the_end
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.sinks.base import Sink
from bridge.sinks.kafka_errors import (
    BAD_TOPIC_SETTINGS,
    Reason,
    failure_reason,
    to_sink_error,
)
from bridge.sinks.kafka_stats import KafkaStatistics, any_broker_up
from bridge.tls import WatchedFiles, watched

log = logging.getLogger(__name__)

CLIENT_ID = "login-audit-bridge"
POLL_SECONDS = 0.1
# While messages await their delivery report: what a report may wait on top of the broker's ack.
BUSY_POLL_SECONDS = 0.001
# How long the first metadata request of a wait for the cluster may block its thread; each next
# one may take as long as all before it (cluster_metadata).
CHECK_SLICE_SECONDS = 0.5
# What a broker says when it refuses the bridge's credentials: asking again with the same ones
# gets the same answer, so a wait for the cluster ends there instead of at its timeout.
REFUSED = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})
# OpenSSL's reasons for a failed certificate check: ours of the broker's, or the broker's alert
# about ours ("ssl/tls alert bad certificate", "tlsv1 alert unknown ca", "tlsv13 alert
# certificate required", "sslv3 alert certificate expired", ...).
_CERTIFICATE_FAILED = re.compile(
    r"certificate verify failed|alert (?:bad certificate|unknown ca|certificate \w+)", re.IGNORECASE
)
# Without exported statistics the sink still needs them to notice that a broker came back.
READINESS_STATISTICS_MS = 5000
# A producer that hits a fatal error again at once (e.g. the cluster denies idempotent writes)
# is rebuilt after a growing pause, up to this long, rather than in a tight loop.
MAX_REBUILD_DELAY_SECONDS = 60.0


def delivery_timeout_ms(publish_timeout_seconds: float) -> int:
    """message.timeout.ms: a little under the publish timeout.

    librdkafka then reports a message as timed out before `send` gives up waiting, so a message
    the caller spooled is not still queued in the producer to be delivered twice later.
    librdkafka scans for timed-out messages about once a second, hence the margin.
    """
    total = int(publish_timeout_seconds * 1000)
    return max(1, total - min(1000, total // 2))


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection and security settings shared by the producer, the admin client and consumers."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": CLIENT_ID,
        "security.protocol": settings.kafka_security_protocol.lower(),
    }
    config.update(_tls_config(settings))
    config.update(_sasl_config(settings))
    return config


def _tls_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if settings.kafka_ssl_ca_location is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_location)
    if settings.kafka_ssl_certificate_location is not None:
        config["ssl.certificate.location"] = str(settings.kafka_ssl_certificate_location)
    if settings.kafka_ssl_key_location is not None:
        config["ssl.key.location"] = str(settings.kafka_ssl_key_location)
    if settings.kafka_ssl_key_password is not None:
        config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    return config


def _sasl_config(settings: Settings) -> dict[str, Any]:
    mechanism = settings.kafka_sasl_mechanism
    if mechanism is None:
        return {}
    if mechanism == "OAUTHBEARER":
        return {"sasl.mechanism": mechanism, **_oidc_config(settings)}
    if settings.kafka_sasl_username is None or settings.kafka_sasl_password is None:
        raise ConfigError(
            f"kafka_sasl_mechanism {mechanism} needs kafka_sasl_username and kafka_sasl_password"
        )
    return {
        "sasl.mechanism": mechanism,
        "sasl.username": settings.kafka_sasl_username,
        "sasl.password": settings.kafka_sasl_password.get_secret_value(),
    }


def _oidc_config(settings: Settings) -> dict[str, Any]:
    """librdkafka fetches and refreshes the token itself (client-credentials grant)."""
    url, client_id = settings.kafka_oauth_token_endpoint_url, settings.kafka_oauth_client_id
    secret = settings.kafka_oauth_client_secret
    if url is None or client_id is None or secret is None:
        raise ConfigError(
            "kafka_sasl_mechanism OAUTHBEARER needs kafka_oauth_token_endpoint_url, "
            "kafka_oauth_client_id and kafka_oauth_client_secret"
        )
    config: dict[str, Any] = {
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.token.endpoint.url": url,
        "sasl.oauthbearer.client.id": client_id,
        "sasl.oauthbearer.client.secret": secret.get_secret_value(),
    }
    if settings.kafka_oauth_scope is not None:
        config["sasl.oauthbearer.scope"] = settings.kafka_oauth_scope
    return config


def producer_config(settings: Settings) -> dict[str, Any]:
    """The producer's settings, without callbacks: durable (acks=all, idempotent) and bounded."""
    statistics_ms = settings.kafka_statistics_interval_ms or READINESS_STATISTICS_MS
    return {
        **client_config(settings),
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": settings.kafka_compression,
        "linger.ms": settings.kafka_linger_ms,
        "message.timeout.ms": delivery_timeout_ms(settings.publish_timeout_seconds),
        "statistics.interval.ms": statistics_ms,
    }


def refusal(err: KafkaError) -> str | None:
    """What was refused, when ``err`` says that asking again with the same settings gets the
    same answer: "credentials" (SASL), "certificate" (TLS: the bridge does not trust the
    broker's certificate, or the broker not the bridge's). Else None.

    librdkafka reports TLS failures as ``_SSL`` (in the handshake) or ``_TRANSPORT`` (the
    broker's alert, read after a TLS 1.3 handshake), a broker closing the connection while it
    restarts too; only OpenSSL's reason for a failed certificate check, in the error's text,
    tells a refusal from that.
    """
    if err.code() in REFUSED:
        return "credentials"
    if err.code() in (KafkaError._SSL, KafkaError._TRANSPORT) and _CERTIFICATE_FAILED.search(
        err.str()
    ):
        return "certificate"
    return None


async def cluster_metadata(
    client: Producer | Consumer,
    *,
    within: float,
    refused: Callable[[], KafkaError | None] | None = None,
) -> Any:
    """The cluster's metadata (``list_topics``: a ClusterMetadata, which confluent-kafka's
    type stubs leave as Any there); the last KafkaException after ``within`` seconds, or
    at the end of the first slice after ``refused()`` returned an error (the client's error
    callback saw the broker refuse it: no later slice can succeed), that error.

    Asked in slices, from CHECK_SLICE_SECONDS on, each as long as the wait so far: a request
    blocks its thread for its whole timeout while no broker answers, cancelling the wait does
    not end it, and a process cannot exit before the thread does. One request for the whole
    publish timeout held a bridge stopped while it waited for its broker (or `tail` after
    Ctrl-C) that long; now a stop waits at most as long as the wait had run before it (half a
    second at first). The slices grow so that a cluster slower to answer than the first slice
    is still heard.

    Cancelled, it returns only once the request in flight has: the caller's clean-up closes
    the client, and closing a consumer destroys its handle under a thread still using it.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    deadline = began + within
    while True:
        asked = loop.time()
        wait = max(0.0, min(max(CHECK_SLICE_SECONDS, asked - began), deadline - asked))
        try:
            return await to_thread_to_the_end(partial(client.list_topics, timeout=wait))
        except KafkaException:
            said = refused() if refused is not None else None
            if said is not None:
                raise KafkaException(said) from None
            if loop.time() >= deadline:
                raise
            # Not in a tight loop should an error come back before the slice is over.
            await asyncio.sleep(max(0.0, asked + wait - loop.time()))


class _Client:
    """One librdkafka producer, polled from the event loop; the sink replaces it whole."""

    def __init__(
        self,
        producer: Producer,
        generation: int,
        on_fatal: Callable[[int, KafkaError], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.producer = producer
        self.generation = generation
        self._on_fatal = on_fatal
        self._loop = loop
        self._busy = False
        self._timer: asyncio.TimerHandle | None = loop.call_later(POLL_SECONDS, self._poll)

    def kick(self) -> None:
        """Messages went out: serve the reports already queued, then poll at the short interval
        until none is left in flight.

        Serving here, in a turn of the loop that is awake anyway, answers the requests whose
        reports came in since the last poll without waiting for the timer: under a steady
        stream that is most of them, half the interval sooner on average.
        """
        if self._timer is None:  # closed: flush() serves the last reports, in its thread
            return
        self._serve()
        if self._busy or self._timer is None:  # already polling, or closed by a callback
            return
        self._busy = True
        self._timer.cancel()
        self._timer = self._loop.call_later(BUSY_POLL_SECONDS, self._poll)

    def _poll(self) -> None:
        self._serve()
        if self._timer is None:  # closed by a callback
            return
        self._busy = len(self.producer) > 0
        self._timer = self._loop.call_later(
            BUSY_POLL_SECONDS if self._busy else POLL_SECONDS, self._poll
        )

    def _serve(self) -> None:
        # poll(0) never blocks: it runs the delivery reports (and the error, statistics and log
        # callbacks) that librdkafka has queued, here on the loop. A thread blocking in poll()
        # and handing reports over with call_soon_threadsafe cost 13 % more CPU per event
        # (issue 11). confluent-kafka raises librdkafka's fatal error out of poll() (error_cb
        # never sees it): caught here, so that polling goes on and the sink rebuilds.
        try:
            self.producer.poll(0)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.fatal():
                self._on_fatal(self.generation, err)
            else:
                log.warning("kafka: poll failed: %s: %s", err.name(), err.str())
        except Exception:
            log.exception("kafka: a producer callback failed; polling goes on")

    async def close(self, flush_seconds: float) -> int:
        """Stops polling, serves the last delivery reports; returns the messages left unanswered."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return await asyncio.to_thread(self._flush, flush_seconds)

    def _flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.producer.flush(max(0.0, deadline - time.monotonic()))
            except Exception:  # the fatal error raised out of flush(), or a callback's failure
                log.debug("kafka: flush interrupted; flushing on", exc_info=True)
                if time.monotonic() >= deadline:
                    return len(self.producer)
                time.sleep(POLL_SECONDS)


class KafkaSink(Sink):
    """Publishes each event to the topic of its status; `send` returns after its delivery report."""

    name: ClassVar[str] = "kafka"

    def __init__(
        self,
        *,
        config: dict[str, Any],
        admin_config: dict[str, Any],
        topic_success: str,
        topic_failure: str,
        key_by_user: bool,
        create_topics: bool,
        partitions: int,
        replication: int,
        publish_timeout: float,
        export_statistics: bool,
        encoder: WireEncoder,
        metrics: Metrics,
        tls_files: WatchedFiles | None = None,
    ) -> None:
        self._config = config
        # The CA, certificate and key files librdkafka loads when a producer is made, and only
        # then: when they change, a new producer replaces the current one (see _renew_tls).
        self._tls_files = tls_files
        self._admin_config = admin_config
        self._topics = {"success": topic_success, "failure": topic_failure}
        self._key_by_user = key_by_user
        self._create_topics = create_topics
        self._partitions = partitions
        self._replication = replication
        self._publish_timeout = publish_timeout
        self._encoder = encoder
        self._metrics = metrics
        self.statistics = KafkaStatistics()
        self._export_statistics = export_statistics
        self._registered = False
        self._client: _Client | None = None
        self._generation = 0  # of the current client; callbacks of older ones are ignored
        self._recovery: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._rebuild_delay = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._header_lists: dict[tuple[str, str], list[tuple[str, str | bytes | None]]] = {}
        self._loop_thread = 0
        # Delivery reports served by a flush() off the loop, handed to the loop in one wake-up.
        self._reports: list[tuple[asyncio.Future[None], KafkaError | None]] = []
        self._reports_lock = threading.Lock()
        # Submitted in this turn of the loop, produced together at its end (see submit).
        self._unproduced: list[tuple[EncodedEvent, asyncio.Future[None]]] = []
        # Each send's deadline, made on the loop by start().
        self._deadlines: Deadlines[asyncio.Future[None]]
        self._reachable = False
        self._fatal: KafkaError | None = None
        # The broker's refusal of the credentials, seen by error_cb (served by poll on the loop).
        self._refused: KafkaError | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, encoder: WireEncoder, metrics: Metrics
    ) -> KafkaSink:
        return cls(
            config=producer_config(settings),
            admin_config=client_config(settings),
            topic_success=settings.kafka_topic_success,
            topic_failure=settings.kafka_topic_failure,
            key_by_user=settings.kafka_key == "user",
            create_topics=settings.kafka_create_topics,
            partitions=settings.kafka_topic_partitions,
            replication=settings.kafka_topic_replication,
            publish_timeout=settings.publish_timeout_seconds,
            export_statistics=settings.kafka_statistics_interval_ms > 0,
            encoder=encoder,
            metrics=metrics,
            tls_files=watched(
                [
                    settings.kafka_ssl_ca_location,
                    settings.kafka_ssl_certificate_location,
                    settings.kafka_ssl_key_location,
                ],
                every=settings.tls_renewal_check_seconds,
            ),
        )

    # -- lifecycle

    async def start(self) -> None:
        self._header_lists.clear()  # a registry may give the schema another id after a restart
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._deadlines = Deadlines(self._loop, self._publish_timeout, self._expire)
        self._fatal = None
        self._refused = None
        self._client = self._new_client()
        try:
            await self._check_cluster()
            await self._encoder.prepare(list(self._topics.values()))
        except BaseException:
            await self.stop()
            raise
        if self._export_statistics:
            self._metrics.registry.register(self.statistics)
            self._registered = True

    async def stop(self) -> None:
        if self._recovery is not None:  # not yet swapped: the old client is still current
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
            self._recovery = None
        client, self._client = self._client, None
        if client is None:
            return
        await asyncio.gather(*self._retiring)
        left = await client.close(self._publish_timeout)
        if left:
            log.warning("kafka: %d message(s) not acknowledged at stop; their sends failed", left)
        self._reachable = False
        if self._registered:
            self._metrics.registry.unregister(self.statistics)
            self._registered = False

    def ready(self) -> bool:
        return self._client is not None and self._reachable and self._fatal is None

    @property
    def _producer(self) -> Producer | None:
        return self._client.producer if self._client is not None else None

    def _new_client(self) -> _Client:
        generation = self._generation + 1
        assert self._loop is not None  # noqa: S101 - set by start()
        tls_files = self._tls_files
        found = tls_files.now() if tls_files is not None else None  # what the producer loads
        client = _Client(self._new_producer(generation), generation, self._note_fatal, self._loop)
        self._generation = generation
        if tls_files is not None and found is not None:
            tls_files.loaded(found)
        return client

    def _new_producer(self, generation: int) -> Producer:
        config = {
            **self._config,
            "error_cb": partial(self._on_error, generation),
            "stats_cb": partial(self._on_statistics, generation),
            # librdkafka's own log lines go through logging (served by poll) instead of stderr.
            "logger": librdkafka_logger(),
        }
        try:
            return Producer(config)
        except KafkaException as exc:
            raise ConfigError(f"kafka producer settings: {exc.args[0].str()}") from exc

    # -- recovering from a fatal error

    def _note_fatal(self, generation: int, err: KafkaError) -> None:
        """From any thread: the producer of ``generation`` hit a fatal error."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_fatal, generation, err)

    def _on_fatal(self, generation: int, err: KafkaError) -> None:
        client = self._client
        if client is None or client.generation != generation or self._recovery is not None:
            return  # an old producer's, or already being replaced
        # An idempotent producer that hit a fatal error never sends again: sends fail (and
        # spool) until a new one, idempotent too, replaces it.
        self._fatal = err
        log.error(
            "kafka: fatal producer error %s: %s; building a new producer in %.0fs",
            err.name(),
            err.str(),
            self._rebuild_delay,
        )
        self._recovery = asyncio.create_task(self._rebuild(client))

    async def _rebuild(self, old: _Client) -> None:
        await asyncio.sleep(self._rebuild_delay)  # stop() may cancel it: `old` is still current
        self._rebuild_delay = min(max(2 * self._rebuild_delay, 1.0), MAX_REBUILD_DELAY_SECONDS)
        try:
            new = self._new_client()
        except ConfigError:
            log.exception("kafka: no new producer; trying again in %.0fs", self._rebuild_delay)
            self._recovery = asyncio.create_task(self._rebuild(old))
            return
        self._client, self._recovery, self._fatal = new, None, None
        self._metrics.kafka_producer_rebuilds.inc()
        log.warning("kafka: a new producer replaced the one that hit the fatal error")
        # The old one's queued messages were failed by librdkafka (their sends spool them);
        # those in flight are answered while it flushes, for at most the publish timeout.
        self._retire_later(old)

    # -- TLS files renewed on disk

    def _renew_tls(self) -> None:
        """A new producer for TLS files that changed (a client certificate renewed on disk);
        the one before finishes the messages it has, as after a fatal error.

        librdkafka reads its CA, certificate and key files only when a producer is made: one
        made before a renewal shows the old certificate at every reconnect, and once that has
        expired the brokers refuse it.
        """
        files, old = self._tls_files, self._client
        if files is None or old is None or self._recovery is not None:
            return  # stopped, or a new producer is coming anyway
        new, outcome = files.reload(
            self._new_client,
            log=log,
            who="kafka",
            keeps="the producer goes on with the files loaded before",
            uses="a new producer uses them",
        )
        if outcome is not None:
            self._metrics.tls_certificate_renewals.labels("kafka", outcome).inc()
        if new is not None:
            self._client = new
            self._retire_later(old)

    def _retire_later(self, old: _Client) -> None:
        retiring = asyncio.create_task(self._retire(old))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)

    async def _retire(self, old: _Client) -> None:
        left = await old.close(self._publish_timeout)
        if left:
            log.warning("kafka: %d message(s) of the replaced producer were never answered", left)

    async def _check_cluster(self) -> None:
        """Fails with SinkUnavailable unless the cluster answers within the publish timeout."""
        producer = self._require_producer()
        servers = self._config["bootstrap.servers"]
        try:
            metadata = await cluster_metadata(
                producer, within=self._publish_timeout, refused=lambda: self._refused
            )
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            refused = refusal(err)
            if refused == "credentials":
                message = f"kafka: {servers} refused the bridge's credentials: {err.str()}"
            elif refused == "certificate":
                message = f"kafka: TLS with {servers} failed its certificate check: {err.str()}"
            else:
                message = f"kafka: no answer from {servers}: {err.str()}"
            raise SinkUnavailable(message, detail=err.name()) from exc
        self._reachable = True
        missing = [t for t in self._topics.values() if t not in metadata.topics]
        if missing and self._create_topics:
            await self._create(missing)
        elif missing:
            log.warning("kafka: topic(s) %s do not exist and kafka_create_topics is off", missing)

    async def _create(self, topics: list[str]) -> None:
        admin = AdminClient(self._admin_config)
        new = [
            NewTopic(t, num_partitions=self._partitions, replication_factor=self._replication)
            for t in topics
        ]
        futures = admin.create_topics(new, request_timeout=self._publish_timeout)
        for topic, future in futures.items():
            try:
                await asyncio.wrap_future(future)
            except KafkaException as exc:
                self._raise_creation_error(topic, exc)
            else:
                log.info("kafka: created topic %s", topic)

    def _raise_creation_error(self, topic: str, exc: KafkaException) -> None:
        err: KafkaError = exc.args[0]
        if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return
        text = f"kafka: cannot create topic {topic}: {err.str()}"
        if err.code() in BAD_TOPIC_SETTINGS:
            raise ConfigError(text) from exc
        if err.code() == KafkaError.INVALID_REPLICATION_FACTOR:
            text += (
                f" (replication factor {self._replication}: retrying, as a broker may be "
                "restarting; if the cluster has fewer brokers, lower kafka_topic_replication)"
            )
        raise SinkUnavailable(text, detail=err.name()) from exc

    # -- librdkafka callbacks, run by poll() on the loop, or by flush() in a thread when closing

    def _current(self, generation: int) -> bool:
        client = self._client
        return client is not None and client.generation == generation

    def _on_error(self, generation: int, err: KafkaError) -> None:
        self.statistics.count_error(err)
        if err.fatal():
            self._note_fatal(generation, err)
        elif not self._current(generation):
            return  # a replaced producer, flushing: its view of the cluster no longer counts
        elif refusal(err) is not None:
            self._refused = err
            log.warning("kafka: a broker connection was refused: %s", err.str())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._reachable = False
            log.warning("kafka: all brokers are down")
        elif err.code() == KafkaError._TRANSPORT:
            # Repeated on every reconnect attempt while a broker is away; counted in metrics.
            log.debug("kafka: %s: %s", err.name(), err.str())
        else:
            log.info("kafka: %s: %s", err.name(), err.str())

    def _on_statistics(self, generation: int, text: str) -> None:
        if not self._current(generation):
            return
        stats: dict[str, Any] = json.loads(text)
        self.statistics.observe(stats)
        self._reachable = any_broker_up(stats)
        if self._tls_files is not None and self._loop is not None:
            # After this poll(): a new producer is not made inside the current one's callback.
            self._loop.call_soon(self._renew_tls)

    def _on_delivery(
        self,
        future: asyncio.Future[None],
        err: KafkaError | None,
        _msg: object,
    ) -> None:
        if threading.get_ident() == self._loop_thread:  # poll() on the loop: the usual case
            self._settle(future, err)
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # A flush() in a thread (closing) serves many reports: the loop is woken once for all.
        with self._reports_lock:
            first = not self._reports
            self._reports.append((future, err))
        if first:
            loop.call_soon_threadsafe(self._settle_reports)

    def _settle_reports(self) -> None:
        with self._reports_lock:
            reports, self._reports = self._reports, []
        for future, err in reports:
            self._settle(future, err)

    def _settle(self, future: asyncio.Future[None], err: KafkaError | None) -> None:
        self._deadlines.discard(future)
        if future.done():  # timed out, or its waiter was cancelled
            return
        if err is None:
            self._reachable = True
            self._rebuild_delay = 0.0
            future.set_result(None)
            return
        error = self._failed(to_sink_error(err), failure_reason(err))
        error.__cause__ = KafkaException(err)
        future.set_exception(error)

    def _expire(self, future: asyncio.Future[None]) -> None:
        if future.done():  # its waiter gave up on it
            return
        message = f"kafka: no delivery report in {self._publish_timeout}s"
        future.set_exception(self._failed(SinkUnavailable(message), "timeout"))

    # -- sending

    async def send(self, encoded: EncodedEvent) -> None:
        await self.submit(encoded)

    def submit(self, encoded: EncodedEvent) -> asyncio.Future[None]:
        """Queues the event for produce(); the future resolves with its own delivery report.

        No coroutine, task or timer per event: the delivery report settles the future, and the
        sink's one queue of deadlines bounds the wait (issue 11: a task, shield and wait_for per
        event cost about a tenth of the CPU, with two getpid() calls each on Python 3.11).
        The events submitted in one turn of the loop are produced together at its end: one by
        one between other requests' work, librdkafka's broker thread sent twice as many, smaller,
        requests (its CPU per event doubled in bench/ingest.py).
        """
        self._require_producer()
        if self._fatal is not None:
            cause = KafkaException(self._fatal)
            raise self._failed(to_sink_error(self._fatal), "fatal") from cause
        # The loop start() ran on, not asyncio.get_running_loop(): on Python 3.11 that asks
        # getpid() on every call (perf trace).
        loop = self._loop
        assert loop is not None  # noqa: S101 - a producer exists, so start() has run
        future: asyncio.Future[None] = loop.create_future()
        self._deadlines.add(future)
        if not self._unproduced:
            loop.call_soon(self._produce_submitted)
        self._unproduced.append((encoded, future))
        return future

    def _produce_submitted(self) -> None:
        batch, self._unproduced = self._unproduced, []
        producer = self._producer
        for encoded, future in batch:
            if future.done():  # its waiter gave up already (the request was cancelled)
                self._deadlines.discard(future)
                continue
            try:
                if producer is None:
                    raise self._failed(SinkUnavailable("kafka sink is stopped"), "not_started")
                topic = self._topics[encoded.event.status]
                self._produce(producer, encoded, topic, partial(self._on_delivery, future))
            except SinkError as exc:
                self._deadlines.discard(future)
                future.set_exception(exc)
            except Exception as exc:  # a bug here must fail the send, not leave it hanging
                log.exception("kafka: produce failed unexpectedly")
                self._deadlines.discard(future)
                failure = self._failed(SinkUnavailable(f"kafka: produce failed: {exc}"), "internal")
                future.set_exception(failure)
        client = self._client
        if client is not None:
            client.kick()

    def _produce(
        self,
        producer: Producer,
        encoded: EncodedEvent,
        topic: str,
        on_delivery: Callable[[KafkaError | None, object], None],
    ) -> None:
        event = encoded.event
        try:
            producer.produce(
                topic,
                value=self._encoder.frame(encoded.datum, topic),
                key=self._key(event),
                headers=self._headers(event, topic),
                on_delivery=on_delivery,
            )
        except BufferError as exc:
            failure = SinkUnavailable("kafka: the producer queue is full", detail="_QUEUE_FULL")
            raise self._failed(failure, "queue_full") from exc
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.fatal() or err.code() == KafkaError._FATAL:
                self._on_fatal(self._generation, err)  # in case poll() has not raised it yet
            raise self._failed(to_sink_error(err), failure_reason(err)) from exc

    def _key(self, event: LoginEvent) -> str:
        if self._key_by_user and event.user_name is not None:
            return event.user_name
        return event.event_id

    def _headers(self, event: LoginEvent, topic: str) -> list[tuple[str, str | bytes | None]]:
        """The same four headers for every event of one source on one topic: built once."""
        key = (topic, event.source)
        headers = self._header_lists.get(key)
        if headers is None:
            headers = [
                ("source", event.source.encode()),
                ("content-type", self._encoder.content_type.encode()),
                ("schema", self._encoder.schema_ref(topic).encode()),
                ("event-status", event.status.encode()),
            ]
            self._header_lists[key] = headers
        return headers

    def _failed(self, error: SinkError, reason: Reason) -> SinkError:
        """Counts the failure; the caller raises the result ``from`` the library's exception."""
        self._metrics.publish_errors.labels(self.name, reason).inc()
        return error

    def _require_producer(self) -> Producer:
        if self._producer is None:
            self._metrics.publish_errors.labels(self.name, "not_started").inc()
            raise SinkUnavailable("kafka sink is not started")
        return self._producer
