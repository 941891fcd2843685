"""Every Prometheus metric of the bridge, created on a registry the caller owns."""

from __future__ import annotations

import asyncio
import bisect
import platform
import socket
import struct
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from bridge import __version__

# The *_created series double the exposition for no use on dashboards or alerts.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Publishing is an fsync or a broker round trip: from sub-millisecond to seconds when a broker
# is failing over.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# How late the event loop runs a timer it set: every request on a worker waits as long. Near a
# millisecond (libuv's timer resolution) on a worker with CPU to spare.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LOOP_LAG_INTERVAL_SECONDS = 0.1

# Linux's SO_MEMINFO (since 4.6; Python names it on no platform): a socket's memory counters,
# ending with its drops (SK_MEMINFO_DROPS), which on a listening TCP socket are the connection
# attempts it dropped.
SO_MEMINFO = 55
_SK_MEMINFO_DROPS = 8
_SK_MEMINFO_BYTES = 4 * (_SK_MEMINFO_DROPS + 1)


class SpoolState(Protocol):
    """What the bridge spool's gauges read, at every scrape."""

    depth: int
    dead_letters: int
    size_bytes: int

    @property
    def oldest_age_seconds(self) -> float: ...


class Metrics:
    """The bridge's metrics; one instance per registry (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._watching_process = False
        self.events = EventCounts()
        r.register(self.events)
        self.listen_drops = ListenDrops()
        r.register(self.listen_drops)
        self.file_sink_files_deleted = Counter(
            "login_audit_file_sink_files_deleted_total",
            "Closed event files the file sink deleted under its retention limits.",
            ["reason"],
            registry=r,
        )
        self.publish_errors = Counter(
            "login_audit_publish_errors_total",
            "Failed attempts to make an event durable, by sink and error reason.",
            ["sink", "reason"],
            registry=r,
        )
        self.requests_rejected = Counter(
            "login_audit_requests_rejected_total",
            "Hook requests answered with an error, by reason "
            "(malformed, invalid_field, too_large, media_type, unauthorized, overloaded, "
            "sink_unavailable, sink_rejected, not_found, method_not_allowed).",
            ["reason"],
            registry=r,
        )
        self.connections_closed = Counter(
            "login_audit_connections_closed_total",
            "Client connections the bridge closed itself, by reason (headers_too_large: 431, "
            "header_timeout and body_timeout: 408 or a silent close, invalid_http: 400, "
            "too_many_connections: 503 before reading, evicted: closed to make room for a new "
            "one, handshake_timeout: no TLS handshake within the header timeout, "
            "tls_handshake_failed: a TLS handshake the bridge refused, as a client certificate "
            "it does not trust).",
            ["reason"],
            registry=r,
        )
        self.tls_certificate_renewals = Counter(
            "login_audit_tls_certificate_renewals_total",
            "Times the bridge found TLS files it had loaded changed, by whose (https: the "
            "listener's certificate, key and client CA; kafka, rabbitmq: the sink's CA, "
            "certificate and key) and result (renewed: new connections use them; failed: they "
            "do not load, and those loaded before stay in use).",
            ["files", "result"],
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "login_audit_requests_in_flight",
            "Hook events being made durable now (authenticated, body read, not yet answered).",
            registry=r,
        )
        self.spool_events = Gauge(
            "login_audit_spool_events",
            "Events waiting in a spool: 'hook' is the shim's directory, 'bridge' the bridge's own.",
            ["spool"],
            registry=r,
        )
        self.spool_oldest_age = Gauge(
            "login_audit_spool_oldest_age_seconds",
            "Age of the oldest event waiting in a spool (0 when empty).",
            ["spool"],
            registry=r,
        )
        self.spool_rejected = Counter(
            "login_audit_spool_rejected_total",
            "Spooled hook files that could not be parsed, moved aside to the spool's rejected/.",
            registry=r,
        )
        self.spool_dead_letters = Counter(
            "login_audit_spool_dead_letters_total",
            "Spooled events moved to the spool's dead_letters table: refused for good by the sink, "
            "or unreadable (e.g. written with a schema the spool has no record of).",
            registry=r,
        )
        self.spool_dead_letter_events = Gauge(
            "login_audit_spool_dead_letter_events",
            "Events in the bridge spool's dead_letters table now (counted from the file at start); "
            "`login-audit-bridge dead-letters requeue` sends them again.",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "login_audit_spool_bytes",
            "Disk space the bridge spool uses (SQLite file, write-ahead log and index, less free "
            "pages); BRIDGE_SPOOL_MAX_BYTES limits it.",
            registry=r,
        )
        self.background_task_failures = Counter(
            "login_audit_background_task_failures_total",
            "Failures of a background task (sink-start, replay, hook-spool, loop-lag, gc); each is "
            "logged and the task restarts with backoff.",
            ["task"],
            registry=r,
        )
        self.background_task_up = Gauge(
            "login_audit_background_task_up",
            "1 while a background task runs, 0 from its failure until it has run again for a "
            "while; /readyz is 503 meanwhile.",
            ["task"],
            registry=r,
        )
        self.kafka_producer_rebuilds = Counter(
            "login_audit_kafka_producer_rebuilds_total",
            "Kafka producers replaced after a fatal error (the old one could never send again).",
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "login_audit_event_loop_lag_seconds",
            "How much later than asked the event loop ran a timer it sets every "
            f"{LOOP_LAG_INTERVAL_SECONDS:g} s: every request waits as long. Tens of milliseconds "
            "and more: the worker is past the CPU it has, or something holds its loop (a long "
            "collection, the machine's CPUs busy elsewhere).",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.build_info = Info(
            "login_audit_build",
            "Version of the bridge and of Python.",
            registry=r,
        )
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        for spool in ("hook", "bridge"):
            self.spool_events.labels(spool).set(0)
            self.spool_oldest_age.labels(spool).set(0)

    async def watch_loop_lag(self, interval: float = LOOP_LAG_INTERVAL_SECONDS) -> None:
        """Observes the running loop's lag every ``interval`` seconds until cancelled (the
        service runs it as a supervised background task)."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + interval
            await asyncio.sleep(interval)
            self.event_loop_lag.observe(max(0.0, loop.time() - asked))

    def watch_process(self) -> None:
        """Adds prometheus_client's own families for the serving process: ``process_*`` (CPU
        seconds, resident memory, open files) and ``python_gc_*`` (collections and objects
        collected, by generation). Read at each scrape; with several workers each sample
        carries its worker's label, so CPU over events received is each worker's CPU per event,
        and collections that find nothing are pauses every request on the worker waited for.

        Once per registry: serving again with the same Metrics (a restart in one process) keeps
        the families it has, where registering them twice would raise."""
        if self._watching_process:
            return
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._watching_process = True

    def watch_spool(self, spool: SpoolState) -> None:
        """The bridge spool's gauges read the spool at each scrape: true from start-up, whatever
        the replayer is doing."""
        self.spool_events.labels("bridge").set_function(lambda: spool.depth)
        self.spool_oldest_age.labels("bridge").set_function(lambda: spool.oldest_age_seconds)
        self.spool_dead_letter_events.set_function(lambda: spool.dead_letters)
        self.spool_bytes.set_function(lambda: spool.size_bytes)


