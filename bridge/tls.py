"""TLS contexts: the bridge's own clients' (the RabbitMQ sink, the Schema Registry client), and
its HTTPS listener's, renewed from its files.

(librdkafka builds Kafka's from its settings; the hook shim builds its own, to import nothing of
the bridge at start-up.)
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bridge.errors import ConfigError

log = logging.getLogger(__name__)


def client_context(
    ca: Path | None,
    certificate: Path | None = None,
    key: Path | None = None,
    *,
    files: str,
) -> ssl.SSLContext:
    """Checks the server's certificate, its name included, against ``ca`` (None: the system's
    CA bundle) and shows ``certificate`` (with ``key``, or a key inside it) when given. A file
    that does not load is a ConfigError naming ``files``, the settings it came from."""
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
        if certificate is not None:
            context.load_cert_chain(str(certificate), str(key) if key is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{files}: {exc}") from exc
    return context


class RenewableServerContext:
    """A TLS listener's context, made again from its files when they change: a certificate
    renewed on disk (cert-manager's, a Kubernetes Secret volume's) is served to new connections
    without a restart. Connections already open keep the one they were made with.

    Looked at from the accept path, at most every ``every`` seconds: the files' identity
    (device, inode, size, modification time; a Secret volume swaps them by renaming a
    directory) is compared with what was loaded. A change is loaded into a new context; files
    that do not load (a certificate whose key is not written yet, a pair that does not match)
    leave the context loaded before in place, and are tried again at the next look.
    """

    def __init__(
        self,
        make: Callable[[], ssl.SSLContext],
        files: Sequence[Path],
        *,
        first: ssl.SSLContext,
        every: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make = make
        self._files = tuple(files)
        self._every = every
        self._clock = clock
        self._loaded = _identity(self._files)
        self._next = clock() + every
        self.context = first

    def current(self) -> tuple[ssl.SSLContext, str | None]:
        """The context to make the next connection with, and what this call did when it looked
        at the files: "renewed", "failed" (they changed, and do not load), or None."""
        now = self._clock()
        if now < self._next:
            return self.context, None
        self._next = now + self._every
        found = _identity(self._files)
        if found == self._loaded:
            return self.context, None
        names = ", ".join(str(path) for path in self._files)
        try:
            context = self._make()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning(
                "TLS: %s changed but do not load (%s): still serving the certificate loaded "
                "before; trying again in %g s",
                names,
                exc,
                self._every,
            )
            return self.context, "failed"
        # What was read, not what is there now: a change made while loading is loaded next time.
        self._loaded = found
        self.context = context
        log.info("TLS: loaded the renewed certificate from %s for new connections", names)
        return context, "renewed"


def _identity(files: Sequence[Path]) -> tuple[tuple[int, int, int, int] | None, ...]:
    found: list[tuple[int, int, int, int] | None] = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            found.append(None)
        else:
            found.append((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(found)
