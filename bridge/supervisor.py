"""Keeps the service's background tasks running: restarts a failed one with backoff, says which
are down (for /readyz), and turns a configuration error into the end of the process."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable

from bridge.errors import BridgeError, ConfigError
from bridge.metrics import Metrics

log = logging.getLogger(__name__)

RESTART_MIN_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
# A restarted task counts as up again once it has run this long without failing; a task that
# fails at once on every restart stays down instead of flapping.
STABLE_SECONDS = 5.0
# Failures whose message says it all; anything else is logged with its traceback.
EXPECTED = (BridgeError, sqlite3.Error, OSError)


class Supervisor:
    """Runs named background tasks until ``stop``; ``problem`` names the ones that are down."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        restart_min: float = RESTART_MIN_SECONDS,
        restart_max: float = RESTART_MAX_SECONDS,
        stable_after: float = STABLE_SECONDS,
    ) -> None:
        self._metrics = metrics
        self._restart_min = restart_min
        self._restart_max = restart_max
        self._stable_after = stable_after
        self._tasks: list[asyncio.Task[None]] = []
        self._down: dict[str, str] = {}
        self._fatal: asyncio.Future[ConfigError] | None = None

    def start(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Runs ``work()`` now and again after each failure, until it returns or ``stop``."""
        self._metrics.background_task_failures.labels(name)  # exported as 0 from the start
        self._metrics.background_task_up.labels(name).set(1)
        self._tasks.append(asyncio.create_task(self._keep_running(name, work), name=name))

    @property
    def problem(self) -> str | None:
        """Which tasks are down and why, or None when all run."""
        if not self._down:
            return None
        return "; ".join(f"background task {n} is down: {why}" for n, why in self._down.items())

    async def fatal_error(self) -> ConfigError:
        """Returns the configuration error a task stopped on; the service then exits."""
        return await self._fatal_future()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _keep_running(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        delay = self._restart_min
        while True:
            started = time.monotonic()
            recovered = asyncio.get_running_loop().call_later(
                self._stable_after, self._mark_up, name
            )
            try:
                await work()
            except ConfigError as exc:
                self._count(name, exc.message)
                log.error(
                    "background task %s stopped on a configuration error: %s; fix the settings "
                    "and start again (the bridge exits with code 3)",
                    name,
                    exc.message,
                )
                future = self._fatal_future()
                if not future.done():
                    future.set_result(exc)
                return
            except Exception as exc:  # the point: nothing ends a task for good
                self._failed(name, exc)
            else:
                self._mark_up(name)
                return
            finally:
                recovered.cancel()
            if time.monotonic() - started >= self._stable_after:
                delay = self._restart_min  # it had recovered: a new failure starts over
            log.info("restarting background task %s in %.1f s", name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._restart_max)

    def _failed(self, name: str, exc: Exception) -> None:
        why = exc.message if isinstance(exc, BridgeError) else f"{type(exc).__name__}: {exc}"
        self._count(name, why)
        if isinstance(exc, EXPECTED):
            log.error("background task %s failed: %s", name, why)
        else:
            log.error("background task %s failed unexpectedly: %s", name, why, exc_info=exc)

    def _count(self, name: str, why: str) -> None:
        self._down[name] = why
        self._metrics.background_task_failures.labels(name).inc()
        self._metrics.background_task_up.labels(name).set(0)

    def _mark_up(self, name: str) -> None:
        if self._down.pop(name, None) is not None:
            log.info("background task %s is running again", name)
        self._metrics.background_task_up.labels(name).set(1)

    def _fatal_future(self) -> asyncio.Future[ConfigError]:
        if self._fatal is None:
            self._fatal = asyncio.get_running_loop().create_future()
        return self._fatal
