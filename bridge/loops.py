"""The event loop's helpers: the running loop asked of asyncio once per loop instead of once
per request (RunningLoop), and a thread's call that a cancellation waits out (to_thread_to_the_end).

On Python 3.11, ``asyncio.get_running_loop()`` (and ``get_event_loop()``, which calls it) makes a
``getpid()`` system call each time, to tell a loop inherited over ``fork()`` from the process's
own (3.12 keeps the loop on the thread state instead). On the hook path that was two system
calls per event with a new connection, as the hooks connect (perf trace, bench/ingest.py
--profile-per-event), one per turn of the loop on kept-alive connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class RunningLoop:
    """Called from code running on a loop, returns that loop.

    The loop found last is kept while it runs. The bridge runs one event loop at a time, in one
    thread, so a kept loop that is running is the caller's; once it stops (a test's loop ends,
    the service is started again), asyncio is asked again, and raises as it would outside a loop.
    """

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop


async def to_thread_to_the_end(
    call: Callable[[], T], *, abandoned: Callable[[T], object] | None = None
) -> T:
    """``asyncio.to_thread(call)``, except that a cancellation returns only once ``call`` has.

    Cancelling ``to_thread`` leaves its thread running, and a caller that then cleans up (closes
    the client the thread is using) races it. Cancelled, this waits for the call to end, hands
    what it returned to ``abandoned`` (in a thread too: closing a client blocks), drops its
    error, and raises the cancellation. A failure of ``abandoned`` is logged, never raised in
    the cancellation's place: the caller is stopping, and its caller waits for that.
    """
    running = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait({running})
        if not running.cancelled() and running.exception() is None and abandoned is not None:
            try:
                await asyncio.to_thread(abandoned, running.result())
            except Exception:
                log.warning("cleaning up after a cancelled call failed", exc_info=True)
        raise
