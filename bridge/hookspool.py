"""Takes in the events the hook shim spooled while the bridge was down, oldest first."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from bridge.errors import InputError, MalformedInput, SinkError
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.sftpgo import SPOOL_FORMAT, SPOOL_SUFFIX

log = logging.getLogger(__name__)

REJECTED = "rejected"


class HookSpool:
    """Publishes each spooled file through the pipeline, then deletes it.

    A file is deleted only after its event is durable, so a crash in between republishes it
    (at-least-once). A file that can never become an event is moved to ``rejected/`` and counted.
    """

    def __init__(
        self, directory: Path, *, normalizer: Normalizer, pipeline: Pipeline, metrics: Metrics
    ) -> None:
        self.directory = directory
        self._normalizer = normalizer
        self._pipeline = pipeline
        self._metrics = metrics

    async def run(self, interval: float) -> None:
        """Drains now and then every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.drain()
            except OSError as exc:
                log.error("cannot read hook spool %s: %s", self.directory, exc)
            await asyncio.sleep(interval)

    async def drain(self) -> int:
        """Publishes what is spooled now; returns how many events it published."""
        files = await asyncio.to_thread(self._pending)
        self._update_gauges(files)
        published = 0
        for index, path in enumerate(files):
            try:
                await self._take(path)
            except SinkError as exc:
                log.warning("hook spool paused, sink not ready: %s", exc)
                self._update_gauges(files[index:])
                return published
            published += 1
        self._update_gauges([])
        if published:
            log.info("took in %d spooled hook event(s) from %s", published, self.directory)
        return published

    def _pending(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.name.endswith(SPOOL_SUFFIX))

    async def _take(self, path: Path) -> None:
        try:
            spooled = await asyncio.to_thread(_read, path)
            event = self._normalizer.sftpgo(
                spooled["query"],
                spooled["user"],
                received_ms=spooled["received_ms"],
                # The id the shim sent, if it did (files from older shims carry none).
                event_id=spooled.get("event_id"),
            )
        except InputError as exc:
            await asyncio.to_thread(self._reject, path, exc)
            return
        await self._pipeline.publish(event)
        await asyncio.to_thread(path.unlink, missing_ok=True)

    def _reject(self, path: Path, exc: InputError) -> None:
        self._metrics.spool_rejected.inc()
        target = self.directory / REJECTED
        target.mkdir(exist_ok=True)
        os.replace(path, target / path.name)
        log.error("moved unusable spool file %s to %s/: %s", path.name, REJECTED, exc.message)

    def _update_gauges(self, files: list[Path]) -> None:
        self._metrics.spool_events.labels("hook").set(len(files))
        oldest = _received_ms_from_name(files[0]) if files else None
        age = max(0.0, time.time() - oldest / 1000) if oldest is not None else 0.0
        self._metrics.spool_oldest_age.labels("hook").set(age)


def _read(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise MalformedInput(f"not a JSON spool file: {exc}") from None
    valid = (
        isinstance(data, dict)
        and data.get("format") == SPOOL_FORMAT
        and isinstance(data.get("query"), dict)
        and all(isinstance(v, str) for v in data["query"].values())
        and isinstance(data.get("user"), dict)
        and isinstance(data.get("received_ms"), int)
    )
    if not valid:
        raise MalformedInput(f"not a {SPOOL_FORMAT} file")
    return data


def _received_ms_from_name(path: Path) -> int | None:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None
