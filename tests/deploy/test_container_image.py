"""The container image's Dockerfile, linted by the real hadolint, and the wheel it builds."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .deploy_support import REPO, Tools, run

pytestmark = pytest.mark.helm

DOCKERFILE = REPO / "Dockerfile"


def test_hadolint_finds_nothing(tools: Tools) -> None:
    done = run(tools.hadolint, "--no-color", DOCKERFILE, check=False)
    assert (done.returncode, done.stdout) == (0, "")


def test_hadolint_would_flag_a_root_image(tools: Tools, tmp_path: Path) -> None:
    """The lint is real: the same Dockerfile ending as root is flagged (DL3002)."""
    rooted = tmp_path / "Dockerfile"
    rooted.write_text(DOCKERFILE.read_text() + "USER root\n")
    done = run(tools.hadolint, "--no-color", rooted, check=False)
    assert done.returncode == 1
    assert "DL3002" in done.stdout


def test_image_runs_as_a_fixed_non_root_uid_with_exec_form_command() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    assert "ARG UID=10001" in lines
    assert "USER ${UID}:${UID}" in lines
    assert 'ENTRYPOINT ["login-audit-bridge"]' in lines
    assert 'CMD ["serve"]' in lines
    assert "ENV PYTHONDONTWRITEBYTECODE=1 \\" in lines
    assert "BRIDGE_DATA_DIR=/var/lib/login-audit-bridge" in lines


def docker_context(tmp_path: Path) -> Path:
    """The files .dockerignore lets into the build context, copied to tmp_path."""
    patterns = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    context = tmp_path / "context"
    for name in allowed:
        source = REPO / name
        target = context / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    assert patterns[0] == "*", "the context starts from nothing and names what it lets in"
    assert not any(fnmatch.fnmatch("pyproject.toml", p) for p in patterns[1:] if p[0] != "!")
    return context


def test_build_context_builds_a_wheel_with_both_commands_and_the_schema(tmp_path: Path) -> None:
    context = docker_context(tmp_path)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(context),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("login_audit_bridge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert "bridge/schemas/login_audit.avsc" in names
    assert "bridge/shim.py" in names
    assert "login-audit-bridge = bridge.cli:main" in scripts
    assert "login-audit-hook = bridge.shim:main" in scripts
