"""Connect to Ray: `RAY_ADDRESS` / `ray.address` for a cluster (the `ray job submit` case), else an
embedded local Ray on this machine.

The embedded Ray declares more CPU slots than the machine has cores so the Serve controller,
HAProxy, engine hosts and one replica per checkpoint can all be placed; how much work runs at once
is the executor's decision (`run.max_parallel`, the host's cores by default), not Ray's.
"""

from __future__ import annotations

import os

from cluster.config.schema import SweepConfig

MIN_LOCAL_CPU_SLOTS = 8
HF_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def init_ray(sweep: SweepConfig) -> bool:
    """Connect to or start Ray; return True when it is a cluster reached by address."""
    import ray

    from serve.app import ray_env

    address = sweep.ray.address or os.environ.get("RAY_ADDRESS")
    # Ray Serve reads its ingress switches at import, here and in every Ray process (serve.app).
    serve_env = ray_env(sweep.serve.ingress) if sweep.serve.enabled else {}
    os.environ.update(serve_env)
    if address:  # a real cluster: hub access and Serve's switches are the cluster's (k8s/)
        ray.init(address=address, log_to_driver=False)
        return True
    os.environ.update({k: v for k, v in HF_OFFLINE_ENV.items() if k not in os.environ})
    env = {"env_vars": {**{k: os.environ[k] for k in HF_OFFLINE_ENV}, **serve_env}}
    slots = sweep.ray.num_cpus or max(MIN_LOCAL_CPU_SLOTS, os.cpu_count() or 1)
    # address="local": always a new embedded Ray, never a cluster some other process left running here
    ray.init(address="local", num_cpus=slots, include_dashboard=False, runtime_env=env, log_to_driver=False)
    return False
