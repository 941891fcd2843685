"""Group commit: whatever one shared write raises, every request waiting on it gets an answer."""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import SinkUnavailable
from bridge.groupcommit import GroupCommit


def test_an_unexpected_exception_in_a_write_fails_its_whole_batch_and_the_next_batch_is_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    written: list[list[int]] = []

    def write(batch: list[int]) -> None:
        if 13 in batch:
            raise RuntimeError("a bug in the writer")
        written.append(batch)

    commits = GroupCommit(
        write, failures=(OSError,), fail=lambda exc: SinkUnavailable(f"cannot write: {exc}")
    )

    async def scenario() -> list[BaseException | None]:
        first = await asyncio.gather(
            *(commits.submit(n) for n in (11, 12, 13)), return_exceptions=True
        )
        await commits.submit(14)
        return first

    results = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert all(isinstance(r, SinkUnavailable) for r in results)
    assert written == [[14]]
    assert "group commit of 3 item(s) failed unexpectedly" in caplog.text
