"""Turns a CustomResourceDefinition's OpenAPI schema into the strict JSON schema kubeconform reads.

Usage: python crd_to_jsonschema.py CRD.yaml OUTDIR  (writes OUTDIR/<group>/<kind>_<version>.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def strict(node: Any) -> Any:
    """Closes every object that lists its properties, as kubeconform -strict expects."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    if out.get("format") == "int-or-string":
        # JSON schema has no int-or-string type: say it with oneOf, as the API server means it.
        out.pop("format")
        out.pop("type", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    preserves = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserves:
        out["additionalProperties"] = False
    return out


def convert(crd_path: Path, out_dir: Path) -> list[Path]:
    crd = yaml.safe_load(crd_path.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
    written = []
    for version in crd["spec"]["versions"]:
        schema = strict(version["schema"]["openAPIV3Schema"])
        target = out_dir / group / f"{kind}_{version['name']}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        written.append(target)
    return written


if __name__ == "__main__":
    for path in convert(Path(sys.argv[1]), Path(sys.argv[2])):
        print(path)
