"""Under ``serve --workers N``, /readyz and /metrics on any worker answer for all of them.

The kernel spreads hook connections over every worker, but only worker 0 has the admin port, and
the main port's admin routes reach whichever worker the connection landed on. Answering for one
worker would show a scraper a share of the events and a probe a share of the readiness.

So each worker also serves its own admin routes on a Unix socket, ``<index>.sock`` in a directory
that the parent made for this run and only the bridge's user may enter. The routes on the TCP
ports ask the other workers there and answer for the group: every sample carries a ``worker``
label, ``login_audit_worker_up`` says which workers answered the scrape, and /readyz is ready
only when every worker is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

ASK_TIMEOUT_SECONDS = 2.0
# A worker's whole exposition is tens of KiB; anything far larger is not one.
MAX_ANSWER_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """What another worker said on its admin socket; ``status`` 0: it did not answer."""

    worker: int
    status: int
    body: bytes
    why: str = ""


@dataclass(frozen=True, slots=True)
class OthersReady:
    """Every other worker is ready: whether all their sinks are, and what their spools hold."""

    sink_ready: bool
    spooled: int


@dataclass(frozen=True, slots=True)
class WorkerGroup:
    """Worker ``index`` of ``count``, whose admin sockets are in ``sockets``."""

    index: int
    count: int
    sockets: Path

    def socket(self, index: int) -> Path:
        return self.sockets / f"{index}.sock"

    @property
    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    async def ask(self, target: str) -> list[Answer]:
        """GET ``target`` from every other worker at once."""
        return list(await asyncio.gather(*(self._ask(i, target) for i in self.others)))

    async def readiness(self) -> OthersReady | tuple[str, str]:
        """The other workers' /readyz, together: why not ready as (reason, message) like
        Pipeline.unready(), naming the first worker that is not (or does not answer)."""
        sink_ready, spooled = True, 0
        for answer in await self.ask("/readyz"):
            if answer.status == 0:
                return "worker_unreachable", f"worker {answer.worker} does not answer: {answer.why}"
            said = _json_object(answer.body)
            if answer.status != 200:
                message = said.get("message", answer.status)
                return str(said.get("error", "unready")), f"worker {answer.worker}: {message}"
            sink_ready = sink_ready and said.get("sink_ready") is True
            spooled += int(said.get("spooled", 0))
        return OthersReady(sink_ready, spooled)

    async def metrics(self, own: bytes) -> bytes:
        """The exposition of every worker, ``own`` (this worker's) included."""
        answers = [Answer(self.index, 200, own), *await self.ask("/metrics")]
        return generate_latest(_Families(merge_expositions(answers)))

    async def _ask(self, index: int, target: str) -> Answer:
        try:
            async with asyncio.timeout(ASK_TIMEOUT_SECONDS):
                status, body = await _get(self.socket(index), target)
        except (OSError, TimeoutError, h11.ProtocolError, ValueError) as exc:
            why = str(exc) or type(exc).__name__
            log.warning("worker %d did not answer %s on its admin socket: %s", index, target, why)
            return Answer(index, 0, b"", why)
        return Answer(index, status, body)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def merge_expositions(answers: Iterable[Answer]) -> Iterator[Metric]:
    """One family per metric name with every worker's samples, labelled with the worker."""
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily(
        "login_audit_worker_up",
        "1 if the worker answered this scrape (serve --workers; on its admin socket), else 0.",
        labels=["worker"],
    )
    for answer in answers:
        worker = str(answer.worker)
        if answer.status != 200:
            up.add_metric([worker], 0)
            continue
        try:
            parsed = list(text_string_to_metric_families(answer.body.decode("utf-8")))
        except ValueError as exc:
            log.warning("worker %s sent metrics that do not parse: %s", worker, exc)
            up.add_metric([worker], 0)
            continue
        up.add_metric([worker], 1)
        for family in parsed:
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            merged.samples += [
                s._replace(labels=s.labels | {"worker": worker}) for s in family.samples
            ]
    yield from families.values()
    yield up


class _Families(CollectorRegistry):
    """A registry that renders a fixed list of families (generate_latest takes a registry)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        super().__init__(auto_describe=False)
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


async def _get(path: Path, target: str) -> tuple[int, bytes]:
    """One GET over a Unix socket, the HTTP/1.1 framing done by h11 (uvicorn's own parser)."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        connection = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET", target=target, headers=[("Host", "worker"), ("Connection", "close")]
        )
        head, end = connection.send(request), connection.send(h11.EndOfMessage())
        writer.write((head or b"") + (end or b""))
        status, body = 0, bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_ANSWER_BYTES:
                    raise ValueError(f"answer over {MAX_ANSWER_BYTES} bytes")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, bytes(body)
    finally:
        writer.close()
