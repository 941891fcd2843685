"""librdkafka's statistics and error callbacks, turned into Prometheus metrics on scrape."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from confluent_kafka import KafkaError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class KafkaStatistics(Collector):
    """librdkafka's statistics and error callbacks, exposed as Prometheus metrics on scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {}
        self._errors: dict[str, int] = {}

    def observe(self, stats: dict[str, Any]) -> None:
        with self._lock:
            self._stats = stats

    def count_error(self, err: KafkaError) -> None:
        kind = err.name().lstrip("_").lower()
        with self._lock:
            self._errors[kind] = self._errors.get(kind, 0) + 1

    def describe(self) -> Iterator[Metric]:
        yield from self._families({}, {})

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            stats, errors = self._stats, dict(self._errors)
        yield from self._families(stats, errors)

    def _families(self, stats: dict[str, Any], errors: dict[str, int]) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "login_audit_kafka_queue_messages",
            "Messages in the producer's queues, waiting for a broker acknowledgement.",
        )
        queue_bytes = GaugeMetricFamily(
            "login_audit_kafka_queue_bytes", "Bytes of the messages in the producer's queues."
        )
        if stats:
            queue.add_metric([], stats.get("msg_cnt", 0))
            queue_bytes.add_metric([], stats.get("msg_size", 0))
        rtt = GaugeMetricFamily(
            "login_audit_kafka_broker_rtt_seconds",
            "Average request round-trip time to each broker over the last statistics interval.",
            labels=["broker"],
        )
        up = GaugeMetricFamily(
            "login_audit_kafka_broker_up",
            "1 while the producer's connection to the broker is up.",
            labels=["broker"],
        )
        for broker in _known_brokers(stats):
            rtt.add_metric([broker["nodename"]], broker.get("rtt", {}).get("avg", 0) / 1e6)
            up.add_metric([broker["nodename"]], 1.0 if broker.get("state") == "UP" else 0.0)
        failures = CounterMetricFamily(
            "login_audit_kafka_errors",
            "Client-level errors reported by librdkafka (connection, authentication), by type.",
            labels=["type"],
        )
        for kind, count in sorted(errors.items()):
            failures.add_metric([kind], count)
        yield from (queue, queue_bytes, rtt, up, failures)


def _known_brokers(stats: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Real brokers only: the bootstrap entries have no node id yet."""
    for broker in stats.get("brokers", {}).values():
        if broker.get("nodeid", -1) >= 0:
            yield broker


def any_broker_up(stats: dict[str, Any]) -> bool:
    return any(b.get("state") == "UP" for b in _known_brokers(stats))
