"""An in-memory sink for unit tests of the pipeline and for dry runs; it keeps nothing on disk."""

from __future__ import annotations

from typing import ClassVar

from bridge.errors import SinkUnavailable
from bridge.event import EncodedEvent, LoginEvent
from bridge.sinks.base import Sink


class MemorySink(Sink):
    """Appends each event to ``events``; ``fail_with`` makes the next sends raise (for tests)."""

    name: ClassVar[str] = "memory"

    def __init__(self) -> None:
        self.events: list[LoginEvent] = []
        self.fail_with: Exception | None = None
        self._open = False

    async def start(self) -> None:
        self._open = True

    async def stop(self) -> None:
        self._open = False

    async def send(self, encoded: EncodedEvent) -> None:
        if not self._open:
            raise SinkUnavailable("memory sink is not started")
        if self.fail_with is not None:
            raise self.fail_with
        self.events.append(encoded.event)

    def ready(self) -> bool:
        return self._open
