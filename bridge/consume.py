"""Reading published events back from Kafka or RabbitMQ, decoded, for `tail` and for tests."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import sys
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TextIO

from bridge.codec import AvroCodec
from bridge.errors import SinkUnavailable
from bridge.event import Status
from bridge.loops import to_thread_to_the_end
from bridge.settings import Settings

if TYPE_CHECKING:  # the broker libraries load only when a reader is opened
    import aio_pika.abc
    from confluent_kafka import Consumer, KafkaError, Message

Decoder = Callable[[bytes], dict[str, Any]]
BrokerName = Literal["kafka", "rabbitmq"]
POLL_SECONDS = 0.5
# `tail` without --follow stops after this long without an event.
TAIL_IDLE_SECONDS = 2.0
# A login event encodes to a few KB; anything far larger is not one, and is not decoded.
MAX_DECODED_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """One message read back: where it was, its broker metadata, and the decoded record.

    ``record`` is None when the value did not decode; ``error`` then says why, so a reader can
    show a bad message and go on instead of stopping at it.
    """

    destination: str  # the Kafka topic, or the RabbitMQ queue it was read from
    record: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)
    key: str | None = None  # Kafka only
    routing_key: str | None = None  # RabbitMQ only
    message_id: str | None = None  # RabbitMQ only
    content_type: str | None = None  # RabbitMQ only
    persistent: bool | None = None  # RabbitMQ only
    error: str | None = None
    partition: int | None = None  # Kafka only
    offset: int | None = None  # Kafka only

    @property
    def position(self) -> str:
        """Where the message is, for a person to find it: ``topic[partition]@offset`` or queue."""
        if self.partition is None or self.offset is None:
            return self.destination
        return f"{self.destination}[{self.partition}]@{self.offset}"


def default_decoder() -> Decoder:
    """Avro single-object encoding with the shipped schema (no Schema Registry)."""
    return AvroCodec().decode


def _decode(decoder: Decoder, value: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    if value is None:
        return None, "message has no value"
    if len(value) > MAX_DECODED_BYTES:
        return None, f"message of {len(value)} bytes is larger than a login event can be"
    try:
        return decoder(value), None
    except Exception as exc:  # anyone can write to a topic: a reader shows what fails, goes on
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _kafka_headers(
    headers: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None,
) -> dict[str, str]:
    """Consumed messages carry headers as a list of pairs (the type also allows a dict)."""
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    return {name: _text(value) for name, value in pairs}


class KafkaReader:
    """Reads topics from their start (or end) with a throwaway consumer group; commits nothing."""

    def __init__(
        self,
        settings: Settings,
        *,
        topics: Sequence[str] | None = None,
        decoder: Decoder | None = None,
        from_beginning: bool = True,
    ) -> None:
        self._settings = settings
        self._topics = list(topics or (settings.kafka_topic_success, settings.kafka_topic_failure))
        self._decoder = decoder or default_decoder()
        self._from_beginning = from_beginning
        self._consumer: Consumer | None = None
        self._partitions: frozenset[tuple[str, int]] = frozenset()
        # The broker's refusal of the credentials, seen by error_cb (served by poll).
        self._refused: KafkaError | None = None

    async def __aenter__(self) -> Self:
        from confluent_kafka import KafkaException

        from bridge.sinks.kafka import cluster_metadata
        from bridge.sinks.kafka_errors import to_sink_error

        # Ctrl-C while the consumer is made: it is made all the same, and closed.
        consumer = await to_thread_to_the_end(
            self._new_consumer, abandoned=operator.methodcaller("close")
        )
        try:
            within = self._settings.publish_timeout_seconds
            metadata = await cluster_metadata(
                consumer, within=within, refused=lambda: self._refusal(consumer)
            )
            await asyncio.to_thread(self._assign, consumer, metadata)
        except BaseException as exc:
            await asyncio.to_thread(consumer.close)
            if isinstance(exc, KafkaException):
                raise to_sink_error(exc.args[0]) from exc
            raise
        self._consumer = consumer
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await asyncio.to_thread(consumer.close)

    def _refusal(self, consumer: Consumer) -> KafkaError | None:
        """Whether a broker refused the credentials, or TLS a certificate (see ``refusal``):
        the error callbacks queued so far are served first (a consumer's run only in poll;
        before assign() it returns no message)."""
        consumer.poll(0)
        return self._refused

    def _note_error(self, err: KafkaError) -> None:
        from bridge.sinks.kafka import refusal

        if refusal(err) is not None:
            self._refused = err

    def _new_consumer(self) -> Consumer:
        from confluent_kafka import Consumer

        from bridge.logs import librdkafka_logger
        from bridge.sinks.kafka import client_config

        return Consumer(
            {
                **client_config(self._settings),
                "group.id": f"login-audit-tail-{uuid.uuid4()}",
                "enable.auto.commit": False,
                # The end of a partition is then a fact the broker states, not a guess from quiet.
                "enable.partition.eof": True,
                # Through logging, repeats suppressed, instead of a line per attempt on stderr.
                "logger": librdkafka_logger(),
                "error_cb": self._note_error,
            }
        )

    def _assign(self, consumer: Consumer, metadata: Any) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END
        from confluent_kafka.cimpl import TopicPartition

        offset = OFFSET_BEGINNING if self._from_beginning else OFFSET_END
        assignment = [
            TopicPartition(topic, partition, offset)
            for topic in self._topics
            if topic in metadata.topics
            for partition in metadata.topics[topic].partitions
        ]
        self._partitions = frozenset((tp.topic, tp.partition) for tp in assignment)
        # Assigning partitions directly skips the group rebalance: reading starts at once.
        consumer.assign(assignment)

    async def events(
        self,
        *,
        limit: int | None = None,
        idle_timeout: float | None = None,
        to_end: bool = False,
    ) -> AsyncIterator[ConsumedEvent]:
        """Yields events until ``limit`` were read, or the end, or ``idle_timeout`` of silence.

        ``to_end``: stop once every partition read has reached its end (what the broker had
        when the reader got there), however long a slow partition takes to answer. Silence for
        ``idle_timeout`` then means the broker did not answer, and raises SinkUnavailable
        naming the partitions not read, instead of ending as if they were empty. Without
        ``to_end``, silence for ``idle_timeout`` ends the iteration.
        """
        from confluent_kafka import KafkaError

        consumer = self._require_open()
        count, idle = 0, 0.0
        at_end: set[tuple[str, int]] = set()
        if to_end and not self._partitions:
            return
        while limit is None or count < limit:
            message = await asyncio.to_thread(consumer.poll, POLL_SECONDS)
            if message is None:
                idle += POLL_SECONDS
                if idle_timeout is not None and idle >= idle_timeout:
                    if to_end:
                        raise SinkUnavailable(self._not_read(at_end, idle_timeout))
                    return
                continue
            idle = 0.0
            place = (message.topic() or "", message.partition() or 0)
            err = message.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                at_end.add(place)
                if to_end and at_end >= self._partitions:
                    return
                continue
            at_end.discard(place)
            yield self._convert(message)
            count += 1

    def _not_read(self, at_end: set[tuple[str, int]], waited: float) -> str:
        missing = sorted(self._partitions - at_end)
        shown = ", ".join(f"{topic}[{partition}]" for topic, partition in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return f"kafka did not answer for {waited:g} s: {shown}{more} not read to the end"

    def _convert(self, message: Message) -> ConsumedEvent:
        from bridge.sinks.kafka_errors import to_sink_error

        err = message.error()
        if err is not None:
            raise to_sink_error(err)
        record, error = _decode(self._decoder, message.value())
        return ConsumedEvent(
            destination=message.topic() or "",
            record=record,
            headers=_kafka_headers(message.headers()),
            key=None if message.key() is None else _text(message.key()),
            error=error,
            partition=message.partition(),
            offset=message.offset(),
        )

    def _require_open(self) -> Consumer:
        if self._consumer is None:
            raise SinkUnavailable("kafka reader is not open (use `async with`)")
        return self._consumer


class RabbitMQReader:
    """Reads from a durable queue, or from a temporary exclusive queue bound to the exchange.

    A temporary queue sees only what is published after the reader opened and takes nothing
    from anyone. Reading a durable queue acknowledges, i.e. removes, what it reads.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        queue: str | None = None,
        binding_key: str = "#",
        decoder: Decoder | None = None,
    ) -> None:
        self._settings = settings
        self._queue_name = queue
        self._binding_key = binding_key
        self._decoder = decoder or default_decoder()
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None

    async def __aenter__(self) -> Self:
        from bridge.sinks.rabbitmq import BROKER_ERRORS, to_sink_error

        try:
            async with asyncio.timeout(self._settings.publish_timeout_seconds):
                self._queue = await self._open()
        except BROKER_ERRORS as exc:
            await self.__aexit__(None, None, None)
            raise to_sink_error(exc) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection, self._connection, self._queue = self._connection, None, None
        if connection is not None:
            await connection.close()

    async def _open(self) -> aio_pika.abc.AbstractQueue:
        import aio_pika

        from bridge.sinks.rabbitmq import ssl_context

        self._connection = await aio_pika.connect(
            self._settings.rabbitmq_url.get_secret_value(), ssl_context=ssl_context(self._settings)
        )
        channel = await self._connection.channel()
        if self._queue_name is not None:
            return await channel.declare_queue(self._queue_name, durable=True)
        exchange = await channel.declare_exchange(
            self._settings.rabbitmq_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=self._binding_key)
        return queue

    @property
    def queue_name(self) -> str:
        if self._queue is None:
            raise SinkUnavailable("rabbitmq reader is not open (use `async with`)")
        return self._queue.name

    async def events(
        self, *, limit: int | None = None, idle_timeout: float | None = None
    ) -> AsyncIterator[ConsumedEvent]:
        """Yields events until ``limit`` were read or none came for ``idle_timeout`` seconds."""

        if self._queue is None:
            raise SinkUnavailable("rabbitmq reader is not open (use `async with`)")
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        tag = await self._queue.consume(inbox.put, no_ack=False)
        try:
            count = 0
            while limit is None or count < limit:
                try:
                    async with asyncio.timeout(idle_timeout):
                        message = await inbox.get()
                except TimeoutError:
                    return
                yield self._convert(message)
                await message.ack()
                count += 1
        finally:
            with contextlib.suppress(Exception):  # the connection may already be gone
                await self._queue.cancel(tag)

    def _convert(self, message: aio_pika.abc.AbstractIncomingMessage) -> ConsumedEvent:
        import aio_pika

        record, error = _decode(self._decoder, message.body)
        return ConsumedEvent(
            destination=self.queue_name,
            record=record,
            headers={name: _text(value) for name, value in message.headers.items()},
            routing_key=message.routing_key,
            message_id=message.message_id,
            content_type=message.content_type,
            persistent=message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT,
            error=error,
        )


