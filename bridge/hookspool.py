"""Takes in the events the hook shim spooled while the bridge was down, oldest first."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError, MalformedInput, Overloaded, SinkError
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.sftpgo import SPOOL_FORMAT, SPOOL_SUFFIX

log = logging.getLogger(__name__)

REJECTED = "rejected"
# The shim writes the query and the allow-listed user fields: a few hundred bytes. Anything much
# larger did not come from it, and is not read into memory.
MAX_FILE_BYTES = 1024 * 1024
# Avro timestamp-millis as every reader decodes it: 1970-01-01 to 9999-12-31.
MAX_RECEIVED_MS = 253_402_300_799_999
# Unexpected failures (not the file's shape, not the sink) after which a file is set aside.
MAX_ATTEMPTS = 3
# Opening never follows a link, never waits for a FIFO's writer, never leaks into a child.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class HookSpool:
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
            names = sorted(e.name for e in entries if e.name.endswith(SPOOL_SUFFIX))
        return [self.directory / name for name in names]

    async def _take(self, path: Path) -> int:
        """Publishes one file's event and deletes the file; 1 if it did, 0 if not."""
        try:
            spooled = await asyncio.to_thread(_read, path)
            if spooled is None:
                return 0  # gone meanwhile (another bridge took it)
            event = self._normalizer.sftpgo(
                spooled["query"],
                spooled["user"],
                received_ms=spooled["received_ms"],
                # The id the shim sent, if it did (files from older shims carry none).
                event_id=spooled.get("event_id"),
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
        target = self.directory / REJECTED
        try:
            target.mkdir(exist_ok=True)
            os.replace(path, target / path.name)
        except OSError as exc:
            # Left in place and tried again next time; the files behind it go on meanwhile.
            log.error("cannot move unusable spool file %s to %s/: %s", path.name, REJECTED, exc)
            return
        self._metrics.spool_rejected.inc()
        log.error("moved unusable spool file %s to %s/: %s", path.name, REJECTED, why)

    def _update_gauges(self, files: list[Path]) -> None:
        self._metrics.spool_events.labels("hook").set(len(files))
        oldest = _received_ms_from_name(files[0]) if files else None
        age = max(0.0, time.time() - oldest / 1000) if oldest is not None else 0.0
        self._metrics.spool_oldest_age.labels("hook").set(age)


def _read(path: Path) -> dict[str, Any] | None:
    """The spool document in ``path``, checked; None if the file is gone. Raises MalformedInput
    for anything the shim would not have written."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MalformedInput("a symbolic link, not a spool file (never followed)") from None
        raise MalformedInput(f"cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MalformedInput(f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > MAX_FILE_BYTES:
            raise MalformedInput(f"{info.st_size} bytes, over the {MAX_FILE_BYTES} byte limit")
        raw = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise MalformedInput(f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise MalformedInput(f"over the {MAX_FILE_BYTES} byte limit")
    try:
        data: dict[str, Any] = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedInput(f"not a JSON spool file: {exc}") from None
    valid = (
        isinstance(data, dict)
        and data.get("format") == SPOOL_FORMAT
        and isinstance(data.get("query"), dict)
        and all(isinstance(v, str) for v in data["query"].values())
        and isinstance(data.get("user"), dict)
        and type(data.get("received_ms")) is int  # not bool, which is an int too
    )
    if not valid:
        raise MalformedInput(f"not a {SPOOL_FORMAT} file")
    if not 0 <= data["received_ms"] <= MAX_RECEIVED_MS:
        raise MalformedInput("received_ms is out of range for an event time")
    return data


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


def _received_ms_from_name(path: Path) -> int | None:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None
