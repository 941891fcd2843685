"""The image built from the Dockerfile, run as the chart runs it: read-only, uid 10001, no caps.

podman runs it with the chart's environment (the ConfigMap and the Secret of the file-sink
scenario), a tmpfs where the chart mounts its data volume and /tmp, and its port published on
127.0.0.1 only.
The tests run in file order against one container; the last one stops it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .deploy_support import CHART, REPO, workload
from .podman_support import (
    Image,
    exit_code,
    logs,
    pod_environment,
    podman,
    post_sftpgo_login,
    process_status,
    request,
    tail_events,
    unique_name,
    wait_for,
)
from support import free_port

pytestmark = pytest.mark.image

SCENARIO = CHART / "ci" / "file-sink-values.yaml"
UID = 10001
# The image must stay lean: the debootstrapped bookworm base is about 127 MB of it.
MAX_IMAGE_BYTES = 200_000_000


def normalized(pin: str) -> str:
    """name==version with the name as PEP 503 spells it."""
    name, _, version = pin.partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


@dataclass(frozen=True)
class Container:
    name: str
    url: str
    token: str
    grace_seconds: int


@pytest.fixture(scope="module")
def container(
    image: Image,
    render: Callable[..., list[dict[str, Any]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Container]:
    objects = render(SCENARIO)
    env = pod_environment(objects)
    pod = workload(objects)["spec"]["template"]["spec"]
    # The token goes through a file, not the command line other users can read.
    env_file = tmp_path_factory.mktemp("env") / "bridge.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    env_file.chmod(0o600)
    name, port = unique_name("lab-image-"), free_port()
    data_dir = env["BRIDGE_DATA_DIR"]
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--user",
        f"{UID}:{UID}",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--env-file",
        env_file,
        # The chart's volumes: the data directory (owned by the bridge's user) and /tmp.
        "--mount",
        f"type=tmpfs,destination={data_dir},tmpfs-size=256m,tmpfs-mode=0770,chown=true",
        "--mount",
        "type=tmpfs,destination=/tmp,tmpfs-size=64m",
        "--publish",
        f"127.0.0.1:{port}:{env['BRIDGE_PORT']}",
        image.ref,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/readyz", what=logs(name))
        token = env["BRIDGE_AUTH_TOKENS"].split(",")[0]
        yield Container(name, url, token, pod["terminationGracePeriodSeconds"])
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_image_builds_from_the_dockerfile_and_stays_under_200_mb(image: Image) -> None:
    print(f"{image.ref}: {image.size_bytes / 1e6:.1f} MB")
    assert image.size_bytes < MAX_IMAGE_BYTES


def test_image_installs_only_the_locked_dependencies(image: Image) -> None:
    """The virtualenv holds exactly requirements/runtime.txt's pins (and no pip to change them)."""
    done = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python3",
        image.ref,
        "-c",
        "import importlib.metadata as m;"
        "print('\\n'.join(f'{d.name}=={d.version}' for d in m.distributions()))",
    )
    installed = {normalized(line) for line in done.stdout.split()}
    lines = (REPO / "requirements" / "runtime.txt").read_text().splitlines()
    pinned = {normalized(line.split(" ")[0]) for line in lines if line[:1].isalnum()}
    assert installed - pinned == {"login-audit-bridge==0.1.0"}
    assert pinned - installed == set()


def test_container_runs_as_uid_10001_without_capabilities_on_a_read_only_root(
    container: Container,
) -> None:
    status = process_status(container.name)
    assert status["Uid"].split() == [str(UID)] * 4
    assert status["CapEff"] == status["CapBnd"] == status["CapPrm"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    touched = podman("exec", container.name, "touch", "/opt/login-audit-bridge/x", check=False)
    assert touched.returncode == 1
    assert "Read-only file system" in touched.stderr


def test_healthz_answers_ok(container: Container) -> None:
    answer = request(f"{container.url}/healthz")
    assert (answer.status, answer.json()) == (200, {"status": "ok"})


def test_readyz_reports_the_file_sink_ready(container: Container) -> None:
    answer = request(f"{container.url}/readyz")
    assert answer.status == 200
    assert answer.json()["status"] == "ready"
    assert answer.json()["sink"] == "file"


def test_authenticated_event_is_stored_and_read_back_with_tail_in_the_container(
    container: Container,
) -> None:
    answer = post_sftpgo_login(container.url, user="alice-image", token=container.token)
    assert answer.status == 200, answer
    event_id = answer.json()["event_id"]
    (event,) = [e for e in tail_events(container.name) if e["metadata"]["uid"] == event_id]
    assert event["user"]["name"] == "alice-image"
    assert event["status"] == "Success"
    assert event["src_endpoint"] == {"ip": "192.0.2.44"}


def test_unauthenticated_event_is_refused_and_not_stored(container: Container) -> None:
    answer = post_sftpgo_login(container.url, user="mallory-image", token=None)
    assert answer.status == 401
    assert answer.json()["error"] == "unauthorized"
    assert "mallory-image" not in {e["user"]["name"] for e in tail_events(container.name)}


def test_sigterm_stops_the_container_cleanly_within_the_grace_period(
    container: Container,
) -> None:
    """podman sends SIGTERM, then SIGKILL after the chart's grace period: exit 0 means no kill."""
    podman("stop", "--time", str(container.grace_seconds), container.name, timeout=120)
    assert exit_code(container.name) == 0, logs(container.name)
    assert logs(container.name).rstrip().endswith('"message": "login-audit-bridge stopped"}')