async def tail(
    settings: Settings,
    *,
    broker: BrokerName,
    status: Status | None = None,
    limit: int | None = None,
    idle_timeout: float | None = None,
    from_beginning: bool = True,
    decoder: Decoder | None = None,
    to_end: bool = False,
) -> AsyncGenerator[ConsumedEvent, None]:
    """Events of one status, or both, from a broker.

    Kafka: the status topics, from their beginning unless told otherwise, and with ``to_end``
    only up to their end (KafkaReader.events). RabbitMQ: a temporary queue bound to the
    exchange with ``<status>.#`` (or ``#``), so only events published from now on, and nothing
    is taken away from the durable queues; a queue has no end, so ``to_end`` does not apply.
    """
    reader: KafkaReader | RabbitMQReader
    if broker == "kafka":
        topics = {"success": settings.kafka_topic_success, "failure": settings.kafka_topic_failure}
        chosen = [topics[status]] if status is not None else list(topics.values())
        reader = KafkaReader(
            settings, topics=chosen, decoder=decoder, from_beginning=from_beginning
        )
    else:
        binding_key = f"{status}.#" if status is not None else "#"
        reader = RabbitMQReader(settings, binding_key=binding_key, decoder=decoder)
    async with reader:
        if isinstance(reader, KafkaReader):
            events = reader.events(limit=limit, idle_timeout=idle_timeout, to_end=to_end)
        else:
            events = reader.events(limit=limit, idle_timeout=idle_timeout)
        async for event in events:
            yield event


