"""Makes each accepted event durable: in the sink, or in the spool until the sink takes it.

``publish`` returns (and the caller answers 2xx) only once the event is acknowledged by the
sink or committed to the spool. While the spool holds a backlog, new events queue behind it so
the sink receives them in arrival order; the replayer drains it oldest first and deletes each
event only after the sink acknowledged it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING

from bridge.codec import AvroCodec
from bridge.errors import BridgeError, SinkError, SinkUnavailable
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.sinks.base import Sink
from bridge.spool import Spool, Spooled, Unreadable

if TYPE_CHECKING:
    from bridge.supervisor import Supervisor

log = logging.getLogger(__name__)

# Each batch waits for its slowest acknowledgement; larger ones amortize that (bench/ingest.py).
REPLAY_BATCH = 2000
RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
IDLE_SECONDS = 5.0  # an idle replayer looks at the spool file this often


class Pipeline:
    """The one path from a normalized event to a durable one; every source goes through it."""

    def __init__(
        self,
        *,
        sink: Sink,
        metrics: Metrics,
        spool: Spool | None = None,
        codec: AvroCodec | None = None,
        spool_after: float = 2.0,
        publish_timeout: float = 10.0,
        background: Supervisor | None = None,
    ) -> None:
        self.sink = sink
        self._codec = codec if codec is not None else AvroCodec()
        self.spool = spool
        self._metrics = metrics
        # With a spool, hand over to it early. Without one, wait a little longer than the sink's
        # own acknowledgement timeout, so that the sink's more specific error wins the race.
        self._wait = spool_after if spool is not None else publish_timeout + 1.0
        self._replay_wait = publish_timeout + 1.0
        self._background = background
        # .labels() takes a lock and builds a key on every call: 4.5 % of a worker's CPU under
        # load (py-spy). The label values here come from small fixed sets, so cache the children.
        self._received = functools.cache(metrics.events_received.labels)
        self._published = functools.cache(metrics.events_published.labels)
        self._latency = metrics.publish_latency.labels(sink.name)
        self._spool_depth = metrics.spool_events.labels("bridge")
        if spool is not None:
            metrics.watch_spool(spool)
        self._wake = asyncio.Event()
        self._late: set[asyncio.Task[None]] = set()

    # -- accepting

    async def publish(self, event: LoginEvent) -> None:
        """Returns once the event is durable; raises SinkError or Overloaded (spool full) if not.

        Raises UnencodableEvent (bad input, 4xx) for an event that does not fit the schema, before
        any sink or the spool sees it, so that it can only fail alone.
        """
        self._received(event.source, event.status).inc()
        self._codec.check_encodable(event.record)
        if self.spool is not None and self.spool.busy:
            await self._to_spool(event)  # behind the backlog, to keep arrival order
            return
        send = asyncio.ensure_future(self._send(event))
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
            await self._to_spool(event)
        except SinkError as exc:
            if self.spool is None:
                raise
            log.warning("%s sink failed, spooling %s: %s", self.sink.name, event.event_id, exc)
            await self._to_spool(event)

    async def _send(self, event: LoginEvent) -> None:
        started = time.perf_counter()
        await self.sink.send(event)
        self._latency.observe(time.perf_counter() - started)
        self._published(self.sink.name, event.status).inc()

    async def _to_spool(self, event: LoginEvent) -> None:
        assert self.spool is not None  # noqa: S101 - callers checked
        await self.spool.put(event)
        self._spool_depth.set(self.spool.depth)
        self._wake.set()

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
        self._metrics.publish_errors.labels(self.sink.name, reason).inc()

    def ready(self) -> bool:
        """Can an event be made durable now, and will it arrive (see ``unready``)."""
        return self.unready() is None

    def unready(self) -> tuple[str, str] | None:
        """Why not ready, as (reason, message): a background task the promise depends on is
        down, or neither the sink nor a spool with room can take an event now."""
        if self._background is not None and self._background.problem is not None:
            return "task_down", self._background.problem
        if self.sink.ready() or (self.spool is not None and not self.spool.full):
            return None
        return "sink_unavailable", f"{self.sink.name} sink is not ready"

    # -- replaying

    async def replay_forever(self, sink_started: asyncio.Event | None = None) -> None:
        """Drains the spool into the sink whenever it holds events, backing off while it fails.

        Waits for ``sink_started`` (if given) before sending. The sink's own errors are expected
        and only back off; anything else (SQLite locked or out of space, a bug) ends this call,
        and the service's supervisor logs, counts and restarts it.
        """
        assert self.spool is not None  # noqa: S101 - only started with a spool
        delay = RETRY_MIN_SECONDS
        while True:
            if not self._may_replay(sink_started):
                await self._idle(sink_started)
                continue
            if await self.replay_once():
                delay = RETRY_MIN_SECONDS
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _may_replay(self, sink_started: asyncio.Event | None) -> bool:
        assert self.spool is not None  # noqa: S101
        return self.spool.depth > 0 and (sink_started is None or sink_started.is_set())

    async def _idle(self, sink_started: asyncio.Event | None) -> None:
        """Waits for work: a spooled event, the sink starting, or the next look at the file."""
        assert self.spool is not None  # noqa: S101
        if self.spool.depth == 0:
            # Cheap on an empty table, and it notices events moved back from dead letters by
            # `login-audit-bridge dead-letters requeue` (another process).
            await self.spool.refresh()
            if self.spool.depth > 0:
                return
            self._wake.clear()
            wanted = self._wake
        else:
            assert sink_started is not None  # noqa: S101 - _may_replay said no for this reason
            wanted = sink_started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wanted.wait(), IDLE_SECONDS)

    async def replay_once(self) -> bool:
        """Sends the oldest batch; True if every event in it was acknowledged or buried."""
        assert self.spool is not None  # noqa: S101
        batch = await self.spool.head(REPLAY_BATCH)
        if not batch:
            await self.spool.refresh()  # the count was off (rows deleted by hand): correct it
            return True
        readable = [item for item in batch if isinstance(item, Spooled)]
        for item in batch:
            if isinstance(item, Unreadable):
                await self._bury(item, item.event_id, item.reason)
        results = await asyncio.gather(
            *(self._replay(item) for item in readable), return_exceptions=True
        )
        done = [item.seq for item, result in zip(readable, results, strict=True) if result is None]
        await self.spool.remove(done)
        unexpected = [r for r in results if isinstance(r, Exception) and not _sink_error(r)]
        if unexpected:
            raise unexpected[0]  # a bug, not the broker: the supervisor logs its traceback
        if len(done) < len(readable):
            return False
        if done:
            log.info("replayed %d spooled event(s) into the %s sink", len(done), self.sink.name)
        return True

    async def _replay(self, item: Spooled) -> None:
        try:
            # The sink gives up after its publish timeout and says why; wait a little longer than
            # that. Giving up sooner would send the same events again while the first sends are
            # still on their way (a livelock with a short spool_after and a slow broker).
            await asyncio.wait_for(self._send(item.event), self._replay_wait)
        except TimeoutError:
            self._failed("timeout")
            raise
        except BridgeError as exc:
            if exc.retriable:
                raise
            # Refused for good (e.g. too large for the broker): keep it aside, do not block the
            # events behind it. Counted, and kept in the spool's dead_letters table.
            await self._bury(item, item.event.event_id, f"{self.sink.name} sink refused it: {exc}")

    async def _bury(self, item: Spooled | Unreadable, event_id: str, reason: str) -> None:
        assert self.spool is not None  # noqa: S101
        log.error("spooled event %s moved to dead letters: %s", event_id, reason)
        await self.spool.bury(item, reason)
        self._metrics.spool_dead_letters.inc()


def _sink_error(exc: Exception) -> bool:
    return isinstance(exc, BridgeError | TimeoutError)
