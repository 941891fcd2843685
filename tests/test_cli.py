"""The command line: help that helps, versions, named exit codes, settings and tail."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge import __version__
from bridge.cli import Exit

from conftest import BIN, BridgeProcess, post
from ocsf import assert_ocsf_json
from support import free_port


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "login-audit-bridge"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_version_of_both_commands() -> None:
    assert _run("--version").stdout.strip() == f"login-audit-bridge {__version__}"
    hook = subprocess.run(
        [str(BIN / "login-audit-hook"), "--version"], capture_output=True, text=True, check=True
    )
    assert hook.stdout.strip() == f"login-audit-hook {__version__}"


def test_help_lists_commands_and_exit_codes() -> None:
    text = _run("--help").stdout
    for word in ("serve", "schema", "tail", "settings", "3 config"):
        assert word in text
    assert "BRIDGE_PORT" in _run("serve", "--help").stdout


def test_python_dash_m_bridge_is_the_same_command() -> None:
    run = subprocess.run(
        [str(BIN / "python"), "-m", "bridge", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip() == f"login-audit-bridge {__version__}"


def test_settings_lists_every_variable_with_its_meaning() -> None:
    text = _run("settings").stdout
    assert "BRIDGE_KAFKA_BOOTSTRAP_SERVERS" in text
    assert "Accepted bearer tokens" in text


def test_settings_current_masks_secrets() -> None:
    env = {"BRIDGE_AUTH_TOKENS": "cli-SECRET", "PATH": "/usr/bin:/bin"}
    text = _run("settings", "--current", env=env).stdout
    assert "BRIDGE_AUTH_TOKENS=**********" in text
    assert "cli-SECRET" not in text


def test_bad_setting_exits_with_the_config_code_and_names_it() -> None:
    run = _run("serve", env={"BRIDGE_PORT": "-1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == Exit.CONFIG
    assert "BRIDGE_PORT" in run.stderr


def test_port_in_use_exits_with_failure_and_says_why(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    running = bridge_factory()
    port = running.url.rsplit(":", 1)[1]
    env = {"BRIDGE_PORT": port, "BRIDGE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = _run("serve", env=env)
    assert run.returncode == Exit.FAILURE
    assert "cannot listen" in run.stderr


def test_tail_from_an_unreachable_kafka_exits_with_the_sink_code_and_says_why() -> None:
    env = {
        "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "BRIDGE_PUBLISH_TIMEOUT_SECONDS": "1",
        "PATH": "/usr/bin:/bin",
    }
    run = _run("tail", "--from", "kafka", env=env)
    assert run.returncode == Exit.SINK_UNAVAILABLE
    assert "login-audit-bridge: tail --from kafka: kafka:" in run.stderr
    assert "Traceback" not in run.stderr


def _sigint_as_at_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_a_tail_waiting_for_an_unreachable_kafka_before_its_timeout() -> None:
    """The wait for the cluster's answer runs in a thread that Ctrl-C cannot end: one request
    for the whole publish timeout held the command that long after Ctrl-C."""
    env = {
        "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "BRIDGE_PUBLISH_TIMEOUT_SECONDS": "60",
        "PATH": "/usr/bin:/bin",
        # SIGABRT then prints every thread's stack: where a tail that outlived Ctrl-C waits.
        "PYTHONFAULTHANDLER": "1",
    }
    with subprocess.Popen(
        [str(BIN / "login-audit-bridge"), "tail", "--from", "kafka"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a shell starts a background job with SIGINT ignored, and
        # Python keeps a SIGINT it inherits ignored, so a suite run with `&` failed here.
        preexec_fn=_sigint_as_at_a_terminal,
    ) as tail:
        time.sleep(1.0)  # well into the wait for the broker
        assert tail.poll() is None
        tail.send_signal(signal.SIGINT)
        try:
            _, stderr = tail.communicate(timeout=20)  # the publish timeout is 60 s
        except subprocess.TimeoutExpired:
            tail.send_signal(signal.SIGABRT)
            try:
                _, stderr = tail.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                tail.kill()
                _, stderr = tail.communicate()
            pytest.fail(f"tail still ran 20 s after Ctrl-C; its threads:\n{stderr}")
    assert tail.returncode == Exit.OK  # Ctrl-C is how a tail ends
    assert "Traceback" not in stderr


def test_tail_prints_stored_events_as_json_lines(bridge: BridgeProcess) -> None:
    for ip in ("192.0.2.1", "192.0.2.2"):
        url = f"{bridge.url}/v1/hooks/sftpgo?ip={ip}&login_method=password&protocol=SSH&status=1"
        assert post(url, b'{"username":"carol"}')[0] == 200
    run = _run("tail", "--data-dir", str(bridge.data_dir))
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["src_endpoint"]["ip"] for line in lines] == ["192.0.2.1", "192.0.2.2"]
    assert isinstance(lines[0]["time"], int)  # OCSF timestamp_t: epoch milliseconds
    for line in lines:
        assert_ocsf_json(line)
    limited = _run("tail", "--file-dir", str(bridge.events_dir), "-n", "1")
    assert len(limited.stdout.splitlines()) == 1


def test_tail_follow_prints_events_that_arrive_later(bridge: BridgeProcess) -> None:
    def store(ip: str) -> None:
        url = f"{bridge.url}/v1/hooks/sftpgo?ip={ip}&login_method=password&protocol=SSH&status=1"
        assert post(url, b'{"username":"dan"}')[0] == 200

    store("192.0.2.10")
    follower = subprocess.Popen(
        [str(BIN / "login-audit-bridge"), "tail", "-f", "--data-dir", str(bridge.data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        store("192.0.2.11")
        second = json.loads(follower.stdout.readline())
    finally:
        follower.kill()
        follower.wait(10)
        if follower.stdout is not None:
            follower.stdout.close()
    assert [first["src_endpoint"]["ip"], second["src_endpoint"]["ip"]] == [
        "192.0.2.10",
        "192.0.2.11",
    ]
