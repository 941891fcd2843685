"""Sinks: where durable events go. Broker libraries are imported only when their sink is chosen."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.codec import AvroCodec, WireEncoder
    from bridge.metrics import Metrics
    from bridge.settings import Settings
    from bridge.sinks.base import Sink


def build_sink(
    settings: Settings, *, codec: AvroCodec, encoder: WireEncoder, metrics: Metrics
) -> Sink:
    """The sink that ``settings.sink`` names, configured from the settings."""
    if settings.sink == "kafka":
        from bridge.sinks.kafka import KafkaSink

        return KafkaSink.from_settings(settings, encoder=encoder, metrics=metrics)
    if settings.sink == "rabbitmq":
        from bridge.sinks.rabbitmq import RabbitMQSink

        return RabbitMQSink.from_settings(settings, encoder=encoder, metrics=metrics)
    if settings.sink == "memory":
        from bridge.sinks.memory import MemorySink

        return MemorySink()
    from bridge.sinks.file import FileSink

    return FileSink(
        settings.events_dir,
        codec,
        rotate_bytes=settings.file_rotate_bytes,
        rotate_seconds=settings.file_rotate_seconds,
        retain_bytes=settings.file_retain_bytes,
        retain_seconds=settings.file_retain_seconds,
        metrics=metrics,
    )
