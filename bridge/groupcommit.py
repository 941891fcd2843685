"""Group commit: concurrent writers share one blocking write-and-fsync, run off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class GroupCommit(Generic[Item]):
    """Collects items while a batch is being written, then writes them all in one call.

    ``write`` runs in a worker thread and must make the whole batch durable before returning
    (one fsync for the batch instead of one per item); only one batch is in flight at a time.
    When it raises one of ``failures``, every item of that batch gets ``fail(exc)`` instead.
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

    @property
    def busy(self) -> bool:
        """True while items wait or a batch is being written."""
        return bool(self._pending) or (self._task is not None and not self._task.done())

    async def submit(self, item: Item) -> None:
        """Returns once the batch holding ``item`` is written; raises ``fail(...)`` if not."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        await future

    async def idle(self) -> None:
        """Waits for the batch in flight, if any (used before closing what ``write`` writes to)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._write, [item for item, _ in batch])
            except self._failures as exc:
                error = self._fail(exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
