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
from bridge.deadlines import Deadlines
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
        self._events = metrics.events
        self._events.watch_sink(sink.name)
        if spool is not None:
            metrics.watch_spool(spool)
        self._late: set[asyncio.Task[None]] = set()
        self._deadlines: Deadlines[_Publish] | None = None  # made on the loop, at the first event

    # -- accepting

    async def publish(self, event: LoginEvent) -> None:
        """Returns once the event is durable; raises SinkError or Overloaded (spool full) if not.

        Raises UnencodableEvent (bad input, 4xx) for an event that does not fit the schema, before
        any sink or the spool sees it, so that it can only fail alone. Cancelling the caller does
        not cancel the event: it is still made durable.
        """
        await asyncio.shield(self.submit(event))

    def submit(self, event: LoginEvent) -> asyncio.Future[None]:
        """Starts making the event durable; the future says when it is, or why it cannot be.

        Raises UnencodableEvent at once, as ``publish`` does. No task and no timer of its own per
        event, only callbacks (issue 11); the hook routes call its two halves, ``prepare`` and
        ``submit_prepared``, each for a whole turn's requests. With a spool, the sink
        has ``spool_after`` seconds to acknowledge; then the event goes to the spool, and an
        acknowledgement that still comes removes the spooled copy again. Without one, the wait
        ends a little after the sink's own acknowledgement timeout, with an error.
        """
        return self.submit_prepared(self.prepare(event))

    def prepare(self, event: LoginEvent) -> EncodedEvent:
        """The first half of ``submit``: counts the event as received and encodes it.

        Raises UnencodableEvent as ``submit`` does. The hook routes prepare all the events that
        arrived in one turn of the loop before submitting any (see HookEndpoints.take).
        """
        self._events.received(event.source, event.status)
        return self._encoder.encode(event)

    def submit_prepared(self, encoded: EncodedEvent) -> asyncio.Future[None]:
        """The second half of ``submit``, for an event from ``prepare``."""
        event = encoded.event
        spool = self.spool
        if spool is not None and spool.busy:
            return self._spool_later(encoded)  # behind the backlog, to keep arrival order
        started = time.perf_counter()
        try:
            sent = self.sink.submit(encoded)
        except SinkError as exc:
            if spool is None:
                raise
            self._spooling(event, exc)
            return self._spool_later(encoded)
        loop = sent.get_loop()
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = Deadlines(loop, self._wait, self._expired)
        publish = _Publish(encoded, sent, loop.create_future(), started)
        deadlines.add(publish)
        sent.add_done_callback(functools.partial(self._sent, publish))
        return publish.done

    def _sent(self, publish: _Publish, sent: asyncio.Future[None]) -> None:
        """The sink's answer; after a timeout, the late acknowledgement of a spooled event."""
        event = publish.encoded.event
        if self._deadlines is not None:
            self._deadlines.discard(publish)
        if sent.cancelled():  # given up on without a spool: the caller has its error already
            return
        late = publish.spooling
        done = publish.done
        error = sent.exception()
        if late:
            if error is None:
                self._forget_spooled(publish)
            return
        if error is None:
            self._count_published(event, publish.started)
            if not done.done():
                done.set_result(None)
            return
        if self.spool is None or not isinstance(error, SinkError):
            if not done.done():
                done.set_exception(error)
            return
        self._spooling(event, error)
        self._spool_into(publish)

    def _expired(self, publish: _Publish) -> None:
        """The sink did not answer in time: spool the event, or fail it without a spool."""
        if publish.sent.done() or publish.done.done():
            return
        self._failed("timeout")
        if self.spool is None:
            publish.sent.cancel()
            message = f"{self.sink.name} sink did not confirm the event within {self._wait:g} s"
            publish.done.set_exception(SinkUnavailable(message))
            return
        self._spool_into(publish)

    def _spool_into(self, publish: _Publish) -> None:
        publish.spooling = asyncio.ensure_future(self._to_spool(publish.encoded))
        publish.spooling.add_done_callback(functools.partial(_settle, publish.done))

    def _spool_later(self, encoded: EncodedEvent) -> asyncio.Future[None]:
        task = asyncio.ensure_future(self._to_spool(encoded))
        task.add_done_callback(_retrieve)  # read even when the caller has gone: no asyncio noise
        return task

    def _spooling(self, event: LoginEvent, exc: SinkError) -> None:
        log.warning("%s sink failed, spooling %s: %s", self.sink.name, event.event_id, exc)

    def resend(self, encoded: EncodedEvent) -> asyncio.Future[None]:
        """Starts sending a spooled event (the replayer's send): the sink's own future, the
        event counted as published once it is acknowledged. May raise a SinkError at once."""
        started = time.perf_counter()
        sent = self.sink.submit(encoded)
        sent.add_done_callback(functools.partial(self._resent, encoded.event, started))
        return sent

    def _resent(self, event: LoginEvent, started: float, sent: asyncio.Future[None]) -> None:
        if not sent.cancelled() and sent.exception() is None:
            self._count_published(event, started)

    def _count_published(self, event: LoginEvent, started: float) -> None:
        self._events.published(self.sink.name, event.status, time.perf_counter() - started)

    async def _to_spool(self, encoded: EncodedEvent) -> None:
        assert self.spool is not None  # noqa: S101 - callers checked
        await self.spool.put(encoded)

    def _forget_spooled(self, publish: _Publish) -> None:
        """A send that timed out succeeded after all: the spooled copy is dropped again, once
        it is in the spool."""
        event = publish.encoded.event
        self._count_published(event, publish.started)
        spooling = publish.spooling

        async def forget() -> None:
            assert self.spool is not None and spooling is not None  # noqa: S101 - late: spooled
            try:
                await spooling
            except Exception:
                return  # not spooled: nothing to remove
            try:
                await self.spool.remove_event(event.event_id)
            except Exception as exc:
                log.warning(
                    "event %s was acknowledged late, but its spooled copy stays and will be "
                    "sent again: %s",
                    event.event_id,
                    exc,
                )

        task = asyncio.create_task(forget())
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


class _Publish:
    """One event on its way to the sink: what the pipeline needs when the answer comes."""

    __slots__ = ("done", "encoded", "sent", "spooling", "started")

    def __init__(
        self,
        encoded: EncodedEvent,
        sent: asyncio.Future[None],
        done: asyncio.Future[None],
        started: float,
    ) -> None:
        self.encoded = encoded
        self.sent = sent
        self.done = done  # what the caller waits for: durable, or the error
        self.started = started
        self.spooling: asyncio.Future[None] | None = None  # set once handed over to the spool


def _settle(done: asyncio.Future[None], outcome: asyncio.Future[None]) -> None:
    if done.done():
        _retrieve(outcome)
        return
    error = None if outcome.cancelled() else outcome.exception()
    if outcome.cancelled():
        done.cancel()
    elif error is not None:
        done.set_exception(error)
    else:
        done.set_result(None)


def _retrieve(sent: asyncio.Future[None]) -> None:
    if not sent.cancelled():
        sent.exception()
