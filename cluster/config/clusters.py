"""Cluster files, the cost model's assumptions and a sweep's `placement:` section, loaded and checked
before anything runs.

A cluster file (`conf/clusters/*.yaml`) lists node groups; each GPU group names the
`accelerator_type` its nodes advertise, which must be one a GPU of `conf/hardware.yaml` carries, so
every cell pinned to a kind of GPU can be matched to nodes. `conf/cost.yaml` is optional (without
it every assumption takes its schema default and tasks cost only their overhead). Each failure is
one `ConfigError` naming the file and the key.
"""

from __future__ import annotations

import math
from pathlib import Path

from cluster.config import yamlsafe
from cluster.config.capacity import ClusterConfig, CostConfig
from cluster.config.merge import structured
from cluster.config.schema import Catalog, SweepConfig
from cluster.errors import ConfigError

GPU_STAGES = (
    "quantize",
    "evaluate",
    "tune",
)  # evaluate: a checkpoint's engine session (health, generate too)
FRACTIONS = ("prefill_mfu", "decode_mfu", "sync_bandwidth", "quantize_mfu")
POSITIVE = ("gptq_s_per_b", "download_gbps", "load_gbps", "engine_start_s", "cell_overhead_s", "cpu_cell_s")


def load_cost(conf_dir: Path) -> CostConfig:
    """conf/cost.yaml (defaults when absent), checked."""
    path = conf_dir / "cost.yaml"
    if not path.is_file():
        return CostConfig()
    cost = structured(CostConfig, yamlsafe.read(path), str(path))
    for key in FRACTIONS:
        value = getattr(cost, key)
        if not 0 < value <= 1:
            raise ConfigError(f"{path}: {key} must be in (0, 1], got {value}")
    for key in POSITIVE:
        value = getattr(cost, key)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{path}: {key} must be a positive number, got {value}")
    for name, t in cost.tasks.items():
        for key in ("docs", "doc_tokens", "choices", "choice_tokens", "gen_tokens"):
            if getattr(t, key) < 0:
                raise ConfigError(f"{path}: tasks.{name}.{key} must be >= 0, got {getattr(t, key)}")
    return cost


def accelerator_types(catalog: Catalog) -> dict[str, str]:
    """Ray accelerator type -> the catalog's GPU hardware name."""
    return {
        hw.accelerator_type: hw.name
        for hw in catalog.hardware.values()
        if hw.kind == "gpu" and hw.accelerator_type
    }


def load_cluster(path: Path | str, catalog: Catalog) -> ClusterConfig:
    """A cluster file, checked against the catalog's GPU kinds."""
    source = str(path)
    if not Path(path).is_file():
        raise ConfigError(f"{source}: cluster file not found")
    cluster = structured(ClusterConfig, yamlsafe.read(Path(path)), source)
    known = accelerator_types(catalog)
    names = [g.name for g in cluster.nodes]
    if not names:
        raise ConfigError(f"{source}: nodes must list at least one node group")
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: node group names must be unique, got {names}")
    for g in cluster.nodes:
        where = f"{source}: nodes[{g.name}]"
        if g.count < 1 or g.gpus < 0 or g.cpus < 0 or not g.memory_gib > 0:
            raise ConfigError(f"{where}: count must be >= 1, gpus and cpus >= 0, memory_gib > 0")
        if g.gpus and g.accelerator_type not in known:
            raise ConfigError(
                f"{where}: accelerator_type '{g.accelerator_type}' is not one of conf/hardware.yaml's "
                f"({', '.join(sorted(known))})"
            )
    return cluster


def check_placement(sweep: SweepConfig, catalog: Catalog, source: str) -> None:
    """`placement:` names GPU hardware of the catalog, known stages and a positive timeout."""
    p = sweep.placement
    lists = {"placement.hardware": p.hardware, **{f"placement.stages.{k}": v for k, v in p.stages.items()}}
    for stage in p.stages:
        if stage not in GPU_STAGES:
            raise ConfigError(
                f"{source}: placement.stages key '{stage}' is not one of {', '.join(GPU_STAGES)}"
            )
    for key, names in lists.items():
        for name in names:
            hw = catalog.hardware.get(name)
            if hw is None or hw.kind != "gpu" or not hw.accelerator_type:
                gpus = sorted(h.name for h in catalog.hardware.values() if h.kind == "gpu")
                raise ConfigError(
                    f"{source}: {key} names '{name}', not a GPU of conf/hardware.yaml ({', '.join(gpus)})"
                )
    if not p.pending_timeout_s > 0:
        raise ConfigError(f"{source}: placement.pending_timeout_s must be > 0, got {p.pending_timeout_s}")
    if p.cluster is not None:
        load_cluster(p.cluster, catalog)
