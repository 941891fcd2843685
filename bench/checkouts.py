"""How the benchmarks name the checkouts they measure against each other."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def describe(source: Path | None) -> str:
    """A checkout's path and ``git describe`` (this checkout's when ``source`` is None)."""
    where = source or REPO
    rev = subprocess.run(
        ["git", "-C", str(where), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{where} ({rev or 'not a git checkout'})"


def resolve_checkouts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--source`` and ``--baseline`` as absolute paths; an error for one without the package."""
    for option in ("source", "baseline"):
        value = getattr(args, option)
        if value is not None:
            if not (value / "bridge" / "__init__.py").is_file():
                parser.error(f"--{option} {value}: no bridge package there")
            setattr(args, option, value.resolve())
