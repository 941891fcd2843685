"""One contract for every sink: what `send` acknowledged is stored once, under its status."""

from __future__ import annotations

import abc
import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.codec import AvroCodec, SingleObjectEncoder
from bridge.consume import KafkaReader, RabbitMQReader
from bridge.errors import SinkUnavailable
from bridge.event import LoginEvent, Status
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.sinks.base import Sink
from bridge.sinks.memory import MemorySink

from conftest import encoded

STATUSES: tuple[Status, ...] = ("success", "failure")
# How long a reader waits for one more message after the expected ones, to prove there is none
# (RabbitMQ: a queue has no end to read to).
QUIET_SECONDS = 2.0
# How long Kafka may be silent before a reader reading to the end gives up (it ends at the end).
ANSWER_SECONDS = 15.0
EVENT_COUNT = 24

Arrivals = list[tuple[Status, dict[str, Any]]]


class Backend(abc.ABC):
    """A sink under test and a way to read back what it made durable, by status."""

    sink: Sink

    @abc.abstractmethod
    async def arrivals(self, expected: int) -> Arrivals:
        """Everything the sink stored: ``expected`` records, plus any extra found."""


class MemoryBackend(Backend):
    def __init__(self, codec: AvroCodec) -> None:
        self.sink = MemorySink()
        self._codec = codec

    async def arrivals(self, expected: int) -> Arrivals:
        assert isinstance(self.sink, MemorySink)
        return [
            (e.status, self._codec.decode(self._codec.encode(e.record))) for e in self.sink.events
        ]


class FileBackend(Backend):
    def __init__(self, directory: Path, codec: AvroCodec) -> None:
        from bridge.sinks.file import FileSink

        # A small rotation size makes the events span several files per status.
        self.sink = FileSink(directory, codec, rotate_bytes=4096, rotate_seconds=3600.0)
        self._directory = directory

    async def arrivals(self, expected: int) -> Arrivals:
        from bridge.sinks.file import read_events

        return [(s, r) for s in STATUSES for r in read_events(self._directory, s)]


class KafkaBackend(Backend):
    def __init__(self, settings: Settings, metrics: Metrics, codec: AvroCodec) -> None:
        from bridge.sinks.kafka import KafkaSink

        self.settings = settings
        self.sink = KafkaSink.from_settings(
            settings, encoder=SingleObjectEncoder(codec), metrics=metrics
        )

    async def arrivals(self, expected: int) -> Arrivals:
        status_of: dict[str, Status] = {
            self.settings.kafka_topic_success: "success",
            self.settings.kafka_topic_failure: "failure",
        }
        found: Arrivals = []
        async with KafkaReader(self.settings) as reader:
            async for event in reader.events(idle_timeout=ANSWER_SECONDS, to_end=True):
                assert event.record is not None, event.error
                found.append((status_of[event.destination], event.record))
        return found


class RabbitMQBackend(Backend):
    """Reads the durable per-status queues the sink declares, so routing is part of the test."""

    def __init__(self, settings: Settings, metrics: Metrics, codec: AvroCodec) -> None:
        from bridge.sinks.rabbitmq import RabbitMQSink

        self.settings = settings
        self.sink = RabbitMQSink.from_settings(
            settings, encoder=SingleObjectEncoder(codec), metrics=metrics
        )

    async def arrivals(self, expected: int) -> Arrivals:
        queues: dict[Status, str] = {
            "success": self.settings.rabbitmq_queue_success,
            "failure": self.settings.rabbitmq_queue_failure,
        }
        found: Arrivals = []
        for status, queue in queues.items():
            async with RabbitMQReader(self.settings, queue=queue) as reader:
                async for event in reader.events(limit=expected + 1, idle_timeout=QUIET_SECONDS):
                    assert event.record is not None, event.error
                    found.append((status, event.record))
        return found


@pytest.fixture(
    params=[
        "memory",
        "file",
        pytest.param("kafka", marks=pytest.mark.kafka),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, metrics: Metrics, codec: AvroCodec
) -> Iterator[Backend]:
    kind: str = request.param
    if kind == "memory":
        yield MemoryBackend(codec)
    elif kind == "file":
        yield FileBackend(tmp_path / "events", codec)
    elif kind == "kafka":
        topics = request.getfixturevalue("kafka_topics")
        settings = Settings(
            sink="kafka",
            kafka_bootstrap_servers=request.getfixturevalue("kafka_bootstrap"),
            kafka_topic_success=topics.success,
            kafka_topic_failure=topics.failure,
            kafka_topic_partitions=2,
        )
        yield KafkaBackend(settings, metrics, codec)
    else:
        name = request.getfixturevalue("rabbitmq_names")
        settings = Settings(
            sink="rabbitmq",
            rabbitmq_url=request.getfixturevalue("rabbitmq_url"),
            rabbitmq_exchange=name,
            rabbitmq_declare_queues=True,
            rabbitmq_queue_success=f"{name}.success",
            rabbitmq_queue_failure=f"{name}.failure",
        )
        yield RabbitMQBackend(settings, metrics, codec)


def test_every_acknowledged_event_is_stored_once_under_its_status(
    backend: Backend,
    make_events: Callable[[int], list[LoginEvent]],
    decoded: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    async def scenario() -> None:
        events = make_events(EVENT_COUNT)
        async with backend.sink:
            # Concurrent sends, as under load: each must still wait for its own acknowledgement.
            await asyncio.gather(*(backend.sink.send(encoded(event)) for event in events))
        found = await backend.arrivals(len(events))

        expected = sorted(((e.status, decoded(e.record)) for e in events), key=_by_event_id)
        assert sorted(found, key=_by_event_id) == expected
        assert Counter(status for status, _ in found) == {"success": 16, "failure": 8}

    asyncio.run(scenario())


def _by_event_id(arrival: tuple[Status, dict[str, Any]]) -> str:
    uid: str = arrival[1]["metadata"]["uid"]
    return uid


def test_send_before_start_raises_sink_unavailable(
    backend: Backend, make_events: Callable[[int], list[LoginEvent]]
) -> None:
    async def scenario() -> None:
        with pytest.raises(SinkUnavailable, match="not started"):
            await backend.sink.send(encoded(make_events(1)[0]))

    asyncio.run(scenario())


def test_send_after_stop_raises_sink_unavailable(
    backend: Backend, make_events: Callable[[int], list[LoginEvent]]
) -> None:
    async def scenario() -> None:
        async with backend.sink:
            pass
        with pytest.raises(SinkUnavailable):
            await backend.sink.send(encoded(make_events(1)[0]))

    asyncio.run(scenario())


def test_sink_is_ready_only_between_start_and_stop(backend: Backend) -> None:
    async def scenario() -> None:
        assert not backend.sink.ready()
        async with backend.sink:
            assert backend.sink.ready()
        assert not backend.sink.ready()

    asyncio.run(scenario())