def listen_drops(sock: socket.socket) -> int | None:
    """The connection attempts the kernel dropped at the listening TCP socket ``sock``, or None
    where it does not say (not Linux, a closed socket)."""
    try:
        meminfo = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _SK_MEMINFO_BYTES)
    except OSError:
        return None
    if len(meminfo) < _SK_MEMINFO_BYTES:
        return None
    return int(struct.unpack_from("I", meminfo, 4 * _SK_MEMINFO_DROPS)[0])


class ListenDrops:
    """``login_audit_listen_drops_total``: connections the kernel dropped at the hook listeners.

    A client's connection waits in its listener's accept queue until the worker's event loop
    takes it; with the queue full (the listen backlog, 2048), the kernel drops the attempt and
    the client tries again 1 s later, then 3 s, 7 s. The bridge never sees those connections,
    so no latency or rejection metric of its own counts them: the kernel's count does. Each is a
    hook that waited a second or more to be heard (ingest benchmark, issue 11: a worker taking
    new connections faster than it could serve them dropped 54,211 attempts in 20 s, and its
    p99 went from 25 ms to 8 s). Per worker, as each has its own listener.

    Read from each listening socket at every scrape; what a closed listener counted last stays
    in the total, so the counter never goes back while the process lives.
    """

    NAME = "login_audit_listen_drops"
    HELP = (
        "Connection attempts the kernel dropped at the hook listener because its accept queue "
        "(or SYN queue) was full: the worker took new connections slower than they came. Each "
        "client tried again 1 s later, then 3 s; no other metric sees them. Linux only."
    )

    def __init__(self) -> None:
        self._listeners: list[socket.socket] = []
        self._last: list[int | None] = []

    def watch(self, listeners: Iterable[socket.socket]) -> None:
        """Counts these listening TCP sockets' drops from now on, beside those watched before."""
        for sock in listeners:
            self._listeners.append(sock)
            self._last.append(listen_drops(sock))

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.NAME, self.HELP)

    def collect(self) -> Iterator[Metric]:
        for n, sock in enumerate(self._listeners):
            drops = listen_drops(sock)
            if drops is not None:
                self._last[n] = drops
        known = [drops for drops in self._last if drops is not None]
        if known:  # where the kernel says nothing, no sample: not a zero that means "none"
            yield CounterMetricFamily(self.NAME, self.HELP, value=sum(known))


