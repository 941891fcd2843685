"""PAM logins (pam_exec): the mapping to OCSF, the route, and the hook's --pam mode as a process.

The hook is run here as pam_exec runs it: a bare environment of PAM_* variables, no PATH. The
end-to-end tests with Debian's pamtester and sshd are in tests/test_pam_e2e.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro import parse_schema
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import handoff
from bridge.codec import AvroCodec, schema_text
from bridge.durable_spool import DurableSpool, Spooled
from bridge.errors import InputError, InvalidField
from bridge.normalize import Normalizer
from bridge.pam import FORMAT
from bridge.shim import DEFAULTS, PAM_SPOOL_SECONDS
from bridge.sinks.file import read_events

from conftest import BIN, BridgeProcess, encoded, post
from ocsf import assert_ocsf
from support import free_port

HOOK = BIN / "login-audit-hook"
TOKEN = "test-token"
# test_shim.py's list, and what the PAM path could pull in: ipaddress (the bridge's address
# check), signal (imports enum; the hook uses _signal), syslog (only on a problem).
HEAVY_MODULES = {"json", "socket", "urllib", "re", "ssl", "asyncio", "pydantic", "fastavro"} | {
    "ipaddress",
    "signal",
    "enum",
    "syslog",
}
START_UP_MARGIN = 15.0  # a bound on a hang on a loaded machine, not a speed claim
EVENT_ID = "5b7e0c5e-8d3a-4a51-9f0e-0c7a2b1d9e11"
BridgeFactory = Callable[..., BridgeProcess]


def facts(**overrides: str) -> dict[str, str]:
    """What `login-audit-hook --pam failure` sends for a failed sudo password."""
    base = {
        "format": FORMAT,
        "result": "failure",
        "type": "auth",
        "service": "sudo",
        "user": "root",
        "rhost": "",
        "ruser": "alice",
        "tty": "/dev/pts/3",
        "host": "web-1",
    }
    return base | overrides


def normalizer() -> Normalizer:
    return Normalizer(clock=lambda: 1_795_330_677_813)


# -- the mapping


def test_a_failed_sudo_names_the_target_user_and_the_requesting_user_as_actor() -> None:
    record = normalizer().pam(facts(), event_id=EVENT_ID).record

    assert (record["status_id"], record["status"]) == (2, "Failure")
    assert record["user"]["name"] == "root"
    assert record["actor"] == {"user": {"name": "alice", "uid": None}}
    assert record["service"]["name"] == "sudo"
    assert record["dst_endpoint"] == {
        "svc_name": "sudo",
        "hostname": "web-1",
        "ip": None,
        "port": None,
    }
    assert (record["logon_type_id"], record["logon_type"], record["is_remote"]) == (
        2,
        "Interactive",
        False,
    )
    assert record["src_endpoint"]["ip"] is None
    assert record["metadata"]["product"]["name"] == "Linux-PAM"
    assert record["metadata"]["uid"] == EVENT_ID
    assert record["unmapped"] == {"pam.type": "auth", "pam.tty": "/dev/pts/3"}
    assert record["message"] == "PAM sudo authentication failed for 'root' requested by 'alice'"


def test_an_sshd_session_open_is_a_remote_network_success_from_pam_rhost() -> None:
    sshd = facts(
        result="success",
        type="open_session",
        service="sshd",
        user="bob",
        rhost="2001:db8::7",
        ruser="",
        tty="ssh",
        auth_method="publickey",
    )
    event = normalizer().pam(sshd)
    record = event.record

    assert (record["status_id"], record["user"]["name"]) == (1, "bob")
    assert record["src_endpoint"]["ip"] == "2001:db8::7"
    assert (record["logon_type_id"], record["logon_type"], record["is_remote"]) == (
        3,
        "Network",
        True,
    )
    assert (record["auth_protocol_id"], record["auth_protocol"]) == (99, "publickey")
    assert record["actor"] is None
    assert (event.source, event.routing_key) == ("pam", "success.pam.sshd")


def test_a_host_name_in_pam_rhost_is_kept_in_unmapped_not_as_an_address() -> None:
    record = normalizer().pam(facts(service="sshd", rhost="client.example.org")).record

    assert record["src_endpoint"]["ip"] is None
    assert record["unmapped"]["pam.rhost"] == "client.example.org"
    assert record["is_remote"] is True


def test_a_host_name_that_is_not_a_dns_name_is_kept_in_unmapped_and_the_event_is_ocsf() -> None:
    record = normalizer().pam(facts(host="web_1:prod")).record
    assert record["dst_endpoint"]["hostname"] is None
    assert record["unmapped"]["pam.host"] == "web_1:prod"
    assert_ocsf(record)


@pytest.mark.parametrize(
    ("service", "logon_type_id"), [("cron", 4), ("systemd-user", 5), ("login", 2), ("su", 2)]
)
def test_local_services_get_their_logon_type_and_are_not_remote(
    service: str, logon_type_id: int
) -> None:
    record = normalizer().pam(facts(service=service, ruser="")).record

    assert (record["logon_type_id"], record["is_remote"]) == (logon_type_id, False)


def test_an_attackers_huge_user_name_is_cut_and_flagged_not_refused() -> None:
    record = normalizer().pam(facts(service="sshd", rhost="192.0.2.1", user="x" * 5000)).record

    assert record["user"]["name"] == "x" * 256
    assert record["unmapped"]["truncated"] == "user.name"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"format": "something"}, "format"),
        ({"result": "maybe"}, "result"),
        ({"service": ""}, "service"),
        ({"user": 7}, "user"),
        ({"auth_method": "pass word"}, "auth_method"),
    ],
)
def test_facts_the_hook_would_never_send_are_refused_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidField) as caught:
        normalizer().pam({**facts(), **change})
    assert caught.value.detail == field


def test_every_pam_event_validates_and_an_old_reader_without_actor_still_reads_it() -> None:
    codec = AvroCodec()
    record = normalizer().pam(facts(), event_id=EVENT_ID).record
    assert codec.validate(record)
    assert_ocsf(record)
    new = json.loads(schema_text())
    old = {**new, "fields": [f for f in new["fields"] if f["name"] != "actor"]}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parse_schema(new), record)

    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, parse_schema(new), parse_schema(old))

    assert isinstance(read, dict)
    assert "actor" not in read
    assert read["user"]["name"] == "root"


def test_an_event_written_before_actor_existed_reads_with_actor_null() -> None:
    new = json.loads(schema_text())
    old = {**new, "fields": [f for f in new["fields"] if f["name"] != "actor"]}
    record = normalizer().pam(facts()).record
    del record["actor"]
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parse_schema(old), record)

    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, parse_schema(old), parse_schema(new))

    assert isinstance(read, dict)
    assert read["actor"] is None


# -- the hook as pam_exec runs it


def pam_env(tmp_path: Path, url: str, **variables: str) -> dict[str, str]:
    """pam_exec's environment for a failed sudo, and the hook's settings; nothing else."""
    env = {
        "PAM_TYPE": "auth",
        "PAM_SERVICE": "sudo",
        "PAM_USER": "root",
        "PAM_RUSER": "alice",
        "PAM_TTY": "/dev/pts/3",
        "LOGIN_AUDIT_HOOK_CONFIG": str(tmp_path / "no-hook.env"),
        "LOGIN_AUDIT_HOOK_URL": url,
        "LOGIN_AUDIT_HOOK_TOKEN": TOKEN,
        "LOGIN_AUDIT_HOOK_SPOOL_DIR": str(tmp_path / "spool"),
    }
    return env | variables


def run_pam_hook(
    env: dict[str, str], *args: str, stdin: bytes = b"", preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[bytes]:
    timeout = float(DEFAULTS["LOGIN_AUDIT_HOOK_PAM_TIMEOUT"]) + PAM_SPOOL_SECONDS
    return subprocess.run(
        [str(HOOK), "--pam", *args],
        env=env,
        cwd="/",
        input=stdin,
        capture_output=True,
        timeout=timeout + START_UP_MARGIN,
        check=False,
        preexec_fn=preexec,  # only to set up a signal disposition
    )


def spooled(tmp_path: Path) -> list[dict[str, Any]]:
    spool = tmp_path / "spool"
    files = sorted(spool.glob("*.json")) if spool.is_dir() else []
    return [json.loads(p.read_bytes()) for p in files]


@pytest.fixture
def bridge(bridge_factory: BridgeFactory) -> BridgeProcess:
    return bridge_factory(auth_tokens=TOKEN)


def test_a_pam_login_reaches_the_bridge_as_one_event_and_nothing_is_spooled(
    bridge: BridgeProcess, tmp_path: Path
) -> None:
    run = run_pam_hook(pam_env(tmp_path, bridge.url), "failure")

    assert (run.returncode, run.stdout, run.stderr) == (0, b"", b"")
    records = list(read_events(bridge.events_dir))
    assert [(r["status"], r["user"]["name"], r["actor"]) for r in records] == [
        ("Failure", "root", {"user": {"name": "alice", "uid": None}})
    ]
    assert records[0]["dst_endpoint"]["hostname"] == os.uname().nodename
    assert spooled(tmp_path) == []


def test_a_session_close_sends_nothing_and_an_open_session_is_a_success(
    bridge: BridgeProcess, tmp_path: Path
) -> None:
    env = pam_env(tmp_path, bridge.url, PAM_SERVICE="sshd", PAM_RHOST="192.0.2.9", PAM_RUSER="")
    assert run_pam_hook(env | {"PAM_TYPE": "open_session"}).returncode == 0
    assert run_pam_hook(env | {"PAM_TYPE": "close_session"}).returncode == 0

    records = list(read_events(bridge.events_dir))
    assert [(r["status"], r["src_endpoint"]["ip"], r["is_remote"]) for r in records] == [
        ("Success", "192.0.2.9", True)
    ]


def test_with_the_bridge_down_the_pam_login_is_spooled_and_taken_in_later(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    run = run_pam_hook(pam_env(tmp_path, f"http://127.0.0.1:{free_port()}"), "failure")
    assert (run.returncode, run.stdout, run.stderr) == (0, b"", b"")
    [document] = spooled(tmp_path)
    assert (document["source"], document["query"]["service"]) == ("pam", "sudo")

    bridge = bridge_factory(hook_spool_dir=str(tmp_path / "spool"))
    deadline = time.monotonic() + 20
    while spooled(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)

    records = list(read_events(bridge.events_dir))
    assert [(r["status"], r["service"]["name"]) for r in records] == [("Failure", "sudo")]
    assert records[0]["metadata"]["uid"] == document["event_id"]


def test_the_hook_never_reads_stdin_so_an_exposed_password_goes_nowhere(tmp_path: Path) -> None:
    """pam_exec's expose_authtok writes the password on the child's stdin: it stays unread."""
    password = "Corr3ct-Horse-Battery-Staple"
    dead = f"http://127.0.0.1:{free_port()}"

    run = run_pam_hook(pam_env(tmp_path, dead), "success", stdin=password.encode() + b"\0")

    assert run.returncode == 0
    files = list((tmp_path / "spool").rglob("*"))
    assert files
    assert [p for p in files if p.is_file() and password.encode() in p.read_bytes()] == []


def test_under_pam_the_hook_writes_nothing_on_the_terminal_even_with_unusable_settings(
    tmp_path: Path,
) -> None:
    """A plain http:// URL to another host is refused: the login is spooled, the line goes to
    syslog, and the user's terminal (stdout, stderr) sees nothing."""
    run = run_pam_hook(pam_env(tmp_path, "http://192.0.2.1:8080"), "failure")

    assert (run.returncode, run.stdout, run.stderr) == (2, b"", b"")
    assert len(spooled(tmp_path)) == 1


