"""Check manifests offline against KubeRay's CRD schemas (k8s/crds/), the way the API server would.

The API server checks a custom resource against its CRD's `openAPIV3Schema` and then drops every field
that the schema does not list (or, with `kubectl apply --validate=strict`, refuses it). jsonschema
alone misses the second part: KubeRay's schemas never set `additionalProperties: false`, so a misspelt
`securityContxt` validates and would be silently pruned on the cluster. `problems()` therefore runs
both the schema's own checks (types, enums, required keys, patterns) and a walk that reports every key
the schema has no place for, with the nearest allowed name.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

CRDS = Path(__file__).resolve().parent.parent / "k8s" / "crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
VERSION = "v1"


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The `v1` openAPIV3Schema of KubeRay's CRD for `kind`."""
    # libyaml when present: the two CRDs are 40,000 lines, ~5 s with the pure-Python loader
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(encoding="utf-8"), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind, f"k8s/crds/{CRD_FILES[kind]} is not the {kind} CRD"
    for version in crd["spec"]["versions"]:
        if version["name"] == VERSION and version.get("served"):
            return version["schema"]["openAPIV3Schema"]
    raise AssertionError(f"k8s/crds/{CRD_FILES[kind]} serves no {VERSION}")


def _path(parts: Iterable[str | int]) -> str:
    """A JSON path as people write it: spec.workerGroupSpecs[0].groupName."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def schema_errors(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """What the schema's own keywords reject (types, enums, required keys, patterns), one line each."""
    errors = Draft202012Validator(schema).iter_errors(doc)
    return sorted(f"{_path(e.absolute_path)}: {e.message}" for e in errors)


def _unknown(key: str, allowed: Iterable[str], where: str) -> str:
    """One unknown-field message, with the closest allowed name when there is one."""
    names = sorted(allowed)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(names) or 'nothing'}"
    return f"{where}: unknown field '{key}' ({hint})"


def unknown_fields(value: Any, schema: dict[str, Any], parts: tuple[str | int, ...] = ()) -> list[str]:
    """Every key of `value` that `schema` does not list, walking maps, objects and lists."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [p for i, item in enumerate(value) for p in unknown_fields(item, schema["items"], (*parts, i))]
    if not isinstance(value, dict):
        return []
    props, extra = schema.get("properties", {}), schema.get("additionalProperties")
    found: list[str] = []
    for key, sub in value.items():
        if key in props:
            found += unknown_fields(sub, props[key], (*parts, key))
        elif isinstance(extra, dict):
            found += unknown_fields(sub, extra, (*parts, key))
        elif extra is not True:
            found.append(_unknown(key, props, _path((*parts, key))))
    return found


def problems(doc: dict[str, Any]) -> list[str]:
    """Everything the API server would refuse or silently drop in one RayCluster or RayJob."""
    schema = crd_schema(doc["kind"])
    # The API server checks the top-level metadata as an ObjectMeta; the CRD only says `type: object`.
    body = {k: v for k, v in doc.items() if k != "metadata"}
    return schema_errors(doc, schema) + unknown_fields(body, schema)
