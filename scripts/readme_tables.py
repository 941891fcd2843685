"""Writes the settings and metrics tables into README.md from the code (--check: only compare)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from bridge.metrics import EventCounts, ListenDrops, Metrics
from bridge.settings import ENV_PREFIX, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def settings_rows() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "" if default is None or default == () else f"`{_plain(default)}`"
        if "SecretStr" in type(default).__name__:
            shown = "(secret)"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


def _plain(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def metrics_table() -> str:
    metrics = Metrics(CollectorRegistry())
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in vars(metrics).values():
        if isinstance(metric, (EventCounts, ListenDrops)):
            # Families made at each scrape (custom collectors): what they describe.
            for family in metric.describe():
                suffix = "_total" if family.type == "counter" else ""
                labels = ", ".join(f"`{label}`" for label in family._labelnames)
                rows.append(
                    f"| `{family.name}{suffix}` | {family.type} | {labels} | "
                    f"{family.documentation} |"
                )
            continue
        if not isinstance(metric, MetricWrapperBase):
            continue
        kind = metric._type  # the client keeps these private; this script only reads them
        name = metric._name + {"counter": "_total", "info": "_info"}.get(kind, "")
        labels = ", ".join(f"`{label}`" for label in metric._labelnames)
        rows.append(f"| `{name}` | {kind} | {labels} | {metric._documentation} |")
    return "\n".join(rows)


def render(text: str) -> str:
    text = re.sub(
        r"(<!-- settings-table -->\n)(?:\|.*\n)*",
        lambda m: m.group(1) + settings_rows() + "\n",
        text,
    )
    return re.sub(
        r"(<!-- metrics-table -->\n)(?:\|.*\n)*",
        lambda m: m.group(1) + metrics_table() + "\n",
        text,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if current != wanted:
            print("README.md tables are stale: run scripts/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
