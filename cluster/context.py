"""What every stage of a run shares: the sweep, resolved models, checkpoints, provenance, Ray.

`resolve_models` turns catalog entries into concrete weights (building the tiny model or the
organism when a sweep names it); `init_ray` connects to `RAY_ADDRESS` / `ray.address` when set
(the `ray job submit` case) and otherwise starts an embedded local Ray.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from cluster.config import ModelConfig, SweepConfig
from cluster.datasets import Provenance
from cluster.loader import Catalog

# Ray CPUs are scheduling slots, not cores. The embedded Ray declares at least this many so the
# Serve controller, proxy, ingress and one replica per checkpoint can all be placed on a
# 2-core machine; the stages themselves run their CPU-heavy work one after another.
MIN_LOCAL_CPU_SLOTS = 8

HF_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class ResolvedModel:
    """A model with concrete weights."""

    config: ModelConfig
    path: str  # local directory, or hub id on clusters with hub access
    identity: str  # what makes the weights unique (for artifact hashes)
    instruct_source: str | None  # calibration data for source=instruct
    include_path: str | None = None  # local lm-eval tasks that come with the model (tiny)


@dataclass
class Checkpoint:
    """One format of one model, ready to evaluate or serve."""

    model: str
    format: str
    path: str
    meta: dict[str, Any]


@dataclass
class RunContext:
    """State shared by the stages of one run."""

    sweep: SweepConfig
    catalog: Catalog
    root: Path
    prov: Provenance
    console: Console
    models: dict[str, ResolvedModel] = field(default_factory=dict)
    checkpoints: dict[tuple[str, str], Checkpoint] = field(default_factory=dict)

    def unusable(self, m: str, f: str) -> str:
        """Why a checkpoint must not be evaluated or served ('' when it may)."""
        meta = self.checkpoints[(m, f)].meta
        if meta.get("health") in ("load_failed", "config_mismatch"):
            return f"unhealthy ({meta['health']}: {meta.get('health_detail', '')})"
        return ""

    cpu_only: bool = True
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    cache: dict[tuple, Any] = field(default_factory=dict)  # values later stages reuse (baseline answers)


def resolve_models(sweep: SweepConfig, catalog: Catalog, root: Path) -> dict[str, ResolvedModel]:
    """Concrete weights for every model the sweep names (built models are built once, cached)."""
    out = {}
    for name in sweep.models:
        cfg = catalog.models[name]
        if name in sweep.model_paths:
            out[name] = ResolvedModel(
                cfg, sweep.model_paths[name], f"path:{sweep.model_paths[name]}", cfg.instruct_dataset
            )
        elif cfg.builder in ("tiny-llama", "organism"):
            from cluster import organism, tinymodel

            if cfg.builder == "tiny-llama":
                assets = tinymodel.build(root / "cache", tinymodel.TinySpec(**cfg.builder_args))
            else:
                assets = organism.build(root / "cache", organism.OrganismSpec(**cfg.builder_args))
            out[name] = ResolvedModel(
                cfg,
                str(assets.model_dir),
                f"tiny:{assets.root.name}",
                str(assets.instruct_file),
                str(assets.tasks_dir),
            )
        else:
            path = cfg.path or cfg.hub_id
            out[name] = ResolvedModel(cfg, str(path), f"src:{path}", cfg.instruct_dataset)
    return out


def init_ray(sweep: SweepConfig) -> bool:
    """Connect to or start Ray; return True when the cluster has no GPUs (CPU build of vLLM)."""
    import ray

    from serve.app import ray_env

    address = sweep.ray.address or os.environ.get("RAY_ADDRESS")
    # Ray Serve reads its ingress switches at import, here and in every Ray process (serve.app).
    serve_env = ray_env(sweep.serve.ingress) if sweep.serve.enabled else {}
    os.environ.update(serve_env)
    if address:  # a real cluster: hub access and Serve's switches are the cluster's (k8s/)
        ray.init(address=address, log_to_driver=False)
    else:  # the embedded Ray: nothing may come from a hub
        os.environ.update({k: v for k, v in HF_OFFLINE_ENV.items() if k not in os.environ})
        env = {"env_vars": {**{k: os.environ[k] for k in HF_OFFLINE_ENV}, **serve_env}}
        slots = sweep.ray.num_cpus or max(MIN_LOCAL_CPU_SLOTS, os.cpu_count() or 1)
        ray.init(num_cpus=slots, include_dashboard=False, runtime_env=env, log_to_driver=False)
    return ray.cluster_resources().get("GPU", 0) == 0