class EventCounts:
    """The series every event counts: received, published, and how long publishing took.

    Kept as plain numbers and turned into Prometheus metrics at each scrape (a custom collector,
    registered on the bridge's registry). prometheus_client's Counter and Histogram take a lock
    on every ``inc`` and ``observe``: four per event, about 3 % of a worker's CPU under load
    (py-spy, issue 11). Every event is counted on the event loop's thread, and the scrape reads
    there too (the /metrics route), so nothing here needs a lock; a count from another thread
    would need one.
    """

    def __init__(self) -> None:
        self._received: dict[tuple[str, str], int] = {}
        self._published: dict[tuple[str, str], int] = {}
        self._latency: dict[str, _Latency] = {}

    def received(self, source: str, status: str) -> None:
        key = (source, status)
        self._received[key] = self._received.get(key, 0) + 1

    def published(self, sink: str, status: str, seconds: float) -> None:
        key = (sink, status)
        self._published[key] = self._published.get(key, 0) + 1
        latency = self._latency.get(sink) or self.watch_sink(sink)
        # A value equal to a bound belongs to that bucket (le: less than or equal).
        latency.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.total += seconds

    def watch_sink(self, sink: str) -> _Latency:
        """Exposes the sink's latency histogram from now on, with zeros until its first event."""
        if sink not in self._latency:
            self._latency[sink] = _Latency()
        return self._latency[sink]

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        received, published, latency = self._families()
        for (source, status), count in list(self._received.items()):
            received.add_metric([source, status], count)
        for (sink, status), count in list(self._published.items()):
            published.add_metric([sink, status], count)
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        for sink, histogram in list(self._latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, histogram.counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            latency.add_metric([sink], buckets, histogram.total)
        yield received
        yield published
        yield latency

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(
                "login_audit_events_received",
                "Login events accepted from a source and normalized, before publishing.",
                labels=["source", "status"],
            ),
            CounterMetricFamily(
                "login_audit_events_published",
                "Login events made durable by a sink (fsync'd or acknowledged by the broker).",
                labels=["sink", "status"],
            ),
            HistogramMetricFamily(
                "login_audit_publish_duration_seconds",
                "Time from an accepted event to its durability in the sink.",
                labels=["sink"],
            ),
        )


class _Latency:
    """One sink's publish latencies: a count per bucket (not cumulative; the last is +Inf's),
    and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
