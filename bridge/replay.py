"""Drains the bridge's durable spool into the sink, oldest first, once the sink takes events.

An event leaves the spool only after the sink acknowledged it, or, when the sink refuses it for
good or its row cannot be read, into the spool's dead letters (counted, logged, and sent again by
``login-audit-bridge dead-letters requeue``). It exists only where a spool does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from bridge.durable_spool import DurableSpool, Spooled, Unreadable
from bridge.errors import BridgeError, SinkUnavailable
from bridge.event import EncodedEvent
from bridge.metrics import Metrics

log = logging.getLogger(__name__)

# Each batch waits for its slowest acknowledgement; larger ones amortize that (bench/ingest.py).
REPLAY_BATCH = 2000
RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
IDLE_SECONDS = 5.0  # an idle replayer looks at the spool file this often


class Replayer:
    """Sends the spool's oldest batch through ``send`` whenever the spool holds events.

    ``send`` starts sending one event and returns the future of its acknowledgement (the sink's
    ``submit``, through :meth:`bridge.pipeline.Pipeline.resend`); it may raise a SinkError at
    once.
    """

    def __init__(
        self,
        spool: DurableSpool,
        *,
        send: Callable[[EncodedEvent], asyncio.Future[None]],
        sink_name: str,
        metrics: Metrics,
        publish_timeout: float,
    ) -> None:
        self.spool = spool
        self._send = send
        self._sink_name = sink_name
        self._metrics = metrics
        self._timeouts = metrics.publish_errors.labels(sink_name, "timeout")
        # The sink gives up after its publish timeout and says why; wait a little longer than
        # that. Giving up sooner would send the same events again while the first sends are
        # still on their way (a livelock with a short spool_after and a slow broker).
        self._wait = publish_timeout + 1.0

    async def run(self, sink_started: asyncio.Event | None = None) -> None:
        """Drains the spool into the sink whenever it holds events, backing off while it fails.

        Waits for ``sink_started`` (if given) before sending. The sink's own errors are expected
        and only back off; anything else (SQLite locked or out of space, a bug) ends this call,
        and the service's supervisor logs, counts and restarts it.
        """
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
        return self.spool.depth > 0 and (sink_started is None or sink_started.is_set())

    async def _idle(self, sink_started: asyncio.Event | None) -> None:
        """Waits for work: a spooled event, the sink starting, or the next look at the file."""
        if self.spool.depth == 0:
            # Cheap on an empty table, and it notices events moved back from dead letters by
            # `login-audit-bridge dead-letters requeue` (another process).
            await self.spool.refresh()
            if self.spool.depth > 0:
                return
            self.spool.arrived.clear()
            wanted = self.spool.arrived
        else:
            assert sink_started is not None  # noqa: S101 - _may_replay said no for this reason
            wanted = sink_started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wanted.wait(), IDLE_SECONDS)

    async def replay_once(self) -> bool:
        """Sends the oldest batch; True if every event in it was acknowledged or buried."""
        batch = await self.spool.head(REPLAY_BATCH)
        if not batch:
            await self.spool.refresh()  # the count was off (rows deleted by hand): correct it
            return True
        readable = [item for item in batch if isinstance(item, Spooled)]
        for item in batch:
            if isinstance(item, Unreadable):
                await self._bury(item, item.event_id, item.reason)
        results = await self._send_all(readable)
        done: list[int] = []
        for item, result in zip(readable, results, strict=True):
            if isinstance(result, BridgeError) and not result.retriable:
                # Refused for good (e.g. too large for the broker): keep it aside, do not block
                # the events behind it. Counted, and kept in the spool's dead_letters table.
                reason = f"{self._sink_name} sink refused it: {result}"
                await self._bury(item, item.event.event_id, reason)
                result = None
            if result is None:
                done.append(item.seq)
        await self.spool.remove(done)
        unexpected = [r for r in results if r is not None and not _sink_error(r)]
        if unexpected:
            raise unexpected[0]  # a bug, not the broker: the supervisor logs its traceback
        if len(done) < len(readable):
            failed = next(r for r in results if r is not None and _sink_error(r))
            log.warning(
                "replay: the %s sink took %d of %d spooled event(s); retrying after a pause: %s",
                self._sink_name,
                len(done),
                len(readable),
                failed,
            )
            return False
        if done:
            log.info("replayed %d spooled event(s) into the %s sink", len(done), self._sink_name)
        return True

    async def _send_all(self, items: list[Spooled]) -> list[Exception | None]:
        """Sends every item at once and waits for all of their acknowledgements, at most the
        sink's publish timeout and a second; each item's error, or None once acknowledged.

        One wait for the batch, not a task and a timer per event: with asyncio.gather over
        wait_for, those were a quarter of a draining worker's CPU (issue 11, py-spy)."""
        sent: list[asyncio.Future[None] | Exception] = []
        for item in items:
            try:
                sent.append(self._send(item.encoded))
            except Exception as exc:  # the send could not even start (SinkError, or a bug)
                sent.append(exc)
        waiting = [future for future in sent if isinstance(future, asyncio.Future)]
        late: set[asyncio.Future[None]] = set()
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=self._wait)
        for future in late:
            future.cancel()
        results: list[Exception | None] = []
        for outcome in sent:
            if isinstance(outcome, Exception):
                results.append(outcome)
            elif outcome in late:
                self._timeouts.inc()
                results.append(TimeoutError(f"not acknowledged within {self._wait:g} s"))
            elif outcome.cancelled():  # the sink gave up on it (stopping): sent again later
                results.append(SinkUnavailable("the send was cancelled"))
            else:
                error = outcome.exception()
                if error is not None and not isinstance(error, Exception):
                    raise error
                results.append(error)
        return results

    async def _bury(self, item: Spooled | Unreadable, event_id: str, reason: str) -> None:
        log.error("spooled event %s moved to dead letters: %s", event_id, reason)
        await self.spool.bury(item, reason)
        self._metrics.spool_dead_letters.inc()


def _sink_error(exc: Exception) -> bool:
    return isinstance(exc, BridgeError | TimeoutError)
