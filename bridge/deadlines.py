"""Many deadlines of one length behind a single timer.

Each accepted event has a deadline or two (the pipeline's hand-over to the spool, a sink's own
acknowledgement timeout). A timer per event is a heap insert when set and a removal when
cancelled, twice per event (issue 11). Deadlines of one length expire in the order they were
set, so a queue in that order and one timer armed for its head hold all of them: setting one is
an insert, clearing one a delete, and the timer is only re-armed when it fires.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    """Calls ``expire(item)`` ``seconds`` after ``add(item)`` unless ``discard(item)`` came first.

    Items are compared by hash and equality (futures and plain objects: by identity); an item is
    held only until it is discarded or expires.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seconds: float, expire: Callable[[T], None]
    ) -> None:
        self._loop = loop
        self._seconds = seconds
        self._expire = expire
        self._pending: OrderedDict[T, float] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def seconds(self) -> float:
        return self._seconds

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, item: T) -> None:
        at = self._loop.time() + self._seconds
        self._pending[item] = at
        if self._timer is None:
            self._timer = self._loop.call_at(at, self._fire)

    def discard(self, item: T) -> None:
        self._pending.pop(item, None)

    def _fire(self) -> None:
        self._timer = None
        pending = self._pending
        now = self._loop.time()
        while pending:
            item, at = next(iter(pending.items()))
            if at > now:
                break
            del pending[item]
            try:
                self._expire(item)
            except Exception:  # one failing callback must not strand the deadlines behind it
                log.exception("a deadline's expiry failed")
        if self._timer is not None:  # armed by an add() from an expiry: the head comes first
            self._timer.cancel()
            self._timer = None
        if pending:
            self._timer = self._loop.call_at(next(iter(pending.values())), self._fire)

    def close(self) -> None:
        """Stops the timer; what is still pending never expires."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
