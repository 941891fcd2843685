"""Takes in the logins the hook shim left in its hand-off directory while the bridge was away."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from bridge import handoff, pam
from bridge.errors import BridgeError, Overloaded, SinkError
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline

log = logging.getLogger(__name__)

# Unexpected failures (not the file's shape, not the sink) after which a file is set aside.
MAX_ATTEMPTS = 3


class HandoffIntake:
    """Publishes each spooled file through the pipeline, then deletes it.

    A file is deleted only after its event is durable, so a crash in between republishes it
    (at-least-once). Each file is handled on its own: one that can never become an event
    (not a regular file, too large, not a spool document, out-of-range values) is moved to
    ``rejected/`` and counted, and never holds up the files behind it.
    """

    def __init__(
        self, directory: Path, *, normalizer: Normalizer, pipeline: Pipeline, metrics: Metrics
    ) -> None:
        self.directory = directory
        self._normalizer = normalizer
        self._pipeline = pipeline
        self._metrics = metrics
        self._attempts: dict[str, int] = {}  # file name -> unexpected failures so far

    async def run(self, interval: float) -> None:
        """Drains now and then every ``interval`` seconds until cancelled.

        A file's own problems never end it; a failure to list the directory does, and the
        service's supervisor logs, counts and restarts it (and /readyz says so meanwhile).
        """
        while True:
            await self.drain()
            await asyncio.sleep(interval)

    async def drain(self) -> int:
        """Publishes what is spooled now; returns how many events it published."""
        files = await asyncio.to_thread(self._pending)
        self._update_gauges(files)
        published = 0
        for index, path in enumerate(files):
            try:
                published += await self._take(path)
            except (SinkError, Overloaded) as exc:
                log.warning("hook spool paused, the bridge cannot store events now: %s", exc)
                self._update_gauges(files[index:])
                return published
        self._update_gauges([])
        if published:
            log.info("took in %d spooled hook event(s) from %s", published, self.directory)
        return published

    def _pending(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        with os.scandir(self.directory) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(handoff.SUFFIX))
        return [self.directory / name for name in names]

    async def _take(self, path: Path) -> int:
        """Publishes one file's event and deletes the file; 1 if it did, 0 if not."""
        try:
            spooled = await asyncio.to_thread(handoff.read, path)
            if spooled is None:
                return 0  # gone meanwhile (another bridge took it)
            # The id the shim sent, if it did (files from older shims carry none).
            event_id = spooled.get("event_id")
            if spooled.get("source") == pam.SPOOL_SOURCE:  # the hook's --pam mode
                event = self._normalizer.pam(
                    spooled["query"], received_ms=spooled["received_ms"], event_id=event_id
                )
            else:
                event = self._normalizer.sftpgo(
                    spooled["query"],
                    spooled["user"],
                    received_ms=spooled["received_ms"],
                    event_id=event_id,
                )
            await self._pipeline.publish(event)
        except BridgeError as exc:
            if exc.retriable:  # the sink or the spool cannot take it now: pause, keep the file
                raise
            # Bad input, or an event the sink refuses for good (without a spool to keep it).
            await asyncio.to_thread(self._reject, path, exc.message)
            return 0
        except Exception as exc:
            await self._unexpected(path, exc)
            return 0
        await asyncio.to_thread(path.unlink, missing_ok=True)
        self._attempts.pop(path.name, None)
        return 1

    async def _unexpected(self, path: Path, exc: Exception) -> None:
        """Logs and counts; after MAX_ATTEMPTS the file is set aside instead of retried."""
        self._metrics.background_task_failures.labels("hook-spool").inc()
        attempts = self._attempts.get(path.name, 0) + 1
        self._attempts[path.name] = attempts
        log.error(
            "hook spool file %s failed unexpectedly (attempt %d of %d)",
            path.name,
            attempts,
            MAX_ATTEMPTS,
            exc_info=exc,
        )
        if attempts >= MAX_ATTEMPTS:
            self._attempts.pop(path.name, None)
            await asyncio.to_thread(self._reject, path, f"failed {attempts} times: {exc!r}")

    def _reject(self, path: Path, why: str) -> None:
        target = self.directory / handoff.REJECTED_DIR
        try:
            target.mkdir(exist_ok=True)
            os.replace(path, target / path.name)
        except OSError as exc:
            # Left in place and tried again next time; the files behind it go on meanwhile.
            log.error(
                "cannot move unusable spool file %s to %s/: %s",
                path.name,
                handoff.REJECTED_DIR,
                exc,
            )
            return
        self._metrics.spool_rejected.inc()
        log.error("moved unusable spool file %s to %s/: %s", path.name, handoff.REJECTED_DIR, why)

    def _update_gauges(self, files: list[Path]) -> None:
        self._metrics.spool_events.labels("hook").set(len(files))
        oldest = handoff.received_ms_from_name(files[0]) if files else None
        age = max(0.0, time.time() - oldest / 1000) if oldest is not None else 0.0
        self._metrics.spool_oldest_age.labels("hook").set(age)
