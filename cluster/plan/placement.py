"""Placement decisions, per cell, before anything runs: which GPU kind, how many GPUs per engine and
how they are split (tensor parallel within a node, pipeline parallel across nodes), how many engines
or trials run at once, and how much host memory a process needs.

Rules (each one a function below, all pure):
- GPUs per engine come from the model's table on 80 GB GPUs, else from weight bytes (`device_count`).
  An engine that needs more GPUs than a node has spans nodes: tensor parallel over a node's GPUs,
  pipeline parallel over `ceil(need / node)` nodes (405B BF16: 16 GPUs = 8 x 2 nodes of 8).
- Compute cells (quantize, health, evaluate, generate, tune) run on the sweep's `placement`
  hardware: the first kind listed that has fast kernels for the format and that a node of the
  cluster (when one is declared) can host; load tests run on their own hardware.
- A checkpoint's engine hosts fit one node (`eval.actors`, at most a node's worth), so a session
  never waits for two nodes to be free at once unless one engine needs two.
- Quantizing loads the BF16 model on the host: ~2 bytes x parameters of host memory (Ray `memory`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cluster.config.capacity import ClusterConfig
from cluster.config.schema import Catalog, FormatConfig, HardwareConfig, ModelConfig, SweepConfig

BYTES_PER_PARAM = {"bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5625}  # int4 incl. group scales
HEADROOM = 1.1
HOST_BYTES_PER_PARAM = 2.0  # quantization loads the BF16 weights into host memory
HOST_HEADROOM = 1.05  # calibration activations, tokenizer, Python


@dataclass(frozen=True)
class Shape:
    """How one engine's GPUs are laid out: `tp` GPUs on each of `pp` nodes."""

    tp: int = 1
    pp: int = 1

    @property
    def gpus(self) -> int:
        """GPUs of one engine."""
        return self.tp * self.pp


def device_count(model: ModelConfig, fmt: FormatConfig, hw: HardwareConfig) -> int:
    """Devices one replica needs: the model's table on 80 GB GPUs, else from weight bytes."""
    if hw.kind == "cpu":
        return 1
    if hw.memory_gib >= 80 and fmt.name in model.gpus:
        return model.gpus[fmt.name]
    need = model.params_b * BYTES_PER_PARAM[fmt.requires] * HEADROOM
    return 2 ** max(0, math.ceil(math.log2(max(1.0, need / hw.memory_gib))))


def node_gpus(hw: HardwareConfig, cluster: ClusterConfig | None) -> int:
    """GPUs per node of this kind: the cluster's largest such node, else the hardware's default."""
    if cluster is not None:
        sizes = [g.gpus for g in cluster.nodes if g.gpus and g.accelerator_type == hw.accelerator_type]
        if sizes:
            return max(sizes)
    return hw.gpus_per_node


def nodes_of(hw: HardwareConfig, cluster: ClusterConfig | None) -> int:
    """How many nodes of this kind the cluster has (1 when no cluster is declared)."""
    if cluster is None:
        return 1
    return sum(g.count for g in cluster.nodes if g.gpus and g.accelerator_type == hw.accelerator_type)


def engine_shape(model: ModelConfig, fmt: FormatConfig, hw: HardwareConfig, per_node: int) -> Shape:
    """Tensor parallel within a node; pipeline parallel across nodes when one node is too small."""
    n = device_count(model, fmt, hw)
    if hw.kind == "cpu" or n <= per_node:
        return Shape(n, 1)
    return Shape(per_node, math.ceil(n / per_node))


def host_memory_gb(model: ModelConfig, fmt: FormatConfig) -> float:
    """Host memory a quantization needs: the BF16 weights on the host (none for the baseline)."""
    if fmt.recipe.algorithm == "none":
        return 0.0
    return round(HOST_BYTES_PER_PARAM * model.params_b * HOST_HEADROOM, 1)


def engines_at_once(actors: int, shape: Shape, per_node: int) -> int:
    """Engine hosts of one session: `eval.actors`, at most what one node holds (one if it spans nodes)."""
    if shape.pp > 1:
        return 1
    return max(1, min(actors, per_node // shape.tp))


def trials_at_once(max_concurrent: int, per_trial: int, per_node: int, nodes: int, floor: int = 1) -> int:
    """Tuning trials at once: at most `max_concurrent` and the slots the kind's nodes hold (>= floor)."""
    slots = (per_node // per_trial) * nodes if per_trial <= per_node else 1
    return max(floor, 1, min(max_concurrent, slots))


def _roomy(hw: HardwareConfig, cluster: ClusterConfig | None, memory_gb: float) -> bool:
    """A node of this kind has the host memory for one process (always, when no cluster is declared)."""
    if cluster is None:
        return True
    return any(
        g.accelerator_type == hw.accelerator_type and g.memory_gib * 2**30 / 1e9 >= memory_gb
        for g in cluster.nodes
        if g.gpus
    )


def compute_hardware(
    sweep: SweepConfig,
    catalog: Catalog,
    stage: str,
    fmt: FormatConfig,
    memory_gb: float = 0.0,
    cluster: ClusterConfig | None = None,
) -> HardwareConfig | None:
    """The GPU kind a compute cell runs on (None: this host's CPUs, the embedded local run).

    The first listed kind with fast kernels for the format whose nodes can hold the process's host
    memory; failing that, the first with the kernels, then the first listed (the check against the
    cluster then says why it cannot run).
    """
    names = sweep.placement.stages.get(stage) or sweep.placement.hardware
    kinds = [catalog.hardware[n] for n in names]
    if not kinds:
        return None
    fast = [hw for hw in kinds if fmt.requires in hw.capabilities]
    roomy = [hw for hw in fast if _roomy(hw, cluster, memory_gb)]
    return (roomy or fast or kinds)[0]


def shape_on(
    catalog: Catalog, model: ModelConfig, fmt: FormatConfig, res: Any, cluster_file: str | None
) -> Shape | None:
    """The shape of an engine of `fmt` on the GPU kind `res` (a cell's Resources) was placed on, with
    the node size of the sweep's cluster file (None: the cell was not placed on GPUs)."""
    kinds = [h for h in catalog.hardware.values() if res.gpus and h.accelerator_type == res.accelerator]
    if not kinds:
        return None
    cluster = None
    if cluster_file:
        from cluster.config.clusters import load_cluster

        cluster = load_cluster(cluster_file, catalog)
    return engine_shape(model, fmt, kinds[0], node_gpus(kinds[0], cluster))


def price_per_hour(hw: HardwareConfig, gpus: int) -> float:
    """$/hour of `gpus` devices: the price table's entry, else its largest entry's rate per device."""
    if gpus in hw.price_per_hour:
        return hw.price_per_hour[gpus]
    if not hw.price_per_hour or gpus == 0:
        return 0.0
    top = max(hw.price_per_hour)
    return hw.price_per_hour[top] / top * gpus