def test_without_pam_type_or_with_a_bad_argument_the_hook_exits_2(tmp_path: Path) -> None:
    env = pam_env(tmp_path, "http://127.0.0.1:9")
    del env["PAM_TYPE"]
    assert run_pam_hook(env, "failure").returncode == 2
    assert run_pam_hook(pam_env(tmp_path, "http://127.0.0.1:9"), "maybe").returncode == 2
    assert run_pam_hook(pam_env(tmp_path, "http://127.0.0.1:9")).returncode == 2  # auth: say which
    assert spooled(tmp_path) == []


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A loopback port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_bridge_that_never_answers_holds_a_pam_login_at_most_the_pam_timeout(
    silent_listener: str, tmp_path: Path
) -> None:
    env = pam_env(tmp_path, silent_listener, LOGIN_AUDIT_HOOK_PAM_TIMEOUT="0.3")
    run = run_pam_hook(env, "failure")  # its own timeout bounds a hang

    assert run.returncode == 0
    assert len(spooled(tmp_path)) == 1


def test_a_hook_stuck_on_its_settings_file_is_ended_by_the_hard_limit(tmp_path: Path) -> None:
    """A FIFO with no writer blocks open() forever, as a hung mount would; SIGALRM, even when
    the calling program ignored it, ends the hook so the login goes on."""
    fifo = tmp_path / "hook.env"
    os.mkfifo(fifo)
    env = pam_env(tmp_path, "http://127.0.0.1:9", LOGIN_AUDIT_HOOK_PAM_TIMEOUT="0.2")
    env["LOGIN_AUDIT_HOOK_CONFIG"] = str(fifo)

    def ignore_alarm() -> None:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)

    run = run_pam_hook(env, "failure", preexec=ignore_alarm)

    assert run.returncode == -signal.SIGALRM
    assert (run.stdout, run.stderr) == (b"", b"")


