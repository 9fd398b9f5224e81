"""One place that turns an `EngineConfig` into vLLM engine arguments and the process environment.

Every engine quantsweep starts reads it: evaluation hosts and tuning trials (an in-process engine
behind lm-eval's vLLM backend), Ray Serve replicas and bare `vllm serve`. On CPU machines an engine
is bound to one core, gets its own KV-cache budget and the host's compute dtype (`serve.host`); on
GPUs it gets `tensor_parallel_size` devices on each of `pipeline_parallel_size` nodes (an engine
larger than a node spans nodes through Ray). Nothing here imports vLLM.
"""

from __future__ import annotations

import os
from typing import Any

from serve.config import EngineConfig
from serve.host import HostProfile

# An in-process engine (evaluation hosts, trials, probes): no extra interpreter per engine, which
# saves ~40 s a start on a 2-core machine.
IN_PROCESS_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def dtype(engine: EngineConfig, host: HostProfile) -> str:
    """The compute dtype an engine runs in: the configured one, or the host's choice for `auto`."""
    return host.compute_dtype if engine.dtype == "auto" else engine.dtype


def engine_kwargs(
    engine: EngineConfig, host: HostProfile, tp: int = 1, cpu: bool = True, executor: bool = True, pp: int = 1
) -> dict[str, Any]:
    """vLLM engine arguments (`LLM`, `AsyncLLM`, `vllm serve` flags) for this config on this host.

    `executor=False` leaves the executor backend out: Ray Serve LLM picks its own (mp on CPU, ray on
    GPUs) and refuses any other on GPUs.
    """
    kwargs: dict[str, Any] = {
        "max_num_seqs": engine.max_num_seqs,
        "max_model_len": engine.max_model_len,
        "dtype": dtype(engine, host),
        "enforce_eager": engine.enforce_eager,
        "seed": engine.seed,
        "tensor_parallel_size": tp,
    }
    if pp > 1:  # only then, so the recorded arguments of single-node engines stay as they were
        kwargs["pipeline_parallel_size"] = pp
    if not cpu:
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    if executor:
        # One device: the engine runs in the calling process. TP > 1 uses vLLM's multiprocessing
        # executor inside the caller (nested Ray placement groups deadlock: REFERENCE.md). Across
        # nodes vLLM's Ray executor places its workers in the caller's own placement group
        # (cluster.eval.engine_host), so no group is nested.
        kwargs["distributed_executor_backend"] = "ray" if pp > 1 else ("uni" if tp == 1 else "mp")
    return kwargs


def lm_eval_kwargs(
    engine: EngineConfig,
    host: HostProfile,
    tp: int,
    cpu: bool,
    seed: int,
    add_bos_token: bool = True,
    batch_size: str = "auto",
    pp: int = 1,
) -> dict[str, Any]:
    """Keyword arguments for lm-eval's `VLLM` class: the engine's own plus lm-eval's knobs."""
    kwargs = engine_kwargs(engine, host, tp, cpu, pp=pp)
    kwargs.pop("max_num_seqs")  # lm-eval batches itself
    return {**kwargs, "seed": seed, "add_bos_token": add_bos_token, "batch_size": batch_size}


def cpu_env(engine: EngineConfig, core: int | None) -> dict[str, str]:
    """Environment of a vLLM engine on CPU, bound to `core` (None: the last core)."""
    cores = os.cpu_count() or 1
    return {
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": str(engine.cpu_kv_cache_gib),
        "VLLM_CPU_OMP_THREADS_BIND": str((cores - 1) if core is None else core % cores),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


def prepare_process() -> None:
    """Make this process ready to import vLLM: AMX permission, and `vllm-cpu` answering for `vllm`."""
    from serve.compat import alias_vllm_cpu_distribution, request_amx_permission

    request_amx_permission()
    if alias_vllm_cpu_distribution():
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
