"""The dependency locks: every dependency pinned, with hashes, and the same pins for image and CI.

scripts/lock writes requirements/*.txt; `scripts/lock --check` re-resolves them against PyPI.
These checks need no network: they catch a pyproject.toml edited without refreshing the locks.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def pins(name: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of one lock file."""
    found: dict[str, tuple[str, int]] = {}
    text = (LOCKS / name).read_text(encoding="utf-8")
    for entry in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", entry)
        if match:
            name_, version = match.groups()
            found[canonicalize_name(name_)] = (version, entry.count("--hash=sha256:"))
    return found


@pytest.mark.parametrize("lock", ["dev.txt", "runtime.txt", "build.txt"])
def test_every_pin_carries_hashes(lock: str) -> None:
    locked = pins(lock)
    assert locked
    assert [name for name, (_, hashes) in locked.items() if hashes == 0] == []


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("runtime.txt", PYPROJECT["project"]["dependencies"]),
        (
            "dev.txt",
            PYPROJECT["project"]["dependencies"]
            + PYPROJECT["project"]["optional-dependencies"]["test"],
        ),
        ("build.txt", PYPROJECT["build-system"]["requires"]),
    ],
)
def test_lock_pins_every_dependency_within_its_range(lock: str, requirements: list[str]) -> None:
    locked = pins(lock)
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements/{lock}: run scripts/lock"
        assert requirement.specifier.contains(locked[name][0], prereleases=True), (
            f"requirements/{lock} pins {name}=={locked[name][0]} outside {requirement}: "
            "run scripts/lock"
        )


@pytest.mark.parametrize("lock", ["runtime.txt", "build.txt"])
def test_image_locks_pin_what_ci_tests(lock: str) -> None:
    """The image installs the versions the test suite ran with, not a resolution of its own."""
    dev = pins("dev.txt")
    assert {n: v for n, (v, _) in pins(lock).items()} == {
        n: dev[n][0] for n in pins(lock) if n in dev
    }


def test_image_and_ci_install_the_locks_with_hashes_required() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    bootstrap = (REPO / "scripts" / "bootstrap").read_text(encoding="utf-8")
    assert "install --require-hashes -r requirements/build.txt" in dockerfile
    assert re.search(r"install \\\n\s+--require-hashes -r requirements/runtime.txt", dockerfile)
    assert "pip install --quiet --require-hashes -r requirements/dev.txt" in bootstrap