def tail_broker(
    settings: Settings,
    *,
    source: BrokerName,
    status: Status | None = None,
    follow: bool = False,
    idle_seconds: float = TAIL_IDLE_SECONDS,
    warnings: TextIO | None = None,
) -> Iterator[dict[str, Any]]:
    """What ``login-audit-bridge tail --from kafka|rabbitmq`` prints: decoded records.

    Without ``follow`` it ends: for Kafka, once every partition was read to its end (raising
    SinkUnavailable if the broker does not answer for ``publish_timeout_seconds``); for
    RabbitMQ, which keeps no history for a new queue, once no event came for ``idle_seconds``,
    after the events published in that window. A message that does not decode (another schema, a
    hostile writer, not Avro) is skipped with a line on ``warnings`` (stderr) saying where it is
    and why; the count of skipped messages closes the output.
    """
    report = warnings if warnings is not None else sys.stderr
    skipped = 0
    decoder = None
    if settings.schema_registry_url:
        from bridge.registry import registry_decoder

        decoder = registry_decoder(settings)
    to_end = source == "kafka" and not follow
    if follow:
        idle_timeout = None
    elif to_end:
        idle_timeout = max(idle_seconds, settings.publish_timeout_seconds)
    else:
        idle_timeout = idle_seconds
    events = tail(
        settings,
        broker=source,
        status=status,
        idle_timeout=idle_timeout,
        decoder=decoder,
        to_end=to_end,
    )
    # One loop for the whole iteration: the broker connection belongs to it.
    with asyncio.Runner() as runner:
        try:
            while True:
                try:
                    event = runner.run(_next(events))
                except StopAsyncIteration:
                    return
                if event.record is None:
                    skipped += 1
                    print(f"tail: skipped {event.position}: {event.error}", file=report)
                    continue
                yield event.record
        finally:
            runner.run(events.aclose())
            if skipped:
                print(f"tail: skipped {skipped} message(s) that did not decode", file=report)


async def _next(events: AsyncGenerator[ConsumedEvent, None]) -> ConsumedEvent:
    return await anext(events)
