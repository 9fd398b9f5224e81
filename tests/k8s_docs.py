"""What k8s/README.md tells people to apply, loaded for the tests: files, documents, Ray pods.

The README's `kubectl apply -k DIR` (and `-f FILE`) commands are the source of truth: a manifest the
tests check is one a reader would actually apply, followed through each kustomization's resources and
components. The helpers below then pick out the RayCluster, the RayJob and their pod templates.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
README = K8S / "README.md"
SANDBOX = "code_sandbox"  # the Ray resource of the worker group that runs model-written code


@functools.cache
def _parsed(path: Path) -> tuple[dict[str, Any], ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: many tests, one parse
    with open(path, encoding="utf-8") as f:
        return tuple(doc for doc in yaml.load_all(f, Loader=loader) if doc is not None)


def load(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of one file (a fresh copy: callers may change it)."""
    return copy.deepcopy(list(_parsed(path.resolve())))


def kustomization(folder: Path) -> dict[str, Any]:
    """The kustomization.yaml of a folder."""
    return load(folder / "kustomization.yaml")[0]


def kustomize_files(folder: Path) -> list[Path]:
    """The manifest files a kustomization (and the components it includes) brings in."""
    spec = kustomization(folder)
    files: list[Path] = []
    for entry in [*spec.get("resources", []), *spec.get("components", [])]:
        target = (folder / entry).resolve()
        files += kustomize_files(target) if target.is_dir() else [target]
    return files


def applied_files() -> list[Path]:
    """Every file that the README's `kubectl apply -k DIR` / `-f FILE` commands apply."""
    files: list[Path] = []
    for command in re.findall(r"kubectl apply ([^\n`]+)", README.read_text(encoding="utf-8")):
        args = shlex.split(command)
        for flag, value in zip(args, args[1:], strict=False):
            if flag == "-k":
                files += kustomize_files(ROOT / value)
            elif flag == "-f":
                files.append(ROOT / value)
    return sorted(set(files))


def applied_docs() -> list[tuple[str, dict[str, Any]]]:
    """(repo-relative file, document) for every document the README applies."""
    return [(str(path.relative_to(ROOT)), doc) for path in applied_files() for doc in load(path)]


def one(kind: str) -> dict[str, Any]:
    """The single applied document of `kind`."""
    docs = [doc for _, doc in applied_docs() if doc["kind"] == kind]
    assert len(docs) == 1, f"k8s/README.md applies {len(docs)} {kind}s, expected one"
    return docs[0]


def cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """The RayCluster's spec and the RayJob's rayClusterSpec, by kind."""
    return [("RayCluster", one("RayCluster")["spec"]), ("RayJob", one("RayJob")["spec"]["rayClusterSpec"])]


def groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group name, group spec) for the head and every worker group."""
    return [("head", spec["headGroupSpec"]), *[(g["groupName"], g) for g in spec["workerGroupSpecs"]]]


def pods(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group name, pod spec) for the head and every worker group."""
    return [(name, group["template"]["spec"]) for name, group in groups(spec)]


def is_sandbox(group: dict[str, Any]) -> bool:
    """Whether a worker group is the one for model-written code."""
    return SANDBOX in group.get("resources", {})


def env(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env entries by name."""
    return {e["name"]: e for e in container.get("env", [])}
