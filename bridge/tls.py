"""TLS contexts of the bridge's own clients: the RabbitMQ sink and the Schema Registry client.

(librdkafka builds Kafka's from its settings; the hook shim builds its own, to import nothing of
the bridge at start-up.)
"""

from __future__ import annotations

import ssl
from pathlib import Path

from bridge.errors import ConfigError


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
