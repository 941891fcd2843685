"""The installed login-audit-hook, run exactly as SFTPGo runs it: every login lands exactly once.

SFTPGo starts the program with a cleared environment (only its ``command.env`` plus the
SFTPGO_LOGIND_* variables), stdio on /dev/null, and never retries it; so these tests do the same.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from bridge import __version__, handoff
from bridge.event import UNKNOWN_USER
from bridge.settings import Settings
from bridge.sftpgo import ENV_TO_QUERY, EVENT_ID_HEADER
from bridge.shim import DEFAULTS
from bridge.sinks.file import read_events

from conftest import (
    BridgeProcess,
    print_fault_row,
    secret_strings,
    sftpgo_vectors,
    vector_body,
    vector_query,
)
from ocsf import assert_ocsf
from support import free_port, wait_for
from wire import Relay, header, other_service

pytestmark = pytest.mark.slow

HOOK = Path(sys.executable).parent / "login-audit-hook"
PROGRAM_VECTORS = [v for v in sftpgo_vectors() if v["mode"] == "program"]
TOKEN = "test-token"
# What each run may cost at most beyond LOGIN_AUDIT_HOOK_TIMEOUT: interpreter start-up on a
# loaded CI machine. It bounds a hang; it is not a speed claim.
START_UP_MARGIN = 15.0
HEAVY_MODULES = ("json", "socket", "urllib", "re", "ssl", "asyncio", "pydantic", "fastavro")

BridgeFactory = Callable[..., BridgeProcess]


@pytest.fixture(params=PROGRAM_VECTORS, ids=lambda v: v["name"])
def vector(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(request.param)


# -- helpers


def hook_env(vector: dict[str, Any], tmp_path: Path, **settings: str) -> dict[str, str]:
    """The vector's complete environment plus LOGIN_AUDIT_HOOK_* settings, nothing else.

    LOGIN_AUDIT_HOOK_CONFIG points at a missing file unless given, so a hook.env installed
    on this machine cannot change what is tested.
    """
    env = {str(k): str(v) for k, v in vector["env"].items()}
    env["LOGIN_AUDIT_HOOK_CONFIG"] = str(tmp_path / "no-hook.env")
    env.update({f"LOGIN_AUDIT_HOOK_{k.upper()}": v for k, v in settings.items()})
    return env


def run_hook(env: dict[str, str], *, timeout: float = 5.0) -> int:
    """Runs the hook as SFTPGo does; ``timeout`` is LOGIN_AUDIT_HOOK_TIMEOUT's value."""
    return run_hook_said(env, timeout=timeout)[0]


def run_hook_said(env: dict[str, str], *, timeout: float = 5.0) -> tuple[int, str]:
    """Runs the hook; its exit code and what it wrote on stderr (SFTPGo discards it)."""
    completed = subprocess.run(
        [str(HOOK)],
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout + START_UP_MARGIN,
        check=False,
    )
    return completed.returncode, completed.stderr


def as_program(vector: dict[str, Any]) -> dict[str, Any]:
    """Any vector as program mode: the environment SFTPGo would give the hook for it."""
    query = vector_query(vector)
    env = {variable: query[name] for variable, name in ENV_TO_QUERY}
    env["SFTPGO_LOGIND_USER"] = vector_body(vector).decode("utf-8")
    return {**vector, "env": env}


def with_username(vector: dict[str, Any], name: str) -> dict[str, Any]:
    user = json.loads(vector["env"]["SFTPGO_LOGIND_USER"])
    user["username"] = name
    env = {**vector["env"], "SFTPGO_LOGIND_USER": json.dumps(user, separators=(",", ":"))}
    return {**vector, "env": env, "expected": {**vector["expected"], "username": name}}


def facts(record: dict[str, Any]) -> tuple[int, str | None, str, str, str]:
    assert_ocsf(record)  # program mode, through the real hook and bridge: strict OCSF too
    return (
        record["status_id"],
        record["user"]["name"],
        record["src_endpoint"]["ip"],
        record["dst_endpoint"]["svc_name"],
        record["unmapped"]["sftpgo.login_method"],
    )


