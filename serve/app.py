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
GPU clusters each replica gets `tensor_parallel_size` GPUs of the accelerator type its cell names.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from serve.config import LOOPBACK, SERVE_INGRESS, EngineConfig, MissingSecret, ServeConfig, api_key
from serve.engine import cpu_env, engine_kwargs
from serve.host import HostProfile

# Read by Ray Serve when it is imported, in every process: the driver and the whole Ray cluster
# must have them before Serve starts (cluster.run.ray_init sets them for the embedded Ray; a real
# cluster gets them from k8s/).
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
}
# The Serve controller kills a proxy (HAProxyManager) that misses 3 readiness checks of 5 s each. On
# a busy 2-core host (engines loading beside it) HAProxy takes longer than that to come up, and the
# kill takes the deployment down with it (`ActorDiedError ... HAProxyManager ... killed by ray.kill`).
# Give it a minute: a proxy that never starts still fails, later.
PROXY_PATIENCE_ENV = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
}


class ServeError(RuntimeError):
    """The Serve application could not be started as configured."""


def ray_env(ingress: str) -> dict[str, str]:
    """Environment variables the Ray cluster needs for this ingress layout."""
    return {**(HAPROXY_ENV if ingress == "haproxy" else {}), **PROXY_PATIENCE_ENV}


@dataclass(frozen=True)
class ServedModel:
    """One checkpoint to serve: its public model id, its path, its GPU count and GPU kind."""

    model_id: str
    path: str
    tensor_parallel_size: int = 1
    accelerator: str | None = None  # Ray's accelerator type (e.g. H100); None: any node
    pipeline_parallel_size: int = 1  # nodes one replica spans (Ray Serve LLM places them)


@dataclass(frozen=True)
class Deployment:
    """What one Serve launch needs beyond the sweep's `serve` and `engine` config."""

    models: tuple[ServedModel, ...]
    cpu: bool  # vLLM's CPU build (one core per engine) or GPUs
    host: HostProfile
    app_name: str = "quantsweep"
    extra_env: dict[str, str] = field(default_factory=dict)
    stream_batching_interval_ms: float | None = None  # Ray Serve LLM's chunk batching; None: its default


def _replica_callback() -> type:
    """A Ray Serve LLM callback, run in each replica before its engine is configured.

    - It skips Ray Serve LLM's per-node "download model files" tasks: quantsweep serves checkpoints
      from local paths every node sees (the output root), and each task only imports vLLM once more.
    - With `api_key_env` it hands the key in that variable of the replica's node environment to
      vLLM's own app (VLLM_API_KEY, read when the app is built), so the key is in no Ray config.
    - With `uni` (CPU, one device) the engine core runs the model itself instead of through the
      multiprocessing executor Ray Serve LLM forces on CPU (with VLLM_ENABLE_V1_MULTIPROCESSING=0 in
      the replica's env, vLLM's CPU platform keeps that choice): one process and one vLLM import
      fewer per replica. Measured on a 2-core AVX2 host: one replica up in 166 s instead of 230 s.
    `callback_config` is LLMConfig's public hook; the base class and the executor default live in
    Ray's internals (pinned: Ray 2.60).
    """
    from ray.llm._internal.common.callbacks.base import CallbackBase

    class ReplicaSetup(CallbackBase):
        async def on_before_node_init(self) -> None:
            name = self.kwargs.get("api_key_env")
            if name:
                key = os.environ.get(name, "")
                if not key:
                    raise RuntimeError(f"serve.api_key_env: {name} is not set on this replica's node")
                os.environ["VLLM_API_KEY"] = key  # this process only: vLLM's app checks it
            if self.kwargs.get("local", True):
                self.ctx.run_init_node = False
            if self.kwargs.get("uni"):
                from ray.llm._internal.serve.engines.vllm import vllm_models

                vllm_models.EXECUTOR_BACKEND_MP = "uni"

    return ReplicaSetup


def deployment_config(cfg: ServeConfig) -> dict[str, Any]:
    """The Ray Serve deployment options of every model: fixed replicas, or an autoscaling range."""
    if cfg.autoscaling is None:
        return {"num_replicas": cfg.replicas}
    return {"autoscaling_config": asdict(cfg.autoscaling)}


