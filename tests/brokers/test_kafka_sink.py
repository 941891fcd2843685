"""The Kafka sink against a real broker: topics, keys, headers, refusals and metrics."""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaException

# confluent_kafka.admin re-exports ConfigResource without declaring it (as NewTopic, see
# bridge/sinks/kafka.py); the type stubs name it here.
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewTopic

from bridge.codec import CONTENT_TYPE, AvroCodec, SingleObjectEncoder
from bridge.consume import ConsumedEvent, KafkaReader, tail, tail_broker
from bridge.errors import ConfigError, SinkRejected, SinkUnavailable
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.registry import ConfluentRegistryEncoder, RegistryClient
from bridge.settings import Settings
from bridge.sinks.kafka import KafkaSink

from .conftest import KafkaTopics, login_events
from conftest import encoded
from support import free_port

pytestmark = [pytest.mark.kafka]

WAIT_SECONDS = 15.0


def kafka_settings(bootstrap: str, topics: KafkaTopics, **overrides: Any) -> Settings:
    return Settings(
        sink="kafka",
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_success=topics.success,
        kafka_topic_failure=topics.failure,
        **overrides,
    )


def kafka_sink(settings: Settings, metrics: Metrics, codec: AvroCodec) -> KafkaSink:
    return KafkaSink.from_settings(settings, encoder=SingleObjectEncoder(codec), metrics=metrics)


async def read_all(settings: Settings, count: int) -> list[ConsumedEvent]:
    async with KafkaReader(settings) as reader:
        return [e async for e in reader.events(limit=count, idle_timeout=WAIT_SECONDS)]


def publish_and_read_back(
    settings: Settings, metrics: Metrics, codec: AvroCodec, events: list[LoginEvent]
) -> list[ConsumedEvent]:
    """Publishes ``events`` through a started sink, stops it, then reads them from the topics
    (through the same settings: the same listener and credentials as the sink)."""

    async def scenario() -> list[ConsumedEvent]:
        async with kafka_sink(settings, metrics, codec) as sink:
            for event in events:
                await sink.send(encoded(event))
        return await read_all(settings, len(events))

    return asyncio.run(scenario())


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


async def eventually(condition: Callable[[], bool]) -> None:
    """Waits up to WAIT_SECONDS for a condition that librdkafka makes true in the background."""
    for _ in range(int(WAIT_SECONDS / 0.1)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"still false after {WAIT_SECONDS}s")


def make_one_event() -> LoginEvent:
    return login_events(1)[0]


