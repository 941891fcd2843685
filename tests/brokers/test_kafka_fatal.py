"""A fatal error of the idempotent producer, raised inside the real librdkafka against real Kafka.

After a fatal error librdkafka never sends again with that producer. The sink must build a new
one (idempotent too), and every event that was in flight must end delivered or spooled.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable
from pathlib import Path

import confluent_kafka
import pytest
from confluent_kafka import KafkaError, Producer

from bridge.codec import AvroCodec, SingleObjectEncoder
from bridge.consume import KafkaReader
from bridge.durable_spool import DurableSpool
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline
from bridge.replay import Replayer
from bridge.settings import Settings
from bridge.sinks.kafka import KafkaSink

from .conftest import KafkaTopics
from conftest import print_fault_row

pytestmark = [pytest.mark.kafka]

WAIT_SECONDS = 30.0


def librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka's wheel bundles (the one the producer runs on)."""
    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        pytest.skip(f"no bundled librdkafka under {libs} (confluent-kafka built from source?)")
    lib = ctypes.CDLL(str(found[0]))
    lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_name.restype = ctypes.c_char_p
    lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    lib.rd_kafka_test_fatal_error.restype = ctypes.c_int
    return lib


def inject_fatal_error(producer: Producer) -> None:
    """Raises a real fatal error inside ``producer`` with librdkafka's rd_kafka_test_fatal_error().

    The Python client does not expose that test hook, so it is called through ctypes with the
    producer's rd_kafka_t pointer: the first field after PyObject_HEAD in confluent-kafka's
    Handle struct. rd_kafka_name() on that pointer must give the client's name before anything
    else is called with it.
    """
    lib = librdkafka()
    handle = ctypes.c_void_p.from_address(id(producer) + object.__basicsize__).value
    name = lib.rd_kafka_name(handle)
    assert name is not None and name.startswith(b"login-audit-bridge#producer-"), name
    error = lib.rd_kafka_test_fatal_error(
        handle, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, b"injected by the test"
    )
    assert error == 0


def producer_of(sink: KafkaSink) -> Producer:
    """The sink's current librdkafka client: private, reached into on purpose to break it."""
    producer = sink._producer
    assert producer is not None
    return producer


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(int(WAIT_SECONDS / 0.1)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {WAIT_SECONDS}s: {what}")


def test_a_fatal_producer_error_rebuilds_the_producer_and_loses_no_event(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def scenario() -> None:
        settings = Settings(
            sink="kafka",
            kafka_bootstrap_servers=kafka_bootstrap,
            kafka_topic_success=kafka_topics.success,
            kafka_topic_failure=kafka_topics.failure,
            kafka_linger_ms=500,  # events wait in the producer's queue when the error strikes
            publish_timeout_seconds=5,
        )
        sink = KafkaSink.from_settings(
            settings, encoder=SingleObjectEncoder(codec), metrics=metrics
        )
        spool = DurableSpool(tmp_path / "spool.sqlite3", codec, max_bytes=2**26, max_events=10_000)
        await spool.open()
        pipeline = Pipeline(
            sink=sink, metrics=metrics, spool=spool, spool_after=2.0, publish_timeout=5
        )
        events = make_events(30)
        before, during, after = events[:10], events[10:20], events[20:]

        async with sink:
            await asyncio.gather(*(pipeline.publish(e) for e in before))
            first = producer_of(sink)
            in_flight = [asyncio.ensure_future(pipeline.publish(e)) for e in during]
            for _ in range(5):  # until each send has handed its message to the producer
                await asyncio.sleep(0)
            inject_fatal_error(first)
            await asyncio.gather(*in_flight)  # each answered: delivered, or in the spool
            assert spool.depth > 0  # librdkafka failed the queued ones: they were in flight

            await eventually(
                lambda: sample(metrics, "login_audit_kafka_producer_rebuilds_total") == 1,
                "a new producer",
            )
            await eventually(sink.ready, "the sink ready again")
            second = producer_of(sink)
            assert second is not first

            # The new one fails at once too, before any delivery: rebuilt again, after a pause.
            inject_fatal_error(second)
            await eventually(
                lambda: sample(metrics, "login_audit_kafka_producer_rebuilds_total") == 2,
                "a third producer",
            )
            await eventually(sink.ready, "the sink ready again")
            assert producer_of(sink) not in (first, second)
            await asyncio.gather(*(pipeline.publish(e) for e in after))
            for _ in range(10):
                if spool.depth == 0:
                    break
                await Replayer(
                    spool,
                    send=pipeline.resend,
                    sink_name=sink.name,
                    metrics=metrics,
                    publish_timeout=5,
                ).replay_once()
            assert spool.depth == 0
        await spool.close()

        async with KafkaReader(settings) as reader:
            read = [e async for e in reader.events(idle_timeout=10.0, to_end=True)]
        delivered = {e.record["metadata"]["uid"] for e in read if e.record is not None}
        sent = {e.event_id for e in events}
        print_fault_row(
            "kafka fatal producer error (injected in librdkafka)",
            sent=len(sent),
            acknowledged=len(sent),
            delivered=len(delivered & sent),
            lost=len(sent - delivered),
            duplicated=len(read) - len(delivered),
            capsys=capsys,
        )
        assert delivered == sent

    asyncio.run(scenario())
