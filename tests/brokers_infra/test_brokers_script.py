"""scripts/brokers leaves alone what it did not start: brokers named by the user, foreign PIDs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "brokers"


def run_script(*args: str, run_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    environ.update(LOGIN_AUDIT_RUN=str(run_dir), **env)
    return subprocess.run(
        [str(SCRIPT), *args], env=environ, capture_output=True, text=True, timeout=60, check=False
    )


def test_start_starts_nothing_for_brokers_the_user_named(tmp_path: Path) -> None:
    mine = {
        "BRIDGE_TEST_KAFKA_BOOTSTRAP": "127.0.0.1:39092",
        "BRIDGE_TEST_RABBITMQ_URL": "amqp://me:pw@127.0.0.1:35672/",
        "BRIDGE_TEST_SCHEMA_REGISTRY_URL": "http://127.0.0.1:38081/apis/ccompat/v7",
    }

    result = run_script("start", run_dir=tmp_path, LOGIN_AUDIT_REGISTRY="1", **mine)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "export BRIDGE_TEST_KAFKA_BOOTSTRAP=127.0.0.1:39092",
        "export BRIDGE_TEST_RABBITMQ_URL=amqp://me:pw@127.0.0.1:35672/",
        "export BRIDGE_TEST_SCHEMA_REGISTRY_URL=http://127.0.0.1:38081/apis/ccompat/v7",
    ]
    assert not (tmp_path / "kafka").exists()
    assert not (tmp_path / "rabbitmq").exists()


def test_env_prints_nothing_when_nothing_runs(tmp_path: Path) -> None:
    result = run_script("env", run_dir=tmp_path)
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize("pid_file", ["kafka/kafka.pid", "rabbitmq/rabbitmq.pid"])
def test_stop_does_not_kill_a_process_that_only_has_a_brokers_pid(
    tmp_path: Path, pid_file: str
) -> None:
    """A pid file left from a crash may name a process that is now someone else's."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = tmp_path / pid_file
        path.parent.mkdir(parents=True)
        path.write_text(str(bystander.pid))

        stop = run_script("stop", run_dir=tmp_path)
        status = run_script("status", run_dir=tmp_path)

        assert stop.returncode == 0, stop.stderr
        assert bystander.poll() is None
        assert not path.exists()
        assert "kafka     stopped" in status.stdout
        assert "rabbitmq  stopped" in status.stdout
    finally:
        bystander.kill()
        bystander.wait()
