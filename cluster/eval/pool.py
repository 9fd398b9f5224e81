"""lm-eval's side of sharded evaluation: the `LM` the evaluator talks to, fanning requests out to
engine hosts (`cluster.eval.engine_host`), each holding the same checkpoint.

lm-eval builds the requests and scores the results; `ShardedLM` cuts each request list into
length-balanced chunks, hands them out as a work queue, and gathers results in the original order,
so the metrics are lm-eval's own and equal an unsharded run. We do not use lm-eval's own Ray data
parallelism: it calls `ray.shutdown()` when done (REFERENCE.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from lm_eval.api.model import LM


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
        report: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.report = report
        self.actors: list[Any] = list(actors)
        self.replace = replace
        self.chunks_per_actor = chunks_per_actor
        self.max_failures = max_failures
        self.failures = 0
        self.chunks_done = 0

    def _on_death(self, slot: int, idle: list[int], busy: int, exc: Exception) -> None:
        """Count a dead actor and put a replacement (if any) back to work.

        Without a replacement the others carry on; when none is left the actor error is raised
        as is, so the executor sees lost infrastructure (and retries the cell), not a bad cell.
        """
        from cluster.errors import StageError

        self.failures += 1
        if self.failures > self.max_failures:
            raise StageError(f"{self.failures} evaluation actors died; giving up")
        if self.replace is not None:
            self.actors[slot] = self.replace(slot)
            idle.append(slot)
        elif not idle and not busy:
            raise exc

    def _dispatch(self, method: str, requests: list) -> list[Any]:
        import ray
        from ray.exceptions import RayActorError

        args = [r.args for r in requests]
        chunks = [c for c in balanced_shards(args, len(self.actors) * self.chunks_per_actor) if c]
        queue, idle = deque(range(len(chunks))), list(range(len(self.actors)))
        running: dict[Any, tuple[int, int]] = {}
        out: list[Any] = [None] * len(requests)
        filled = [False] * len(requests)
        answered = 0
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
            except RayActorError as exc:
                queue.appendleft(chunk)
                self._on_death(slot, idle, len(running), exc)
                continue
            for i, res in zip(chunks[chunk], results, strict=True):
                assert not filled[i], f"request {i} answered twice"
                out[i], filled[i] = res, True
            self.chunks_done += 1
            answered += len(chunks[chunk])
            if self.report is not None:
                self.report(f"{method}: {answered}/{len(requests)} requests")
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
