"""Fixtures shared by the whole suite: a clean environment, the shared vectors, a real bridge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from bridge.codec import AvroCodec
from bridge.encode import Encoder
from bridge.event import EncodedEvent, LoginEvent
from bridge.mediawiki import parse_mediawiki
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.replay import Replayer
from bridge.sftpgo import ENV_TO_QUERY
from bridge.workers import usable_cpus

from support import delete_kafka_topics, free_port, wait_until_healthy

REPO = Path(__file__).resolve().parent.parent
# The contract's vectors, carried in the repo (tests/data/README.md says where they came from).
VECTORS = Path(__file__).resolve().parent / "data"
BIN = Path(sys.executable).parent
# Read at import: clean_environ scrubs BRIDGE_* before each test.
KAFKA_BOOTSTRAP = os.environ.get("BRIDGE_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:19092")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a bridge process is slow: scripts/check leaves it to scripts/test."""
    for item in items:
        if {"bridge", "bridge_factory"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints how many events were checked against OCSF 1.3.0 itself (tests/ocsf.py)."""
    from ocsf import COUNTS, OCSF_VERSION

    if COUNTS["valid"] or COUNTS["rejected"]:
        terminalreporter.write_line(
            f"OCSF {OCSF_VERSION} Authentication (3002): {COUNTS['valid']} events validated,"
            f" {COUNTS['rejected']} not valid"
        )


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's BRIDGE_* or hook settings."""
    for name in list(os.environ):
        if name.startswith(("BRIDGE_", "LOGIN_AUDIT_HOOK_", "SFTPGO_LOGIND_")):
            monkeypatch.delenv(name)


@pytest.fixture
def kafka_topic_prefix() -> Iterator[Callable[[str], str]]:
    """Gives fresh topic name prefixes (``<kind>-<8 hex>``); after the test, the test broker's
    topics starting with any of them are deleted (see support.delete_kafka_topics)."""
    given: list[str] = []

    def fresh(kind: str) -> str:
        given.append(f"{kind}-{uuid.uuid4().hex[:8]}")
        return given[-1]

    yield fresh
    for prefix in given:
        delete_kafka_topics(KAFKA_BOOTSTRAP, prefix)


# -- the contract's vectors, in tests/data


def sftpgo_vectors() -> list[dict[str, Any]]:
    paths = sorted((VECTORS / "sftpgo").glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"no SFTPGo vectors under {VECTORS}")
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]


def mediawiki_observations() -> list[dict[str, Any]]:
    path = VECTORS / "mediawiki" / "observed-1.39.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def vector_query(vector: dict[str, Any]) -> dict[str, str]:
    """The hook's facts as HTTP query parameters, for either mode."""
    if vector["mode"] == "http":
        return dict(vector["query"])
    return {name: vector["env"][variable] for variable, name in ENV_TO_QUERY}


def vector_body(vector: dict[str, Any]) -> bytes:
    """The user JSON exactly as SFTPGo sends it (Go-escaped, compact)."""
    if vector["mode"] == "http":
        return str(vector["raw_body"]).encode("utf-8")
    return str(vector["env"]["SFTPGO_LOGIND_USER"]).encode("utf-8")


def secret_strings(vector: dict[str, Any]) -> list[str]:
    """Every string inside the vector's secret fields: none may appear in any output."""
    user = json.loads(vector_body(vector))
    found: list[str] = []
    for path in vector["expected"]["secret_fields_present"]:
        found.extend(_strings(_at_path(user, path)))
    return [s for s in found if len(s) >= 8]


def _at_path(value: Any, path: str) -> Any:
    for part in path.replace("]", "").replace("[", ".").split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def mediawiki_payload(observation: dict[str, Any], *, invocation: int = 1) -> dict[str, Any]:
    """What the extension posts for one observed hook call (docs/mediawiki-hook.md)."""
    response = observation["response"]
    user = observation["user"]
    extra = observation["extra_data"] or {}
    return {
        "format": "login-audit-bridge.mediawiki.v1",
        "status": response["status"],
        "username": observation["username_param"],
        "canonical_username": response["username"],
        "user": {"id": user["id"], "name": user["name"]} if user else None,
        "message_key": response["message_key"],
        "message_params": response["message_params"] or [],
        "app_id": extra.get("appId") if isinstance(extra, dict) else None,
        "ip": observation["ip"],
        "user_agent": observation["request"]["user_agent"],
        "request_id": observation["request"]["request_id"],
        "invocation": invocation,
        "wiki_id": "my_wiki",
        "server": "http://127.0.0.1:8089",
        "entry_point": observation["entry_point"],
        "time": 1795330677813,
        "mw_version": observation["mw_version"],
    }


def sftpgo_events(normalizer: Normalizer) -> list[LoginEvent]:
    """Every SFTPGo vector as ``normalizer`` reads it from SFTPGo's HTTP hook."""
    return [normalizer.sftpgo_from_http(vector_query(v), vector_body(v)) for v in sftpgo_vectors()]


def mediawiki_events(normalizer: Normalizer) -> list[LoginEvent]:
    """Every observed MediaWiki hook call as ``normalizer`` reads what the extension posts."""
    return [
        normalizer.mediawiki(parse_mediawiki(json.dumps(mediawiki_payload(o)).encode()))
        for o in mediawiki_observations()
    ]


