"""The docs say what the code does: generated tables are fresh, every setting is documented."""

from __future__ import annotations

import subprocess
import sys

from bridge.settings import Settings

from conftest import REPO


def test_readme_settings_and_metrics_tables_match_the_code() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts/readme_tables.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_every_setting_has_a_description() -> None:
    assert [name for name, f in Settings.model_fields.items() if not f.description] == []
