"""The garbage collector on a clock: which generation each tick takes, the automatic collector
off while the clock runs and back after it, garbage cycles still collected, and a serving worker
running it (or not, at gc_interval_seconds 0)."""

from __future__ import annotations

import asyncio
import gc
import urllib.request
import weakref
from collections.abc import Callable, Iterator

import pytest

from bridge.collector import MIDDLE_EVERY, OLD_EVERY, collect_on_a_clock, generation_of

from conftest import BridgeProcess
from support import wait_for


@pytest.fixture
def automatic_collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_each_tick_takes_the_young_generation_every_tenth_the_middle_every_hundredth_all() -> None:
    ticks = range(1, 2 * OLD_EVERY + 1)
    generations = [generation_of(tick) for tick in ticks]
    assert generations.count(2) == 2
    assert generations.count(1) == 2 * (OLD_EVERY // MIDDLE_EVERY) - 2
    assert [tick for tick in ticks if generation_of(tick) == 2] == [OLD_EVERY, 2 * OLD_EVERY]
    assert generation_of(MIDDLE_EVERY) == 1
    assert generation_of(1) == 0


@pytest.mark.usefixtures("automatic_collector_restored")
def test_the_automatic_collector_is_off_while_the_clock_runs_and_back_once_it_stops() -> None:
    seen: list[bool] = []

    async def scenario() -> None:
        clock = asyncio.create_task(collect_on_a_clock(0.01))
        await asyncio.sleep(0.05)
        seen.append(gc.isenabled())
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)

    gc.enable()
    asyncio.run(scenario())
    assert seen == [False]
    assert gc.isenabled()


class _Node:
    def __init__(self) -> None:
        self.me = self


@pytest.mark.usefixtures("automatic_collector_restored")
def test_a_garbage_cycle_is_collected_by_the_clock_with_the_automatic_collector_off() -> None:
    freed: list[bool] = []

    async def scenario() -> None:
        clock = asyncio.create_task(collect_on_a_clock(0.02))
        await asyncio.sleep(0)  # the clock has switched the automatic collector off
        node = _Node()
        weakref.finalize(node, freed.append, True)
        del node  # unreachable, but its reference to itself keeps it alive until a collection
        await asyncio.sleep(0.01)
        before = list(freed)
        await asyncio.sleep(0.2)
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)
        assert before == []  # not freed by reference counting: only a collection frees it

    asyncio.run(scenario())
    assert freed == [True]


GC_TASK_UP = 'login_audit_background_task_up{task="gc"}'


def _gc_series(bridge: BridgeProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"{bridge.admin_url}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in lines)
        if name.startswith(("python_gc_collections_total", GC_TASK_UP))
    }


@pytest.mark.slow
def test_a_worker_collects_on_its_clock_even_idle_and_not_at_interval_zero(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """Idle, Python's own trigger hardly ever reaches the older generations; the clock does
    every tenth tick."""
    clocked = bridge_factory(gc_interval_seconds="0.05")
    middle = 'python_gc_collections_total{generation="1"}'
    first = _gc_series(clocked)
    assert first[GC_TASK_UP] == 1
    wait_for(lambda: _gc_series(clocked)[middle], lambda n: n >= first[middle] + 3, timeout=10)

    automatic = bridge_factory(gc_interval_seconds="0")
    assert GC_TASK_UP not in _gc_series(automatic)
