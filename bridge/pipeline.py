"""Hands normalized events to the sink and reports, per event, when it is durable."""

from __future__ import annotations

import asyncio
import logging
import time

from bridge.errors import SinkError, SinkUnavailable
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.sinks.base import Sink

log = logging.getLogger(__name__)


class Pipeline:
    """The one path from a normalized event to a durable one; every source goes through it."""

    def __init__(self, *, sink: Sink, metrics: Metrics, publish_timeout: float) -> None:
        self.sink = sink
        self._metrics = metrics
        self._timeout = publish_timeout

    async def publish(self, event: LoginEvent) -> None:
        """Returns once the event is durable; raises a SinkError (retriable or not) otherwise."""
        self._metrics.events_received.labels(event.source, event.status).inc()
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.sink.send(event), self._timeout)
        except TimeoutError:
            self._failed("timeout")
            raise SinkUnavailable(
                f"{self.sink.name} sink did not confirm the event within {self._timeout:g} s"
            ) from None
        except SinkError as exc:
            self._failed(exc.reason)
            log.warning("%s sink failed event %s: %s", self.sink.name, event.event_id, exc)
            raise
        self._metrics.publish_latency.labels(self.sink.name).observe(time.perf_counter() - started)
        self._metrics.events_published.labels(self.sink.name, event.status).inc()

    def _failed(self, reason: str) -> None:
        self._metrics.publish_errors.labels(self.sink.name, reason).inc()
