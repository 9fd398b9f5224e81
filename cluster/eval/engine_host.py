"""Engine hosts: Ray actors that keep vLLM imported and hold one checkpoint's engine at a time.

A host wraps lm-eval's own vLLM backend (`lm_eval.models.vllm_causallms.VLLM`, an in-process engine),
so each request is computed exactly as `lm_eval.simple_evaluate(model="vllm")` computes it. Loading
another checkpoint frees the previous engine first; importing vLLM and lm-eval, most of an engine's
start-up on a CPU machine, happens once per host. On CPU each host is bound to one core; on GPUs it
holds its engine's tensor-parallel GPUs of the accelerator type the plan chose, or, for an engine
that spans nodes (pipeline parallel), sits in a placement group of one bundle per GPU that vLLM's
Ray executor fills with its workers (`engine_options`).
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from cluster.plan.cells import Cell
from cluster.run.env import RunEnv
from serve import engine as engine_spec
from serve.config import EngineConfig


class EngineHost:
    """A Ray actor: one in-process vLLM engine behind lm-eval's VLLM backend, reloadable."""

    def __init__(self) -> None:
        engine_spec.prepare_process()
        from lm_eval.models.vllm_causallms import VLLM  # noqa: F401 - import once, here

        self.lm: Any = None
        self.loaded: tuple[str, str] | None = None

    def load(self, path: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Load `path` with lm-eval VLLM kwargs (a no-op when it is already loaded)."""
        ident = (path, repr(sorted(kwargs.items())))
        if self.loaded == ident:
            return {"ok": True, "load_s": 0.0, "error": None}
        self.unload()
        start = time.perf_counter()
        try:
            from lm_eval.models.vllm_causallms import VLLM

            self.lm = VLLM(pretrained=path, **kwargs)
        except Exception as exc:  # the caller records it (health: load_failed)
            self.unload()
            return {"ok": False, "load_s": None, "error": f"{type(exc).__name__}: {exc}"[:500]}
        self.loaded = ident
        return {"ok": True, "load_s": time.perf_counter() - start, "error": None}

    def unload(self) -> None:
        """Free the current engine."""
        self.lm, self.loaded = None, None
        gc.collect()

    def run(self, method: str, args: list[tuple]) -> list[Any]:
        """Run one shard of lm-eval requests (their `args` only) through the backend."""
        from lm_eval.api.instance import Instance

        reqs = [Instance(request_type=method, doc={}, arguments=a, idx=0) for a in args]
        return list(getattr(self.lm, method)(reqs, disable_tqdm=True))

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a backend method or read a property (chat templates, tokenizer name)."""
        attr = getattr(self.lm, name)
        return attr(*args, **kwargs) if callable(attr) else attr

    def generate(self, prompts: list[str], max_tokens: int) -> list[dict[str, Any]]:
        """Greedy completions with the log-probability of each chosen token."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=1)
        outs = self.lm.model.generate(prompts, params, use_tqdm=False)
        result = []
        for out in outs:
            gen = out.outputs[0]
            lps = [lp[t].logprob for t, lp in zip(gen.token_ids, gen.logprobs or [], strict=False) if lp]
            result.append({"text": gen.text, "tokens": len(gen.token_ids), "logprobs": lps})
        return result

    def prompt_logprobs(
        self, seqs: list[list[int]], k: int
    ) -> list[list[tuple[list[int], list[float], float]]]:
        """Per sequence, per token after the first: the engine's k most likely ids and their
        log-probabilities (most likely first), and the log-probability of the token that came."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=k)
        outs = self.lm.model.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in seqs], params, use_tqdm=False
        )
        result = []
        for ids, out in zip(seqs, outs, strict=True):
            rows = []
            for token, lps in zip(ids[1:], (out.prompt_logprobs or [])[1:], strict=True):
                top = sorted(lps.items(), key=lambda kv: -kv[1].logprob)[:k]
                rows.append(([t for t, _ in top], [lp.logprob for _, lp in top], lps[token].logprob))
            result.append(rows)
        return result

    def pid(self) -> int:
        """The host's process id (tests kill hosts by it)."""
        return os.getpid()


_GROUPS: dict[str, Any] = {}  # actor id -> the placement group it spans nodes with


def engine_options(cpus: float, tp: int, pp: int, accelerator: str | None) -> tuple[dict[str, Any], Any]:
    """Ray options for a process that runs one engine, and the placement group it needs (or None).

    One node: its tp GPUs (of the accelerator type). Across nodes: a placement group of a CPU bundle
    for the process and one single-GPU bundle per worker, packed onto as few nodes as possible;
    the process captures it, so vLLM's Ray executor uses it instead of creating a nested one.
    """
    accel = {f"accelerator_type:{accelerator}": 0.001} if accelerator else {}
    if pp <= 1:
        return {
            "num_cpus": cpus,
            "num_gpus": tp,
            **({"accelerator_type": accelerator} if accelerator else {}),
        }, None
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": cpus}] + [{"GPU": 1.0, **accel} for _ in range(tp * pp)], strategy="PACK")
    strategy = PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
    )
    return {"num_cpus": cpus, "num_gpus": 0, "scheduling_strategy": strategy}, pg


def start_host(env: RunEnv, cell: Cell, slot: int) -> Any:
    """One engine host actor; on CPU bound to core `slot`, on GPUs holding its engine's GPUs."""
    if not env.gpu:
        return cpu_host(env.sweep.engine, slot)
    res = cell.resources
    tp, pp = res.split(env.catalog.models[cell.model].gpus.get(cell.format, 1))
    opts, pg = engine_options(env.sweep.eval.cpus_per_actor, tp, pp, res.accelerator)
    env_vars = dict(engine_spec.IN_PROCESS_ENV) if tp * pp == 1 else {}
    actor = _actor(opts, env_vars)
    if pg is not None:
        _GROUPS[actor._actor_id.hex()] = pg
    return actor


def stop_host(actor: Any) -> None:
    """Kill a host and free the placement group it spanned nodes with."""
    import ray
    from ray.util.placement_group import remove_placement_group

    ray.kill(actor)
    pg = _GROUPS.pop(actor._actor_id.hex(), None)
    if pg is not None:
        remove_placement_group(pg)


def cpu_host(engine: EngineConfig, slot: int) -> Any:
    """An engine host for vLLM's CPU build, bound to core `slot`.

    It asks Ray for no CPU slot: how many run at once is the executor's to count (run.max_parallel).
    """
    return _actor({"num_cpus": 0}, {**engine_spec.IN_PROCESS_ENV, **engine_spec.cpu_env(engine, core=slot)})


def _actor(opts: dict[str, Any], env_vars: dict[str, str]) -> Any:
    import ray

    cls = ray.remote(max_restarts=0)(EngineHost)
    return cls.options(runtime_env={"env_vars": env_vars}, **opts).remote()
