"""Exits 0 once a Kafka broker at host:port answers Metadata with at least one live broker."""

from __future__ import annotations

import socket
import struct
import sys

METADATA = 3
# v4 is the oldest Metadata version Kafka 4.x still serves (KIP-896) and the newest without
# tagged fields, so it can be spelled with struct alone.
METADATA_VERSION = 4
CLIENT_ID = b"login-audit-ready"


def metadata_request(correlation_id: int) -> bytes:
    header = struct.pack(">hhih", METADATA, METADATA_VERSION, correlation_id, len(CLIENT_ID))
    # topics = null asks for all topics; auto-creation off so probing never creates one.
    body = struct.pack(">i?", -1, False)
    payload = header + CLIENT_ID + body
    return struct.pack(">i", len(payload)) + payload


def read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks.extend(chunk)
    return bytes(chunks)


def live_brokers(host: str, port: int, timeout: float) -> int:
    """How many unfenced brokers the broker reports; a fenced node reports none of itself."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(metadata_request(correlation_id=1))
        (size,) = struct.unpack(">i", read_exactly(sock, 4))
        response = read_exactly(sock, size)
    _correlation_id, _throttle_ms, brokers = struct.unpack(">iii", response[:12])
    return int(brokers)


def main() -> int:
    host, _, port = sys.argv[1].rpartition(":")
    try:
        return 0 if live_brokers(host, int(port), timeout=2.0) > 0 else 1
    except (OSError, struct.error):
        return 1


if __name__ == "__main__":
    sys.exit(main())
