"""deploy/sftpgo-program-mode: SFTPGo's image with the hook, and the bridge as its pod's sidecar.

The manifest is validated by kubeconform and checked for the paths hook and bridge must share;
the Dockerfile is linted, then built on a Debian stand-in for SFTPGo's image and run: the hook,
configured by the manifest's hook.env, hands a login to the bridge over the shared Unix socket,
and spools it when the bridge is down, for the bridge to take in at its next start.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .deploy_support import KUBE_VERSION, REPO, Tools, one, run
from .podman_support import (
    Image,
    exit_code,
    logs,
    podman,
    tail_events,
    unique_name,
)

EXAMPLE = REPO / "deploy" / "sftpgo-program-mode"
MANIFEST = EXAMPLE / "sftpgo.yaml"
# SFTPGo's official image is Debian bookworm with a user 1000; so is the stand-in.
STAND_IN_BASE = "localhost/login-audit-bridge-base:bookworm-minbase-1"


def manifest() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]


def hook_env() -> dict[str, str]:
    text = one(manifest(), "Secret")["stringData"]["hook.env"]
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one(manifest(), "Deployment")["spec"]["template"]["spec"]
    return spec


def sidecar() -> dict[str, Any]:
    bridge: dict[str, Any]
    (bridge,) = pod_spec()["initContainers"]
    return bridge


def sftpgo() -> dict[str, Any]:
    container: dict[str, Any]
    (container,) = pod_spec()["containers"]
    return container


def bridge_env() -> dict[str, str]:
    """The sidecar's environment, secretKeyRefs resolved from the manifest's Secret."""
    secret = one(manifest(), "Secret")["stringData"]
    env = {}
    for item in sidecar()["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = secret[ref["key"]] if ref else item["value"]
    return env


def mounted_at(container: dict[str, Any], path: str) -> str:
    """The volume holding path in container (its mount is path or a parent of it)."""
    name: str
    (name,) = [
        m["name"]
        for m in container["volumeMounts"]
        if Path(path) == Path(m["mountPath"]) or Path(m["mountPath"]) in Path(path).parents
    ]
    return name


@pytest.mark.helm
def test_manifest_passes_kubeconform_strict(tools: Tools) -> None:
    done = run(
        tools.kubeconform,
        "-strict",
        "-summary",
        "-kubernetes-version",
        KUBE_VERSION,
        "-schema-location",
        tools.kubeconform_schema_location,
        MANIFEST,
    )
    assert "Valid: 2, Invalid: 0, Errors: 0, Skipped: 0" in done.stdout, done.stdout


@pytest.mark.helm
def test_dockerfile_passes_hadolint(tools: Tools) -> None:
    done = run(tools.hadolint, "--no-color", EXAMPLE / "Dockerfile", check=False)
    assert (done.returncode, done.stdout) == (0, "")


@pytest.mark.helm
def test_bridge_is_a_native_sidecar_started_before_sftpgo() -> None:
    """An init container that keeps running: up before SFTPGo's first login, down after its last."""
    assert sidecar()["restartPolicy"] == "Always"
    assert "startupProbe" in sidecar()


@pytest.mark.helm
def test_hook_and_bridge_share_the_socket_and_the_spool_directory() -> None:
    hook, bridge = hook_env(), bridge_env()
    assert hook["LOGIN_AUDIT_HOOK_URL"] == f"unix://{bridge['BRIDGE_UDS']}"
    assert hook["LOGIN_AUDIT_HOOK_SPOOL_DIR"] == bridge["BRIDGE_HOOK_SPOOL_DIR"]
    assert hook["LOGIN_AUDIT_HOOK_TOKEN"] in bridge["BRIDGE_AUTH_TOKENS"].split(",")
    for path in (bridge["BRIDGE_UDS"], bridge["BRIDGE_HOOK_SPOOL_DIR"]):
        assert mounted_at(sftpgo(), path) == mounted_at(sidecar(), path)


