"""The HTTP edge of a real bridge process: secure defaults, hostile clients, the admin port."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from bridge.app import TokenCheck
from bridge.cli import Exit
from bridge.errors import ConfigError, Unauthorized
from bridge.settings import Settings, check_can_serve, load_settings
from bridge.sinks.file import read_events

from conftest import BIN, BridgeProcess, post, print_fault_row
from support import SecretVolume, free_port, tls_secret

QUERY = "ip=198.51.100.7&login_method=password&protocol=SSH&status=0"
HOOK = f"/v1/hooks/sftpgo?{QUERY}"
BOB = b'{"username":"bob","id":7}'


def bob_request_head(extra: str = "") -> bytes:
    """The line and headers of a hook request for BOB's body, with the test token."""
    return (
        f"POST {HOOK} HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer test-token\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BOB)}\r\n{extra}\r\n"
    ).encode()


BOB_REQUEST = bob_request_head() + BOB

# Not an address of this machine: a bridge that gets past its checks fails to bind it (exit 1)
# instead of listening on a real interface.
ELSEWHERE = "192.0.2.1"


def serve(
    env: dict[str, str], tmp_path: Path, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Runs `serve` to its exit; a bridge that starts serving instead fails the test (timeout)."""
    full = {"PATH": "/usr/bin:/bin", "BRIDGE_DATA_DIR": str(tmp_path), **env}
    return subprocess.run(
        [str(BIN / "login-audit-bridge"), "serve"],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- secure by default (issue 9, item 6)


def test_serve_refuses_an_open_address_without_tokens(tmp_path: Path) -> None:
    run = serve({"BRIDGE_HOST": ELSEWHERE, "BRIDGE_PORT": str(free_port())}, tmp_path)
    assert run.returncode == Exit.CONFIG, run.stderr
    assert "BRIDGE_AUTH_TOKENS" in run.stderr
    assert "BRIDGE_ALLOW_UNAUTHENTICATED" in run.stderr


def test_allow_unauthenticated_lets_an_open_address_go_on_to_listen(tmp_path: Path) -> None:
    env = {
        "BRIDGE_HOST": ELSEWHERE,
        "BRIDGE_PORT": str(free_port()),
        "BRIDGE_ALLOW_UNAUTHENTICATED": "true",
    }
    run = serve(env, tmp_path)
    assert run.returncode == Exit.FAILURE  # past the check: the address is not this machine's
    assert "cannot listen" in run.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    check_can_serve(Settings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "bridge.example.org"])  # noqa: S104
def test_any_other_host_needs_a_token_client_certificates_or_the_explicit_setting(
    host: str,
) -> None:
    with pytest.raises(ConfigError, match="BRIDGE_AUTH_TOKENS"):
        check_can_serve(Settings(host=host))
    check_can_serve(Settings(host=host, auth_tokens="t0ken"))
    check_can_serve(Settings(host=host, allow_unauthenticated=True))
    certs: dict[str, Any] = {
        "tls_certfile": "c.pem",
        "tls_keyfile": "k.pem",
        "tls_client_ca": "ca.pem",
    }
    check_can_serve(Settings(host=host, **certs))


def test_serve_refuses_the_memory_sink(tmp_path: Path) -> None:
    run = serve({"BRIDGE_SINK": "memory", "BRIDGE_PORT": str(free_port())}, tmp_path)
    assert run.returncode == Exit.CONFIG, run.stderr
    assert "memory" in run.stderr and "tests" in run.stderr


def test_an_empty_token_in_the_toml_file_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('auth_tokens = ["x", ""]\n')
    run = serve({"BRIDGE_CONFIG": str(config), "BRIDGE_PORT": str(free_port())}, tmp_path)
    assert run.returncode == Exit.CONFIG, run.stderr
    assert "auth_tokens" in run.stderr and "empty token" in run.stderr


def test_whitespace_around_a_toml_token_is_not_part_of_it(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('auth_tokens = ["  x  "]\n')
    (token,) = load_settings(config_file=config).auth_tokens
    assert token.get_secret_value() == "x"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Authorization", "Bearer "),
        ("Authorization", "Bearer"),
        ("Authorization", "Bearer    "),
        ("Authorization", ""),
        ("X-Sftpgo-Hook-Token", ""),  # the custom header left out
        ("X-Sftpgo-Hook-Token", "   "),
    ],
)
def test_no_token_never_matches(header: str, value: str) -> None:
    with pytest.raises(ValueError, match="empty token"):
        TokenCheck(["x", ""], header=header)
    with pytest.raises(ValueError, match="empty token"):
        TokenCheck(["x", "  "], header=header)
    with pytest.raises(Unauthorized):
        TokenCheck(["x"], header=header).check(value)


def test_a_bridge_with_a_token_refuses_an_empty_bearer(bridge: BridgeProcess) -> None:
    status, body, _ = post(f"{bridge.url}{HOOK}", BOB, token="")
    assert (status, body["error"]) == (401, "unauthorized")
    assert post(f"{bridge.url}{HOOK}", BOB)[0] == 200


# -- hostile clients (item 7)


def rss_peak_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def connect(bridge: BridgeProcess) -> socket.socket:
    port = int(bridge.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def read_answer(sock: socket.socket) -> bytes:
    """Everything the bridge sends until it closes the connection (b"" if it just closes)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def many_headers() -> Iterator[bytes]:
    line = b"X-Fill: " + b"f" * 1000 + b"\r\n"
    while True:
        yield line * 64


def one_endless_header() -> Iterator[bytes]:
    yield b"X-Fill: "
    while True:
        yield b"f" * 65536


@pytest.mark.parametrize("stream", [many_headers, one_endless_header])
def test_rss_stays_bounded_while_a_client_streams_100_mb_of_headers(
    bridge: BridgeProcess, stream: Callable[[], Iterator[bytes]]
) -> None:
    assert bridge.process is not None
    assert post(f"{bridge.url}{HOOK}", BOB)[0] == 200  # warm: the first event's allocations
    before = rss_peak_kib(bridge.process.pid)
    sent, limit = 0, 100 * 1024 * 1024
    with connect(bridge) as sock:
        try:
            sock.sendall(f"POST {HOOK} HTTP/1.1\r\nHost: bridge\r\n".encode())
            for chunk in stream():
                sock.sendall(chunk)
                sent += len(chunk)
                if sent >= limit:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the bridge closed the connection: what it should do
        answer = read_answer(sock)
    grown_mib = (rss_peak_kib(bridge.process.pid) - before) / 1024
    assert grown_mib < 30, f"peak RSS grew {grown_mib:.0f} MiB for {sent >> 20} MiB of headers"
    assert sent < limit, "the bridge read all 100 MB of headers"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert post(f"{bridge.url}{HOOK}", BOB)[0] == 200


def test_headers_over_the_cap_in_one_piece_are_answered_431(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(auth_tokens="test-token", max_header_bytes="8192")
    with connect(bridge) as sock:
        filler = b"X-Fill: " + b"f" * 9000 + b"\r\n"
        sock.sendall(f"POST {HOOK} HTTP/1.1\r\nHost: bridge\r\n".encode() + filler + b"\r\n")
        answer = read_answer(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body)["error"] == "headers_too_large"
    assert json.loads(body)["final"] is False
    assert re.search(rb"(?im)^x-login-audit-bridge: \S+\r$", head + b"\r")
    assert "closed the connection from 127.0.0.1" in bridge.logs()


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """``count`` answers in a row, as (status, body), through one buffered reader.

    Not an http.client.HTTPResponse each: each reads ahead into a buffer of its own, so answers
    that arrive together (as pipelined answers do on a busy machine) were lost to the next one,
    which then saw only the keep-alive close 5 s later.
    """
    answers = []
    with sock.makefile("rb") as stream:
        for number in range(1, count + 1):
            status_line = stream.readline()
            if not status_line:
                raise ConnectionError(f"closed before answer {number} of {count}")
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answers.append((int(status_line.split()[1]), stream.read(length)))
    return answers


def test_pipelined_requests_on_one_connection_are_all_answered(bridge: BridgeProcess) -> None:
    """The limits count per request: a second request already read is not a slow client."""
    with connect(bridge) as sock:
        sock.sendall(BOB_REQUEST * 3)
        answers = read_answers(sock, 3)
    replies = [(status, json.loads(body)["status"]) for status, body in answers]
    assert replies == [(200, "stored")] * 3


@pytest.fixture
def impatient(bridge_factory: Callable[..., BridgeProcess]) -> BridgeProcess:
    """A bridge whose clients have 1 s for their headers and 1 s for their body."""
    return bridge_factory(
        auth_tokens="test-token", header_timeout_seconds="1", body_timeout_seconds="1"
    )


def test_half_sent_headers_are_answered_408_and_closed(impatient: BridgeProcess) -> None:
    with connect(impatient) as sock:
        sock.sendall(f"POST {HOOK} HTTP/1.1\r\nHost: bridge\r\nContent-Ty".encode())
        answer = read_answer(sock)  # the socket timeout (30 s) fails the test if never closed
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"] == "header_timeout"
    assert json.loads(body)["final"] is False  # how it was sent, not what: the hook keeps it
    assert re.search(rb"(?im)^x-login-audit-bridge: \S+\r$", head + b"\r")


def test_a_deadline_counts_from_its_own_request_on_a_kept_alive_connection(
    impatient: BridgeProcess,
) -> None:
    """The timer armed for an earlier request fires before the later request's deadline: the
    later request is neither cut short by it (200 at 1.2 s from the first) nor let off (408)."""
    one = BOB_REQUEST
    head, rest = one[:40], one[40:]
    with connect(impatient) as sock:
        sock.sendall(one)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status == 200
        reply.read()
        time.sleep(0.6)
        sock.sendall(head)  # a second request begins 0.6 s in: its deadline is at 1.6 s
        time.sleep(0.6)  # past the first request's header deadline (1 s)
        sock.sendall(rest)
        second = http.client.HTTPResponse(sock)
        second.begin()
        assert second.status == 200
        second.read()
        sock.sendall(head)  # a third, never finished: answered 408 once its own second is up
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_time_not_before(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(auth_tokens="test-token", keep_alive_seconds="2")
    with connect(bridge) as sock:
        sock.sendall(BOB_REQUEST)
        [(status, _)] = read_answers(sock, 1)
        assert status == 200
        time.sleep(1)  # idle, within the keep-alive time: the connection still takes a request
        sock.sendall(BOB_REQUEST)
        [(status, _)] = read_answers(sock, 1)
        assert status == 200
        answered = time.monotonic()
        assert read_answer(sock) == b""  # closed by the bridge, with nothing more said
        idle = time.monotonic() - answered
    assert 1.5 < idle < 10


def test_an_idle_connection_outlasts_the_load_balancers_idle_timeouts_by_default() -> None:
    # uvicorn's default is 5 s: a proxy keeping connections for 60 s would reuse one just as
    # the bridge closes it, and its client would get an error for a request never read.
    from bridge.service import _uvicorn_config

    config = _uvicorn_config(object(), Settings())
    assert config.timeout_keep_alive > 60


def test_a_connection_that_sends_nothing_is_closed(impatient: BridgeProcess) -> None:
    with connect(impatient) as sock:
        assert read_answer(sock) == b""


def test_half_sent_body_is_answered_408_and_closed(impatient: BridgeProcess) -> None:
    with connect(impatient) as sock:
        head = (
            f"POST {HOOK} HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer test-token\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"username":')
        answer = read_answer(sock)
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"] == "body_timeout"
    assert _metric(impatient, "login_audit_connections_closed_total", reason="body_timeout") == 1


def test_a_body_trickled_after_an_early_401_is_cut_off(impatient: BridgeProcess) -> None:
    """The bridge answers a missing token at once; the rest of the body may not hold the line."""
    head = (
        f"POST {HOOK} HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    with connect(impatient) as sock:
        sock.sendall(head.encode() + b"{")
        with Tricklers([sock]):  # each byte keeps the connection busy: only a deadline ends it
            answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 401 ")


def test_connections_the_kernel_dropped_while_the_worker_stood_still_are_counted(
    bridge: BridgeProcess,
) -> None:
    """A worker held up (stopped here, as a long stall is to the kernel) accepts nothing; past
    its listen backlog (2048) the kernel drops the attempts, and the clients try again 1 s later.
    No metric of the bridge's own sees them: login_audit_listen_drops_total does."""
    assert bridge.process is not None
    assert _metric_or_none(bridge, "login_audit_listen_drops_total") == 0
    address = ("127.0.0.1", int(bridge.url.rsplit(":", 1)[1]))
    clients = []
    os.kill(bridge.process.pid, signal.SIGSTOP)
    try:
        for _ in range(2300):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            clients.append(client)
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(address)
    finally:
        os.kill(bridge.process.pid, signal.SIGCONT)
        for client in clients:
            client.close()
    deadline = time.monotonic() + 10
    while not _metric_or_none(bridge, "login_audit_listen_drops_total"):
        assert time.monotonic() < deadline, "no connection counted as dropped"
        time.sleep(0.1)


def _metric(bridge: BridgeProcess, name: str, **labels: str) -> float:
    """The sample's value, 0 when the bridge exports none."""
    value = _metric_or_none(bridge, name, **labels)
    return 0.0 if value is None else value


def _metric_or_none(bridge: BridgeProcess, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{bridge.admin_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


class Tricklers:
    """Clients that have sent a hook request's headers, then send its body a byte at a time."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    @classmethod
    def opened(cls, bridge: BridgeProcess, count: int) -> Tricklers:
        """``count`` clients, every other one with the bridge's token."""
        sockets = []
        for i in range(count):
            token = "Authorization: Bearer test-token\r\n" if i % 2 else ""
            head = (
                f"POST {HOOK} HTTP/1.1\r\nHost: bridge\r\n{token}"
                "Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
            )  # under the body limit: read, slowly, instead of refused by its size
            sock = connect(bridge)
            sock.sendall(head.encode() + b"{")
            sockets.append(sock)
        return cls(sockets)

    def _trickle(self) -> None:
        while not self._stop.wait(0.2):
            for sock in self.sockets:
                with contextlib.suppress(OSError):  # answered (401) or cut off: done
                    sock.send(b" ")

    def __enter__(self) -> Tricklers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.sockets:
            sock.close()


def test_real_events_are_answered_while_50_slow_clients_trickle_bodies(
    bridge_factory: Callable[..., BridgeProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    """Slow bodies, with or without a token, hold no in-flight slot: events still get 200."""
    bridge = bridge_factory(auth_tokens="test-token", max_in_flight="5")
    answers: dict[str, int] = {}
    with Tricklers.opened(bridge, 50):
        threading.Event().wait(0.5)  # let the bridge start reading every one of them
        for i in range(20):
            status, body, _ = post(
                f"{bridge.url}{HOOK}", json.dumps({"username": f"user{i}"}).encode()
            )
            answers[body.get("event_id", f"refused-{i}")] = status
        in_flight = _metric(bridge, "login_audit_requests_in_flight")
    acknowledged = {event_id for event_id, status in answers.items() if status == 200}
    delivered = {r["metadata"]["uid"] for r in read_events(bridge.events_dir)}
    print_fault_row(
        "hostile slow clients (50 trickling bodies, 25 with the token; max_in_flight 5)",
        sent=20,
        acknowledged=len(acknowledged),
        delivered=len(acknowledged & delivered),
        lost=len(acknowledged - delivered),
        duplicated=0,
        capsys=capsys,
    )
    assert sorted(answers.values()) == [200] * 20
    assert acknowledged <= delivered
    assert in_flight == 0


def mid_body(bridge: BridgeProcess) -> socket.socket:
    """A connection whose hook request has its headers in and is still sending its body.

    It asks for 100 Continue, so that the bridge's answer says the headers were read."""
    sock = connect(bridge)
    sock.sendall(bob_request_head("Expect: 100-continue\r\n"))
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        assert chunk, "closed before the 100 Continue"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100 ")
    sock.sendall(BOB[:5])
    return sock


def post_until_taken(bridge: BridgeProcess) -> tuple[int, dict[str, Any]]:
    """POSTs a login until it is answered 200 (a refusal may race a close the bridge has not
    seen yet), for at most 10 s; the last answer."""
    status = 0
    body: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status, body, _ = post(f"{bridge.url}{HOOK}", BOB)
        except (ConnectionError, http.client.HTTPException):
            status, body = 0, {}
        if status == 200:
            break
        time.sleep(0.1)
    return status, body


def test_past_max_connections_the_least_active_idle_connection_makes_room(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """Connections opened and left idle cannot lock hooks out: at the cap, a new connection
    closes the least active one that has no request being served, and its event is taken."""
    bridge = bridge_factory(auth_tokens="test-token", max_connections="3")
    idle = [connect(bridge) for _ in range(3)]
    try:
        status, body, _ = post(f"{bridge.url}{HOOK}", BOB)
        assert status == 200
        closed = read_answer(idle[0])  # the oldest; it sent nothing, so the answer is no one's
        assert closed.startswith(b"HTTP/1.1 503 ")
        assert json.loads(closed.partition(b"\r\n\r\n")[2])["final"] is False
        delivered = {r["metadata"]["uid"] for r in read_events(bridge.events_dir)}
        assert body["event_id"] in delivered
        evicted = _metric(bridge, "login_audit_connections_closed_total", reason="evicted")
        assert evicted == 1
    finally:
        for sock in idle:
            sock.close()


def test_an_evicted_kept_alive_connection_between_requests_is_closed_without_an_answer(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """An answer on a connection between requests would be read as the next request's: the
    least active kept-alive connection is only closed to make room."""
    bridge = bridge_factory(auth_tokens="test-token", max_connections="2")
    with connect(bridge) as kept, connect(bridge) as fresh:
        kept.sendall(BOB_REQUEST)
        reply = http.client.HTTPResponse(kept)
        reply.begin()
        assert reply.status == 200
        reply.read()
        fresh.sendall(BOB_REQUEST)  # now the more active of the two
        second = http.client.HTTPResponse(fresh)
        second.begin()
        assert second.status == 200
        second.read()
        status, _, _ = post(f"{bridge.url}{HOOK}", BOB)
        assert status == 200
        kept.settimeout(2)  # closed now, not by the keep-alive timeout (5 s) later
        assert read_answer(kept) == b""
        fresh.sendall(BOB_REQUEST)  # the more active one stayed
        third = http.client.HTTPResponse(fresh)
        third.begin()
        assert third.status == 200
    evicted = _metric(bridge, "login_audit_connections_closed_total", reason="evicted")
    assert evicted == 1


def test_past_max_connections_with_every_request_under_way_a_new_one_gets_503_unread(
    bridge_factory: Callable[..., BridgeProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    """With every connection serving a request (here: sending its body), a new one is
    answered 503 with Retry-After before it sends anything, and closed; the admin port still
    answers, and once a connection goes, a real event is taken again."""
    bridge = bridge_factory(auth_tokens="test-token", max_connections="3")
    busy = [mid_body(bridge) for _ in range(3)]
    try:
        with connect(bridge) as crowded:
            answer = read_answer(crowded)  # the socket timeout (30 s) fails the test if kept
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert re.search(rb"(?im)^retry-after: \d+\r$", head + b"\r")
        assert re.search(rb"(?im)^x-login-audit-bridge: \S+\r$", head + b"\r")
        assert json.loads(body)["error"] == "overloaded"
        assert json.loads(body)["final"] is False  # the hook keeps the event and retries
        with urllib.request.urlopen(f"{bridge.admin_url}/readyz", timeout=10) as reply:
            assert reply.status == 200  # the cap is the hook listener's, not the probes'
        busy.pop().close()
        status, reply_body = post_until_taken(bridge)
    finally:
        for sock in busy:
            sock.close()
    acknowledged = {reply_body["event_id"]} if status == 200 else set()
    delivered = {r["metadata"]["uid"] for r in read_events(bridge.events_dir)}
    refused = _metric(bridge, "login_audit_connections_closed_total", reason="too_many_connections")
    print_fault_row(
        "connection storm (max_connections 3, all busy: a 4th refused 503 unread, then a real "
        "event)",
        sent=1,
        acknowledged=len(acknowledged),
        delivered=len(acknowledged & delivered),
        lost=len(acknowledged - delivered),
        duplicated=0,
        capsys=capsys,
    )
    assert status == 200
    assert acknowledged <= delivered
    assert refused >= 1


# -- the admin port, and TLS on TCP only (item 8)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose path is short enough for a Unix socket (108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="lab-") as name:
        yield Path(name)


def unix_post(path: Path, target: str, body: bytes, token: str) -> tuple[int, dict[str, Any]]:
    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(30)
            self.sock.connect(str(path))

    connection = UnixConnection("localhost")
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        connection.request("POST", target, body=body, headers=headers)
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def server_certificate(ca: trustme.CA, directory: Path) -> tuple[Path, Path]:
    """``ca``'s certificate for 127.0.0.1 and its private key, as PEM files in ``directory``."""
    server_pem, key_pem = directory / "cert.pem", directory / "key.pem"
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(server_pem))
    server.private_key_pem.write_to_path(str(key_pem))
    return server_pem, key_pem


def test_over_https_the_bridge_issues_no_session_tickets(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    # Each hook connects anew with no session to resume (SFTPGo builds a new client per call):
    # tickets would be made and sent with every handshake for nothing.
    ca = trustme.CA()
    server_pem, key_pem = server_certificate(ca, tmp_path)
    bridge = bridge_factory(
        auth_tokens="test-token", tls_certfile=str(server_pem), tls_keyfile=str(key_pem)
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    port = int(bridge.url.rsplit(":", 1)[1])
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        headers = {"Content-Type": "application/json", "Authorization": "Bearer test-token"}
        connection.request("POST", HOOK, body=BOB, headers=headers)
        reply = connection.getresponse()
        assert (reply.status, json.loads(reply.read())["status"]) == (200, "stored")
        tls = connection.sock
        assert isinstance(tls, ssl.SSLSocket)
        assert tls.version() == "TLSv1.3"
        # TLS 1.3 tickets arrive after the handshake and are read with the first answer.
        assert tls.session is not None and not tls.session.has_ticket
    finally:
        connection.close()


def test_over_https_a_client_that_never_sends_its_handshake_is_closed_at_the_header_timeout(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    # The handshake comes before the bridge's connection class sees the connection: with the
    # loop's default timeout, such a client held about 52 KiB for 60 s, past the header deadline.
    ca = trustme.CA()
    server_pem, key_pem = server_certificate(ca, tmp_path)
    bridge = bridge_factory(
        auth_tokens="test-token",
        tls_certfile=str(server_pem),
        tls_keyfile=str(key_pem),
        header_timeout_seconds="1",
    )
    port = int(bridge.url.rsplit(":", 1)[1])
    # Half the loop's own 60 s: a bridge that leaves the handshake to it keeps the connection
    # open past this, and recv() raises instead of reading the close.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as silent:
        assert silent.recv(1) == b""
    closed = _metric(bridge, "login_audit_connections_closed_total", reason="handshake_timeout")
    assert closed == 1
    assert "no TLS handshake within 1 s" in bridge.logs()


def test_over_https_a_refused_client_certificate_is_counted_and_logged(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    # The loops log a failed handshake at debug level only: a hook whose certificate the bridge
    # refuses was seen nowhere on the bridge's side.
    ca = trustme.CA()
    server_pem, key_pem = server_certificate(ca, tmp_path)
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    bridge = bridge_factory(
        auth_tokens="test-token",
        tls_certfile=str(server_pem),
        tls_keyfile=str(key_pem),
        tls_client_ca=str(ca_pem),
    )
    port = int(bridge.url.rsplit(":", 1)[1])
    stranger = ssl.create_default_context()
    ca.configure_trust(stranger)
    trustme.CA().issue_cert("sftpgo.example").configure_cert(stranger)  # another CA's
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            stranger.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(BOB_REQUEST)  # TLS 1.3: the refusal comes after the client's side
            refused = tls.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        refused = True
    assert refused
    deadline = time.monotonic() + 10
    reason = "tls_handshake_failed"
    while _metric(bridge, "login_audit_connections_closed_total", reason=reason) < 1:
        assert time.monotonic() < deadline, bridge.logs()
        time.sleep(0.05)
    assert _metric(bridge, "login_audit_connections_closed_total", reason=reason) == 1
    assert re.search(
        r"closed the connection from 127\.0\.0\.1:\d+: TLS handshake failed: ", bridge.logs()
    )
    assert "CERTIFICATE_VERIFY_FAILED" in bridge.logs()
    assert list(read_events(bridge.events_dir)) == []


def https_bridge_on(
    volume: SecretVolume, bridge_factory: Callable[..., BridgeProcess]
) -> tuple[BridgeProcess, int]:
    """A bridge serving HTTPS with the certificate on ``volume``, and its port."""
    bridge = bridge_factory(
        auth_tokens="test-token",
        tls_certfile=str(volume / "tls.crt"),
        tls_keyfile=str(volume / "tls.key"),
        tls_renewal_check_seconds="0.2",
    )
    return bridge, int(bridge.url.rsplit(":", 1)[1])


def https_post(port: int, ca: trustme.CA) -> int:
    """The status of BOB's hook POST over a new HTTPS connection that trusts only ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        headers = {"Content-Type": "application/json", "Authorization": "Bearer test-token"}
        connection.request("POST", HOOK, body=BOB, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_over_https_a_certificate_renewed_on_disk_is_served_to_new_connections_without_a_restart(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    # cert-manager renews a certificate well before it expires and Kubernetes updates the
    # mounted Secret; a bridge that loaded its certificate once served the old one until it
    # expired, and from then on every hook's handshake failed.
    old_ca, new_ca = trustme.CA(), trustme.CA()
    volume = SecretVolume(tmp_path / "tls", tls_secret(old_ca.issue_cert("127.0.0.1")))
    bridge, port = https_bridge_on(volume, bridge_factory)
    assert https_post(port, old_ca) == 200
    context = ssl.create_default_context()
    old_ca.configure_trust(context)
    kept = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer test-token"}
    kept.request("POST", HOOK, body=BOB, headers=headers)
    assert kept.getresponse().read() and kept.sock is not None

    volume.update(tls_secret(new_ca.issue_cert("127.0.0.1")))
    time.sleep(0.3)
    # The first new connection after the interval has the bridge look at the files, before its
    # own handshake: it and every later one get the new certificate.
    assert https_post(port, new_ca) == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        https_post(port, old_ca)
    # A connection made before keeps its session.
    kept.request("POST", HOOK, body=BOB, headers=headers)
    assert kept.getresponse().status == 200
    kept.close()

    renewals = _metric(
        bridge, "login_audit_tls_certificate_renewals_total", files="https", result="renewed"
    )
    assert renewals == 1
    files = f"{volume / 'tls.crt'}, {volume / 'tls.key'}"
    assert f"TLS: {files} changed: new connections get the renewed certificate" in bridge.logs()
    assert len(list(read_events(bridge.events_dir))) == 4


def test_over_https_a_renewal_that_does_not_load_leaves_the_old_certificate_served(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    ca = trustme.CA()
    volume = SecretVolume(tmp_path / "tls", tls_secret(ca.issue_cert("127.0.0.1")))
    bridge, port = https_bridge_on(volume, bridge_factory)
    # A key that is not the certificate's: the renewal cannot be served.
    (volume / "tls.key").write_bytes(trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes())
    time.sleep(0.3)

    assert https_post(port, ca) == 200  # the certificate loaded before
    failed = _metric(
        bridge, "login_audit_tls_certificate_renewals_total", files="https", result="failed"
    )
    assert failed >= 1
    assert "do not load" in bridge.logs() and "still serving the certificate" in bridge.logs()


def test_with_mtls_on_tcp_the_admin_port_and_the_unix_socket_speak_plain_http(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path, short_dir: Path
) -> None:
    ca = trustme.CA()
    server_pem, key_pem = server_certificate(ca, tmp_path)
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    uds = short_dir / "bridge.sock"
    bridge = bridge_factory(
        auth_tokens="test-token",
        uds=str(uds),
        tls_certfile=str(server_pem),
        tls_keyfile=str(key_pem),
        tls_client_ca=str(ca_pem),
    )
    assert bridge.admin_url is not None
    # The admin port: plain HTTP, no certificate, no token; probes and scrapes only.
    for path in ("/healthz", "/readyz", "/metrics"):
        with urllib.request.urlopen(f"{bridge.admin_url}{path}", timeout=10) as reply:
            assert reply.status == 200, path
    status, body, _ = post(f"{bridge.admin_url}{HOOK}", BOB)
    assert (status, body["error"]) == (404, "not_found")
    # The Unix socket: plain HTTP, as the shim on the same host speaks it.
    status, answer = unix_post(uds, HOOK, BOB, "test-token")
    assert (status, answer["status"]) == (200, "stored")
    # TCP: HTTPS, and only with a client certificate.
    https = bridge.url.replace("http://", "https://")
    without_cert = ssl.create_default_context()
    ca.configure_trust(without_cert)
    request = urllib.request.Request(
        f"{https}{HOOK}",
        data=BOB,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer test-token"},
    )
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(request, context=without_cert, timeout=10).close()
    with_cert = ssl.create_default_context()
    ca.configure_trust(with_cert)
    ca.issue_cert("sftpgo.example").configure_cert(with_cert)
    with urllib.request.urlopen(request, context=with_cert, timeout=10) as reply:
        assert reply.status == 200
    stored = list(read_events(bridge.events_dir))
    assert len(stored) == 2
    assert "(admin)" in bridge.logs() and "unix://" in bridge.logs()


def test_the_admin_port_is_off_unless_set_and_on_loopback_by_default() -> None:
    settings = Settings()
    assert (settings.admin_port, settings.admin_host) == (None, "127.0.0.1")


def test_the_admin_port_cannot_be_the_hook_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "8080")
    monkeypatch.setenv("BRIDGE_ADMIN_PORT", "8080")
    with pytest.raises(ConfigError, match="admin_port must differ from port"):
        load_settings()


# -- what the bridge echoes, and the shutdown timeout (smaller items)


def test_a_repeated_query_parameter_is_not_echoed_in_full(bridge: BridgeProcess) -> None:
    key = "k" * 5000
    status, body, _ = post(f"{bridge.url}{HOOK}&{key}=1&{key}=2", BOB)
    assert (status, body["error"]) == (400, "invalid_field")
    assert len(json.dumps(body)) < 400
    assert body["field"] == "k" * 64 + "..."
    assert "k" * 100 not in bridge.logs()


def test_a_fractional_shutdown_timeout_is_not_rounded_down_to_zero() -> None:
    from bridge.service import _uvicorn_config

    config = _uvicorn_config(object(), Settings(shutdown_timeout_seconds=0.5))
    assert config.timeout_graceful_shutdown == 0.5


# -- attacker-chosen fields on the wire (item 10)


def test_a_1000_character_user_name_is_stored_cut_and_flagged(bridge: BridgeProcess) -> None:
    """A 400 here would be final for SFTPGo: the failed login would leave no trace."""
    name = "attacker-" + "x" * 991
    status, body, _ = post(f"{bridge.url}{HOOK}", json.dumps({"username": name}).encode())
    assert status == 200
    (record,) = read_events(bridge.events_dir)
    assert record["metadata"]["uid"] == body["event_id"]
    assert record["user"]["name"] == name[:256]
    assert record["unmapped"]["truncated"] == "user.name"


@pytest.mark.parametrize("token", ["café", "tok\u00a0en", "x\x00y", "naïve-but-long-token"])
def test_a_token_no_request_header_could_carry_stops_the_start(tmp_path: Path, token: str) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(f"auth_tokens = [{json.dumps(token)}]\n", encoding="utf-8")
    run = serve({"BRIDGE_CONFIG": str(config), "BRIDGE_PORT": str(free_port())}, tmp_path)
    assert run.returncode == Exit.CONFIG, run.stderr
    assert "auth_tokens" in run.stderr and "printable ASCII" in run.stderr
    assert token not in run.stderr  # a token is a secret, even a refused one
    with pytest.raises(ValueError, match="printable ASCII"):
        TokenCheck(["good", token], header="Authorization")


def test_a_printable_ascii_token_with_punctuation_is_accepted_and_matches() -> None:
    token = "A-z_0.9~+/=!#$%&'*^`|"
    check = TokenCheck([token], header="Authorization")
    check.check(f"Bearer {token}")
    with pytest.raises(Unauthorized):
        check.check(f"Bearer {token}x")
