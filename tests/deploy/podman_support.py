"""Helpers of the image tests: podman with this host's settings, the built image, HTTP checks."""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .deploy_support import REPO, workload

SCRIPT = REPO / "scripts" / "image"
# What scripts/image needs on a cold machine: Debian packages, a debootstrap, a build from PyPI.
COLD_BUILD_SECONDS = 900
HOW_TO_INSTALL = "run scripts/image ensure as root (installs podman, buildah, runc, debootstrap)"


@functools.cache
def containers_env() -> dict[str, str]:
    """CONTAINERS_CONF and the rest of the environment podman is run with."""
    line = subprocess.run(
        [str(SCRIPT), "env"], check=True, capture_output=True, text=True
    ).stdout.strip()
    name, _, value = line.removeprefix("export ").partition("=")
    return {**os.environ, name: value}


def podman(
    *args: str | Path, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs podman with this host's containers.conf; on failure the assertion shows its output."""
    done = subprocess.run(
        ["podman", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=containers_env(),
    )
    if check:
        assert done.returncode == 0, (
            f"podman {' '.join(map(str, args))} failed ({done.returncode}):\n"
            f"{done.stdout}\n{done.stderr}"
        )
    return done


def unique_name(prefix: str) -> str:
    """A name no other test run on this machine uses: pods, volumes and secrets are global."""
    return f"{prefix}{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Image:
    ref: str
    size_bytes: int
    build_seconds: float


def build_image() -> Image:
    """Builds the Dockerfile with scripts/image (cached: seconds when nothing changed)."""
    started = time.monotonic()
    done = subprocess.run(
        [str(SCRIPT), "build"],
        capture_output=True,
        text=True,
        timeout=COLD_BUILD_SECONDS,
        check=False,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"scripts/image build failed:\n{done.stderr[-4000:]}")
    ref = done.stdout.strip().splitlines()[-1]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout)
    return Image(ref, size, seconds)


# -- rendered pods played by `podman kube play`


class Lab:
    """podman objects made by one test, removed afterwards (pods first: volumes go last)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pods: list[str] = []
        self.names: list[tuple[str, ...]] = []

    def secret(self, secret: dict[str, Any]) -> None:
        """kube play reads a secretRef from a podman secret holding the Secret's data as JSON
        (it mishandles Secret documents)."""
        name = secret["metadata"]["name"]
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(secret.get("data", {})))
        path.chmod(0o600)
        podman("secret", "create", name, path)
        self.names.append(("secret", "rm", name))

    def play(self, name: str, documents: list[dict[str, Any]]) -> None:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(documents))
        self.pods.append(name)
        # podman 4.3 turns probes into systemd healthchecks and says on stderr that it cannot.
        podman("kube", "play", path, timeout=180)

    def cleanup(self) -> None:
        for pod in self.pods:
            podman("pod", "rm", "--force", "--time", "0", pod, check=False)
        for args in self.names:
            podman(*args, check=False)


def as_pod(
    name: str, template: dict[str, Any], volumes: dict[str, str], *, host_network: bool = True
) -> dict[str, Any]:
    """A rendered pod template as a bare Pod, its claims and the emptyDirs named in ``volumes``
    as podman volumes of this run (volume name -> podman volume). podman 4.3 cannot play a
    StatefulSet: this is the pod it would make, with its claim. On the host network (the
    default) the container ports go: the settings bind the ports instead."""
    spec = copy.deepcopy(template["spec"])
    if host_network:
        spec["hostNetwork"] = True
        for container in spec["containers"]:
            container.pop("ports", None)
    kept = [v for v in spec.get("volumes", []) if v["name"] not in volumes]
    spec["volumes"] = kept + [
        {"name": volume, "persistentVolumeClaim": {"claimName": claim}}
        for volume, claim in volumes.items()
    ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def statefulset_pod(
    lab: Lab, statefulset: dict[str, Any], ordinal: int = 0, *, host_network: bool = True
) -> dict[str, Any]:
    """The StatefulSet's pod of that ordinal, with the claims the StatefulSet would make
    (<template>-<statefulset>-<ordinal>) made as podman volumes; they outlive the pod."""
    name = f"{statefulset['metadata']['name']}-{ordinal}"
    claims = {}
    for template in statefulset["spec"].get("volumeClaimTemplates", []):
        volume = template["metadata"]["name"]
        claims[volume] = f"{volume}-{name}"
        podman("volume", "create", claims[volume])
        lab.names.append(("volume", "rm", "--force", claims[volume]))
    return as_pod(name, statefulset["spec"]["template"], claims, host_network=host_network)


# -- HTTP, as SFTPGo and the kubelet use it


@dataclass(frozen=True)
class Answer:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    *,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> Answer:
    """One request; HTTP errors are answers too. TLS is not verified (the kubelet does not)."""
    context = ssl._create_unverified_context() if url.startswith("https:") else None  # noqa: S323
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as reply:
            return Answer(reply.status, reply.read().decode())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read().decode())


def wait_for(url: str, *, timeout: float = 60, what: str = "") -> Answer:
    """Polls url until it answers 200; a process that exited says so in `what` (its logs)."""
    deadline = time.monotonic() + timeout
    last: Answer | OSError | None = None
    while time.monotonic() < deadline:
        try:
            last = request(url, timeout=2)
            if last.status == 200:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer 200 in {timeout} s (last: {last!r})\n{what}")


def post_sftpgo_login(base: str, *, user: str, token: str | None) -> Answer:
    """One successful login posted the way SFTPGo's HTTP hook does."""
    query = urllib.parse.urlencode(
        {"ip": "192.0.2.44", "login_method": "password", "protocol": "SSH", "status": "1"}
    )
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return request(
        f"{base}/v1/hooks/sftpgo?{query}",
        method="POST",
        data=json.dumps({"username": user, "id": 7}).encode(),
        headers=headers,
    )


def pod_environment(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the bridge's container gets, as the kubelet builds it: envFrom
    (ConfigMaps, Secrets decoded) in order, then env (values and key references)."""
    (container,) = workload(objects)["spec"]["template"]["spec"]["containers"]
    data: dict[tuple[str, str], dict[str, str]] = {}
    for o in objects:
        if o["kind"] == "ConfigMap":
            data["configMap", o["metadata"]["name"]] = dict(o.get("data", {}))
        elif o["kind"] == "Secret":
            decoded = {k: base64.b64decode(v).decode() for k, v in o.get("data", {}).items()}
            data["secret", o["metadata"]["name"]] = decoded | o.get("stringData", {})
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind = "configMap" if "configMapRef" in source else "secret"
        env |= data.get((kind, source[f"{kind}Ref"]["name"]), {})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        for kind in ("configMap", "secret"):
            ref = item.get("valueFrom", {}).get(f"{kind}KeyRef")
            if ref and ref["key"] in data.get((kind, ref["name"]), {}):
                env[item["name"]] = data[kind, ref["name"]][ref["key"]]
    return env


def tail_events(container: str) -> list[dict[str, Any]]:
    """The stored events, decoded by `login-audit-bridge tail` inside the container."""
    done = podman("exec", container, "login-audit-bridge", "tail")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def process_status(container: str) -> dict[str, str]:
    """/proc/1/status of the container's main process: its uid and capabilities as it runs."""
    done = podman("exec", container, "cat", "/proc/1/status")
    return dict(line.split(":\t", 1) for line in done.stdout.splitlines() if ":\t" in line)


def exit_code(container: str) -> int:
    return int(podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout)


def logs(container: str) -> str:
    done = podman("logs", container, check=False)
    return (done.stdout + done.stderr)[-6000:]
