"""The running event loop, asked of asyncio once per loop instead of once per request.

On Python 3.11, ``asyncio.get_running_loop()`` (and ``get_event_loop()``, which calls it) makes a
``getpid()`` system call each time, to tell a loop inherited over ``fork()`` from the process's
own (3.12 keeps the loop on the thread state instead). On the hook path that was two system
calls per event with a new connection, as the hooks connect (perf trace, bench/ingest.py
--profile-per-event), one per turn of the loop on kept-alive connections.
"""

from __future__ import annotations

import asyncio


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