def expected_facts(vector: dict[str, Any]) -> tuple[int, str | None, str, str, str]:
    expected = vector["expected"]
    return (
        1 if expected["status"] == "SUCCESS" else 2,
        expected["username"] or UNKNOWN_USER,
        expected["ip"],
        expected["protocol"],
        expected["login_method"],
    )


def events(bridge: BridgeProcess) -> list[dict[str, Any]]:
    return list(read_events(bridge.events_dir))


def spooled(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def leftovers(directory: Path) -> list[str]:
    """Whatever is in the spool directory: spooled events, temp files, rejected/."""
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def dead_url() -> str:
    """A loopback address where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def wait_until_drained(bridge: BridgeProcess, spool: Path, count: int) -> list[dict[str, Any]]:
    """Waits until the bridge took in the whole spool and holds ``count`` events."""
    wait_for(lambda: leftovers(spool) == [] and len(events(bridge)) >= count)
    return events(bridge)


# -- the bridge takes the login


def test_a_login_reaches_the_running_bridge_once_with_its_facts(
    vector: dict[str, Any], bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    bridge = bridge_factory(auth_tokens=TOKEN)
    spool = tmp_path / "spool"
    env = hook_env(vector, tmp_path, url=bridge.url, token=TOKEN, spool_dir=str(spool))

    assert run_hook(env) == 0

    assert [facts(r) for r in events(bridge)] == [expected_facts(vector)]
    assert spooled(spool) == []


def test_a_login_reaches_a_bridge_on_a_unix_socket(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    vector = PROGRAM_VECTORS[0]
    # A unix socket path must fit in 108 bytes; pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="lab-") as short:
        socket_path = Path(short) / "b.sock"
        bridge = bridge_factory(auth_tokens=TOKEN, uds=str(socket_path))
        spool = tmp_path / "spool"
        env = hook_env(
            vector, tmp_path, url=f"unix://{socket_path}", token=TOKEN, spool_dir=str(spool)
        )

        assert run_hook(env) == 0

        assert [facts(r) for r in events(bridge)] == [expected_facts(vector)]
        assert spooled(spool) == []


def test_a_user_json_over_the_body_limit_is_reduced_and_still_arrives(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """100 kB of user JSON is over the bridge's 64 KiB limit: sent whole it would be a 413."""
    vector = PROGRAM_VECTORS[0]
    user = json.loads(vector["env"]["SFTPGO_LOGIND_USER"])
    user["description"] = "d" * 100_000
    big = {**vector, "env": {**vector["env"], "SFTPGO_LOGIND_USER": json.dumps(user)}}
    bridge = bridge_factory(auth_tokens=TOKEN)
    spool = tmp_path / "spool"
    env = hook_env(big, tmp_path, url=bridge.url, token=TOKEN, spool_dir=str(spool))

    assert run_hook(env) == 0

    assert [facts(r) for r in events(bridge)] == [expected_facts(vector)]
    assert spooled(spool) == []
    assert "(413)" not in bridge.logs()  # how the bridge logs a rejection


def test_allow_listed_fields_over_the_bridges_body_limit_are_cut_to_username_and_id(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """The bridge's body limit below even the allow-listed fields: a final 413, then a resend.

    A 413 is final for SFTPGo's own HTTP mode, but the hook holds the user object and can send
    what the bridge needs most; it must arrive now, not sit in a spool no bridge reads.
    """
    vector = PROGRAM_VECTORS[0]
    user = json.loads(vector["env"]["SFTPGO_LOGIND_USER"])
    user["description"] = "d" * 2000  # allow-listed below: 2 kB over the bridge's 1024 bytes
    big = {**vector, "env": {**vector["env"], "SFTPGO_LOGIND_USER": json.dumps(user)}}
    spool = tmp_path / "spool"
    bridge = bridge_factory(
        auth_tokens=TOKEN, max_body_bytes="1024", hook_spool_dir=str(tmp_path / "not-read")
    )
    env = hook_env(
        big,
        tmp_path,
        url=bridge.url,
        token=TOKEN,
        spool_dir=str(spool),
        user_fields="description",
    )

    assert run_hook(env) == 0

    assert [facts(r) for r in events(bridge)] == [expected_facts(vector)]
    assert leftovers(spool) == []
    assert "(413)" in bridge.logs()  # the first, whole attempt was refused as too large


def test_an_attackers_huge_user_name_is_cut_for_the_resend_and_the_login_is_never_lost(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """SFTPGo takes a failed login's user name from the client: 3,000 characters are over a
    1 KiB body limit on their own. The resend cuts the name; the bridge then stores the event
    (flagging the cut) or refuses it for good, and then it is kept in rejected/: never lost."""
    vector = with_username(PROGRAM_VECTORS[0], "m" * 3000)
    spool = tmp_path / "spool"
    bridge = bridge_factory(
        auth_tokens=TOKEN, max_body_bytes="1024", hook_spool_dir=str(tmp_path / "not-read")
    )
    port = int(bridge.url.rsplit(":", 1)[1])
    with Relay(port) as relay:
        env = hook_env(vector, tmp_path, url=relay.url, token=TOKEN, spool_dir=str(spool))
        assert run_hook(env) == 0

    [first, resent] = [r.partition(b"\r\n\r\n")[2] for r in relay.requests]
    assert len(json.loads(first)["username"]) == 3000
    assert json.loads(resent) == {"username": "m" * 1024, "id": 42}
    assert spooled(spool) == []
    assert len(events(bridge)) + len(list((spool / "rejected").glob("*.json"))) == 1


# -- no secret leaves the host


def test_no_secret_of_any_vector_reaches_the_bridge(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """Every byte the hook sends, for every vector, scanned for every secret string in it."""
    bridge = bridge_factory(auth_tokens=TOKEN)
    port = int(bridge.url.rsplit(":", 1)[1])
    vectors = [as_program(v) for v in sftpgo_vectors()]
    scanned = 0
    with Relay(port) as relay:
        for vector in vectors:
            env = hook_env(
                vector,
                tmp_path,
                url=relay.url,
                token=TOKEN,
                spool_dir=str(tmp_path / "spool"),
                # Every plain top-level field an operator might list; nested ones never pass.
                user_fields="email,role,groups,description,additional_info,status,home_dir",
            )
            assert run_hook(env) == 0, vector["name"]
            sent = relay.requests[-1]
            for secret in secret_strings(vector):
                for form in (
                    secret,
                    json.dumps(secret)[1:-1],
                    json.dumps(secret, ensure_ascii=False)[1:-1],
                ):
                    assert form.encode("utf-8") not in sent, (vector["name"], secret)
                scanned += 1

    assert scanned >= 8  # the vectors do carry secrets, so the scan could fail
    assert sorted(map(facts, events(bridge)), key=str) == sorted(
        map(expected_facts, vectors), key=str
    )
    assert leftovers(tmp_path / "spool") == []


# -- only the bridge's own answer decides: anything else is spooled


@pytest.mark.parametrize("status", [200, 400, 404, 405, 500])
def test_another_service_on_the_address_never_takes_a_login(
    status: int, bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """Whatever else answers on the configured port, even "final" or 200, the login is spooled.

    The stand-in is not a bridge: it is whatever might listen there instead (a web server, a
    proxy). Before, a 404 or a 400 from it made the hook exit 0 with the login dropped.
    """
    vector = PROGRAM_VECTORS[0]
    spool = tmp_path / "spool"
    with other_service(status) as url:
        env = hook_env(vector, tmp_path, url=url, token=TOKEN, spool_dir=str(spool))
        assert run_hook(env) == 0

    [spool_file] = spooled(spool)
    document = json.loads(spool_file.read_bytes())
    bridge = bridge_factory(auth_tokens=TOKEN, hook_spool_dir=str(spool))
    [record] = wait_until_drained(bridge, spool, 1)
    assert facts(record) == expected_facts(vector)
    assert record["metadata"]["uid"] == document["event_id"]


def test_a_login_the_bridge_refuses_for_good_is_kept_in_rejected_with_a_log_line(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """A 400 the bridge marks final: not retried, not dropped either, but kept for a person."""
    vector = PROGRAM_VECTORS[0]
    broken = {**vector, "env": {**vector["env"], "SFTPGO_LOGIND_STATUS": "maybe"}}
    spool = tmp_path / "spool"
    bridge = bridge_factory(auth_tokens=TOKEN, hook_spool_dir=str(spool))
    env = hook_env(broken, tmp_path, url=bridge.url, token=TOKEN, spool_dir=str(spool))

    code, said = run_hook_said(env)

    assert code == 0
    assert spooled(spool) == []
    [kept] = sorted((spool / "rejected").glob("*.json"))
    document = json.loads(kept.read_bytes())
    assert document["query"]["status"] == "maybe"
    assert document["user"]["username"] == vector["expected"]["username"]
    assert (document["rejected"]["status"], document["rejected"]["bridge"]) == (400, __version__)
    assert "'status'" in document["rejected"]["error"]
    assert "refused this login for good (HTTP 400" in said
    assert str(kept) in said
    assert events(bridge) == []


# -- one id per login, kept through the spool


def test_the_event_id_the_hook_sends_becomes_the_events_uid(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    bridge = bridge_factory(auth_tokens=TOKEN)
    port = int(bridge.url.rsplit(":", 1)[1])

    def env_of(url: str) -> dict[str, str]:
        return hook_env(
            PROGRAM_VECTORS[0], tmp_path, url=url, token=TOKEN, spool_dir=str(tmp_path / "spool")
        )

    with Relay(port) as relay:
        assert run_hook(env_of(relay.url)) == 0
        assert run_hook(env_of(relay.url)) == 0

    sent = [header(request, EVENT_ID_HEADER) for request in relay.requests]
    assert [str(uuid.UUID(i, version=4)) for i in sent if i] == sent  # two canonical UUID4s
    assert len(set(sent)) == 2
    assert [r["metadata"]["uid"] for r in events(bridge)] == sent


def test_a_login_whose_answer_was_lost_arrives_twice_with_one_uid(
    bridge_factory: BridgeFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bridge stored it but its 200 never came back: the hook spools it, the bridge takes
    that in too. Two copies are at-least-once; one uid makes them de-duplicable."""
    spool = tmp_path / "spool"
    bridge = bridge_factory(auth_tokens=TOKEN, hook_spool_dir=str(spool))
    port = int(bridge.url.rsplit(":", 1)[1])
    vector = PROGRAM_VECTORS[0]
    with Relay(port, lose_answers=1) as relay:
        env = hook_env(vector, tmp_path, url=relay.url, token=TOKEN, spool_dir=str(spool))
        assert run_hook(env) == 0

    arrived = wait_until_drained(bridge, spool, 2)
    sent_id = header(relay.requests[0], EVENT_ID_HEADER)
    assert b" 200 " in relay.answers[0].split(b"\r\n", 1)[0]  # the bridge did store it
    assert [facts(r) for r in arrived] == [expected_facts(vector)] * 2
    assert [r["metadata"]["uid"] for r in arrived] == [sent_id, sent_id]
    print_fault_row(
        "shim: the bridge's 200 lost on the way back",
        sent=1,
        acknowledged=1,
        delivered=len({r["metadata"]["uid"] for r in arrived}),
        lost=0,
        duplicated=len(arrived) - 1,
        capsys=capsys,
    )


def test_a_spool_file_from_an_older_hook_without_an_event_id_is_still_taken_in(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    old = {
        "format": handoff.FORMAT,
        "received_ms": 1795330677813,
        "query": {
            "ip": "203.0.113.10",
            "login_method": "password",
            "protocol": "SSH",
            "status": "0",
        },
        "user": {"username": "old-file", "id": 9},
    }
    (spool / "1795330677813-1-00000000.json").write_text(json.dumps(old), encoding="utf-8")
    bridge = bridge_factory(auth_tokens=TOKEN, hook_spool_dir=str(spool))

    [record] = wait_until_drained(bridge, spool, 1)

    assert record["user"]["name"] == "old-file"
    assert uuid.UUID(record["metadata"]["uid"]).version == 4


def test_the_default_timeout_outlasts_the_bridges_spool_after() -> None:
    """A hook that gives up before a slow sink's bridge has spooled makes a second copy."""
    spool_after = Settings.model_fields["spool_after_seconds"].default
    assert float(DEFAULTS["LOGIN_AUDIT_HOOK_TIMEOUT"]) >= 2 * spool_after


# -- the bridge cannot take it: the spool does, and the bridge takes the spool in later


def test_with_the_bridge_down_the_login_is_spooled_without_secrets(
    vector: dict[str, Any], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    env = hook_env(vector, tmp_path, url=dead_url(), token=TOKEN, spool_dir=str(spool))

    assert run_hook(env) == 0

    [spool_file] = spooled(spool)
    text = spool_file.read_text(encoding="utf-8")
    document = json.loads(text)
    assert document["query"]["ip"] == vector["expected"]["ip"]
    assert document["user"].get("username", "") == vector["expected"]["username"]
    for secret in secret_strings(vector):
        assert secret not in text
        assert json.dumps(secret)[1:-1] not in text
    assert [p.name for p in spool.iterdir() if not p.name.endswith(".json")] == []


def test_spooled_logins_are_taken_in_exactly_once_when_the_bridge_starts(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    for vector in PROGRAM_VECTORS:
        env = hook_env(vector, tmp_path, url=dead_url(), token=TOKEN, spool_dir=str(spool))
        assert run_hook(env) == 0
    assert len(spooled(spool)) == len(PROGRAM_VECTORS)

    bridge = bridge_factory(auth_tokens=TOKEN, hook_spool_dir=str(spool))
    arrived = wait_until_drained(bridge, spool, len(PROGRAM_VECTORS))

    expected = map(expected_facts, PROGRAM_VECTORS)
    assert sorted(map(facts, arrived), key=str) == sorted(expected, key=str)
    assert leftovers(spool) == []


def test_fifty_logins_across_bridge_restarts_each_land_exactly_once(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """Down for ten logins, up for ten, and so on: no login is lost and none is doubled."""
    spool = tmp_path / "spool"
    bridge = bridge_factory(start=False, auth_tokens=TOKEN, hook_spool_dir=str(spool))
    names = [f"user{i:02d}" for i in range(50)]
    for index, name in enumerate(names):
        if index % 10 == 0 and index:
            if bridge.process is None:
                bridge.start()
            else:
                bridge.stop()
        vector = with_username(PROGRAM_VECTORS[index % len(PROGRAM_VECTORS)], name)
        env = hook_env(vector, tmp_path, url=bridge.url, token=TOKEN, spool_dir=str(spool))
        assert run_hook(env) == 0, name
    if bridge.process is None:
        bridge.start()

    arrived = wait_until_drained(bridge, spool, len(names))

    assert Counter(r["user"]["name"] for r in arrived) == Counter(names)
    assert leftovers(spool) == []


def test_a_bridge_that_never_answers_costs_at_most_the_timeout_and_the_login_is_spooled(
    tmp_path: Path,
) -> None:
    vector = PROGRAM_VECTORS[0]
    spool = tmp_path / "spool"
    with socket.socket() as silent:
        # The kernel completes the handshake from the backlog; nobody ever reads or answers.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        env = hook_env(
            vector,
            tmp_path,
            url=f"http://127.0.0.1:{port}",
            token=TOKEN,
            spool_dir=str(spool),
            timeout="1",
        )

        assert run_hook(env, timeout=1.0) == 0  # raises TimeoutExpired if the hook hangs

    [spool_file] = spooled(spool)
    assert json.loads(spool_file.read_bytes())["query"]["ip"] == vector["expected"]["ip"]


# -- settings that would leak are refused


@pytest.mark.parametrize(
    "url", ["http://192.0.2.10:8080", "http://[2001:db8::1]:8080", "http://bridge.example:8080"]
)
def test_plain_http_to_another_host_is_refused_and_the_login_is_spooled(
    url: str, tmp_path: Path
) -> None:
    vector = PROGRAM_VECTORS[0]
    spool = tmp_path / "spool"
    env = hook_env(vector, tmp_path, url=url, token=TOKEN, spool_dir=str(spool))

    code, said = run_hook_said(env)

    assert code == 2
    assert "not a loopback address" in said and "https://" in said and "unix://" in said
    [spool_file] = spooled(spool)
    assert json.loads(spool_file.read_bytes())["query"]["ip"] == vector["expected"]["ip"]
    assert check_settings(env)[0] == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.0.0.2",
        "http://[::1]:8080",
        "http://localhost:8080",
        "https://bridge.example:8443",
        "unix:///run/login-audit-bridge/bridge.sock",
    ],
)
def test_loopback_http_https_and_unix_urls_are_accepted(url: str, tmp_path: Path) -> None:
    env = hook_env(PROGRAM_VECTORS[0], tmp_path, url=url)
    assert check_settings(env) == (0, "")


@pytest.mark.parametrize("fields", ["email,password", "Password", "role,filesystem,filters"])
def test_a_secret_field_in_the_hooks_allow_list_is_refused(
    fields: str, bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    vector = PROGRAM_VECTORS[0]
    spool = tmp_path / "spool"
    bridge = bridge_factory(auth_tokens=TOKEN, hook_spool_dir=str(tmp_path / "not-read"))
    env = hook_env(
        vector, tmp_path, url=bridge.url, token=TOKEN, spool_dir=str(spool), user_fields=fields
    )

    code, said = run_hook_said(env)

    assert code == 2
    assert "LOGIN_AUDIT_HOOK_USER_FIELDS" in said and "secrets" in said
    assert events(bridge) == []  # nothing was sent
    [spool_file] = spooled(spool)
    text = spool_file.read_text(encoding="utf-8")
    for secret in secret_strings(vector):
        assert secret not in text


def test_https_reaches_a_bridge_with_a_private_ca_and_client_certificates(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """Off the bridge's host, https:// with the operator's CA, and mTLS when the bridge asks."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "client")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    ca.issue_cert("sftpgo.example").private_key_and_cert_chain_pem.write_to_path(
        str(paths["client"])
    )
    bridge = bridge_factory(
        start=False,
        auth_tokens=TOKEN,
        tls_certfile=str(paths["cert"]),
        tls_keyfile=str(paths["key"]),
        tls_client_ca=str(paths["ca"]),
    )
    start_listening(bridge)
    spool = tmp_path / "spool"
    url = bridge.url.replace("http://", "https://")
    vector = PROGRAM_VECTORS[0]
    env = hook_env(
        vector,
        tmp_path,
        url=url,
        token=TOKEN,
        spool_dir=str(spool),
        ca_file=str(paths["ca"]),
        client_cert=str(paths["client"]),
    )

    assert run_hook(env) == 0

    assert [facts(r) for r in events(bridge)] == [expected_facts(vector)]
    assert spooled(spool) == []


def test_a_rejected_token_is_spooled_not_lost(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """A 401 may be fixed by the operator: the bridge takes the login in from the spool."""
    vector = PROGRAM_VECTORS[0]
    spool = tmp_path / "spool"
    bridge = bridge_factory(auth_tokens=TOKEN, hook_spool_dir=str(spool))
    env = hook_env(vector, tmp_path, url=bridge.url, token="wrong-token", spool_dir=str(spool))

    assert run_hook(env) == 0

    arrived = wait_until_drained(bridge, spool, 1)
    assert [facts(r) for r in arrived] == [expected_facts(vector)]
    assert "token not accepted" in bridge.logs()


# -- settings


def test_settings_come_from_the_config_file(bridge_factory: BridgeFactory, tmp_path: Path) -> None:
    vector = PROGRAM_VECTORS[0]
    bridge = bridge_factory(auth_tokens=TOKEN)
    spool = tmp_path / "spool"
    config = tmp_path / "hook.env"
    config.write_text(
        "# written by the operator\n"
        f"LOGIN_AUDIT_HOOK_URL={bridge.url}\n"
        f'export LOGIN_AUDIT_HOOK_TOKEN="{TOKEN}"\n'
        f"LOGIN_AUDIT_HOOK_SPOOL_DIR = {spool}\n",
        encoding="utf-8",
    )
    env = hook_env(vector, tmp_path, config=str(config))

    assert run_hook(env) == 0

    assert [facts(r) for r in events(bridge)] == [expected_facts(vector)]
    assert spooled(spool) == []


def test_the_environment_overrides_the_config_file(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    vector = PROGRAM_VECTORS[0]
    bridge = bridge_factory(auth_tokens=TOKEN)
    spool = tmp_path / "spool"
    config = tmp_path / "hook.env"
    config.write_text(
        f"LOGIN_AUDIT_HOOK_URL={bridge.url}\nLOGIN_AUDIT_HOOK_TOKEN={TOKEN}\n"
        f"LOGIN_AUDIT_HOOK_SPOOL_DIR={spool}\n",
        encoding="utf-8",
    )
    env = hook_env(vector, tmp_path, config=str(config), url=dead_url())

    assert run_hook(env) == 0

    assert events(bridge) == []
    assert len(spooled(spool)) == 1  # the spool directory still came from the file


def check_settings(env: dict[str, str]) -> tuple[int, str]:
    """``login-audit-hook --check`` with these settings: exit code and stderr."""
    completed = subprocess.run(
        [str(HOOK), "--check"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return completed.returncode, completed.stderr


def start_listening(bridge: BridgeProcess) -> None:
    """Starts a bridge whose /healthz plain HTTP cannot reach (TLS): waits for its port."""
    port = int(bridge.url.rsplit(":", 1)[1])
    bridge.launch()

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, what=bridge.logs)


@pytest.mark.parametrize(
    ("flag", "expected"),
    [("--help", "usage: login-audit-hook"), ("--version", f"login-audit-hook {__version__}")],
)
def test_help_and_version_print_and_exit_0(flag: str, expected: str) -> None:
    completed = subprocess.run(
        [str(HOOK), flag], env={}, capture_output=True, text=True, timeout=30, check=False
    )
    assert (completed.returncode, completed.stdout.startswith(expected)) == (0, True)


def test_without_sftpgo_variables_the_hook_exits_2(tmp_path: Path) -> None:
    env = {"LOGIN_AUDIT_HOOK_SPOOL_DIR": str(tmp_path / "spool")}
    assert run_hook(env) == 2
    assert not (tmp_path / "spool").exists()


# -- start-up cost


def imported_modules(stderr: str) -> set[str]:
    """Top-level names of the modules an ``-X importtime`` run imported."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name.split(".")[0])
    return names


def test_importing_the_shim_module_loads_nothing_heavy() -> None:
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import bridge.shim"],
        env={},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    loaded = imported_modules(completed.stderr)
    assert "bridge" in loaded  # the parse saw the import at all
    assert sorted(loaded & set(HEAVY_MODULES)) == []


def test_handing_a_login_to_the_bridge_loads_nothing_heavy(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """The path every login takes while the bridge is up, measured on the installed script."""
    vector = PROGRAM_VECTORS[0]
    bridge = bridge_factory(auth_tokens=TOKEN)
    spool = tmp_path / "spool"
    env = hook_env(vector, tmp_path, url=bridge.url, token=TOKEN, spool_dir=str(spool))
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", str(HOOK)],
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=30,
        check=False,
    )

    assert completed.returncode == 0
    assert len(events(bridge)) == 1
    loaded = imported_modules(completed.stderr)
    assert sorted(loaded & set(HEAVY_MODULES)) == []
