"""Shared fixtures: a real local Ray, the real tiny model, real engines, built once per session.

Starting a vLLM engine or a Ray Serve app costs 20-70 s on a 2-core machine, so everything
expensive is session-scoped and shared.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import TINY_TASKS, lm_kwargs

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
    from cluster.models import tinymodel

    return tinymodel.build(cache_dir)


@pytest.fixture(scope="session")
def organism_assets(cache_dir):
    """The trained model organism (about a minute to build), shared by every test that needs it."""
    from cluster.models import organism

    return organism.build(cache_dir)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with more scheduling slots than cores (as the embedded run uses)."""
    import ray

    from cluster.run.ray_init import MIN_LOCAL_CPU_SLOTS
    from serve.app import ray_env

    if not ray.is_initialized():
        serve_env = ray_env("haproxy")  # Serve's default ingress, as cluster.run.ray_init sets it
        os.environ.update(serve_env)
        ray.init(
            address="local",
            num_cpus=MIN_LOCAL_CPU_SLOTS,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **serve_env}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_reference(tiny, ray_local):
    """Plain, unsharded lm-eval (`model="vllm"`, one engine) on the tiny bf16 model: the yardstick."""
    from cluster.eval.harness import reference_evaluate
    from serve.config import EngineConfig
    from serve.engine import IN_PROCESS_ENV, cpu_env

    env = {**IN_PROCESS_ENV, **cpu_env(EngineConfig(), core=0)}
    fn = ray_local.remote(num_cpus=1, max_calls=1)(reference_evaluate).options(runtime_env={"env_vars": env})
    return ray_local.get(
        fn.remote(str(tiny.model_dir), lm_kwargs(), TINY_TASKS, str(tiny.tasks_dir), None, 1234)
    )


@pytest.fixture(scope="session")
def cpu_hosts(ray_local):
    """Two engine hosts (vLLM imported once each), shared by the evaluation tests."""
    from cluster.eval.engine_host import cpu_host
    from serve.config import EngineConfig

    hosts = [cpu_host(EngineConfig(), slot) for slot in (0, 1)]
    ray_local.get([h.pid.remote() for h in hosts])
    yield hosts
    for h in hosts:
        ray_local.kill(h)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, organism_assets):
    """The README's demo (sweeps/smoke.yaml) on an embedded local Ray: (output root, its log)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("smoke")
    (out / "cache").symlink_to(organism_assets.root.parent)  # the organism is built once per session
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "run", "sweeps/smoke.yaml", f"output_root={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout
