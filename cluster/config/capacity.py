"""Schemas of what the plan's cost model assumes (`conf/cost.yaml`) and of cluster files
(`conf/clusters/*.yaml`: the nodes a sweep is placed on).

Both are assumptions about the world, never inputs of a cell: nothing here enters a content key,
so changing a throughput or a node count re-costs and re-places a plan without recomputing
anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class TaskCost:
    """The size of one lm-eval task, for the cost model (rough public figures, not measured here)."""

    docs: int = 0  # documents in the split the study scores
    doc_tokens: int = 0  # one example (question and answer); a prompt holds (num_fewshot + 1) of them
    choices: int = 0  # loglikelihood requests per document (0: a generation task)
    choice_tokens: int = 16  # tokens of one choice's continuation
    gen_tokens: int = 0  # tokens generated per document (generation tasks)


@dataclass
class CostConfig:
    """Assumed efficiencies and fixed costs of the cost model (cluster/plan/cost.py)."""

    prefill_mfu: float = 0.45  # fraction of peak FLOP/s batched prompt processing reaches
    decode_mfu: float = 0.2  # fraction of peak FLOP/s batched generation reaches
    sync_bandwidth: float = 0.85  # fraction of HBM bandwidth one request at a time reaches
    quantize_mfu: float = 0.2  # calibration forward passes, one layer onloaded at a time
    gptq_s_per_b: float = 10.0  # GPTQ's Hessian solves, seconds per billion parameters
    download_gbps: float = 1.0  # hub -> the shared volume, GB/s
    load_gbps: float = 2.0  # the shared volume -> one engine, GB/s
    engine_start_s: float = 120.0  # vLLM start besides reading weights (compile, CUDA graphs)
    cell_overhead_s: float = 60.0  # per GPU cell: process start, task building, commit
    cpu_cell_s: float = 120.0  # a CPU cell (recovery, similarity scoring)
    similarity_prompt_tokens: int = 512  # an Arena-style prompt of the similarity stage
    tasks: dict[str, TaskCost] = field(default_factory=dict)


@dataclass
class NodeGroupConfig:
    """`count` identical Ray nodes."""

    name: str = MISSING
    count: int = 1
    gpus: int = 0
    accelerator_type: str | None = None  # the `accelerator_type:<X>` resource the nodes advertise
    cpus: int = 8
    memory_gib: float = 64.0  # Ray's schedulable `memory` per node (KubeRay: the pod's memory limit)


@dataclass
class ClusterConfig:
    """A cluster as node groups: what `plan --cluster` and the scheduler check placement against."""

    name: str = MISSING
    description: str = ""
    nodes: list[NodeGroupConfig] = field(default_factory=list)
