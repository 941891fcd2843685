"""When the Kafka sink serves librdkafka's delivery reports (bridge.sinks.kafka._Client).

The reports wait in librdkafka's queue until ``poll()`` runs them on the loop. The producer here
only counts those calls: what is under test is the schedule, not Kafka (the broker tests send
through a real one).
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from bridge.codec import AvroCodec
from bridge.encode import build_wire_encoder
from bridge.errors import SinkUnavailable
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.sinks.kafka import (
    BUSY_POLL_SECONDS,
    CHECK_SLICE_SECONDS,
    KafkaSink,
    _Client,
    cluster_metadata,
    refusal,
)


class CountingProducer:
    def __init__(self) -> None:
        self.polls = 0
        self.in_flight = 1

    def poll(self, timeout: float) -> int:
        assert timeout == 0  # never blocks the loop
        self.polls += 1
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return self.in_flight


def _client(producer: CountingProducer) -> _Client:
    def on_fatal(generation: int, err: Any) -> None:
        raise AssertionError(f"no fatal error here: {err}")

    return _Client(cast(Producer, producer), 1, on_fatal, asyncio.get_running_loop())


def test_each_produced_batch_serves_the_queued_reports_without_waiting_for_the_timer() -> None:
    async def scenario() -> tuple[int, int, int]:
        producer = CountingProducer()
        client = _client(producer)
        client.kick()  # a batch went out
        at_once = producer.polls
        client.kick()  # the next turn's batch, the short timer not due yet
        next_batch = producer.polls
        await asyncio.sleep(BUSY_POLL_SECONDS * 5)  # the timer polls while messages are out
        await client.close(1.0)
        return at_once, next_batch, producer.polls

    at_once, next_batch, later = asyncio.run(scenario())
    assert (at_once, next_batch) == (1, 2)
    assert later > next_batch


def test_a_closed_client_leaves_the_last_reports_to_its_flush() -> None:
    async def scenario() -> int:
        producer = CountingProducer()
        client = _client(producer)
        await client.close(1.0)
        client.kick()  # a batch produced while the sink closes
        return producer.polls

    assert asyncio.run(scenario()) == 0


class SlowCluster:
    """A producer whose cluster answers metadata requests only after ``answers_after`` seconds
    (never, if None): a request with a shorter timeout blocks that long and fails, as
    librdkafka's does."""

    def __init__(self, answers_after: float | None) -> None:
        self.answers_after = answers_after
        self.timeouts: list[float] = []

    def list_topics(self, timeout: float) -> Any:
        self.timeouts.append(timeout)
        if self.answers_after is None or timeout < self.answers_after:
            time.sleep(timeout)
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        time.sleep(self.answers_after)
        return SimpleNamespace(topics={"audit.success": None, "audit.failure": None})


def _check(cluster: SlowCluster, publish_timeout: float) -> None:
    settings = Settings(
        sink="kafka", kafka_topic_success="audit.success", kafka_topic_failure="audit.failure"
    )
    codec = AvroCodec()
    metrics = Metrics()
    sink = KafkaSink.from_settings(
        settings.model_copy(update={"publish_timeout_seconds": publish_timeout}),
        encoder=build_wire_encoder(settings, codec),
        metrics=metrics,
    )
    sink._require_producer = lambda: cast(Producer, cluster)  # type: ignore[method-assign]
    asyncio.run(sink._check_cluster())


def test_the_start_up_check_asks_in_slices_that_grow_until_a_slow_cluster_answers() -> None:
    cluster = SlowCluster(answers_after=0.9)  # slower than the first slice
    _check(cluster, publish_timeout=10.0)
    assert cluster.timeouts[0] == CHECK_SLICE_SECONDS
    assert cluster.timeouts == sorted(cluster.timeouts)  # each as long as the wait so far
    assert cluster.timeouts[-1] >= 0.9
    assert len(cluster.timeouts) <= 3  # 0.5, 0.5, then about 1


def test_the_start_up_check_gives_up_at_the_publish_timeout_naming_the_servers() -> None:
    cluster = SlowCluster(answers_after=None)
    with pytest.raises(SinkUnavailable, match="no answer from"):
        _check(cluster, publish_timeout=1.5)
    assert 1.4 <= sum(cluster.timeouts) <= 1.5 + 1e-6  # the slices end at the deadline


class BusyCluster:
    """A producer whose metadata request is in its thread until ``release`` is set."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.returned = False

    def list_topics(self, timeout: float) -> Any:
        self.started.set()
        self.release.wait(5)
        self.returned = True
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))


def test_a_cancelled_wait_for_the_cluster_returns_only_once_its_request_has() -> None:
    """The caller closes the client after a cancel: not while a thread still uses it."""

    async def scenario() -> bool:
        cluster = BusyCluster()
        waiting = asyncio.create_task(cluster_metadata(cast(Producer, cluster), within=10.0))
        await asyncio.to_thread(cluster.started.wait, 5)
        waiting.cancel()
        asyncio.get_running_loop().call_later(0.3, cluster.release.set)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return cluster.returned

    assert asyncio.run(scenario())


def test_a_wait_for_the_cluster_ends_after_the_slice_in_which_the_broker_refused_the_client() -> (
    None
):
    """What the error callback heard (here: at once) ends the wait with that error; the
    requests alone would have gone on to the deadline."""
    refusal = KafkaError(KafkaError._AUTHENTICATION, "Authentication failed")
    cluster = SlowCluster(answers_after=None)

    async def scenario() -> None:
        await cluster_metadata(cast(Producer, cluster), within=10.0, refused=lambda: refusal)

    with pytest.raises(KafkaException) as caught:
        asyncio.run(scenario())
    assert caught.value.args[0] is refusal
    assert cluster.timeouts == [CHECK_SLICE_SECONDS]


@pytest.mark.parametrize(
    ("code", "text", "refused"),
    [
        (
            KafkaError._AUTHENTICATION,
            "SASL authentication error: Authentication failed",
            "credentials",
        ),
        (KafkaError.SASL_AUTHENTICATION_FAILED, "Authentication failed", "credentials"),
        # The bridge does not trust the broker's certificate (librdkafka 2.x, OpenSSL 3).
        (
            KafkaError._SSL,
            "ssl://127.0.0.1:19095/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
            "certificate verify failed: broker certificate could not be verified",
            "certificate",
        ),
        # The broker's alert about the bridge's certificate, read after a TLS 1.3 handshake.
        (
            KafkaError._TRANSPORT,
            "ssl://127.0.0.1:19095/bootstrap: Receive failed: error:0A000412:SSL routines::"
            "ssl/tls alert bad certificate: SSL alert number 42",
            "certificate",
        ),
        (KafkaError._TRANSPORT, "Receive failed: tlsv13 alert certificate required", "certificate"),
        # A broker dropping the connection mid-handshake (restarting) may come back: no refusal.
        (
            KafkaError._SSL,
            "ssl://127.0.0.1:19095/bootstrap: SSL handshake failed: Disconnected",
            None,
        ),
        (KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:19095 failed: Connection refused", None),
        (KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down", None),
    ],
    ids=lambda value: value if isinstance(value, str | None) else None,
)
def test_only_refused_credentials_and_failed_certificate_checks_end_a_wait_early(
    code: int, text: str, refused: str | None
) -> None:
    assert refusal(KafkaError(code, text)) == refused
