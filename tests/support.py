"""Process and network helpers shared by the tests and the benchmarks: ports, health, CI.

The tests import it as ``support`` (tests/ is on pytest's sys.path); a benchmark puts tests/ on
sys.path first. It imports only the standard library, pytest only when a test skips or fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

# CI fails a test whose broker or tool is missing; a laptop skips it.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(message: str) -> NoReturn:
    """Fails in CI (a missing broker or tool there is a broken pipeline), skips elsewhere."""
    import pytest

    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def delete_kafka_topics(bootstrap: str, prefix: str) -> None:
    """Deletes the topics of the broker at ``bootstrap`` whose names start with ``prefix``.

    Every run on a machine shares the test broker (scripts/brokers keeps its data), so a test
    that creates topics deletes them; else each run leaves its topics behind for the broker to
    load at every start.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    ours = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    for future in admin.delete_topics(ours, operation_timeout=10).values() if ours else []:
        future.result()


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def reachable(host: str, port: int) -> bool:
    """Whether something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


T = TypeVar("T")


def wait_for(
    probe: Callable[[], T],
    done: Callable[[T], bool] = bool,
    *,
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str | Callable[[], str] = "",
) -> T:
    """Polls ``probe`` until ``done`` accepts its value (by default: until the value is true) and
    returns that value. After ``timeout`` seconds it fails with the last value and ``what``
    (a callable is called then, e.g. to show the logs of that moment)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            detail = what() if callable(what) else what
            raise AssertionError(
                f"still {value!r} after {timeout:g} s" + (f": {detail}" if detail else "")
            )
        time.sleep(interval)


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Returns once the bridge at ``url`` answers /healthz with 200; raises if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bridge exited with {process.returncode} before answering")
        try:
            # The URL is always http://127.0.0.1:<port>, built by the caller.
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"bridge at {url} did not answer within {timeout} s")


def stop_process(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM by PID, then SIGKILL if it does not stop within the grace period."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serve_in_thread(app: Any, port: int, **tls: Any) -> Iterator[None]:
    """Serves an ASGI app with uvicorn on 127.0.0.1:``port`` in a thread, for in-process tests."""
    import asyncio
    import threading

    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="off", **tls
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        threading.Event().wait(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


# -- a Kafka of a test's own, to stop on purpose (never the shared one)

REPO = Path(__file__).resolve().parent.parent


@dataclass
class OwnKafka:
    """A Kafka only one test uses: started and stopped by scripts/brokers with its own
    LOGIN_AUDIT_RUN and ports, so the shared brokers are never touched."""

    run_dir: Path
    port: int
    controller_port: int
    sasl_port: int
    ssl_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _brokers(self, command: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_TEST_")}
        env |= {
            "LOGIN_AUDIT_RUN": str(self.run_dir),
            "LOGIN_AUDIT_KAFKA_PORT": str(self.port),
            "LOGIN_AUDIT_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "LOGIN_AUDIT_KAFKA_SASL_PORT": str(self.sasl_port),
            "LOGIN_AUDIT_KAFKA_SSL_PORT": str(self.ssl_port),
        }
        done = subprocess.run(
            [str(REPO / "scripts/brokers"), command],
            env=env,
            timeout=240,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The script says why it failed (and the log's tail) on stderr: keep it in the failure.
        if done.returncode != 0:
            raise RuntimeError(f"scripts/brokers {command} failed:\n{done.stderr[-3000:]}")

    def start(self) -> None:
        self._brokers("start-kafka")

    def stop(self) -> None:
        self._brokers("stop-kafka")

    def user_names(self, topic: str) -> list[str]:
        """See kafka_user_names."""
        return kafka_user_names(self.bootstrap, topic)


@contextmanager
def own_kafka_instance(run_dir: Path) -> Iterator[OwnKafka]:
    """Stopped at first; stopped again on the way out (by its pid file), whatever happened."""
    ports: list[int] = []
    while len(ports) < 4:
        if (port := free_port()) not in ports:
            ports.append(port)
    kafka = OwnKafka(run_dir, *ports)
    try:
        yield kafka
    finally:
        kafka.stop()


def kafka_user_names(bootstrap: str, topic: str) -> list[str]:
    """The user names of the events on ``<topic>.success`` and ``<topic>.failure``, duplicates
    included, read to the end of every partition (SinkUnavailable if Kafka is silent for 10 s)."""
    import asyncio

    from bridge.consume import KafkaReader
    from bridge.settings import Settings

    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_success=f"{topic}.success",
        kafka_topic_failure=f"{topic}.failure",
    )

    async def read() -> list[str]:
        names: list[str] = []
        async with KafkaReader(settings) as reader:
            async for event in reader.events(idle_timeout=10, to_end=True):
                assert event.record is not None, event.error
                names.append(event.record["user"]["name"])
        return names

    return asyncio.run(read())


class RecordingTransport(asyncio.Transport):
    """A connection's transport that keeps each write() apart, for protocol-level tests."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def tls_secret(leaf: Any) -> dict[str, bytes]:
    """A trustme certificate and its key, as a kubernetes.io/tls Secret holds them."""
    return {"tls.crt": leaf.cert_chain_pems[0].bytes(), "tls.key": leaf.private_key_pem.bytes()}


class SecretVolume:
    """Files as a Kubernetes Secret volume holds them: each name links into ``..data``, itself a
    link to a directory of the current version, and an update swaps ``..data`` in one rename
    (the kubelet's atomic writer)."""

    def __init__(self, root: Path, files: dict[str, bytes]) -> None:
        self.root = root
        self.versions = 0
        root.mkdir()
        self.update(files)
        for name in files:
            (root / name).symlink_to(f"..data/{name}")

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def update(self, files: dict[str, bytes]) -> None:
        self.versions += 1
        version = self.root / f"..v{self.versions}"
        version.mkdir()
        for name, content in files.items():
            (version / name).write_bytes(content)
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        staged.rename(self.root / "..data")
