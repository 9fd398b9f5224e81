"""One tuning trial: quantize with the trial's knobs, measure the proxy, score the rungs.

`RecipeTrial` is a class trainable, so Ray Tune calls `step()` once per rung (no background thread) and
can hand a trial process to the next trial (`reset_config`): llmcompressor, vLLM and lm-eval are
imported once per process, also under ASHA. Rung 1 (with `tune.proxy: kl`) quantizes and measures
the quality gate's figures, with no engine; the next rung starts the in-process vLLM engine and
every rung scores only new documents, recovery against the baseline on exactly the same documents.
A trial ASHA stops at the proxy rung never starts an engine.
"""

from __future__ import annotations

import copy
import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from cluster.config.schema import RecipeConfig, SuiteConfig
from cluster.eval.docsets import evaluate_docs, first_docs, groups_of_sizes
from cluster.eval.scoring import Docs, docs_score, recovery_pct
from cluster.plan.keys import content_key
from cluster.run.env import RunEnv
from cluster.stages.tuneproxy import proxy_report, proxy_rung, trial_proxy


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one search shares."""

    env: RunEnv
    model: str
    format: str
    base_path: str
    instruct_source: str | None
    recipe: RecipeConfig
    suite: SuiteConfig
    include_path: str | None
    budgets: tuple[int | None, ...]
    sizes: dict[str, dict[str, int]]  # suite task -> leaf task (a group's subtasks) -> documents
    baseline: Docs
    artifact_root: str
    route: str
    tp: int
    prepared: dict[str, Any]  # the prepare stage's outputs (the quality gate's baseline)
    screen: bool = False  # the prescreen: quantize and measure the proxy, no engine, one report
    screened: dict[str, dict[str, Any]] = field(default_factory=dict)  # artifact key -> the screen's figures


def apply_params(recipe: RecipeConfig, params: dict[str, Any]) -> RecipeConfig:
    """A copy of the recipe with dotted keys (e.g. 'calibration.num_samples') set."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(copy.deepcopy(recipe))
    for key, value in params.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def open_lm(env: RunEnv, path: str, tp: int, pp: int = 1):
    """lm-eval's vLLM backend with an engine inside this process (a trial's or a task's).

    On CPU the engine runs in this process, bound to one core (trial processes are reused, so a
    trial's previous engine is freed by then).
    """
    from serve.engine import IN_PROCESS_ENV, cpu_env, lm_eval_kwargs, prepare_process

    if not env.gpu:
        os.environ.update({**IN_PROCESS_ENV, **cpu_env(env.sweep.engine, core=os.getpid())})
    prepare_process()
    from lm_eval.models.vllm_causallms import VLLM

    ev = env.sweep.eval
    kwargs = lm_eval_kwargs(
        env.sweep.engine, env.host, tp, not env.gpu, ev.seed, ev.add_bos_token, ev.batch_size, pp
    )
    return VLLM(pretrained=path, **kwargs)


def measure(
    env: RunEnv, path: str, suite: SuiteConfig, include: str | None, budget: int | None, tp: int, pp: int = 1
) -> Docs:
    """Per-document values of one checkpoint on a suite's first `budget` documents (a Ray task)."""
    from cluster.eval.harness import task_sizes

    lm = open_lm(env, path, tp, pp)
    sizes = task_sizes([t.name for t in suite.tasks], include)
    return evaluate_docs(
        env.sweep.eval, lm, suite, include, first_docs(sizes, 0, budget), groups_of_sizes(sizes)
    )


