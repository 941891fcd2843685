"""TLS contexts: the bridge's own clients' (the RabbitMQ sink, the Schema Registry client), and
its HTTPS listener's, renewed from its files.

(librdkafka builds Kafka's from its settings; the hook shim builds its own, to import nothing of
the bridge at start-up.)
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from bridge.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

# OpenSSL's reasons for a server's alert that it did not accept the client's certificate.
_PEER_REFUSED_CERTIFICATE = re.compile(r"ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_\w+)")


def peer_refused_certificate(error: object) -> bool:
    """``error`` is the server's TLS alert that it did not accept the client's certificate
    (unknown CA, bad, expired, required...)."""
    return isinstance(error, ssl.SSLError) and bool(
        _PEER_REFUSED_CERTIFICATE.search(error.reason or "")
    )


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


Identity = tuple[tuple[int, int, int, int] | None, ...]


class WatchedFiles:
    """Files the bridge loaded, and whether they have changed since, looked at no more often
    than every ``every`` seconds: their identity (device, inode, size, modification time; a
    Kubernetes Secret volume swaps them by renaming a directory, which changes the inode)."""

    def __init__(
        self, files: Sequence[Path], *, every: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.files = tuple(files)
        self.every = every
        self._clock = clock
        self._loaded = _identity(self.files)
        self._next = clock() + every

    def __str__(self) -> str:
        return ", ".join(str(path) for path in self.files)

    def changed(self) -> Identity | None:
        """None until it is time to look again and then while nothing changed; else what is
        there now, to give to :meth:`loaded` once it is loaded. Read before loading: a change
        made while loading is then seen at the next look."""
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self.every
        found = _identity(self.files)
        return found if found != self._loaded else None

    def now(self) -> Identity:
        """What is there now: read it before loading the files, and give it to :meth:`loaded`."""
        return _identity(self.files)

    def loaded(self, identity: Identity) -> None:
        self._loaded = identity

    def reload(
        self, make: Callable[[], T], *, log: logging.Logger, who: str, keeps: str, uses: str
    ) -> tuple[T | None, str | None]:
        """When the files have changed, what ``make()`` makes of them, and what this look did:
        "renewed", "failed" (they do not load: what was loaded before stays in use, as
        ``keeps`` says, and they are tried again at the next look), or None (no change, or
        not yet time to look). Each outcome is logged to ``log``, as ``who``'s."""
        found = self.changed()
        if found is None:
            return None, None
        try:
            made = make()
        except (ConfigError, OSError, ssl.SSLError, ValueError) as exc:
            log.warning(
                "%s: %s changed but do not load (%s): %s; trying again in %g s",
                who,
                self,
                exc,
                keeps,
                self.every,
            )
            return None, "failed"
        self.loaded(found)
        log.info("%s: %s changed: %s", who, self, uses)
        return made, "renewed"


def watched(files: Sequence[Path | None], *, every: float) -> WatchedFiles | None:
    """A watch of the files given (None: a setting left unset), or None when none is."""
    given = [path for path in files if path is not None]
    return WatchedFiles(given, every=every) if given else None


class RenewableServerContext:
    """A TLS listener's context, made again from its files when they change: a certificate
    renewed on disk (cert-manager's, a Kubernetes Secret volume's) is served to new connections
    without a restart. Connections already open keep the one they were made with.

    Looked at from the accept path (see :class:`WatchedFiles`). A change is loaded into a new
    context; files that do not load (a certificate whose key is not written yet, a pair that
    does not match) leave the context loaded before in place, and are tried again at the next
    look.
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
        self._files = WatchedFiles(files, every=every, clock=clock)
        self.context = first

    def current(self) -> tuple[ssl.SSLContext, str | None]:
        """The context to make the next connection with, and what this call did when it looked
        at the files (see :meth:`WatchedFiles.reload`)."""
        context, outcome = self._files.reload(
            self._make,
            log=log,
            who="TLS",
            keeps="still serving the certificate loaded before",
            uses="new connections get the renewed certificate",
        )
        if context is not None:
            self.context = context
        return self.context, outcome


def _identity(files: Sequence[Path]) -> Identity:
    found: list[tuple[int, int, int, int] | None] = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            found.append(None)
        else:
            found.append((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(found)
