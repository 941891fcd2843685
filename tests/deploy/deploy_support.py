"""Helpers of the deployment tests: paths, tool runs, rendering, and a Prometheus process."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "login-audit-bridge"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "login-audit-bridge.json"
CRD_SCHEMAS = Path(__file__).resolve().parent / "schemas"
# The Kubernetes version the manifests are rendered for and validated against; it must match
# KUBERNETES_VERSION in scripts/tools (the schemas it prepares).
KUBE_VERSION = "1.33.0"
HOW_TO_INSTALL = "run scripts/tools ensure (installs helm, kubeconform, hadolint, promtool)"


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubeconform: Path
    hadolint: Path
    promtool: Path
    prometheus: Path
    kubernetes_schemas: Path
    kubeconform_schema_location: str


def tool_paths() -> dict[str, str]:
    """What scripts/tools says it installed; the script is the one place that knows."""
    out = subprocess.run(
        [str(REPO / "scripts" / "tools"), "paths"], check=True, capture_output=True, text=True
    ).stdout
    paths = {}
    for line in out.splitlines():
        name, _, value = line.removeprefix("export LOGIN_AUDIT_").partition("=")
        paths[name.lower()] = shlex.split(value)[0]
    return paths


def run(*args: str | Path, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Runs a tool; on failure the assertion shows its output."""
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False, **kwargs
    )
    if check:
        assert done.returncode == 0, (
            f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


# -- the chart


def render_text(
    tools: Tools,
    *values_files: Path,
    sets: Mapping[str, str | int] | None = None,
    check: bool = True,
) -> str:
    args: list[str | Path] = [
        tools.helm,
        "template",
        "audit",
        CHART,
        "--namespace",
        "security",
        "--kube-version",
        KUBE_VERSION,
    ]
    for values in values_files:
        args += ["--values", values]
    for key, value in (sets or {}).items():
        args += ["--set-string" if isinstance(value, str) else "--set", f"{key}={value}"]
    done = run(*args, check=check)
    return done.stdout if done.returncode == 0 else done.stderr


def objects_of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o and o["kind"] == kind]


def hook_service(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The Service SFTPGo posts to (the other one is the admin port's)."""
    (service,) = [s for s in objects_of(objects, "Service") if not _is_admin(s)]
    return service


def admin_service(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The admin port's ClusterIP Service: health, readiness and metrics in plain HTTP."""
    (service,) = [s for s in objects_of(objects, "Service") if _is_admin(s)]
    return service


def _is_admin(service: dict[str, Any]) -> bool:
    return bool(service["metadata"].get("labels", {}).get("login-audit-bridge/port") == "admin")


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = objects_of(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The bridge's pods' owner: a StatefulSet with a spool claim per pod, else a Deployment."""
    (owner,) = objects_of(objects, "Deployment") + objects_of(objects, "StatefulSet")
    return owner


# -- the expressions of the dashboard and the alerts


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b(?:login_audit_[a-z0-9_]+|up)\b", expression))


# -- a real Prometheus on loopback


@dataclass
class PrometheusProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def query(self, expression: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as reply:
            answer: dict[str, Any] = json.loads(reply.read())
        return answer

    def wait_for(self, expression: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Polls until the query returns a non-empty vector."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result: list[dict[str, Any]] = self.query(expression)["data"]["result"]
            if result:
                return result
            time.sleep(0.5)
        raise TimeoutError(f"{expression} stayed empty for {timeout} s; log:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]


def wait_ready(prometheus: PrometheusProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prometheus.process.poll() is not None:
            raise RuntimeError(f"prometheus exited early:\n{prometheus.logs()}")
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"prometheus not ready in {timeout} s:\n{prometheus.logs()}")


# -- a live bridge's /metrics

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def post_sftpgo_login(url: str, *, ok: bool, token: str) -> int:
    """Posts one login the way SFTPGo's HTTP hook does; returns the status code."""
    query = urllib.parse.urlencode(
        {
            "ip": "192.0.2.10",
            "login_method": "password",
            "protocol": "SSH",
            "status": "1" if ok else "0",
        }
    )
    request = urllib.request.Request(
        f"{url}/v1/hooks/sftpgo?{query}",
        data=b'{"username":"alice","id":7}',
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        status: int = reply.status
        return status


def exported_names(url: str) -> set[str]:
    """Every sample name /metrics can carry, samples or not yet (histograms expanded)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= {name + s for s in HISTOGRAM_SUFFIXES} if kind == "histogram" else {name}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
