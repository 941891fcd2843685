"""Empties spools into the sink and says what stays: at shutdown, and for spools no bridge runs.

A bridge that gets SIGTERM drains its own spool within ``shutdown_drain_seconds`` (see
:mod:`bridge.service`). A spool whose bridge does not come back (a StatefulSet scaled down, a
pod deleted while the broker was away, ``serve --workers`` lowered) is drained by
``login-audit-bridge drain``: it takes each spool's lock (refusing one a live process holds),
replays it with the service's own :class:`~bridge.replay.Replayer`, and reports per spool.
Delivery stays at least once: an event leaves the spool only after the sink acknowledged it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bridge.codec import AvroCodec
from bridge.durable_spool import DurableSpool, SpoolLock
from bridge.encode import build_wire_encoder
from bridge.errors import SinkError, SpoolInUse
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline
from bridge.replay import Replayer
from bridge.settings import Settings
from bridge.sinks import build_sink
from bridge.sinks.base import Sink
from bridge.workers import spools_under

log = logging.getLogger(__name__)

RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What one spool's drain achieved; ``left`` events (and dead letters) stay on disk."""

    spool: Path
    delivered: int
    left: int | None  # None: not known (the spool is in use)
    dead_letters: int | None
    error: str | None = None  # why it stopped short: sink unreachable, spool in use, ...

    @property
    def complete(self) -> bool:
        return self.error is None and self.left == 0


async def drain(replayer: Replayer, *, budget: float) -> int:
    """Replays the spool until it is empty or ``budget`` seconds are spent; returns events left.

    A batch cut off by the budget may have been acknowledged without being removed: those
    events are sent again by whoever drains next (at least once, never lost).
    """
    spool = replayer.spool
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    delay = RETRY_MIN_SECONDS
    await spool.refresh()
    while spool.depth > 0 and loop.time() < deadline:
        try:
            async with asyncio.timeout(deadline - loop.time()):
                if await replayer.replay_once():
                    delay = RETRY_MIN_SECONDS
                    continue
                await asyncio.sleep(delay)
        except TimeoutError:
            break
        delay = min(delay * 2, RETRY_MAX_SECONDS)
    return spool.depth


async def start_sink_within(sink: Sink, *, budget: float) -> str | None:
    """Starts the sink, retrying while the broker is away; None, or why it did not start.

    A ConfigError (credentials, the registry refusing the schema) is raised: retrying it only
    burns the budget.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    delay = RETRY_MIN_SECONDS
    why = f"not reachable within {budget:g} s"
    while loop.time() < deadline:
        try:
            async with asyncio.timeout(deadline - loop.time()):
                await sink.start()
            return None
        except TimeoutError:
            break
        except SinkError as exc:
            why = exc.message
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, RETRY_MAX_SECONDS * 2)
    return why


async def drain_data_dir(settings: Settings, *, budget: float) -> list[DrainReport]:
    """Drains every spool under ``settings.data_dir`` into the configured sink within ``budget``
    seconds; one report per spool found (none: an empty list)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    reports: list[DrainReport] = []
    codec = AvroCodec()
    paths = spools_under(settings.data_dir)
    async with contextlib.AsyncExitStack() as stack:
        spools: list[DurableSpool] = []
        for path in paths:
            try:
                spools.append(await stack.enter_async_context(_locked_spool(path, settings, codec)))
            except SpoolInUse as exc:
                reports.append(DrainReport(path, 0, None, None, error=exc.message))
        waiting = [s for s in spools if s.depth]
        reports += [DrainReport(s.path, 0, 0, s.dead_letters) for s in spools if not s.depth]
        if not waiting:
            return _in_order(reports, paths)
        metrics = Metrics()
        sink = build_sink(
            settings, codec=codec, encoder=build_wire_encoder(settings, codec), metrics=metrics
        )
        why = await start_sink_within(sink, budget=deadline - loop.time())
        if why is not None:
            error = f"{settings.sink} sink not reachable: {why}"
            reports += [DrainReport(s.path, 0, s.depth, s.dead_letters, error) for s in waiting]
            return _in_order(reports, paths)
        stack.push_async_callback(sink.stop)
        pipeline = Pipeline(sink=sink, metrics=metrics)
        for spool in waiting:
            reports.append(await _drain_one(spool, pipeline, settings, deadline - loop.time()))
    return _in_order(reports, paths)


async def _drain_one(
    spool: DurableSpool, pipeline: Pipeline, settings: Settings, budget: float
) -> DrainReport:
    before = spool.depth
    replayer = Replayer(
        spool,
        send=pipeline.resend,
        sink_name=pipeline.sink.name,
        metrics=pipeline.metrics,
        publish_timeout=settings.publish_timeout_seconds,
    )
    left = await drain(replayer, budget=max(0.0, budget))
    error = None if left == 0 else f"{left} event(s) not acknowledged within the time given"
    log.info("spool %s: %d event(s) delivered, %d left", spool.path, before - left, left)
    return DrainReport(spool.path, before - left, left, spool.dead_letters, error)


@contextlib.asynccontextmanager
async def _locked_spool(
    path: Path, settings: Settings, codec: AvroCodec
) -> AsyncIterator[DurableSpool]:
    with SpoolLock(path):
        spool = DurableSpool(
            path, codec, max_bytes=settings.spool_max_bytes, max_events=settings.spool_max_events
        )
        await spool.open()
        try:
            yield spool
        finally:
            await spool.close()


def _in_order(reports: list[DrainReport], paths: list[Path]) -> list[DrainReport]:
    return sorted(reports, key=lambda r: paths.index(r.spool))
