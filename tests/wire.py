"""Loopback stand-ins on the wire: a relay that records and can lose answers, another service.

Neither pretends to be the bridge. The relay sits between a real client (the hook, MediaWiki)
and a real bridge, as a network does: it passes each request on, and can lose the bridge's
answer on the way back, as a dropped connection or a crashed client would. The other service
answers every request with a fixed status, as whatever else might listen on the configured
address (a web server, a proxy) would.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_MESSAGE = 1 << 20


def read_message(sock: socket.socket) -> bytes:
    """One HTTP/1.1 message (head and Content-Length body), or what came before EOF."""
    data = b""
    while len(data) < MAX_MESSAGE:
        head, separator, body = data.partition(b"\r\n\r\n")
        if separator and len(body) >= _content_length(head):
            return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def header(message: bytes, name: str) -> str | None:
    """A header's value in a recorded HTTP message (case-insensitive name)."""
    head = message.partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode("latin-1")
    return None


class Relay:
    """Passes each connection's one request to ``target_port`` and its answer back.

    ``requests`` holds every request as the client sent it. The first ``lose_answers`` answers
    are lost: the bridge got the request and answered, the client sees its connection closed.
    """

    def __init__(self, target_port: int, *, lose_answers: int = 0) -> None:
        self.target_port = target_port
        self.lose_answers = lose_answers
        self.requests: list[bytes] = []
        self.answers: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            with client:
                client.settimeout(30)
                self._pass_on(client)

    def _pass_on(self, client: socket.socket) -> None:
        request = read_message(client)
        if not request:
            return
        self.requests.append(request)
        with socket.create_connection(("127.0.0.1", self.target_port), timeout=30) as upstream:
            upstream.sendall(request)
            answer = read_message(upstream)
        self.answers.append(answer)
        if self.lose_answers > 0:
            self.lose_answers -= 1
            return  # closing without a word: the answer is lost on the way back
        client.sendall(answer)


@contextmanager
def other_service(status: int) -> Iterator[str]:
    """An HTTP server on loopback that answers every request with ``status``; its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = b'{"error":"not here","final":true}' if status >= 400 else b"{}"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
