"""The serving side's config types: the vLLM engine, Ray Serve's deployment, and the load tests.

Plain dataclasses that omegaconf merges YAML into (`cluster.config.schema` embeds `ServeConfig` as a
sweep's `serve:` section), so `serve/` needs nothing from `cluster/` and every user of an engine
(evaluation actors, tuning trials, Serve replicas, bare `vllm serve`) reads the same `EngineConfig`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

LOOPBACK = ("127.0.0.1", "localhost", "::1")  # hosts that need no API key
SERVE_INGRESS = ("haproxy", "proxy")
# synchronous always runs first; this picks the asynchronous measurement ("synchronous": none)
LOAD_PROFILES = ("synchronous", "poisson", "constant", "concurrent", "sweep")
# which server a load test measured: quantsweep's Ray Serve app, or bare `vllm serve` (the baseline)
SERVERS = (RAY_SERVE, VLLM_SERVE) = ("ray-serve", "vllm-serve")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class EngineConfig:
    """vLLM engine arguments, pinned and recorded with every result (Ray issue 55159)."""

    max_num_seqs: int = 16
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: int = 1
    enforce_eager: bool = True
    dtype: str = "auto"  # auto: bfloat16 on GPUs and bf16-capable CPUs, float32 elsewhere (serve.host)
    seed: int = 0


@dataclass
class AutoscalingConfig:
    """Ray Serve autoscaling of each model's replicas (passed as the deployment's `autoscaling_config`)."""

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 2.0  # per replica; Ray Serve adds replicas above it
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0


@dataclass
class ServeConfig:
    """Ray Serve hosting plus the synchronous and asynchronous load tests."""

    enabled: bool = True
    hardware: list[str] = field(default_factory=lambda: ["cpu-local"])
    use_cases: list[str] = field(default_factory=list)
    formats: list[str] | None = None  # the sweep formats to load-test; None: all of them
    token_scale: float = 1.0  # multiplies the use-case token counts (CPU demo scales them down)
    sync_requests: int = 8
    # synchronous: the one-at-a-time run alone; poisson / constant: one offered rate (async_rate);
    # concurrent: async_concurrency in flight; sweep: the synchronous rate -> throughput peak, rates
    # spaced between (serve.sweep)
    profile: str = "poisson"
    sweep_points: int = 4
    error_budget: float = 0.05  # a sweep stops past this error rate
    async_rate: float = 2.0  # requests/s offered (poisson, constant)
    async_concurrency: int = 8  # requests in flight (concurrent)
    async_duration_s: float = 20.0
    async_max_requests: int = 64
    # Client processes of the open- and closed-loop runs, each with its share of the requests (or of
    # the concurrency) from one shared start: for rates one core of the load test's host cannot drive
    client_processes: int = 1
    warmup_requests: int = 1
    request_timeout_s: float = 120.0
    replicas: int = 1  # fixed replica count; must stay 1 when autoscaling is set
    autoscaling: AutoscalingConfig | None = None  # None: `replicas` fixed replicas
    cpus_per_replica: float = 1
    # CPU, one device: vLLM's engine-core process (apart from the replica's) runs the model itself
    # (one process and one vLLM import fewer: replicas start faster, steps are quicker, a new request
    # waits ~1.6 ms longer to start: bench/serve_overhead.py) or gives it a worker process of its
    # own, as `vllm serve` does on CPU
    engine_in_process: bool = True
    # haproxy: Ray 2.60's fast path (HAProxy -> LLM server replica, one app per checkpoint);
    # proxy: Serve's proxy -> OpenAI ingress -> LLM server, all checkpoints in one app (serve.app)
    ingress: str = "haproxy"
    host: str = "127.0.0.1"
    port: int = 8000
    # The environment variable that holds the API key (required when host is not loopback). The
    # driver and every replica read it from their own node's environment (a Kubernetes secret in
    # k8s/), so the key itself never enters a config, command line, Ray runtime env or dataset.
    api_key_env: str | None = None
    keep: bool = False  # leave the Serve deployments running when their load tests are done
    # Bare `vllm serve` cells beside every load-test cell: the same checkpoint, engine arguments and
    # load without Ray Serve, written to the same datasets (`server` = vllm-serve), so the report
    # shows what Serve costs over the engine's own server.
    bare_baseline: bool = False
    engine: EngineConfig = field(default_factory=EngineConfig)


class MissingSecret(RuntimeError):
    """`serve.api_key_env` names an environment variable this process does not have."""


def api_key(cfg: ServeConfig) -> str | None:
    """The API key, read from the environment variable `serve.api_key_env` names (None: no key)."""
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise MissingSecret(
            f"serve.api_key_env: the environment variable {cfg.api_key_env} is not set here "
            "(set it on every node of the Ray cluster: k8s/ takes it from the secret quantsweep-serve)"
        )
    return key
