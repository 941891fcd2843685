"""The transport interface every sink implements."""

from __future__ import annotations

import abc
import asyncio
from types import TracebackType
from typing import ClassVar, Self

from bridge.event import EncodedEvent


class Sink(abc.ABC):
    """Takes login events and returns from ``send`` only once each is durable.

    Use as ``async with sink: await sink.send(encoded)``. ``send`` raises a
    :class:`bridge.errors.SinkError`; nothing else escapes a sink: each implementation translates
    its library's exceptions at this boundary.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    async def start(self) -> None:
        """Connects or opens files; raises SinkUnavailable when that is not possible now."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Flushes what is in flight and closes; sends after this raise SinkUnavailable."""

    @abc.abstractmethod
    async def send(self, encoded: EncodedEvent) -> None:
        """Returns once the event is durable (fsync'd, or acknowledged by the broker).

        ``encoded.datum`` is the event's Avro body, encoded once by :mod:`bridge.encode`."""

    def submit(self, encoded: EncodedEvent) -> asyncio.Future[None]:
        """Starts sending now; the future resolves once the event is durable, or with the
        SinkError. May also raise a SinkError at once (the send could not even start).

        The pipeline uses this to bound its wait without cancelling the send. This default runs
        ``send`` as a task; a sink that can start a send without a coroutine overrides it."""
        return asyncio.ensure_future(self.send(encoded))

    def ready(self) -> bool:
        """True while the sink can take events; drives ``/readyz``."""
        return True

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