def test_each_message_is_keyed_by_event_id_and_carries_the_headers(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    async def scenario() -> None:
        settings = kafka_settings(kafka_bootstrap, kafka_topics)
        events = make_events(6)
        async with kafka_sink(settings, metrics, codec) as sink:
            for event in events:
                await sink.send(encoded(event))

        by_id = {e.event_id: e for e in events}
        found = await read_all(settings, len(events))
        assert sorted(m.key or "" for m in found) == sorted(by_id)
        for message in found:
            event = by_id[message.key or ""]
            topic = kafka_topics.success if event.status == "success" else kafka_topics.failure
            assert message.destination == topic
            assert message.headers == {
                "source": event.source,
                "content-type": CONTENT_TYPE,
                "schema": f"CRC-64-AVRO:{codec.fingerprint_hex}",
                "event-status": event.status,
            }

    asyncio.run(scenario())


def test_messages_are_keyed_by_user_name_when_configured_and_by_event_id_without_one(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    async def scenario() -> None:
        settings = kafka_settings(kafka_bootstrap, kafka_topics, kafka_key="user")
        nameless, named = make_events(2)  # the first one is an SFTPGo no_auth_tried: no user name
        assert nameless.user_name is None
        async with kafka_sink(settings, metrics, codec) as sink:
            await sink.send(encoded(nameless))
            await sink.send(encoded(named))

        keys = {m.record["metadata"]["uid"]: m.key for m in await read_all(settings, 2) if m.record}
        assert keys == {nameless.event_id: nameless.event_id, named.event_id: "user1"}

    asyncio.run(scenario())


@pytest.mark.parametrize("configured", [3, None], ids=["set", "unset"])
def test_start_creates_missing_topics_with_the_configured_partitions_or_the_brokers_default(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    configured: int | None,
) -> None:
    async def scenario() -> None:
        overrides = {} if configured is None else {"kafka_topic_partitions": configured}
        settings = kafka_settings(kafka_bootstrap, kafka_topics, **overrides)
        async with kafka_sink(settings, metrics, codec):
            pass
        metadata = topics_once_listed(kafka_topics, (kafka_topics.success, kafka_topics.failure))
        expected = configured or brokers_default_partitions(kafka_topics)
        assert len(metadata[kafka_topics.success].partitions) == expected
        assert len(metadata[kafka_topics.failure].partitions) == expected

    asyncio.run(scenario())


def brokers_default_partitions(topics: KafkaTopics) -> int:
    """num.partitions of a broker of the cluster, as it reports it."""
    broker = next(iter(topics.admin.list_topics(timeout=10).brokers))
    resource = ConfigResource(ConfigResource.Type.BROKER, str(broker))
    configs = topics.admin.describe_configs([resource])[resource].result(timeout=10)
    return int(configs["num.partitions"].value)


def topics_once_listed(topics: KafkaTopics, names: tuple[str, ...]) -> dict[str, Any]:
    """The cluster's topic metadata once it lists ``names``. The controller has created a topic
    when create_topics answers; the broker that answers a metadata request may learn of it a
    moment later (one CI run read the metadata before it did)."""
    deadline = time.monotonic() + 10
    while True:
        metadata: dict[str, Any] = topics.admin.list_topics(timeout=10).topics
        if all(name in metadata for name in names) or time.monotonic() > deadline:
            return metadata
        time.sleep(0.1)


def test_a_replication_factor_the_cluster_cannot_honour_now_is_retried_not_fatal(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
) -> None:
    """INVALID_REPLICATION_FACTOR also comes from a cluster with a broker down (a rolling
    restart): start() fails as SinkUnavailable, so the service keeps trying (and spooling)."""

    async def scenario() -> None:
        settings = kafka_settings(kafka_bootstrap, kafka_topics, kafka_topic_replication=3)
        sink = kafka_sink(settings, metrics, codec)  # the test cluster has one broker

        with pytest.raises(SinkUnavailable, match="replication") as caught:
            await sink.start()

        assert caught.value.detail == "INVALID_REPLICATION_FACTOR"
        assert not sink.ready()

    asyncio.run(scenario())


@pytest.mark.registry
def test_a_registry_that_refuses_at_start_is_a_config_error_and_closes_the_producer(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    schema_registry_url: str,
    metrics: Metrics,
    codec: AvroCodec,
) -> None:
    """The registry's 404 (here: a URL without the Confluent API path) is for the operator to
    fix; start() says so with a ConfigError, which the service turns into its config exit."""

    async def scenario() -> None:
        settings = kafka_settings(kafka_bootstrap, kafka_topics)
        root = schema_registry_url.split("/apis/")[0]
        encoder = ConfluentRegistryEncoder(codec, RegistryClient(root, timeout=5))
        sink = KafkaSink.from_settings(settings, encoder=encoder, metrics=metrics)

        with pytest.raises(ConfigError, match="Confluent-compatible API"):
            await sink.start()

        assert not sink.ready()
        with pytest.raises(SinkUnavailable, match="not started"):
            await sink.send(encoded(make_one_event()))

    asyncio.run(scenario())


def test_an_event_larger_than_the_topic_allows_is_rejected_and_counted(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    async def scenario() -> None:
        small = NewTopic(
            kafka_topics.success,
            num_partitions=1,
            replication_factor=1,
            config={"max.message.bytes": "1024"},
        )
        for future in kafka_topics.admin.create_topics([small]).values():
            future.result()
        event = make_events(2)[1]
        assert event.status == "success"
        record = copy.deepcopy(event.record)
        record["user"]["name"] = os.urandom(
            4096
        ).hex()  # random: compression cannot shrink it enough
        too_large = LoginEvent(record=record, source=event.source)

        async with kafka_sink(
            kafka_settings(kafka_bootstrap, kafka_topics), metrics, codec
        ) as sink:
            with pytest.raises(SinkRejected, match="MSG_SIZE_TOO_LARGE") as caught:
                await sink.send(encoded(too_large))
            await sink.send(encoded(event))  # the producer goes on with the next event

        assert isinstance(caught.value.__cause__, KafkaException)
        assert (
            metrics.registry.get_sample_value(
                "login_audit_publish_errors_total", {"sink": "kafka", "reason": "too_large"}
            )
            == 1
        )

    asyncio.run(scenario())


def test_an_event_for_a_missing_topic_fails_as_unavailable_within_the_publish_timeout(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    """The broker does not create topics on demand; the event must go to the spool, not vanish."""

    async def scenario() -> None:
        settings = kafka_settings(
            kafka_bootstrap, kafka_topics, kafka_create_topics=False, publish_timeout_seconds=2
        )
        async with kafka_sink(settings, metrics, codec) as sink:
            with pytest.raises(SinkUnavailable, match="_MSG_TIMED_OUT"):
                await sink.send(encoded(make_events(2)[1]))
        assert (
            metrics.registry.get_sample_value(
                "login_audit_publish_errors_total", {"sink": "kafka", "reason": "timeout"}
            )
            == 1
        )

    asyncio.run(scenario())


def test_start_fails_as_unavailable_when_no_broker_answers(
    metrics: Metrics,
    codec: AvroCodec,
) -> None:
    async def scenario() -> None:
        settings = Settings(
            sink="kafka",
            kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            publish_timeout_seconds=1,
        )
        sink = kafka_sink(settings, metrics, codec)
        with pytest.raises(SinkUnavailable, match=r"no answer from 127\.0\.0\.1"):
            await sink.start()
        assert not sink.ready()
        assert {"transport", "all_brokers_down"} <= _error_types(sink)

    asyncio.run(scenario())


def _error_types(sink: KafkaSink) -> set[str]:
    return {
        sample.labels["type"]
        for family in sink.statistics.collect()
        if family.name == "login_audit_kafka_errors"
        for sample in family.samples
    }


def test_librdkafka_statistics_are_served_while_started_and_withdrawn_at_stop(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    async def scenario() -> None:
        settings = kafka_settings(kafka_bootstrap, kafka_topics, kafka_statistics_interval_ms=100)
        broker = {"broker": kafka_bootstrap}
        async with kafka_sink(settings, metrics, codec) as sink:
            await sink.send(encoded(make_events(2)[1]))
            # A statistics snapshot taken while the event was in flight may still be the latest.
            await eventually(lambda: sample(metrics, "login_audit_kafka_queue_messages") == 0)
            assert sample(metrics, "login_audit_kafka_broker_up", broker) == 1
            assert sample(metrics, "login_audit_kafka_queue_bytes") == 0
        assert sample(metrics, "login_audit_kafka_broker_up", broker) is None
        assert sample(metrics, "login_audit_kafka_queue_messages") is None

    asyncio.run(scenario())


def test_tail_reads_both_status_topics_from_the_beginning(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
    decoded: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    async def scenario() -> None:
        settings = kafka_settings(kafka_bootstrap, kafka_topics)
        events = make_events(4)
        async with kafka_sink(settings, metrics, codec) as sink:
            await asyncio.gather(*(sink.send(encoded(e)) for e in events))

        tailed = [
            e async for e in tail(settings, broker="kafka", limit=4, idle_timeout=WAIT_SECONDS)
        ]
        assert sorted((e.record for e in tailed), key=_uid) == sorted(
            (decoded(e.record) for e in events), key=_uid
        )

    asyncio.run(scenario())


def test_cli_tail_of_one_status_prints_its_records_and_ends_without_follow(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    async def scenario() -> None:
        settings = kafka_settings(kafka_bootstrap, kafka_topics)
        events = make_events(7)
        async with kafka_sink(settings, metrics, codec) as sink:
            await asyncio.gather(*(sink.send(encoded(e)) for e in events))

        # tail_broker runs its own event loop, as the CLI calls it: keep it off this test's loop.
        records = await asyncio.to_thread(
            lambda: list(tail_broker(settings, source="kafka", status="failure"))
        )
        expected = sorted(e.event_id for e in events if e.status == "failure")
        assert sorted(r["metadata"]["uid"] for r in records) == expected
        assert len(records) == 3

    asyncio.run(scenario())


def test_reading_to_the_end_ends_at_every_partitions_end_empty_ones_included(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    """The end is the broker's end-of-partition, not a quiet spell: a reader told to read to
    the end returns once each partition reported it. Had it waited for quiet instead, the
    generous timeout here would have run out and raised SinkUnavailable."""

    async def scenario() -> None:
        settings = kafka_settings(kafka_bootstrap, kafka_topics)
        empty = NewTopic(kafka_topics.success, num_partitions=3, replication_factor=1)
        for future in kafka_topics.admin.create_topics([empty]).values():
            future.result()
        topics_once_listed(kafka_topics, (kafka_topics.success,))
        failures = [e for e in make_events(8) if e.status == "failure"]
        async with kafka_sink(settings, metrics, codec) as sink:
            await asyncio.gather(*(sink.send(encoded(e)) for e in failures))

        async with KafkaReader(settings) as reader:
            read = [e async for e in reader.events(idle_timeout=WAIT_SECONDS, to_end=True)]
        assert sorted(_uid(e.record) for e in read) == sorted(e.event_id for e in failures)
        assert {e.destination for e in read} == {kafka_topics.failure}

    asyncio.run(scenario())


def _uid(record: dict[str, Any] | None) -> str:
    assert record is not None
    uid: str = record["metadata"]["uid"]
    return uid


def test_a_full_producer_queue_fails_only_the_sends_past_it_as_queue_full(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    """Sends submitted in one turn of the loop are produced together; each one librdkafka
    refuses fails on its own (a retriable error: the pipeline spools it), the rest arrive."""

    async def scenario() -> list[BaseException | None]:
        settings = kafka_settings(kafka_bootstrap, kafka_topics)
        sink = kafka_sink(settings, metrics, codec)
        sink._config["queue.buffering.max.messages"] = 2
        async with sink:
            sends = [sink.submit(encoded(event)) for event in make_events(5)]
            return await asyncio.gather(*sends, return_exceptions=True)

    results = asyncio.run(scenario())
    assert results[:2] == [None, None]
    for refused in results[2:]:
        assert isinstance(refused, SinkUnavailable)
        assert refused.detail == "_QUEUE_FULL"
    assert (
        sample(
            metrics, "login_audit_publish_errors_total", {"sink": "kafka", "reason": "queue_full"}
        )
        == 3
    )