def test_the_pam_route_refuses_a_body_that_is_not_pam_facts_for_good(bridge: BridgeProcess) -> None:
    status, body, _ = post(f"{bridge.url}/v1/hooks/pam", json.dumps({"x": 1}).encode())

    assert (status, body["error"], body["field"], body["final"]) == (
        400,
        "invalid_field",
        "format",
        True,
    )


def test_a_spooled_pam_login_keeps_the_hooks_time_not_the_time_it_was_taken_in() -> None:
    record = normalizer().pam(facts(time="1700000000123"), received_ms=1_795_330_677_813).record

    assert (record["time"], record["metadata"]["logged_time"]) == (
        1_700_000_000_123,
        1_795_330_677_813,
    )


@pytest.mark.parametrize("stamp", ["²", "١٧٠٠٠٠٠٠٠٠١٢٣", "1700000000123²"])
def test_a_hook_time_in_digits_int_refuses_gives_the_bridges_time_not_an_error(stamp: str) -> None:
    """str.isdigit() accepts superscripts and other scripts' digits; hypothesis found "²"."""
    record = normalizer().pam(facts(time=stamp), received_ms=1_795_330_677_813).record

    assert record["time"] == 1_795_330_677_813


def test_drain_sends_spooled_pam_logins_to_a_remote_bridge_with_their_id_and_time(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """A host without a bridge of its own: its timer runs --drain once the bridge is back."""
    dead = f"http://127.0.0.1:{free_port()}"
    for result in ("failure", "failure", "success"):
        assert run_pam_hook(pam_env(tmp_path, dead), result).returncode == 0
    documents = spooled(tmp_path)
    sftpgo = handoff.write(str(tmp_path / "spool"), 1, b'{"format": "x"}')  # not PAM's: left
    bridge = bridge_factory(auth_tokens=TOKEN)  # its own hook spool is elsewhere
    env = pam_env(tmp_path, bridge.url)

    drained = subprocess.run(
        [str(HOOK), "--drain"], env=env, capture_output=True, timeout=60, check=False
    )

    assert drained.returncode == 0, drained.stderr
    records = list(read_events(bridge.events_dir))
    assert sorted(
        (r["metadata"]["uid"], round(r["time"].timestamp() * 1000), r["status"]) for r in records
    ) == sorted(
        (d["event_id"], d["received_ms"], d["query"]["result"].capitalize()) for d in documents
    )
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [Path(str(sftpgo)).name]


def test_drain_keeps_every_pam_login_while_the_bridge_is_still_down(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert run_pam_hook(pam_env(tmp_path, dead), "failure").returncode == 0

    drained = subprocess.run(
        [str(HOOK), "--drain"], env=pam_env(tmp_path, dead), capture_output=True, timeout=60
    )

    assert drained.returncode == 1
    assert len(spooled(tmp_path)) == 1


def test_a_pam_event_read_back_from_the_bridges_spool_is_still_pams(tmp_path: Path) -> None:
    """A sink that is down sends the event through the durable spool: its replay must keep the
    source, which names Kafka's `source` header and RabbitMQ's routing key."""
    event = normalizer().pam(facts(service="sshd", rhost="192.0.2.1"))

    async def scenario() -> list[tuple[str, str]]:
        spool = DurableSpool(
            tmp_path / "spool.sqlite3", AvroCodec(), max_bytes=1 << 20, max_events=10
        )
        await spool.open()
        await spool.put(encoded(event))
        head = await spool.head(10)
        await spool.close()
        return [(i.event.source, i.event.routing_key) for i in head if isinstance(i, Spooled)]

    assert asyncio.run(scenario()) == [("pam", "failure.pam.sshd")]


_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_TEXT = (
    st.text(max_size=300)
    | st.tuples(st.text(max_size=5), _SURROGATE).map("".join)
    | st.sampled_from(["", "sshd", "sudo", "192.0.2.1", "::1", "fe80::1%eth0", "1.2.3.4%x"])
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {"format": st.just(FORMAT), "result": st.sampled_from(["success", "failure", "x"])},
        optional={name: _TEXT for name in ("type", "service", "user", "rhost", "ruser", "tty",
                                            "host", "auth_method", "time")},
    )
)  # fmt: skip
def test_any_facts_become_a_valid_event_or_our_input_error(values: dict[str, str]) -> None:
    try:
        event = normalizer().pam(values)
    except InputError:
        return
    assert AvroCodec().validate(event.record)
    assert_ocsf(event.record)


def test_a_pam_login_handed_to_the_bridge_loads_nothing_heavy(
    bridge: BridgeProcess, tmp_path: Path
) -> None:
    """pam_exec runs the hook for every authentication step: its path imports what SFTPGo's
    does plus bridge.pam's tables, nothing that costs start-up time."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", str(HOOK), "--pam", "failure"],
        env=pam_env(tmp_path, bridge.url),
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=30,
        check=False,
    )

    assert completed.returncode == 0
    assert len(list(read_events(bridge.events_dir))) == 1
    loaded = imported_modules(completed.stderr)
    assert "bridge" in loaded
    assert sorted(loaded & HEAVY_MODULES) == []


def imported_modules(stderr: str) -> set[str]:
    """Top-level names of the modules an ``-X importtime`` run imported (as test_shim.py)."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name.split(".")[0])
    return names
