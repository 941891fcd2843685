"""Makes each accepted event durable: in the sink, or in the spool until the sink takes it.

``publish`` returns (and the caller answers 2xx) only once the event is acknowledged by the
sink or committed to the spool. While the spool holds a backlog, new events queue behind it so
the sink receives them in arrival order; :mod:`bridge.replay` drains it oldest first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING

from bridge.codec import AvroCodec
from bridge.durable_spool import DurableSpool
from bridge.encode import Encoder
from bridge.errors import SinkError, SinkUnavailable
from bridge.event import EncodedEvent, LoginEvent
from bridge.metrics import Metrics
from bridge.sinks.base import Sink

if TYPE_CHECKING:
    from bridge.supervisor import Supervisor

log = logging.getLogger(__name__)


class Pipeline:
    """The one path from a normalized event to a durable one; every source goes through it."""

    def __init__(
        self,
        *,
        sink: Sink,
        metrics: Metrics,
        spool: DurableSpool | None = None,
        encoder: Encoder | None = None,
        spool_after: float = 2.0,
        publish_timeout: float = 10.0,
        background: Supervisor | None = None,
    ) -> None:
        self.sink = sink
        self._encoder = encoder if encoder is not None else Encoder(AvroCodec())
        self.spool = spool
        self.metrics = metrics
        # With a spool, hand over to it early. Without one, wait a little longer than the sink's
        # own acknowledgement timeout, so that the sink's more specific error wins the race.
        self._wait = spool_after if spool is not None else publish_timeout + 1.0
        self._background = background
        self.stopping = False  # set on SIGTERM: /readyz answers 503 so no new hooks are routed
        # .labels() takes a lock and builds a key on every call: 4.5 % of a worker's CPU under
        # load (py-spy). The label values here come from small fixed sets, so cache the children.
        self._received = functools.cache(metrics.events_received.labels)
        self._published = functools.cache(metrics.events_published.labels)
        self._latency = metrics.publish_latency.labels(sink.name)
        if spool is not None:
            metrics.watch_spool(spool)
        self._late: set[asyncio.Task[None]] = set()

    # -- accepting

    async def publish(self, event: LoginEvent) -> None:
        """Returns once the event is durable; raises SinkError or Overloaded (spool full) if not.

        Raises UnencodableEvent (bad input, 4xx) for an event that does not fit the schema, before
        any sink or the spool sees it, so that it can only fail alone.
        """
        self._received(event.source, event.status).inc()
        encoded = self._encoder.encode(event)
        if self.spool is not None and self.spool.busy:
            await self._to_spool(encoded)  # behind the backlog, to keep arrival order
            return
        send = asyncio.ensure_future(self.deliver(encoded))
        try:
            await asyncio.wait_for(asyncio.shield(send), self._wait)
        except TimeoutError:
            self._failed("timeout")
            if self.spool is None:
                send.cancel()
                raise SinkUnavailable(
                    f"{self.sink.name} sink did not confirm the event within {self._wait:g} s"
                ) from None
            self._watch_late_acknowledgement(send, event)
            await self._to_spool(encoded)
        except SinkError as exc:
            if self.spool is None:
                raise
            log.warning("%s sink failed, spooling %s: %s", self.sink.name, event.event_id, exc)
            await self._to_spool(encoded)

    async def deliver(self, encoded: EncodedEvent) -> None:
        """Sends one event to the sink, timed and counted; the replayer delivers through it too."""
        started = time.perf_counter()
        await self.sink.send(encoded)
        event = encoded.event
        self._latency.observe(time.perf_counter() - started)
        self._published(self.sink.name, event.status).inc()

    async def _to_spool(self, encoded: EncodedEvent) -> None:
        assert self.spool is not None  # noqa: S101 - callers checked
        await self.spool.put(encoded)

    def _watch_late_acknowledgement(self, send: asyncio.Future[None], event: LoginEvent) -> None:
        """A send that times out may still succeed; then the spooled copy is dropped again."""

        async def forget_if_acknowledged() -> None:
            try:
                await send
            except Exception:
                return  # not acknowledged after all: the spooled copy is the one that counts
            assert self.spool is not None  # noqa: S101
            try:
                await self.spool.remove_event(event.event_id)
            except Exception as exc:
                log.warning(
                    "event %s was acknowledged late, but its spooled copy stays and will be "
                    "sent again: %s",
                    event.event_id,
                    exc,
                )

        task = asyncio.create_task(forget_if_acknowledged())
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    def _failed(self, reason: str) -> None:
        # Sinks count their own failures with their specific reason; the pipeline counts only
        # the waits it gave up on itself.
        self.metrics.publish_errors.labels(self.sink.name, reason).inc()

    def ready(self) -> bool:
        """Can an event be made durable now, and will it arrive (see ``unready``)."""
        return self.unready() is None

    def unready(self) -> tuple[str, str] | None:
        """Why not ready, as (reason, message): a background task the promise depends on is
        down, or neither the sink nor a spool with room can take an event now."""
        if self.stopping:
            return "stopping", "the bridge is shutting down"
        if self._background is not None and self._background.problem is not None:
            return "task_down", self._background.problem
        if self.sink.ready() or (self.spool is not None and not self.spool.full):
            return None
        return "sink_unavailable", f"{self.sink.name} sink is not ready"