def trial_checkpoint(setup: TrialSetup, recipe: RecipeConfig) -> tuple[str, dict[str, Any]]:
    """The trial's checkpoint (quantized once per recipe, atomically) and what quantizing found."""
    import json
    import shutil
    import tempfile

    from cluster.quant.oneshot import quantize_into

    key = content_key(setup.model, setup.format, recipe)
    final = Path(setup.artifact_root) / key
    meta_file = final / "trial_meta.json"
    if not meta_file.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        meta = quantize_into(setup.base_path, recipe, tmp, setup.env.dtype(), setup.instruct_source)
        if setup.route == "dequantized":
            from cluster.quant.dequant import dequantize

            dequantize(str(tmp), tmp / "dequantized", setup.env.dtype())
        meta["key"] = key
        (tmp / "trial_meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(final)
        except OSError:  # another trial with the same recipe finished first
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(meta_file.read_text())
    path = final / "dequantized" if setup.route == "dequantized" else final
    return str(path), meta


class RecipeTrial(tune.Trainable):
    """One trial per `reset_config`: step 1 quantizes (and reports the proxy rung with `proxy: kl`),
    each later step scores one rung; the last reports `done`."""

    def setup(self, config: dict[str, Any], setup: TrialSetup) -> None:  # type: ignore[override]
        self.shared = setup
        self.lm: Any = None
        self._begin(config)

    def _begin(self, config: dict[str, Any]) -> None:
        self.params = dict(config)
        self.start = time.perf_counter()
        self.path: str | None = None
        self.meta: dict[str, Any] = {}
        self.proxy: dict[str, Any] = {}
        self.times: dict[str, float] = {}
        self.docs: Docs = {}
        self.rung = 0  # the rungs reported so far
        self.previous = 0  # documents per task scored so far

    def _quantize(self) -> None:
        s = self.shared
        self.path, self.meta = trial_checkpoint(s, apply_params(s.recipe, self.params))
        self.times["quantize_s"] = time.perf_counter() - self.start
        self.proxy = s.screened.get(self.meta["key"]) or trial_proxy(s, self.meta["key"])

    def step(self) -> dict[str, Any]:
        s = self.shared
        if self.path is None:
            self._quantize()
            if s.screen or proxy_rung(s.env.sweep.tune):  # no engine for a trial that ends here
                self.rung = 1
                report = {
                    **proxy_report(self.proxy, self.meta, time.perf_counter() - self.start),
                    "quantize_s": self.times["quantize_s"],
                }
                return {**report, "done": True} if s.screen else report
        if self.lm is None:
            loading = time.perf_counter()
            self.lm = open_lm(s.env, str(self.path), s.tp)
            self.times["engine_start_s"] = time.perf_counter() - loading
            self.times["scoring_from"] = time.perf_counter()
        first = 2 if proxy_rung(s.env.sweep.tune) else 1
        budget = s.budgets[self.rung + 1 - first]
        groups = groups_of_sizes(s.sizes)
        picks = first_docs(s.sizes, self.previous, budget)
        for leaf, values in evaluate_docs(
            s.env.sweep.eval, self.lm, s.suite, s.include_path, picks, groups
        ).items():
            self.docs.setdefault(leaf, {}).update(values)
        self.rung += 1
        self.previous = budget or 0
        score = docs_score(s.suite, self.docs, groups=groups)
        base_score = docs_score(s.suite, s.baseline, only=self.docs, groups=groups)
        now = time.perf_counter()
        return {
            "rung": self.rung,
            "budget": sum(len(v) for v in self.docs.values()),
            "recovery": recovery_pct(score, base_score),
            "score": score,
            "baseline_score": base_score,
            "artifact_key": self.meta["key"],
            "rtn_fallback_modules": self.meta["rtn_fallback_modules"],
            "wall_s": now - self.start,
            "quantize_s": self.times["quantize_s"],
            "engine_start_s": self.times["engine_start_s"],
            "eval_s": now - self.times["scoring_from"],
            "proxy": self.proxy,
            "done": self.rung - first + 1 >= len(s.budgets),
        }

    def _free_engine(self) -> None:
        if self.lm is not None:
            self.lm = None
            gc.collect()

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """The next trial in this process: free the engine, start over with the new knobs."""
        self._free_engine()
        self._begin(new_config)
        return True

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        """Nothing worth restoring mid-trial: a restored search reruns an unfinished trial, whose
        checkpoint is found again in the artifact cache (keyed by recipe)."""
        return {"rung": self.rung}

    def load_checkpoint(self, checkpoint: dict[Any, Any] | None) -> None:
        return None

    def cleanup(self) -> None:
        self._free_engine()
