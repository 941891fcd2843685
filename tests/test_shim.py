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
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge import __version__
from bridge.sinks.file import read_events

from conftest import BridgeProcess, free_port, secret_strings, sftpgo_vectors

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


def run_hook(env: dict[str, str], *, timeout: float = 2.0) -> int:
    """Runs the hook as SFTPGo does; ``timeout`` is LOGIN_AUDIT_HOOK_TIMEOUT's value."""
    completed = subprocess.run(
        [str(HOOK)],
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout + START_UP_MARGIN,
        check=False,
    )
    return completed.returncode


def with_username(vector: dict[str, Any], name: str) -> dict[str, Any]:
    user = json.loads(vector["env"]["SFTPGO_LOGIND_USER"])
    user["username"] = name
    env = {**vector["env"], "SFTPGO_LOGIND_USER": json.dumps(user, separators=(",", ":"))}
    return {**vector, "env": env, "expected": {**vector["expected"], "username": name}}


def facts(record: dict[str, Any]) -> tuple[int, str | None, str, str, str]:
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
        expected["username"] or None,
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


def wait_for(condition: Callable[[], bool], *, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


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


def test_a_login_the_bridge_refuses_as_too_large_still_lands(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """The bridge's body limit set below the hook's: the hook can shrink the body itself.

    A 413 is final for SFTPGo's own HTTP mode, but the hook holds the full user object and
    knows how to reduce it to the allow-list; taking the 413 as the end loses the login.
    """
    vector = PROGRAM_VECTORS[0]  # 3 kB of user JSON: over 1024, under the hook's 48 KiB
    spool = tmp_path / "spool"
    bridge = bridge_factory(auth_tokens=TOKEN, max_body_bytes="1024", hook_spool_dir=str(spool))
    env = hook_env(vector, tmp_path, url=bridge.url, token=TOKEN, spool_dir=str(spool))

    assert run_hook(env) == 0

    arrived = wait_until_drained(bridge, spool, 1)
    assert [facts(r) for r in arrived] == [expected_facts(vector)]


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
