"""Many deadlines behind one timer: each expires once, in order, unless discarded first."""

from __future__ import annotations

import asyncio

from bridge.deadlines import Deadlines


def test_deadlines_expire_in_order_once_each_and_discarded_ones_never() -> None:
    async def scenario() -> list[str]:
        expired: list[str] = []
        deadlines: Deadlines[str] = Deadlines(asyncio.get_running_loop(), 0.05, expired.append)
        deadlines.add("a")
        await asyncio.sleep(0.02)
        deadlines.add("b")
        deadlines.add("c")
        deadlines.discard("b")
        await asyncio.sleep(0.045)
        assert expired == ["a"]  # "c" is 0.02 s younger
        await asyncio.sleep(0.05)
        assert len(deadlines) == 0
        return expired

    assert asyncio.run(scenario()) == ["a", "c"]


def test_a_deadline_added_while_expiring_keeps_its_own_time_and_a_failing_one_spares_the_rest() -> (
    None
):
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        expired: list[str] = []
        deadlines: Deadlines[str]

        def expire(item: str) -> None:
            expired.append(item)
            if item == "a":
                deadlines.add("again")
            if item == "b":
                raise RuntimeError("a broken callback")

        deadlines = Deadlines(loop, 0.05, expire)
        deadlines.add("a")
        deadlines.add("b")
        deadlines.add("c")
        await asyncio.sleep(0.07)
        assert expired == ["a", "b", "c"]
        await asyncio.sleep(0.05)
        return expired

    assert asyncio.run(scenario()) == ["a", "b", "c", "again"]


def test_closed_deadlines_never_expire() -> None:
    async def scenario() -> list[str]:
        expired: list[str] = []
        deadlines: Deadlines[str] = Deadlines(asyncio.get_running_loop(), 0.01, expired.append)
        deadlines.add("a")
        deadlines.close()
        await asyncio.sleep(0.05)
        return expired

    assert asyncio.run(scenario()) == []