@pytest.mark.helm
def test_sidecar_sets_only_settings_the_bridge_knows() -> None:
    from bridge.settings import Settings

    known = {f"BRIDGE_{name.upper()}" for name in Settings.model_fields}
    assert set(bridge_env()) - known == set()


@pytest.mark.helm
def test_sftpgo_runs_the_hook_the_dockerfile_installs() -> None:
    env = {e["name"]: e["value"] for e in sftpgo()["env"]}
    hook = env["SFTPGO_COMMON__POST_LOGIN_HOOK"]
    assert f">{hook}" in (EXAMPLE / "Dockerfile").read_text(encoding="utf-8")
    (mount,) = [m for m in sftpgo()["volumeMounts"] if m["name"] == "hook-env"]
    assert mount["mountPath"] == "/etc/login-audit-bridge"  # the hook's default settings file


# -- built and run: the stand-in SFTPGo image, the bridge image, two volumes, no network


@dataclass(frozen=True)
class Pair:
    name: str
    sftpgo_image: str
    bridge: str
    volumes: dict[str, str]
    hook_env_file: Path


def stand_in_image(image: Image) -> str:
    """The Dockerfile built on the Debian stand-in, once per bridge image (cached layers)."""
    tag = hashlib.sha256(image.ref.encode()).hexdigest()[:12]
    ref = f"localhost/login-audit-bridge-sftpgo-stand-in:{tag}"
    podman(
        "build",
        "--pull=never",
        "--layers",
        "--build-arg",
        f"SFTPGO_IMAGE={STAND_IN_BASE}",
        "--build-arg",
        f"BRIDGE_IMAGE={image.ref}",
        "--tag",
        ref,
        EXAMPLE,
        timeout=600,
    )
    return ref


def mounts(pair: Pair, container: dict[str, Any]) -> list[str]:
    """The pod's shared emptyDirs as podman volumes, the others as tmpfs owned by the user.

    A Kubernetes emptyDir is writable by any user (0777); a podman volume mounted where the
    image has a directory copies that directory's owner (the bridge image's 10001) instead.
    """
    args = []
    for mount in container["volumeMounts"]:
        if mount["name"] in pair.volumes:
            args += ["--volume", f"{pair.volumes[mount['name']]}:{mount['mountPath']}"]
        elif mount["name"] in ("bridge-data", "tmp"):
            args += ["--mount", f"type=tmpfs,destination={mount['mountPath']},chown=true"]
    return args


def start_bridge(pair: Pair, image: Image) -> None:
    """The sidecar as the manifest runs it, but on the file sink: no Kafka in this test."""
    env = {k: v for k, v in bridge_env().items() if not k.startswith("BRIDGE_KAFKA_")}
    env["BRIDGE_SINK"] = "file"
    user = pod_spec()["securityContext"]
    podman(
        "run",
        "--detach",
        "--pull=never",
        "--name",
        pair.bridge,
        "--network",
        "none",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--user",
        f"{user['runAsUser']}:{user['runAsGroup']}",
        *[arg for k, v in env.items() for arg in ("--env", f"{k}={v}")],
        *mounts(pair, sidecar()),
        image.ref,
        *sidecar()["args"],
    )


def wait_started(pair: Pair) -> None:
    """The manifest's startupProbe command, run in the sidecar until it passes (within the time
    the probe's period and threshold allow; polled faster than the kubelet would)."""
    probe = sidecar()["startupProbe"]
    deadline = time.monotonic() + probe["failureThreshold"] * probe["periodSeconds"]
    while time.monotonic() < deadline:
        if podman("exec", pair.bridge, *probe["exec"]["command"], check=False).returncode == 0:
            return
        running = podman("inspect", "--format", "{{.State.Running}}", pair.bridge).stdout
        if running.strip() != "true":
            break
        time.sleep(0.3)
    raise AssertionError(f"the sidecar never passed its startupProbe:\n{logs(pair.bridge)}")