# -- a real bridge process on loopback


# What each worker logs once it listens (bridge.service._serve_http).
SERVING = " serving on "


@dataclass
class BridgeProcess:
    """A `login-audit-bridge serve` child process; its stderr is kept for log checks."""

    url: str
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    admin_url: str | None = None  # the admin port (plain HTTP), when BRIDGE_ADMIN_PORT is set

    @property
    def events_dir(self) -> Path:
        return self.data_dir / "events"

    def launch(self) -> subprocess.Popen[bytes]:
        """Starts `serve` and returns at once (start() waits until it serves); its output goes
        to the log, and the fixture stops it."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "login-audit-bridge"), "serve"],
                env=self.env,
                stdout=log,
                stderr=log,
                cwd=self.data_dir,
            )
        return self.process

    def start(self, timeout: float = 20.0) -> None:
        """Starts `serve` and waits until it is healthy and, with `--workers`, until every
        worker serves (see wait_until_workers_serve)."""
        served = self.logs().count(SERVING) if self.log_path.exists() else 0
        process = self.launch()
        wait_until_healthy(self.admin_url or self.url, process, timeout)
        workers = int(self.env.get("BRIDGE_WORKERS", "1")) or usable_cpus()
        if workers > 1:
            self.wait_until_workers_serve(served + workers, timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_until_workers_serve(self, lines: int, timeout: float = 20.0) -> None:
        """Until the log holds ``lines`` "serving on" lines, one per worker that started.

        Healthy may be worker 0's answer alone, and a worker signalled before it serves (and
        handles signals) dies by the signal's default action. Stopped then (the fixtures'
        SIGKILL ends the parent, whose death signals the workers), it leaves its socket in the
        group's directory under /tmp, and the directory stays."""
        deadline = time.monotonic() + timeout
        while self.logs().count(SERVING) < lines:
            assert time.monotonic() < deadline, f"fewer than {lines} '{SERVING}' lines in the log"
            time.sleep(0.05)


@pytest.fixture
def bridge_factory(tmp_path: Path) -> Iterator[Callable[..., BridgeProcess]]:
    """Makes bridge processes with extra BRIDGE_* settings; stops them all afterwards."""
    started: list[BridgeProcess] = []

    def make(start: bool = True, **settings: str) -> BridgeProcess:
        data_dir = tmp_path / f"bridge{len(started)}"
        data_dir.mkdir()
        port, admin_port = free_port(), free_port()
        while admin_port == port:
            admin_port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BRIDGE_PORT": str(port),
            "BRIDGE_ADMIN_PORT": str(admin_port),
            "BRIDGE_DATA_DIR": str(data_dir),
            "BRIDGE_HOOK_SPOOL_INTERVAL_SECONDS": "0.2",
            "BRIDGE_LOG_LEVEL": "debug",
            # One process, as most tests signal it and read its data directory; test_workers
            # asks for more.
            "BRIDGE_WORKERS": "1",
        }
        env.update({f"BRIDGE_{k.upper()}": v for k, v in settings.items()})
        bridge = BridgeProcess(
            url=f"http://127.0.0.1:{port}",
            data_dir=data_dir,
            env=env,
            log_path=data_dir / "bridge.log",
            admin_url=f"http://127.0.0.1:{admin_port}",
        )
        started.append(bridge)
        if start:
            bridge.start()
        return bridge

    yield make
    for bridge in started:
        if bridge.process is not None:
            bridge.stop(signal.SIGKILL)


@pytest.fixture
def bridge(bridge_factory: Callable[..., BridgeProcess]) -> BridgeProcess:
    """A running bridge on the file sink, token `test-token`."""
    return bridge_factory(auth_tokens="test-token")


_ENCODER = Encoder(AvroCodec())


def encoded(event: LoginEvent, codec: AvroCodec | None = None) -> EncodedEvent:
    """The event as the encode stage hands it to sinks and the spool."""
    return (_ENCODER if codec is None else Encoder(codec)).encode(event)


def replayer(pipeline: Pipeline, *, publish_timeout: float = 10.0) -> Replayer:
    """The replayer the service runs beside ``pipeline``, which must have a spool."""
    assert pipeline.spool is not None
    return Replayer(
        pipeline.spool,
        send=pipeline.resend,
        sink_name=pipeline.sink.name,
        metrics=pipeline.metrics,
        publish_timeout=publish_timeout,
    )


def print_fault_row(
    scenario: str,
    *,
    sent: int,
    acknowledged: int,
    delivered: int,
    lost: int,
    duplicated: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One row of the fault table that every run prints (README: what a 2xx promises).

    ``delivered`` counts acknowledged events read back from where they went (topic, queue or
    file); ``lost`` counts acknowledged events that were not, or that could not be decoded.
    """
    with capsys.disabled():  # the fault table belongs in the test run's output, CI's too
        print(
            f"\nfault scenario | sent | acknowledged | delivered | lost | duplicated\n"
            f"{scenario} | {sent} | {acknowledged} | {delivered} | {lost} | {duplicated}"
        )


def post(
    url: str,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    token: str | None = "test-token",  # noqa: S107 - the test bridge's throwaway token
) -> tuple[int, dict[str, Any], Message]:
    """POSTs and returns (status, JSON body, headers); never raises on HTTP errors."""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read() or b"{}"), reply.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), exc.headers
