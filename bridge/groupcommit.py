"""Group commit: concurrent writers share one blocking write-and-fsync, run off the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from bridge.loops import RunningLoop

Item = TypeVar("Item")

log = logging.getLogger(__name__)


class GroupCommit(Generic[Item]):
    """Collects items while a batch is being written, then writes them all in one call.

    ``write`` runs in a worker thread and must make the whole batch durable before returning
    (one fsync for the batch instead of one per item); only one batch is in flight at a time.
    When it raises, every item of that batch gets ``fail(exc)`` instead; an exception outside
    ``failures`` is a bug, logged with its traceback, but it fails the batch the same way. Every
    submitted item's future is resolved whatever happens, even when the drain is cancelled, so a
    caller never waits forever.
    """

    def __init__(
        self,
        write: Callable[[list[Item]], None],
        *,
        failures: tuple[type[Exception], ...],
        fail: Callable[[Exception], Exception],
    ) -> None:
        self._write = write
        self._failures = failures
        self._fail = fail
        self._pending: list[tuple[Item, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._loop = RunningLoop()

    @property
    def busy(self) -> bool:
        """True while items wait or a batch is being written."""
        return bool(self._pending) or (self._task is not None and not self._task.done())

    async def submit(self, item: Item) -> None:
        """Returns once the batch holding ``item`` is written; raises ``fail(...)`` if not."""
        await self.enqueue(item)

    def enqueue(self, item: Item) -> asyncio.Future[None]:
        """``submit`` without the coroutine: the future resolves as ``submit`` returns."""
        loop = self._loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return future

    async def idle(self) -> None:
        """Waits for the batch in flight, if any (used before closing what ``write`` writes to)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        batch: list[tuple[Item, asyncio.Future[None]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                error = await self._write_one(batch)
                _resolve(batch, error)
        finally:
            # Futures are left unresolved here only when the drain itself is cancelled.
            leftover = [entry for entry in batch + self._pending if not entry[1].done()]
            self._pending = []
            if leftover:
                _resolve(leftover, self._fail(RuntimeError("the write was cancelled")))

    async def _write_one(self, batch: list[tuple[Item, asyncio.Future[None]]]) -> Exception | None:
        try:
            await asyncio.to_thread(self._write, [item for item, _ in batch])
        except self._failures as exc:
            return self._fail(exc)
        except Exception as exc:
            log.exception("group commit of %d item(s) failed unexpectedly", len(batch))
            return self._fail(exc)
        return None


def _resolve(batch: list[tuple[Item, asyncio.Future[None]]], error: Exception | None) -> None:
    for _, future in batch:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
