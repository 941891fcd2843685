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
        spool = self.spool
        if spool is not None and spool.busy:
            await self._to_spool(encoded)  # behind the backlog, to keep arrival order
            return
        started = time.perf_counter()
        try:
            sent = self.sink.submit(encoded)
        except SinkError as exc:
            if spool is None:
                raise
            self._spooling(event, exc)
            await self._to_spool(encoded)
            return
        if not sent.done():
            await self._wait_for(sent)
        if not sent.done():
            self._failed("timeout")
            if spool is None:
                sent.cancel()
                raise SinkUnavailable(
                    f"{self.sink.name} sink did not confirm the event within {self._wait:g} s"
                )
            self._watch_late_acknowledgement(sent, event, started)
            await self._to_spool(encoded)
            return
        error = sent.exception()
        if error is None:
            self._count_published(event, started)
            return
        if spool is None or not isinstance(error, SinkError):
            raise error
        self._spooling(event, error)
        await self._to_spool(encoded)

    async def _wait_for(self, sent: asyncio.Future[None]) -> None:
        """Waits for ``sent`` at most ``self._wait`` seconds, never cancelling it.

        One future and one timer: a task, ``shield`` and ``wait_for`` per event cost about a
        tenth of a worker's CPU (issue 11), with getpid() calls on Python 3.11."""
        loop = sent.get_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        wake = functools.partial(_wake, waiter)
        sent.add_done_callback(wake)
        timer = loop.call_later(self._wait, wake, sent)
        try:
            await waiter
        except asyncio.CancelledError:
            # The request was cancelled (shutdown); the send goes on and may still fail: read
            # its outcome so that asyncio does not log it as never retrieved.
            sent.add_done_callback(_retrieve)
            raise
        finally:
            timer.cancel()
            sent.remove_done_callback(wake)

    def _spooling(self, event: LoginEvent, exc: SinkError) -> None:
        log.warning("%s sink failed, spooling %s: %s", self.sink.name, event.event_id, exc)

    async def deliver(self, encoded: EncodedEvent) -> None:
        """Sends one event to the sink, timed and counted; the replayer delivers through it too."""
        started = time.perf_counter()
        await self.sink.send(encoded)
        self._count_published(encoded.event, started)

    def _count_published(self, event: LoginEvent, started: float) -> None:
        self._latency.observe(time.perf_counter() - started)
        self._published(self.sink.name, event.status).inc()

    async def _to_spool(self, encoded: EncodedEvent) -> None:
        assert self.spool is not None  # noqa: S101 - callers checked
        await self.spool.put(encoded)

    def _watch_late_acknowledgement(
        self, send: asyncio.Future[None], event: LoginEvent, started: float
    ) -> None:
        """A send that times out may still succeed; then the spooled copy is dropped again."""

        async def forget_if_acknowledged() -> None:
            try:
                await send
            except Exception:
                return  # not acknowledged after all: the spooled copy is the one that counts
            self._count_published(event, started)
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


def _wake(waiter: asyncio.Future[None], _sent: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _retrieve(sent: asyncio.Future[None]) -> None:
    if not sent.cancelled():
        sent.exception()
