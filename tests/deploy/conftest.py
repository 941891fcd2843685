"""Fixtures of the deployment tests: the real helm, kubeconform, hadolint, promtool, Prometheus."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import podman_support
from .deploy_support import (
    ALERTS,
    HOW_TO_INSTALL,
    PrometheusProcess,
    Tools,
    render_text,
    tool_paths,
    wait_ready,
)
from support import free_port, skip_or_fail, stop_process


@pytest.fixture(scope="session")
def tools() -> Tools:
    """The installed tools; missing ones fail in CI and skip elsewhere."""
    # Only the tools these tests use: scripts/tools also prints the benchmark's (vegeta), which
    # `ensure` does not install.
    wanted = {k: v for k, v in tool_paths().items() if k in Tools.__dataclass_fields__}
    fields: dict[str, Any] = {k: (v if "{{" in v else Path(v)) for k, v in wanted.items()}
    found = Tools(**fields)
    missing = [str(p) for p in vars(found).values() if isinstance(p, Path) and not p.exists()]
    if missing:
        skip_or_fail(f"missing {', '.join(missing)}: {HOW_TO_INSTALL}")
    return found


@pytest.fixture(scope="session")
def image() -> podman_support.Image:
    """The image scripts/image builds from the Dockerfile; no podman: fails in CI, else skips."""
    try:
        built = podman_support.build_image()
    except (OSError, RuntimeError) as exc:
        skip_or_fail(f"{exc}\n{podman_support.HOW_TO_INSTALL}")
    megabytes, seconds = built.size_bytes / 1e6, built.build_seconds
    print(f"\nimage {built.ref}: {megabytes:.1f} MB, built in {seconds:.1f} s")
    return built


@pytest.fixture(scope="session")
def render(tools: Tools) -> Callable[..., list[dict[str, Any]]]:
    """Renders the chart with values files and --set pairs into a list of objects."""

    def _render(*values_files: Path, sets: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return list(yaml.safe_load_all(render_text(tools, *values_files, sets=sets)))

    return _render


@pytest.fixture
def prometheus_factory(
    tools: Tools, tmp_path: Path
) -> Iterator[Callable[[str], PrometheusProcess]]:
    """Starts Debian's prometheus on 127.0.0.1 scraping one target every second; stops it by PID."""
    started: list[PrometheusProcess] = []

    def start(target: str) -> PrometheusProcess:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {
                            "job_name": "login-audit-bridge",
                            "static_configs": [{"targets": [target]}],
                        }
                    ],
                }
            )
        )
        log_path = tmp_path / "prometheus.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(tools.prometheus),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.console.templates=/nonexistent",
                    "--web.console.libraries=/nonexistent",
                ],
                stdout=log,
                stderr=log,
            )
        prometheus = PrometheusProcess(f"http://127.0.0.1:{port}", process, log_path)
        started.append(prometheus)
        wait_ready(prometheus)
        return prometheus

    yield start
    for prometheus in started:
        stop_process(prometheus.process, grace=20)
