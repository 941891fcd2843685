"""The per-event series (bridge.metrics.EventCounts) read exactly as prometheus_client's own."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bridge.metrics import LATENCY_BUCKETS, EventCounts, Metrics, listen_drops

# Below, on and above bucket bounds, the first and last bound, and past the last (+Inf only).
SECONDS = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.005, 0.0051, 0.25, 1, 3, 10, 11.5, 600]


def _library_exposition(observations: list[tuple[str, str, float]], watched: list[str]) -> bytes:
    registry = CollectorRegistry()
    received = Counter(
        "login_audit_events_received_total",
        "Login events accepted from a source and normalized, before publishing.",
        ["source", "status"],
        registry=registry,
    )
    published = Counter(
        "login_audit_events_published_total",
        "Login events made durable by a sink (fsync'd or acknowledged by the broker).",
        ["sink", "status"],
        registry=registry,
    )
    latency = Histogram(
        "login_audit_publish_duration_seconds",
        "Time from an accepted event to its durability in the sink.",
        ["sink"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    for sink in watched:
        latency.labels(sink)
    for sink, status, seconds in observations:
        received.labels("sftpgo", status).inc()
        published.labels(sink, status).inc()
        latency.labels(sink).observe(seconds)
    return generate_latest(registry)


def _counts_exposition(observations: list[tuple[str, str, float]], watched: list[str]) -> bytes:
    registry = CollectorRegistry()
    counts = EventCounts()
    registry.register(counts)
    for sink in watched:
        counts.watch_sink(sink)
    for sink, status, seconds in observations:
        counts.received("sftpgo", status)
        counts.published(sink, status, seconds)
    return generate_latest(registry)


def test_event_counts_expose_what_prometheus_client_counters_and_histogram_would() -> None:
    observations = [
        ("kafka", "success" if n % 3 else "failure", seconds) for n, seconds in enumerate(SECONDS)
    ]
    observations.append(("file", "success", 0.002))
    watched = ["kafka", "rabbitmq"]
    expected = _library_exposition(observations, watched)
    assert _counts_exposition(observations, watched) == expected
    # The comparison above is only worth something if the histogram holds all those values.
    assert b'login_audit_publish_duration_seconds_count{sink="kafka"} 13.0' in expected


def test_a_watched_sink_is_exposed_with_zeros_before_its_first_event() -> None:
    metrics = Metrics()
    metrics.events.watch_sink("kafka")
    text = generate_latest(metrics.registry).decode()
    assert 'login_audit_publish_duration_seconds_count{sink="kafka"} 0.0' in text
    assert 'login_audit_publish_duration_seconds_bucket{le="+Inf",sink="kafka"} 0.0' in text
    assert "login_audit_events_published_total{" not in text


def test_the_registry_describes_the_event_series_once_each() -> None:
    metrics = Metrics()
    names = [family.name for family in metrics.registry.collect()]
    for name in (
        "login_audit_events_received",
        "login_audit_events_published",
        "login_audit_publish_duration_seconds",
    ):
        assert names.count(name) == 1


def test_a_loop_held_up_shows_in_the_loop_lag_histogram() -> None:
    """Held for 0.3 s by a blocking call, the loop runs the watcher's timer that much late."""
    metrics = Metrics()

    async def scenario() -> None:
        watcher = asyncio.create_task(metrics.watch_loop_lag(interval=0.02))
        await asyncio.sleep(0.1)  # a few timely ticks first
        time.sleep(0.3)  # noqa: ASYNC251 - the blocking call under test
        await asyncio.sleep(0.1)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    asyncio.run(scenario())
    sample = metrics.registry.get_sample_value
    ticks = sample("login_audit_event_loop_lag_seconds_count")
    within_a_tenth = sample("login_audit_event_loop_lag_seconds_bucket", {"le": "0.1"})
    assert ticks is not None and ticks >= 5
    assert within_a_tenth == ticks - 1  # the one late tick, and only it
    assert (sample("login_audit_event_loop_lag_seconds_sum") or 0) >= 0.25


def test_a_watched_process_exports_its_cpu_memory_and_garbage_collections() -> None:
    metrics = Metrics()
    sample = metrics.registry.get_sample_value
    assert sample("process_cpu_seconds_total") is None  # only a serving worker adds them
    metrics.watch_process()
    gc.disable()  # no collection of its own between the two reads
    try:
        before = sample("python_gc_collections_total", {"generation": "0"})
        gc.collect(0)
        after = sample("python_gc_collections_total", {"generation": "0"})
    finally:
        gc.enable()
    assert after == (before or 0) + 1
    assert (sample("process_cpu_seconds_total") or 0) > 0
    assert (sample("process_resident_memory_bytes") or 0) > 0
    assert (sample("process_open_fds") or 0) > 0


def test_watching_the_process_again_keeps_one_set_of_its_families() -> None:
    metrics = Metrics()
    metrics.watch_process()
    metrics.watch_process()  # prometheus_client raises on a second registration of a name
    exposition = generate_latest(metrics.registry).decode()
    assert exposition.count("# TYPE process_cpu_seconds_total counter") == 1
    assert exposition.count("# TYPE python_gc_collections_total counter") == 1


def _overflow(listener: socket.socket, attempts: int) -> list[socket.socket]:
    """Connects ``attempts`` clients that the listener never accepts; returns them to close."""
    clients = []
    for _ in range(attempts):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(listener.getsockname())
        clients.append(client)
    return clients


def _drops_seen(metrics: Metrics, within: float = 5.0) -> float:
    deadline = time.monotonic() + within
    while True:
        drops = metrics.registry.get_sample_value("login_audit_listen_drops_total")
        if drops or time.monotonic() > deadline:
            return drops or 0.0
        time.sleep(0.01)


def test_connections_dropped_at_a_full_accept_queue_are_counted() -> None:
    metrics = Metrics()
    # A backlog of 1: the kernel queues two connections and drops the attempts past them.
    with socket.create_server(("127.0.0.1", 0), backlog=1) as listener:
        metrics.listen_drops.watch([listener])
        assert metrics.registry.get_sample_value("login_audit_listen_drops_total") == 0
        clients = _overflow(listener, 6)
        try:
            drops = _drops_seen(metrics)
            # The kernel's own count, read after the scrape (a client tries again after 1 s).
            assert 1 <= drops <= (listen_drops(listener) or 0)
        finally:
            for client in clients:
                client.close()


def test_a_closed_listener_keeps_what_it_dropped_in_the_total() -> None:
    """A restart in one process serves on new sockets: the counter does not go back."""
    metrics = Metrics()
    listener = socket.create_server(("127.0.0.1", 0), backlog=1)
    metrics.listen_drops.watch([listener])
    clients = _overflow(listener, 6)
    try:
        drops = _drops_seen(metrics)
        assert drops >= 1
    finally:
        for client in clients:
            client.close()
        listener.close()
    assert listen_drops(listener) is None
    with socket.create_server(("127.0.0.1", 0)) as again:
        metrics.listen_drops.watch([again])
        assert metrics.registry.get_sample_value("login_audit_listen_drops_total") == drops


def test_without_a_listener_there_is_no_drop_sample_rather_than_a_zero() -> None:
    metrics = Metrics()
    assert metrics.registry.get_sample_value("login_audit_listen_drops_total") is None
    exposition = generate_latest(metrics.registry).decode()
    assert "login_audit_listen_drops_total" not in exposition
