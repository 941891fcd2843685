"""`tail` with a Schema Registry, against real Kafka and Apicurio: foreign and hostile writers.

Anyone who can write to the topics can frame a message with the id of any schema the registry
holds. `tail` must show the events it can read, skip and report the others, and never let a
writer schema make the decoder spin.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.cimpl import NewTopic

from bridge.codec import AvroCodec
from bridge.event import LoginEvent
from bridge.registry import ConfluentRegistryEncoder, RegistryClient, frame

from .conftest import KafkaTopics
from conftest import BIN

pytestmark = [pytest.mark.kafka, pytest.mark.registry]

# Long enough for a JVM-free CLI to read two short topics; a spinning decoder never ends.
TAIL_TIMEOUT_SECONDS = 60


def zigzag(number: int) -> bytes:
    """An Avro long: zig-zag, then base-128 varint."""
    value = (number << 1) ^ (number >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def other_schema() -> dict[str, Any]:
    return {"type": "record", "name": "Other", "fields": [{"name": "y", "type": "string"}]}


def hostile_schema(codec: AvroCodec) -> dict[str, Any]:
    """Our record with one more field in front: an array of nulls, which takes no bytes per item.

    It resolves against our schema (the extra field is skipped), and skipping 2**40 items that
    take no input is a loop in fastavro's compiled code that nothing interrupts.
    """
    schema: dict[str, Any] = json.loads(json.dumps(codec.schema))
    schema["fields"] = [{"name": "pad", "type": {"type": "array", "items": "null"}}]
    schema["fields"] += codec.schema["fields"]
    return schema


def avro_body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def test_tail_skips_and_reports_messages_of_other_and_hostile_writer_schemas(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    schema_registry_url: str,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    async def scenario() -> None:
        created = kafka_topics.admin.create_topics(
            [NewTopic(t, num_partitions=1) for t in (kafka_topics.success, kafka_topics.failure)]
        )
        for future in created.values():
            future.result()
        client = RegistryClient(schema_registry_url)
        encoder = ConfluentRegistryEncoder(codec, client)
        await encoder.prepare([kafka_topics.success, kafka_topics.failure])
        other_id = client.register(f"{kafka_topics.prefix}.other-value", json.dumps(other_schema()))
        hostile_id = client.register(
            f"{kafka_topics.prefix}.hostile-value", json.dumps(hostile_schema(codec))
        )
        first, last = (e for e in make_events(4) if e.status == "failure")  # one of 4 succeeds
        messages = [
            encoder.encode(first.record, kafka_topics.failure),
            frame(other_id, avro_body(other_schema(), {"y": "not a login"})),
            frame(hostile_id, zigzag(2**40) + codec.encode_datum(first.record)),
            encoder.encode(last.record, kafka_topics.failure),
        ]
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for value in messages:  # one partition: tail reads them in this order
            producer.produce(kafka_topics.failure, value=value)
        assert producer.flush(10) == 0

        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "BRIDGE_KAFKA_TOPIC_SUCCESS": kafka_topics.success,
            "BRIDGE_KAFKA_TOPIC_FAILURE": kafka_topics.failure,
            "BRIDGE_SCHEMA_REGISTRY_URL": schema_registry_url,
        }
        tail = functools.partial(
            subprocess.run,
            [str(BIN / "login-audit-bridge"), "tail", "--from", "kafka", "--status", "failure"],
            env=env,
            capture_output=True,
            text=True,
            timeout=TAIL_TIMEOUT_SECONDS,  # kills a spinning tail
            check=False,
        )
        run = await asyncio.to_thread(tail)

        assert run.returncode == 0, run.stderr
        printed = [json.loads(line)["metadata"]["uid"] for line in run.stdout.splitlines()]
        assert printed == [first.event_id, last.event_id]
        assert f"schema id {other_id}" in run.stderr
        assert f"schema id {hostile_id}" in run.stderr
        assert "skipped 2 message(s) that did not decode" in run.stderr
        assert len(run.stderr) < 4000  # reasons, not schema dumps

    asyncio.run(scenario())
