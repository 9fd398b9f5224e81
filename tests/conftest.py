"""Shared fixtures: a real local Ray, the real tiny model, real engines, built once per session.

Starting a vLLM engine or a Ray Serve app costs 20-70 s on a 2-core machine, so everything
expensive is session-scoped and shared.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Where the session builds the tiny model (QS_TEST_CACHE reuses one across sessions)."""
    env = os.environ.get("QS_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny(cache_dir):
    """The tiny Llama's assets (model, tokenizer, tasks, calibration text)."""
    from cluster import tinymodel

    return tinymodel.build(cache_dir)


@pytest.fixture(scope="session")
def organism_assets(cache_dir):
    """The trained model organism (about a minute to build), shared by every test that needs it."""
    from cluster import organism

    return organism.build(cache_dir)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with more scheduling slots than cores (as the embedded run uses)."""
    import ray

    from cluster.context import MIN_LOCAL_CPU_SLOTS
    from serve.app import ray_env

    if not ray.is_initialized():
        serve_env = ray_env("haproxy")  # Serve's default ingress, as cluster.context.init_ray sets it
        os.environ.update(serve_env)
        ray.init(
            num_cpus=MIN_LOCAL_CPU_SLOTS,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **serve_env}},
        )
    yield ray
    ray.shutdown()


TINY_TASKS = ["qs_tiny_mc", "qs_tiny_gen"]


@pytest.fixture(scope="session")
def tiny_reference(tiny, ray_local):
    """Plain, unsharded lm-eval (`model="vllm"`, one engine) on the tiny bf16 model: the yardstick."""
    from cluster.evalpool import CPU_ENGINE_ENV, EngineSpec, reference_evaluate

    spec = EngineSpec(model_path=str(tiny.model_dir))
    env = {**CPU_ENGINE_ENV, "VLLM_CPU_OMP_THREADS_BIND": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    fn = ray_local.remote(num_cpus=1, max_calls=1)(reference_evaluate).options(runtime_env={"env_vars": env})
    return ray_local.get(fn.remote(spec, TINY_TASKS, str(tiny.tasks_dir), None, 1234))