def stored(pair: Pair, user: str, timeout: float = 30) -> dict[str, Any]:
    """The event of user, once the bridge has stored it (a spool is taken in in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        events = {e["user"]["name"]: e for e in tail_events(pair.bridge)}
        if user in events or time.monotonic() > deadline:
            assert user in events, logs(pair.bridge)
            return events[user]
        time.sleep(0.5)


def in_sftpgo_container(pair: Pair, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``args`` in SFTPGo's image as the pod runs it: its user, a read-only root, no network,
    the hook's env file and the pod's mounts."""
    security = pod_spec()["securityContext"]
    return podman(
        "run",
        "--rm",
        "--pull=never",
        "--network",
        "none",
        "--read-only",
        "--user",
        f"{security['runAsUser']}:{security['runAsGroup']}",
        "--volume",
        f"{pair.hook_env_file}:/etc/login-audit-bridge/hook.env:ro",
        *mounts(pair, sftpgo()),
        *args,
        check=False,
    )


def login(pair: Pair, user: str) -> tuple[int, list[str]]:
    """One login as SFTPGo reports it to its hook; returns the exit code and the spool's files."""
    spool = hook_env()["LOGIN_AUDIT_HOOK_SPOOL_DIR"]
    done = in_sftpgo_container(
        pair,
        "--env",
        f'SFTPGO_LOGIND_USER={{"username": "{user}", "id": 11}}',
        "--env",
        "SFTPGO_LOGIND_IP=198.51.100.3",
        "--env",
        "SFTPGO_LOGIND_METHOD=password",
        "--env",
        "SFTPGO_LOGIND_PROTOCOL=SFTP",
        "--env",
        "SFTPGO_LOGIND_STATUS=1",
        pair.sftpgo_image,
        "sh",
        "-c",
        f'{sftpgo_hook()}; code=$?; ls -1 {spool}; exit "$code"',
    )
    return done.returncode, done.stdout.split()


def hook_check(pair: Pair) -> tuple[int, str]:
    """`login-audit-hook --check` in SFTPGo's container, as the docs tell operators to run it."""
    done = in_sftpgo_container(pair, pair.sftpgo_image, sftpgo_hook(), "--check")
    return done.returncode, done.stdout + done.stderr


def sftpgo_hook() -> str:
    env: dict[str, str] = {e["name"]: e["value"] for e in sftpgo()["env"]}
    return env["SFTPGO_COMMON__POST_LOGIN_HOOK"]


@pytest.fixture
def pair(image: Image, tmp_path: Path) -> Iterator[Pair]:
    name = unique_name("lab-sidecar-")
    hook_file = tmp_path / "hook.env"
    hook_file.write_text("".join(f"{k}={v}\n" for k, v in hook_env().items()))
    hook_file.chmod(0o644)
    volumes = {v: f"{name}-{v}" for v in ("bridge-socket", "hook-spool")}
    pair = Pair(name, stand_in_image(image), f"{name}-bridge", volumes, hook_file)
    try:
        yield pair
    finally:
        podman("rm", "--force", "--time", "0", pair.bridge, check=False)
        podman("volume", "rm", "--force", *volumes.values(), check=False)


@pytest.mark.image
def test_hook_in_the_sftpgo_image_reaches_the_sidecar_and_spools_while_it_is_down(
    pair: Pair, image: Image
) -> None:
    code, said = hook_check(pair)
    assert code == 0, said
    start_bridge(pair, image)
    wait_started(pair)
    assert login(pair, "carol-socket") == (0, [])
    assert stored(pair, "carol-socket", timeout=0)["status"] == "Success"

    podman("stop", "--time", "30", pair.bridge)
    assert exit_code(pair.bridge) == 0
    code, spooled = login(pair, "dave-spooled")
    assert code == 0
    assert len(spooled) == 1 and spooled[0].endswith(".json")

    podman("start", pair.bridge)
    wait_started(pair)
    assert stored(pair, "dave-spooled")["src_endpoint"] == {"ip": "198.51.100.3"}
    assert login(pair, "erin-after") == (0, [])  # the spool was emptied when taken in
