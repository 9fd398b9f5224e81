"""Host vLLM replicas on Ray Serve behind an OpenAI-compatible API (`ray.serve.llm`).

Two ingress layouts (`serve.ingress`):
  haproxy (default): Ray 2.60's fast path (RAY_SERVE_ENABLE_HA_PROXY, RAY_SERVE_THROUGHPUT_OPTIMIZED).
      HAProxy listens on the port and forwards straight to the LLM server replicas (leastconn),
      each serving vLLM's own OpenAI app; no Python process sits between HAProxy and vLLM. One
      application per checkpoint, each under `/<model id>`. vLLM enforces the API key (VLLM_API_KEY).
  proxy: Ray Serve's HTTP proxy -> OpenAI ingress replica -> LLM server replica, one application
      for all checkpoints side by side (the request's `model` field routes). Two extra hops per
      streamed chunk, and it cannot check an API key, so it only binds loopback.
bench/serve_overhead.py measures both against bare `vllm serve`. Engine arguments are pinned from
config and returned so they can be recorded with every result (Ray Serve LLM ran different engine
defaults: Ray issue 55159). On CPU machines each engine gets its own core and KV-cache budget; on
GPU clusters each replica gets `tensor_parallel_size` GPUs.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from cluster.config import LOOPBACK, SERVE_INGRESS, AutoscalingConfig, EngineConfig
from cluster.errors import StageError

# Read by Ray Serve when it is imported, in every process: the driver and the whole Ray cluster
# must have them before Serve starts (cluster.context.init_ray sets them for the embedded Ray;
# a real cluster gets them from k8s/).
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
}


def ray_env(ingress: str) -> dict[str, str]:
    """Environment variables the Ray cluster needs for this ingress layout."""
    return dict(HAPROXY_ENV) if ingress == "haproxy" else {}


@dataclass
class ServedModel:
    """One checkpoint to serve: its public model id, its path and its GPU count."""

    model_id: str
    path: str
    tensor_parallel_size: int = 1


@dataclass
class ServeSpec:
    """Everything that shapes the application; recorded with each perf row."""

    models: list[ServedModel]
    engine: EngineConfig
    cpu_only: bool
    replicas: int = 1
    autoscaling: AutoscalingConfig | None = None  # when set, Ray Serve scales replicas in its bounds
    cpus_per_replica: float = 1
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    app_name: str = "quantsweep"
    ingress: str = "haproxy"  # haproxy | proxy (see the module docstring)
    extra_env: dict[str, str] = field(default_factory=dict)
    stream_batching_interval_ms: float | None = None  # Ray Serve LLM's chunk batching; None = its default


def engine_kwargs(engine: EngineConfig, tp: int, cpu_only: bool) -> dict[str, Any]:
    """The vLLM engine arguments every replica runs with."""
    kwargs: dict[str, Any] = {
        "max_num_seqs": engine.max_num_seqs,
        "max_model_len": engine.max_model_len,
        "dtype": engine.dtype,
        "enforce_eager": engine.enforce_eager,
        "seed": engine.seed,
        "tensor_parallel_size": tp,
    }
    if not cpu_only:
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    elif tp == 1:
        # The engine core already runs in its own process; a separate worker process per
        # engine only adds start-up time on CPU.
        kwargs["distributed_executor_backend"] = "uni"
    return kwargs


def deployment_config(spec: ServeSpec) -> dict[str, Any]:
    """The Ray Serve deployment options of every model: fixed replicas, or an autoscaling range."""
    if spec.autoscaling is None:
        return {"num_replicas": spec.replicas}
    return {"autoscaling_config": asdict(spec.autoscaling)}


def cpu_engine_env(engine: EngineConfig) -> dict[str, str]:
    """Environment of a served vLLM engine on CPU (Ray Serve replica or bare `vllm serve`)."""
    return {
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": str(engine.cpu_kv_cache_gib),
        # Every engine binds to the last core (the load tests drive one model at a time), leaving
        # the others to the proxy, ingress and client; one runtime env for all configs also lets
        # Ray reuse worker processes for their start-up tasks.
        "VLLM_CPU_OMP_THREADS_BIND": str((os.cpu_count() or 1) - 1),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


def _llm_config(spec: ServeSpec, model: ServedModel):
    """A ray.serve.llm LLMConfig for one checkpoint."""
    from ray.serve.llm import LLMConfig

    env = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn", **ray_env(spec.ingress), **spec.extra_env}
    if spec.api_key:
        env["VLLM_API_KEY"] = spec.api_key  # vLLM's own app checks it (haproxy layout)
    extra: dict[str, Any] = {}
    if spec.cpu_only:
        env.update(cpu_engine_env(spec.engine))
        extra = {
            "accelerator_config": {"kind": "cpu"},
            "placement_group_config": {"bundles": [{"CPU": spec.cpus_per_replica}]},
        }
    experimental: dict[str, Any] = {}
    if spec.stream_batching_interval_ms is not None:
        experimental["stream_batching_interval_ms"] = spec.stream_batching_interval_ms
    return LLMConfig(
        model_loading_config={"model_id": model.model_id, "model_source": model.path},
        engine_kwargs=engine_kwargs(spec.engine, model.tensor_parallel_size, spec.cpu_only),
        deployment_config=deployment_config(spec),
        runtime_env={"env_vars": env},
        log_engine_metrics=False,
        experimental_configs=experimental,
        **extra,
    )


def _direct_app(config: Any) -> Any:
    """The LLM server deployment as its own HTTP ingress: HAProxy forwards straight to its replicas.

    `serve.ingress()` with no app makes Serve build the ASGI app late, from the replica's
    `__serve_build_asgi_app__`: vLLM's own OpenAI app over the running engine. Ray's
    `build_openai_app` under RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING builds the same deployment but
    puts an ingress request router in front, and HAProxy then calls that Python replica
    (`/internal/route`, a FastAPI app) before every request: one more Python hop per request
    (1.3 ms of CPU each on the 2-core machine) that only picks a replica round robin, which
    HAProxy's own `leastconn` does better.
    """
    from ray import serve
    from ray.serve.llm import LLMServer, build_llm_deployment

    return build_llm_deployment(config, name_prefix="LLMServer:", deployment_cls=serve.ingress()(LLMServer))


def app_names(spec: ServeSpec) -> list[str]:
    """The Ray Serve application names a spec deploys."""
    if spec.ingress == "proxy":
        return [spec.app_name]
    return [f"{spec.app_name}-{m.model_id}" for m in spec.models]


def _check(spec: ServeSpec) -> None:
    if spec.ingress not in SERVE_INGRESS:
        raise StageError(f"serve.ingress must be one of {list(SERVE_INGRESS)}, got '{spec.ingress}'")
    if spec.host not in LOOPBACK and not spec.api_key:
        raise StageError(f"serve.host '{spec.host}' is not loopback: set serve.api_key")
    if spec.host not in LOOPBACK and spec.ingress == "proxy":
        raise StageError("serve.ingress 'proxy' cannot check an API key: bind loopback or use 'haproxy'")
    missing = [k for k, v in ray_env(spec.ingress).items() if os.environ.get(k) != v]
    if missing:
        raise StageError(
            f"serve.ingress '{spec.ingress}' needs {', '.join(f'{k}=1' for k in missing)} in this process "
            "and the Ray cluster before Serve starts (cluster.context.init_ray sets them; k8s/ for clusters)"
        )


def start(spec: ServeSpec, timeout_s: float = 600.0) -> dict[str, str]:
    """Deploy and wait until every model answers; return each model id's OpenAI base URL."""
    _check(spec)
    from ray import serve
    from ray.serve.llm import build_openai_app

    serve.start(http_options={"host": spec.host, "port": spec.port})
    root = f"http://{'127.0.0.1' if spec.host in LOOPBACK else spec.host}:{spec.port}"
    if spec.ingress == "proxy":
        configs = [_llm_config(spec, m) for m in spec.models]
        app = build_openai_app({"llm_configs": configs})
        serve.run(app, name=spec.app_name, route_prefix="/", blocking=False)
        urls = {m.model_id: root for m in spec.models}
    else:
        urls = {}
        for name, m in zip(app_names(spec), spec.models, strict=True):
            serve.run(
                _direct_app(_llm_config(spec, m)), name=name, route_prefix=f"/{m.model_id}", blocking=False
            )
            urls[m.model_id] = f"{root}/{m.model_id}"
    for model_id, url in urls.items():
        wait_ready(url, [model_id], spec.api_key, timeout_s)
    return urls


def wait_ready(base_url: str, model_ids: list[str], api_key: str | None, timeout_s: float) -> None:
    """Poll /v1/models and a one-token completion per model until all answer."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    pending = list(model_ids)
    last = ""
    while pending and time.monotonic() < deadline:
        try:
            r = httpx.post(
                f"{base_url}/v1/completions",
                headers=headers,
                timeout=60,
                json={"model": pending[0], "prompt": "hi", "max_tokens": 1},
            )
            if r.status_code == 200:
                pending.pop(0)
                continue
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(2)
    if pending:
        raise StageError(f"Serve app not ready after {timeout_s:.0f}s ({pending[0]}): {last}")


def stop(spec: ServeSpec) -> None:
    """Delete the spec's applications (and their replicas)."""
    from ray import serve

    for name in app_names(spec):
        serve.delete(name)
