"""PAM logins end to end with Debian's own parts, on loopback: pamtester and a real sshd.

The lab (module-scoped) adds to this machine only what it removes afterwards: a Unix user with
a random name and password, two PAM service files with unique names in /etc/pam.d (one
pamtester drives, one a throwaway sshd uses), and that sshd on 127.0.0.1 with its own config
and host key in a temp dir, stopped by PID. sshd names its PAM service after the name it was
run by (OpenSSH's __progname), so it runs through a symlink with the unique name and the host's
own /etc/pam.d/sshd is never read. The stacks are docs/pam.md's, with pam_unix's delay off.

Each attempt must give exactly one event, with the right facts, through the bridge into the file
sink and Kafka; with the bridge down, the hook's spool keeps every one for the bridge to take in.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.consume import KafkaReader
from bridge.settings import Settings
from bridge.sinks.file import read_events

from conftest import BIN, KAFKA_BOOTSTRAP, BridgeProcess, print_fault_row
from ocsf import assert_ocsf
from support import delete_kafka_topics, free_port, reachable, skip_or_fail, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.pam]

HOOK = BIN / "login-audit-hook"
TOKEN = "pam-e2e-token"
TOOLS = ("/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/sshpass", "/usr/bin/pamtester")
BridgeFactory = Callable[..., BridgeProcess]


# -- the lab


@dataclass
class Lab:
    dir: Path
    user: str
    password: str
    unknown_user: str
    requester: str  # PAM_RUSER of the pamtester attempts, as sudo would set it
    service: str  # the pamtester service (sudo's stack)
    sshd_service: str
    ssh_port: int
    key: Path

    @property
    def hook_config(self) -> Path:
        return self.dir / "hook.env"

    def point_hook_at(self, url: str, spool: Path) -> None:
        """What /etc/login-audit-bridge/hook.env would hold on a host; read at every run."""
        self.hook_config.write_text(
            f"LOGIN_AUDIT_HOOK_URL={url}\nLOGIN_AUDIT_HOOK_TOKEN={TOKEN}\n"
            f"LOGIN_AUDIT_HOOK_SPOOL_DIR={spool}\n",
            encoding="utf-8",
        )


def hook_line(lab_dir: Path, kind: str, result: str, *options: str) -> str:
    """docs/pam.md's line; env(1) only points the hook at the lab's settings file."""
    command = f"/usr/bin/env LOGIN_AUDIT_HOOK_CONFIG={lab_dir / 'hook.env'} {HOOK} --pam {result}"
    return f"{kind} optional pam_exec.so quiet {' '.join(options)} {command}".replace("  ", " ")


def sudo_stack(lab_dir: Path, *options: str) -> str:
    """Failures after the authenticating module, successes after it too: each prompt counts."""
    return "\n".join(
        [
            "auth [success=2 default=ignore] pam_unix.so nodelay",
            hook_line(lab_dir, "auth", "failure", *options),
            "auth requisite pam_deny.so",
            "auth required pam_permit.so",
            hook_line(lab_dir, "auth", "success", *options),
            "account required pam_unix.so",
            "",
        ]
    )


def sshd_stack(lab_dir: Path) -> str:
    """Failures in auth; successes at session open, which public-key logins reach as well."""
    return "\n".join(
        [
            "auth [success=2 default=ignore] pam_unix.so nodelay",
            hook_line(lab_dir, "auth", "failure"),
            "auth requisite pam_deny.so",
            "auth required pam_permit.so",
            "account required pam_unix.so",
            "session required pam_permit.so",
            hook_line(lab_dir, "session", "success"),
            "",
        ]
    )


def run(*command: str, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        skip_or_fail("the PAM lab needs root (a test user, /etc/pam.d, sshd)")
    missing = [tool for tool in TOOLS if not os.access(tool, os.X_OK)]
    if missing:
        skip_or_fail(f"missing {', '.join(missing)}: run scripts/pam ensure")
    tag = secrets.token_hex(4)
    lab_dir = Path(tempfile.mkdtemp(prefix="login-audit-pam-"))
    lab_dir.chmod(0o755)  # sshd reads the authorized keys as the user
    lab = Lab(
        dir=lab_dir,
        user=f"lapam{tag}",
        password=f"Pam-{secrets.token_urlsafe(12)}",
        unknown_user=f"lanone{tag}",
        requester=f"lareq{tag}",
        service=f"login-audit-test-{tag}",
        sshd_service=f"sshd-login-audit-test-{tag}",
        ssh_port=free_port(),
        key=lab_dir / "id_ed25519",
    )
    pam_files = [Path("/etc/pam.d") / lab.service, Path("/etc/pam.d") / lab.sshd_service]
    sshd: subprocess.Popen[bytes] | None = None
    try:
        run("useradd", "--no-create-home", "--home-dir", str(lab_dir), "--shell", "/bin/sh",
            lab.user)  # fmt: skip
        run("chpasswd", stdin=f"{lab.user}:{lab.password}\n")
        pam_files[0].write_text(sudo_stack(lab_dir), encoding="utf-8")
        pam_files[1].write_text(sshd_stack(lab_dir), encoding="utf-8")
        sshd = start_sshd(lab)
        yield lab
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(10)
        for path in pam_files:
            path.unlink(missing_ok=True)
        run("userdel", lab.user, check=False)
        shutil.rmtree(lab_dir, ignore_errors=True)


def start_sshd(lab: Lab) -> subprocess.Popen[bytes]:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(lab.dir / "host_key"))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(lab.key))
    keys = lab.dir / "authorized_keys"
    keys.mkdir(mode=0o755)
    (keys / lab.user).write_text(lab.key.with_suffix(".pub").read_text(), encoding="utf-8")
    config = lab.dir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {lab.ssh_port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {lab.dir / 'host_key'}",
                f"PidFile {lab.dir / 'sshd.pid'}",
                "UsePAM yes",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                f"AuthorizedKeysFile {keys}/%u",
                "StrictModes no",
                # The method of the login ("publickey", "password") for the session's event.
                "ExposeAuthInfo yes",
                "UseDNS no",
                "PermitRootLogin no",
                "LogLevel VERBOSE",
                "",
            ]
        ),
        encoding="utf-8",
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation directory
    named = lab.dir / lab.sshd_service  # the PAM service name (__progname)
    named.symlink_to("/usr/sbin/sshd")
    run(str(named), "-t", "-f", str(config))
    with (lab.dir / "sshd.log").open("wb") as log:
        process = subprocess.Popen(
            [str(named), "-D", "-e", "-f", str(config)], stdout=log, stderr=log
        )
    deadline = time.monotonic() + 20
    while not reachable("127.0.0.1", lab.ssh_port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not start: {(lab.dir / 'sshd.log').read_text()}")
        time.sleep(0.05)
    return process


# -- the attempts


@dataclass(frozen=True)
class Expected:
    """The event an attempt must give (Kafka and the file read back the same record)."""

    status: str
    user: str
    service: str
    source: str | None
    requester: str | None
    auth_protocol: str | None
    is_remote: bool


@dataclass(frozen=True)
class Attempt:
    name: str
    pam_ok: bool  # what the PAM stack (so the login) must answer
    expected: Expected


def attempts(lab: Lab) -> list[Attempt]:
    # auth_protocol: the method sshd names (ExposeAuthInfo), else OCSF's caption of id 0.
    def local(status: str, user: str) -> Expected:  # sudo's stack: no address, the requester
        return Expected(status, user, lab.service, None, lab.requester, "Unknown", False)

    def remote(status: str, user: str, method: str | None) -> Expected:
        return Expected(
            status, user, lab.sshd_service, "127.0.0.1", None, method or "Unknown", True
        )

    return [
        Attempt("pamtester, right password", True, local("Success", lab.user)),
        Attempt("pamtester, wrong password", False, local("Failure", lab.user)),
        Attempt("pamtester, unknown user", False, local("Failure", lab.unknown_user)),
        Attempt("ssh, right password", True, remote("Success", lab.user, "password")),
        Attempt("ssh, wrong password", False, remote("Failure", lab.user, None)),
        Attempt("ssh, unknown user", False, remote("Failure", lab.unknown_user, None)),
        Attempt("ssh, public key", True, remote("Success", lab.user, "publickey")),
    ]


def perform(lab: Lab, attempt: Attempt) -> tuple[bool, str]:
    """Makes the attempt with the real client; whether PAM (the login) let it in, and its words."""
    user = lab.unknown_user if "unknown user" in attempt.name else lab.user
    password = lab.password if "right password" in attempt.name else "Wrong-" + lab.password
    if attempt.name.startswith("pamtester"):
        done = subprocess.run(
            ["pamtester", "-I", f"ruser={lab.requester}", lab.service, user, "authenticate"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        said = (done.stdout + done.stderr).replace("Password: ", "").strip().splitlines()
        words = said[-1].removeprefix("pamtester: ") if said else f"exit {done.returncode}"
        return done.returncode == 0, words
    ssh = [
        "ssh", "-F", "/dev/null", "-p", str(lab.ssh_port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    if "public key" in attempt.name:
        command = [*ssh, "-o", "BatchMode=yes", "-o", "PreferredAuthentications=publickey",
                   "-i", str(lab.key), f"{user}@127.0.0.1", "true"]  # fmt: skip
        env = None
    else:
        command = ["sshpass", "-e", *ssh, "-o", "PreferredAuthentications=password",
                   "-o", "PubkeyAuthentication=no", f"{user}@127.0.0.1", "true"]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "SSHPASS": password}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    words = (
        "logged in" if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")
    )
    return done.returncode == 0, words.splitlines()[-1]


def facts(record: dict[str, Any]) -> Expected:
    actor = record.get("actor")
    return Expected(
        status=record["status"],
        user=record["user"]["name"],
        service=record["service"]["name"],
        source=record["src_endpoint"]["ip"],
        requester=actor["user"]["name"] if actor else None,
        auth_protocol=record["auth_protocol"],
        is_remote=record["is_remote"],
    )


def perform_all(lab: Lab) -> list[tuple[Attempt, bool, str]]:
    done = []
    for attempt in attempts(lab):
        ok, words = perform(lab, attempt)
        done.append((attempt, ok, words))
    return done


def print_table(
    title: str,
    done: list[tuple[Attempt, bool, str]],
    records: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    by_facts = {facts(r): r for r in records}
    lines = [f"\nPAM e2e: {title}", "attempt | PAM result | event status | user | service | source"]
    for attempt, ok, words in done:
        record = by_facts.get(attempt.expected)
        pam = f"{'success' if ok else 'failure'} ({words})"
        if record is None:
            lines.append(f"{attempt.name} | {pam} | (no event) | - | - | -")
            continue
        e = facts(record)
        lines.append(
            f"{attempt.name} | {pam} | {e.status} | {e.user} | {e.service} | {e.source or '-'}"
        )
    with capsys.disabled():  # the table belongs in the run's output, CI's too
        print("\n".join(lines))


def check(done: list[tuple[Attempt, bool, str]], records: list[dict[str, Any]], lab: Lab) -> None:
    assert [(a.name, ok) for a, ok, _ in done] == [(a.name, a.pam_ok) for a, _, _ in done]
    assert Counter(facts(r) for r in records) == Counter(a.expected for a, _, _ in done)
    for record in records:
        assert record["metadata"]["product"]["name"] == "Linux-PAM"
        assert record["dst_endpoint"]["hostname"] == os.uname().nodename
        assert_ocsf(record)
    text = repr(records)
    assert lab.password not in text and "Wrong-" not in text


def all_bytes(*directories: Path) -> bytes:
    return b"".join(
        p.read_bytes()
        for d in directories
        if d.is_dir()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    )


def spooled(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.json")) if spool.is_dir() else []


# -- the tests


def test_every_pam_attempt_gives_exactly_its_event_in_the_file_sink(
    lab: Lab, bridge_factory: BridgeFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = tmp_path / "hook-spool"
    bridge = bridge_factory(auth_tokens=TOKEN, hook_spool_dir=str(spool))
    lab.point_hook_at(bridge.url, spool)

    done = perform_all(lab)
    wait_for(lambda: len(list(read_events(bridge.events_dir))) >= len(done))
    records = list(read_events(bridge.events_dir))

    print_table("bridge up, file sink", done, records, capsys)
    check(done, records, lab)
    assert spooled(spool) == []
    assert bridge.stop() == 0
    everything = all_bytes(bridge.data_dir, spool)
    assert lab.password.encode() not in everything


@pytest.mark.kafka
def test_every_pam_attempt_gives_exactly_its_event_in_kafka(
    lab: Lab, bridge_factory: BridgeFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host, _, port = KAFKA_BOOTSTRAP.split(",")[0].rpartition(":")
    if not reachable(host, int(port)):
        skip_or_fail(f"Kafka is not reachable at {KAFKA_BOOTSTRAP}: run scripts/brokers start")
    prefix = f"pam-e2e-{secrets.token_hex(4)}"
    spool = tmp_path / "hook-spool"
    bridge = bridge_factory(
        auth_tokens=TOKEN,
        hook_spool_dir=str(spool),
        sink="kafka",
        kafka_bootstrap_servers=KAFKA_BOOTSTRAP,
        kafka_topic_success=f"{prefix}.success",
        kafka_topic_failure=f"{prefix}.failure",
        kafka_topic_partitions="1",
        kafka_topic_replication="1",
    )
    lab.point_hook_at(bridge.url, spool)
    try:
        done = perform_all(lab)
        records = asyncio.run(read_topics(prefix, len(done)))
    finally:
        delete_kafka_topics(KAFKA_BOOTSTRAP, prefix)

    print_table("bridge up, Kafka", done, records, capsys)
    check(done, records, lab)
    assert spooled(spool) == []


async def read_topics(prefix: str, count: int) -> list[dict[str, Any]]:
    settings = Settings(
        kafka_bootstrap_servers=KAFKA_BOOTSTRAP,
        kafka_topic_success=f"{prefix}.success",
        kafka_topic_failure=f"{prefix}.failure",
    )
    records: list[dict[str, Any]] = []
    async with KafkaReader(settings) as reader:
        async for consumed in reader.events(limit=count + 1, idle_timeout=5.0):
            assert consumed.record is not None, consumed.error
            assert consumed.headers["source"] == "pam"
            records.append(consumed.record)
    return records


def test_with_the_bridge_down_the_spool_keeps_every_pam_login_until_it_is_back(
    lab: Lab, bridge_factory: BridgeFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = tmp_path / "hook-spool"
    lab.point_hook_at(f"http://127.0.0.1:{free_port()}", spool)  # nothing listens there

    done = perform_all(lab)
    kept = spooled(spool)
    assert len(kept) == len(done)
    assert lab.password.encode() not in all_bytes(spool)

    bridge = bridge_factory(auth_tokens=TOKEN, hook_spool_dir=str(spool))
    wait_for(
        lambda: spooled(spool) == [] and len(list(read_events(bridge.events_dir))) >= len(done)
    )
    records = list(read_events(bridge.events_dir))

    print_table("bridge down, then back", done, records, capsys)
    delivered = sum(1 for a, _, _ in done if a.expected in {facts(r) for r in records})
    print_fault_row(
        "PAM logins while the bridge is down",
        sent=len(done),
        acknowledged=len(kept),
        delivered=delivered,
        lost=len(kept) - delivered,
        duplicated=len(records) - len({r["metadata"]["uid"] for r in records}),
        capsys=capsys,
    )
    check(done, records, lab)
    assert spooled(spool) == []


def test_no_password_reaches_event_or_spool_even_with_expose_authtok(
    lab: Lab, bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """The worst case: the lines pass the password to the hook's stdin (expose_authtok)."""
    service = Path("/etc/pam.d") / f"{lab.service}-authtok"
    service.write_text(sudo_stack(lab.dir, "expose_authtok"), encoding="utf-8")
    spool = tmp_path / "hook-spool"
    lab.point_hook_at(f"http://127.0.0.1:{free_port()}", spool)
    try:
        results = [
            subprocess.run(
                ["pamtester", service.name, lab.user, "authenticate"],
                input=password + "\n",
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).returncode
            for password in (lab.password, "Wrong-" + lab.password)
        ]
    finally:
        service.unlink()
    assert results == [0, 1]
    assert len(spooled(spool)) == 2
    assert lab.password.encode() not in all_bytes(spool)

    bridge = bridge_factory(auth_tokens=TOKEN, hook_spool_dir=str(spool))
    wait_for(lambda: spooled(spool) == [])
    records = list(read_events(bridge.events_dir))
    assert sorted(r["status"] for r in records) == ["Failure", "Success"]
    assert bridge.stop() == 0
    assert lab.password.encode() not in all_bytes(bridge.data_dir, spool)