def _llm_config(cfg: ServeConfig, engine: EngineConfig, dep: Deployment, model: ServedModel):
    """A ray.serve.llm LLMConfig for one checkpoint."""
    from ray.serve.llm import LLMConfig

    env = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn", **ray_env(cfg.ingress), **dep.extra_env}
    extra: dict[str, Any] = {}
    uni = dep.cpu and model.tensor_parallel_size == 1 and cfg.engine_in_process
    if uni:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if dep.cpu:
        # Every engine binds to the last core (load tests drive one model at a time), leaving the
        # others to HAProxy and the client.
        env.update(cpu_env(engine, core=None))
        extra = {
            "accelerator_config": {"kind": "cpu"},
            "placement_group_config": {"bundles": [{"CPU": cfg.cpus_per_replica}]},
        }
    elif model.accelerator:
        extra = {"accelerator_type": model.accelerator}
    experimental: dict[str, Any] = {}
    if dep.stream_batching_interval_ms is not None:
        experimental["stream_batching_interval_ms"] = dep.stream_batching_interval_ms
    local = os.path.isdir(model.path)
    if local or cfg.api_key_env:
        kwargs = {"uni": uni, "local": local, "api_key_env": cfg.api_key_env}
        extra["callback_config"] = {"callback_class": _replica_callback(), "callback_kwargs": kwargs}
    return LLMConfig(
        model_loading_config={"model_id": model.model_id, "model_source": model.path},
        engine_kwargs=engine_kwargs(
            engine,
            dep.host,
            model.tensor_parallel_size,
            dep.cpu,
            executor=False,
            pp=model.pipeline_parallel_size,
        ),
        deployment_config=deployment_config(cfg),
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


def app_names(cfg: ServeConfig, dep: Deployment) -> list[str]:
    """The Ray Serve application names a deployment creates."""
    if cfg.ingress == "proxy":
        return [dep.app_name]
    return [f"{dep.app_name}-{m.model_id}" for m in dep.models]


def _check(cfg: ServeConfig) -> None:
    if cfg.ingress not in SERVE_INGRESS:
        raise ServeError(f"serve.ingress must be one of {list(SERVE_INGRESS)}, got '{cfg.ingress}'")
    if cfg.host not in LOOPBACK and not cfg.api_key_env:
        raise ServeError(f"serve.host '{cfg.host}' is not loopback: set serve.api_key_env")
    try:
        api_key(cfg)  # the variable must be set where the deployment starts
    except MissingSecret as e:
        raise ServeError(str(e)) from None
    if cfg.host not in LOOPBACK and cfg.ingress == "proxy":
        raise ServeError("serve.ingress 'proxy' cannot check an API key: bind loopback or use 'haproxy'")
    required = HAPROXY_ENV if cfg.ingress == "haproxy" else {}
    missing = [k for k, v in required.items() if os.environ.get(k) != v]
    if missing:
        raise ServeError(
            f"serve.ingress '{cfg.ingress}' needs {', '.join(f'{k}=1' for k in missing)} in this process "
            "and the Ray cluster before Serve starts (cluster.run.ray_init sets them; k8s/ for clusters)"
        )


def start(
    cfg: ServeConfig, engine: EngineConfig, dep: Deployment, timeout_s: float = 600.0
) -> dict[str, str]:
    """Deploy and wait until every model answers; return each model id's OpenAI base URL."""
    _check(cfg)
    from ray import serve
    from ray.serve.llm import build_openai_app

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    root = f"http://{'127.0.0.1' if cfg.host in LOOPBACK else cfg.host}:{cfg.port}"
    if cfg.ingress == "proxy":
        configs = [_llm_config(cfg, engine, dep, m) for m in dep.models]
        app = build_openai_app({"llm_configs": configs})
        serve.run(app, name=dep.app_name, route_prefix="/", blocking=False)
        urls = {m.model_id: root for m in dep.models}
    else:
        # every app at once: their replicas start side by side instead of one after another
        targets = [
            serve.RunTarget(
                _direct_app(_llm_config(cfg, engine, dep, m)), name=name, route_prefix=f"/{m.model_id}"
            )
            for name, m in zip(app_names(cfg, dep), dep.models, strict=True)
        ]
        serve.run_many(targets, wait_for_applications_running=False)
        urls = {m.model_id: f"{root}/{m.model_id}" for m in dep.models}
    for model_id, url in urls.items():
        wait_ready(url, [model_id], api_key(cfg), timeout_s)
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
        raise ServeError(f"Serve app not ready after {timeout_s:.0f}s ({pending[0]}): {last}")


def delete(cfg: ServeConfig, dep: Deployment) -> list[str]:
    """Ask Serve to delete the deployment's applications (and their replicas); return their names."""
    from ray import serve

    names = app_names(cfg, dep)
    for name in names:
        serve.delete(name, _blocking=False)
    return names


def remaining(names: list[str]) -> list[str]:
    """Those of `names` Serve still runs (deleting takes a while: replicas drain and their engines stop)."""
    from ray import serve

    return sorted(set(names) & set(serve.status().applications))


def stop(cfg: ServeConfig, dep: Deployment, timeout_s: float = 120.0) -> None:
    """Delete the deployment's applications (and their replicas), all at once, and wait until gone."""
    names = delete(cfg, dep)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and remaining(names):
        time.sleep(1)
