"""Consumers nobody here wrote decode the events, against the real brokers and registry.

Confluent's own AvroDeserializer with its SchemaRegistryClient on Apicurio's Confluent-compatible
API (the path Splunk Connect for Kafka, Logstash's Avro codec and the S3/Elastic sink connectors
take), and a plain AMQP consumer that decodes with only what the message carries (its content
type and schema fingerprint header) and the published schema file. Every decoded event is then
rendered and checked against OCSF 1.3.0 (tests/ocsf.py).
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from typing import Any

import aio_pika
import fastavro
import pytest
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from bridge import ocsf_json
from bridge.codec import AvroCodec
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.registry import ConfluentRegistryEncoder, RegistryClient
from bridge.settings import Settings
from bridge.sinks.kafka import KafkaSink
from bridge.sinks.rabbitmq import RabbitMQSink

from .conftest import KafkaTopics
from conftest import REPO, encoded
from ocsf import assert_ocsf

EVENTS = 24
WAIT_SECONDS = 30.0


def print_consumer_row(consumer: str, *, sent: int, decoded: int, ocsf_valid: int) -> None:
    print(
        f"\nconsumer | sent | decoded | OCSF-valid\n{consumer} | {sent} | {decoded} | {ocsf_valid}"
    )


def _expected(codec: AvroCodec, events: list[LoginEvent]) -> dict[str, dict[str, Any]]:
    """Each event as the bridge renders it, by event id."""
    return {e.event_id: ocsf_json.render(codec.decode(codec.encode(e.record))) for e in events}


async def send_to_kafka(
    bootstrap: str,
    topics: KafkaTopics,
    registry_url: str,
    codec: AvroCodec,
    events: list[LoginEvent],
) -> None:
    settings = Settings(
        sink="kafka",
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_success=topics.success,
        kafka_topic_failure=topics.failure,
        schema_registry_url=registry_url,
    )
    encoder = ConfluentRegistryEncoder(codec, RegistryClient(registry_url))
    async with KafkaSink.from_settings(settings, encoder=encoder, metrics=Metrics()) as sink:
        for event in events:
            await sink.send(encoded(event, codec))


@pytest.mark.kafka
@pytest.mark.registry
def test_confluents_avro_deserializer_decodes_every_event_of_both_topics_as_sent(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    schema_registry_url: str,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = make_events(EVENTS)
    asyncio.run(send_to_kafka(kafka_bootstrap, kafka_topics, schema_registry_url, codec, events))

    registry = SchemaRegistryClient({"url": schema_registry_url})
    deserializer = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{kafka_topics.prefix}.confluent-deserializer",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([kafka_topics.success, kafka_topics.failure])
    decoded: dict[str, dict[str, Any]] = {}
    try:
        for _ in range(int(WAIT_SECONDS / 0.5)):
            message = consumer.poll(0.5)
            if message is None or message.error():
                if len(decoded) == len(events):
                    break
                continue
            context = SerializationContext(str(message.topic()), MessageField.VALUE)
            record = deserializer(message.value(), context)
            decoded[record["metadata"]["uid"]] = record
    finally:
        consumer.close()
        registry.close()  # its HTTP session

    expected = _expected(codec, events)
    assert {uid: ocsf_json.render(r) for uid, r in decoded.items()} == expected
    for record in decoded.values():
        assert_ocsf(record)
    with capsys.disabled():
        print_consumer_row(
            "confluent_kafka AvroDeserializer (Apicurio ccompat)",
            sent=len(events),
            decoded=len(decoded),
            ocsf_valid=len(decoded),
        )


@pytest.mark.rabbitmq
def test_a_plain_amqp_consumer_decodes_with_only_the_message_and_the_published_schema(
    rabbitmq_url: str,
    rabbitmq_names: str,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = make_events(EVENTS)
    settings = Settings(
        sink="rabbitmq",
        rabbitmq_url=rabbitmq_url,
        rabbitmq_exchange=rabbitmq_names,
        rabbitmq_declare_queues=True,
        rabbitmq_queue_success=f"{rabbitmq_names}.success",
        rabbitmq_queue_failure=f"{rabbitmq_names}.failure",
    )
    # What a consumer has: the published schema file, nothing of the bridge's code.
    published = parse_schema(json.loads((REPO / "schemas/login_audit.avsc").read_text()))
    schema_fingerprint = fingerprint(to_parsing_canonical_form(published), "CRC-64-AVRO")

    def decode(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
        assert message.content_type == "application/vnd.apache.avro+binary"
        assert message.headers["schema"] == f"CRC-64-AVRO:{schema_fingerprint}"
        body = message.body
        assert body[:2] == b"\xc3\x01" and body[2:10].hex() == schema_fingerprint
        record = fastavro.schemaless_reader(io.BytesIO(body[10:]), published, None)
        assert isinstance(record, dict)
        return record

    async def scenario() -> dict[str, dict[str, Any]]:
        async with RabbitMQSink.from_settings(
            settings, encoder=_single_object(codec), metrics=Metrics()
        ) as sink:
            for event in events:
                await sink.send(encoded(event, codec))
        decoded: dict[str, dict[str, Any]] = {}
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            for status in ("success", "failure"):
                queue = await channel.get_queue(f"{rabbitmq_names}.{status}")
                while (message := await queue.get(fail=False, no_ack=True)) is not None:
                    record = decode(message)
                    decoded[record["metadata"]["uid"]] = record
        return decoded

    decoded = asyncio.run(scenario())
    assert {uid: ocsf_json.render(r) for uid, r in decoded.items()} == _expected(codec, events)
    for record in decoded.values():
        assert_ocsf(record)
    with capsys.disabled():
        print_consumer_row(
            "plain AMQP consumer (content type + fingerprint header + published schema)",
            sent=len(events),
            decoded=len(decoded),
            ocsf_valid=len(decoded),
        )


def _single_object(codec: AvroCodec) -> Any:
    from bridge.codec import SingleObjectEncoder

    return SingleObjectEncoder(codec)
