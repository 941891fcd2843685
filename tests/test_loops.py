"""RunningLoop: the running loop, asked of asyncio once per loop; to_thread_to_the_end."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from bridge.loops import RunningLoop, to_thread_to_the_end


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


def test_a_cleanup_that_fails_after_a_cancellation_is_logged_and_the_cancellation_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Closing what the abandoned call made may fail (a client that will not close): the caller
    is being cancelled, and must see its CancelledError, not the cleanup's error."""
    entered, release = threading.Event(), threading.Event()

    def call() -> str:
        entered.set()
        release.wait(10)
        return "made"

    def abandoned(made: str) -> None:
        raise RuntimeError(f"could not close what was {made}")

    async def scenario() -> None:
        running = asyncio.ensure_future(to_thread_to_the_end(call, abandoned=abandoned))
        assert await asyncio.to_thread(entered.wait, 10)
        running.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the wait before the call returns
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await running

    with caplog.at_level(logging.WARNING, logger="bridge.loops"):
        asyncio.run(scenario())
    failed = [r for r in caplog.records if r.name == "bridge.loops"]
    assert [r.getMessage() for r in failed] == ["cleaning up after a cancelled call failed"]
    assert failed[0].exc_info is not None
    assert "could not close what was made" in str(failed[0].exc_info[1])
