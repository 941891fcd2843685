"""The server's CPU per TLS handshake, in-process: the bridge's HTTPS context against OpenSSL's
defaults, which also make and send two TLS 1.3 session tickets that no hook ever uses.

Every hook connects anew for each login (see ``connections.py``), so over HTTPS each login is a
full handshake. This builds the server context the way the bridge does (``bridge.service``'s
uvicorn Config, loaded) and the same context with OpenSSL's ticket settings put back, for an
RSA-2048 and an ECDSA P-256 key from a throwaway ``trustme`` CA, and runs handshakes between
memory BIOs, the variants taking turns in a random order. It times the server's side only (the
process CPU time of its ``do_handshake`` calls and of sending its first bytes, which is when
OpenSSL writes the tickets) and prints the median per handshake.

    .venv/bin/python bench/tls_handshake.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import random
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trustme

from bridge.service import _uvicorn_config
from bridge.settings import Settings


def server_contexts(key_type: trustme.KeyType, scratch: Path) -> dict[str, ssl.SSLContext]:
    leaf = trustme.CA(key_type=key_type).issue_cert("127.0.0.1", key_type=key_type)
    cert, key = scratch / f"{key_type.name}.crt", scratch / f"{key_type.name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    contexts = {}
    for name in ("the bridge's", "with tickets (OpenSSL's default)"):
        settings = Settings(tls_certfile=cert, tls_keyfile=key, auth_tokens="bench")
        config = _uvicorn_config(object(), settings)
        config.load()
        assert config.ssl is not None  # TLS settings given above
        if name != "the bridge's":
            config.ssl.num_tickets = 2
            config.ssl.options &= ~ssl.OP_NO_TICKET
        contexts[name] = config.ssl
    return contexts


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> float:
    """Server CPU seconds for one full handshake and its first application bytes."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    spent = 0.0
    client_done = server_done = False
    while not (client_done and server_done):
        if not client_done:
            try:
                c.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            started = time.process_time()
            try:
                s.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            spent += time.process_time() - started
        c_in.write(s_out.read())
    started = time.process_time()
    s.write(b"HTTP/1.1 200 OK\r\n\r\n")
    spent += time.process_time() - started
    c_in.write(s_out.read())
    c.read(19)
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for key_type in (trustme.KeyType.ECDSA, trustme.KeyType.RSA):
            contexts = server_contexts(key_type, Path(scratch))
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
            times: dict[str, list[float]] = {name: [] for name in contexts}
            for _ in range(args.rounds):
                for name in random.sample(list(contexts), len(contexts)):
                    times[name].append(handshake(contexts[name], client))
            base = statistics.median(times["with tickets (OpenSSL's default)"])
            for name, spent in times.items():
                median = statistics.median(spent)
                print(
                    f"{key_type.name:5} {name:34} {median * 1e6:6.0f} µs server CPU per "
                    f"handshake ({median / base:.2f}x)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
