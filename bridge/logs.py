"""Log set-up: one JSON object per line on stderr (or plain text for a terminal)."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# uvicorn adds an ANSI-coloured copy of its messages as `color_message`: noise in JSON.
_DROPPED = [*RESERVED_ATTRS, "color_message"]


def configure_logging(*, level: str, fmt: str) -> None:
    """Routes the bridge's and uvicorn's loggers to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
                reserved_attrs=_DROPPED,
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in REPEATING_LOGGERS:
        quiet_repeats(name)


# What differs between two lines librdkafka repeats: the time a step took ("after 0ms") and the
# client's number, which grows each time the sink builds a new client after a failure.
_VARYING = re.compile(r"\b\d+ms\b|(?<=#producer-)\d+|(?<=#consumer-)\d+")


@dataclass(slots=True)
class _Seen:
    logged_at: float
    left_out: int = 0


class RepeatSuppressor(logging.Filter):
    """Lets the first of identical lines through, then one per ``window`` seconds.

    librdkafka logs each failed attempt to connect: with the broker away, a bridge wrote 20 to
    40 identical ERROR lines a second ("Connect to ipv4#... failed: Connection refused"), for
    as long as the outage lasted; aiormq about one every 1.3 s for an absent RabbitMQ. Lines
    that differ only where _VARYING matches are identical here. Those left out are counted,
    and the next one let through says how many there were. At most ``max_kept`` different
    lines are remembered, the oldest forgotten first. With the log level at debug, every line
    goes through.

    Records come from the loop's thread and, while a client closes, from a worker thread; a
    race between the two may let one extra line through, never lose a different one.
    """

    def __init__(
        self,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_kept: int = 256,
    ) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._max_kept = max_kept
        self._seen: dict[tuple[int, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return True  # someone debugging wants every line
        message = record.getMessage()
        key = (record.levelno, _VARYING.sub("#", message))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.logged_at < self.window:
            seen.left_out += 1
            return False
        if seen is not None and seen.left_out:
            window = f"{self.window:g} s"
            record.msg = (
                f"{message} ({seen.left_out} identical line(s) not logged in the {window} before)"
            )
            record.args = ()
        self._seen.pop(key, None)  # re-inserted: the dict's order is the order of last use
        self._seen[key] = _Seen(now)
        if len(self._seen) > self._max_kept:
            del self._seen[next(iter(self._seen))]
        return True


# The broker clients' loggers that say the same thing at each attempt while a broker is away:
# librdkafka's lines (through the Kafka clients' ``logger`` setting), aiormq's failed connects
# (ERROR) and aio-pika's reconnects (INFO), about one of each every 1.3 s to an absent RabbitMQ.
LIBRDKAFKA_LOGGER = "bridge.sinks.kafka.librdkafka"
REPEATING_LOGGERS = (LIBRDKAFKA_LOGGER, "aiormq.connection", "aio_pika.robust_connection")


def quiet_repeats(name: str) -> logging.Logger:
    """The logger ``name``, with repeated lines suppressed (RepeatSuppressor) from now on."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RepeatSuppressor) for f in logger.filters):
        logger.addFilter(RepeatSuppressor())
    return logger


def librdkafka_logger() -> logging.Logger:
    """The logger librdkafka's own lines go to (its clients' ``logger`` setting), repeats
    suppressed also where configure_logging was not called (``tail``)."""
    return quiet_repeats(LIBRDKAFKA_LOGGER)
