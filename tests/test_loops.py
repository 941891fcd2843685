"""RunningLoop: the running loop, asked of asyncio once per loop."""

from __future__ import annotations

import asyncio

import pytest

from bridge.loops import RunningLoop


def test_it_gives_the_loop_it_is_called_on_each_time_a_new_one_runs() -> None:
    running = RunningLoop()

    async def both() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        return running(), asyncio.get_running_loop()

    for _ in range(3):  # the loop kept from the run before has stopped: the new one is found
        kept, actual = asyncio.run(both())
        assert kept is actual


def test_outside_a_running_loop_it_raises_as_asyncio_does() -> None:
    running = RunningLoop()

    async def find() -> asyncio.AbstractEventLoop:
        return running()

    asyncio.run(find())
    with pytest.raises(RuntimeError, match="no running event loop"):
        running()
