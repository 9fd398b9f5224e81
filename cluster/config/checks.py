"""Every check a config gets before anything runs: names, ranges, cross-field rules, files.

The schema's types are checked by omegaconf while merging; this module checks what types cannot
say: names that become paths and partition values, numbers that must be finite and in range,
catalog references, recipe and tuning rules, calibration and prompt files. Each failure is one
`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cluster.config import schema as C
from cluster.config.calibration import check_calibration_file
from cluster.config.merge import describe
from cluster.config.schema import Catalog, ReportConfig, SloConfig
from cluster.errors import ConfigError
from serve.config import DTYPES, LOAD_PROFILES, LOOPBACK, SERVE_INGRESS, ServeConfig

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # names become directory and partition names


def choice(value: Any, allowed: tuple, source: str, key: str) -> None:
    """Raise unless value (or each item of a list value) is one of `allowed`."""
    for v in value if isinstance(value, list) else [value]:
        if v not in allowed:
            raise ConfigError(f"{source}: {key} '{v}' is not one of {', '.join(map(str, allowed))}")


def _bound(source: str, key: str, value: Any, low: float, high: float = math.inf, open_low=False) -> None:
    """value must lie in [low, high] ((low, high] when open_low); None passes."""
    if value is None:
        return
    below = value <= low if open_low else value < low
    if below or value > high:
        lo = f"> {low}" if open_low else f">= {low}"
        hi = "" if high == math.inf else f" and <= {high}"
        raise ConfigError(f"{source}: {key} must be {lo}{hi}, got {value}")


def check_finite(obj: Any, source: str, prefix: str = "") -> None:
    """No NaN or infinite number anywhere in a config object."""
    if is_dataclass(obj):
        for f in fields(obj):
            check_finite(getattr(obj, f.name), source, f"{prefix}{f.name}.")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, source, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_finite(v, source, f"{prefix}{i}.")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"{source}: {prefix.rstrip('.')} must be a finite number, got {obj}")


def _name(name: str, source: str, key: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(f"{source}: {key} '{name}' must match {NAME_RE.pattern} (it becomes a path)")


def _unique(names: list[str], source: str, key: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{source}: {key} lists '{dup[0]}' more than once")


def _known(names: list[str], table: dict, source: str, key: str) -> None:
    """Every name must be a catalog entry."""
    for name in names:
        if name not in table:
            raise ConfigError(f"{source}: {key} names unknown '{name}' (known: {', '.join(sorted(table))})")


# --- the catalog ----------------------------------------------------------------------------------


def check_catalog(catalog: Catalog) -> None:
    """Names, ranges and references of every conf/ entry."""
    root = catalog.conf_dir
    for kind in ("models", "formats", "suites", "use_cases", "hardware"):
        for name, entry in getattr(catalog, kind).items():
            check_finite(entry, f"{root} ({kind} {name})")
            _name(name, f"{root} ({kind})", "name")
    for fmt in catalog.formats.values():
        check_format(fmt, f"{root / 'formats' / fmt.name}.yaml")
    for model in catalog.models.values():
        check_model(model, f"{root / 'models' / model.name}.yaml", catalog)
    for suite in catalog.suites.values():
        _check_suite(suite, f"{root / 'suites' / suite.name}.yaml")
    for uc in catalog.use_cases.values():
        src = f"{root / 'use_cases.yaml'} [{uc.name}]"
        _bound(src, "prompt_tokens", uc.prompt_tokens, 1)
        _bound(src, "output_tokens", uc.output_tokens, 1)
    for hw in catalog.hardware.values():
        src = f"{root / 'hardware.yaml'} [{hw.name}]"
        choice(hw.capabilities, C.CAPABILITIES, src, "capabilities")
        choice(hw.kind, ("gpu", "cpu"), src, "kind")
        _bound(src, "memory_gib", hw.memory_gib, 0, open_low=True)
        for n, price in hw.price_per_hour.items():
            _bound(src, f"price_per_hour.{n}", n, 1)
            _bound(src, f"price_per_hour.{n}", price, 0, open_low=True)


def _check_suite(suite: C.SuiteConfig, source: str) -> None:
    if not suite.tasks:
        raise ConfigError(f"{source}: tasks must not be empty")
    _unique([t.name for t in suite.tasks], source, "tasks")
    for task in suite.tasks:
        choice(task.kind, C.TASK_KINDS, source, f"task {task.name}: kind")
        _bound(source, f"task {task.name}: max_gen_toks", task.max_gen_toks, 1)
        _bound(source, f"task {task.name}: num_fewshot", task.num_fewshot, 0)
        _bound(source, f"task {task.name}: random_baseline", task.random_baseline, 0.0, 0.999)
        _bound(source, f"task {task.name}: chance", task.chance, 0.0, 1.0)
        for sub, b in task.subtask_baselines.items():
            _bound(source, f"task {task.name}: subtask_baselines.{sub}", b, 0.0, 0.999)


def check_format(fmt: C.FormatConfig, source: str) -> None:
    """Cross-field checks of a format's recipe."""
    r = fmt.recipe
    choice(r.algorithm, C.ALGORITHMS, source, "recipe.algorithm")
    choice(r.observer, C.OBSERVERS, source, "recipe.observer")
    choice(r.calibration.source, C.CALIBRATION_SOURCES, source, "recipe.calibration.source")
    choice(fmt.requires, C.CAPABILITIES, source, "requires")
    if r.algorithm != "none":
        choice(r.scheme, C.SCHEMES, source, "recipe.scheme")
    _bound(source, "recipe.dampening_frac", r.dampening_frac, 0.0, 1.0, open_low=True)
    if r.dampening_frac >= 1.0:
        raise ConfigError(f"{source}: recipe.dampening_frac must be in (0, 1), got {r.dampening_frac}")
    if r.smoothquant_strength is not None and not 0.0 < r.smoothquant_strength < 1.0:
        raise ConfigError(
            f"{source}: recipe.smoothquant_strength must be in (0, 1), got {r.smoothquant_strength}"
        )
    _bound(source, "recipe.group_size", r.group_size, 0, open_low=True)
    _bound(source, "recipe.block_size", r.block_size, 1)
    if r.algorithm == "gptq" and r.calibration.source == "none":
        raise ConfigError(f"{source}: recipe.calibration.source must be random or instruct for gptq")
    for key in ("num_samples", "max_seq_length"):
        _bound(source, f"recipe.calibration.{key}", getattr(r.calibration, key), 1)


def check_model(model: C.ModelConfig, source: str, catalog: Catalog) -> None:
    """A model needs a source of weights, and its GPU table may only name known formats."""
    if model.builder is not None:
        choice(model.builder, C.BUILDERS, source, "builder")
    if not (model.hub_id or model.path or model.builder or model.gguf):
        raise ConfigError(f"{source}: a model needs one of hub_id, path, builder or gguf")
    if model.gguf and (model.path or model.builder):
        raise ConfigError(f"{source}: model '{model.name}' names gguf and path/builder; keep one")
    _bound(source, "params_b", model.params_b, 0, open_low=True)
    _bound(source, "max_model_len", model.max_model_len, 1)
    _known(sorted(model.gpus), catalog.formats, source, "gpus")
    for fmt, n in model.gpus.items():
        _bound(source, f"gpus.{fmt}", n, 1)


# --- a sweep --------------------------------------------------------------------------------------


def check_sweep(sweep: C.SweepConfig, catalog: Catalog, source: str) -> None:
    """Cross-field checks that need the catalog; nothing has been written yet."""
    check_finite(sweep, source)
    _name(sweep.name, source, "name")
    for key in ("models", "formats"):
        names = getattr(sweep, key)
        if not names:
            raise ConfigError(f"{source}: {key} must not be empty")
        _unique(names, source, key)
    _known(sweep.models, catalog.models, source, "models")
    _known(sweep.formats, catalog.formats, source, "formats")
    if sweep.baseline not in sweep.formats:
        raise ConfigError(f"{source}: baseline '{sweep.baseline}' must be one of formats")
    if catalog.formats[sweep.baseline].recipe.algorithm != "none":
        raise ConfigError(f"{source}: baseline '{sweep.baseline}' must be an unquantized format")
    for name, mpath in sweep.model_paths.items():
        _known([name], {m: 1 for m in sweep.models}, source, "model_paths")
        if not (Path(mpath) / "config.json").is_file():
            raise ConfigError(
                f"{source}: model_paths.{name}: '{mpath}' is not a model directory (no config.json)"
            )
    for name in sweep.models:
        _check_sweep_model(sweep, catalog.models[name], source)
    _check_run(sweep, source)
    _check_engine(sweep, source)
    if sweep.eval.enabled:
        _check_eval(sweep, catalog, source)
    if sweep.serve.enabled:
        check_serve(sweep.serve, source)
        _known(sweep.serve.use_cases, catalog.use_cases, source, "serve.use_cases")
        _known(sweep.serve.hardware, catalog.hardware, source, "serve.hardware")
        if sweep.serve.formats is not None:
            _known(sweep.serve.formats, {f: 1 for f in sweep.formats}, source, "serve.formats")
    if sweep.tune.enabled:
        _check_tune(sweep, catalog, source)

    check_report(sweep.report, source)


def _check_sweep_model(sweep: C.SweepConfig, model: C.ModelConfig, source: str) -> None:
    _check_builder_args(model, source)
    if model.path and not model.builder and model.name not in sweep.model_paths:
        if not (Path(model.path) / "config.json").is_file():
            raise ConfigError(
                f"model '{model.name}': path '{model.path}' is not a model directory (no config.json)"
            )
    if model.gguf and model.name not in sweep.model_paths:
        from cluster.models.gguf import resolve

        resolve(model.gguf)
    if model.instruct_dataset and not model.builder:
        check_calibration_file(model.instruct_dataset, f"{source}: model '{model.name}': instruct_dataset")


def _check_builder_args(model: C.ModelConfig, source: str) -> None:
    """builder_args may only name fields of the builder's spec."""
    if not model.builder_args:
        return
    from cluster.models.organism import OrganismSpec
    from cluster.models.tinymodel import TinySpec

    spec = {"tiny-llama": TinySpec, "organism": OrganismSpec}.get(model.builder or "")
    if spec is None:
        raise ConfigError(f"{source}: model '{model.name}' has builder_args but no builder")
    unknown = sorted(set(model.builder_args) - {f.name for f in fields(spec)})
    if unknown:
        raise ConfigError(
            f"{source}: model '{model.name}': builder_args {unknown} are not {spec.__name__} fields"
        )


def _check_run(sweep: C.SweepConfig, source: str) -> None:
    _bound(source, "run.max_parallel", sweep.run.max_parallel, 1)
    _bound(source, "run.progress_every_s", sweep.run.progress_every_s, 0, open_low=True)
    _bound(source, "ray.num_cpus", sweep.ray.num_cpus, 1)
    q = sweep.quantize
    _bound(source, "quantize.num_cpus", q.num_cpus, 0, open_low=True)
    _bound(source, "quantize.num_gpus", q.num_gpus, 0)
    _bound(source, "quantize.threads", q.threads, 1)
    g = q.quality
    _bound(source, "quantize.quality.tokens", g.tokens, 1)
    _bound(source, "quantize.quality.seq_len", g.seq_len, 2)
    _bound(source, "quantize.quality.top_k", g.top_k, 1)
    _bound(source, "quantize.quality.vllm_top_k", g.vllm_top_k, 1, 20)  # vLLM's max_logprobs
    choice(g.backend, ("auto", "transformers", "vllm"), source, "quantize.quality.backend")
    _bound(source, "quantize.quality.default_max_kl", g.default_max_kl, 0)
    for fmt, limit in g.max_kl.items():
        _bound(source, f"quantize.quality.max_kl.{fmt}", limit, 0)
    if g.enabled and g.texts != "builtin":
        from cluster.quant.quality import read_records

        try:
            read_records(g.texts)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def _check_engine(sweep: C.SweepConfig, source: str) -> None:
    e = sweep.engine
    choice(e.dtype, DTYPES, source, "engine.dtype")
    _bound(source, "engine.max_num_seqs", e.max_num_seqs, 1)
    _bound(source, "engine.max_model_len", e.max_model_len, 16)
    _bound(source, "engine.gpu_memory_utilization", e.gpu_memory_utilization, 0, 1, open_low=True)
    _bound(source, "engine.cpu_kv_cache_gib", e.cpu_kv_cache_gib, 1)


def _check_eval(sweep: C.SweepConfig, catalog: Catalog, source: str) -> None:
    ev = sweep.eval
    _unique(ev.suites, source, "eval.suites")
    _known(ev.suites, catalog.suites, source, "eval.suites")
    _bound(source, "eval.actors", ev.actors, 1)
    _bound(source, "eval.cpus_per_actor", ev.cpus_per_actor, 0, open_low=True)
    _bound(source, "eval.limit", ev.limit, 1)
    tasks = {t.name for s in ev.suites for t in catalog.suites[s].tasks}
    for task, n in ev.task_limits.items():
        if task not in tasks:
            raise ConfigError(
                f"{source}: eval.task_limits: '{task}' is no task of eval.suites ({', '.join(sorted(tasks))})"
            )
        _bound(source, f"eval.task_limits.{task}", n, 1)
    kinds = {t.kind for s in ev.suites for t in catalog.suites[s].tasks}
    if "arena" in kinds and not ev.judge.base_url:
        raise ConfigError(f"{source}: eval.judge.base_url is required for the arena task(s) in eval.suites")
    _bound(source, "eval.judge.runs", ev.judge.runs, 1)
    _bound(source, "eval.judge.concurrency", ev.judge.concurrency, 1)
    sim = ev.similarity
    _bound(source, "eval.similarity.num_prompts", sim.num_prompts, 1)
    _bound(source, "eval.similarity.max_tokens", sim.max_tokens, 1)
    if sim.enabled and sim.prompts != "builtin":
        from cluster.config.calibration import check_prompts_file

        check_prompts_file(sim.prompts, f"{source}: eval.similarity.prompts")


def check_serve(sv: ServeConfig, source: str) -> None:
    """Load-test and Serve settings a run could not survive (no use cases: nothing is load-tested)."""
    _unique(sv.use_cases, source, "serve.use_cases")
    _unique(sv.hardware, source, "serve.hardware")
    choice(sv.profile, LOAD_PROFILES, source, "serve.profile")
    choice(sv.ingress, SERVE_INGRESS, source, "serve.ingress")
    for key in ("token_scale", "async_rate", "async_duration_s", "request_timeout_s", "cpus_per_replica"):
        _bound(source, f"serve.{key}", getattr(sv, key), 0, open_low=True)
    for key in (
        "sync_requests",
        "async_max_requests",
        "async_concurrency",
        "sweep_points",
        "client_processes",
    ):
        _bound(source, f"serve.{key}", getattr(sv, key), 1)
    _bound(source, "serve.warmup_requests", sv.warmup_requests, 0)
    _bound(source, "serve.error_budget", sv.error_budget, 0.0, 1.0)
    _bound(source, "serve.port", sv.port, 1, 65535)
    if sv.host not in LOOPBACK and not sv.api_key_env:
        raise ConfigError(
            f"{source}: serve.api_key_env (the environment variable holding the API key) is required "
            f"when serve.host is '{sv.host}'"
        )
    if sv.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", sv.api_key_env):
        raise ConfigError(
            f"{source}: serve.api_key_env '{sv.api_key_env}' is not an environment variable name"
        )
    if sv.host not in LOOPBACK and sv.ingress == "proxy":
        raise ConfigError(
            f"{source}: serve.ingress 'proxy' cannot check an API key; bind loopback or use 'haproxy'"
        )
    _check_autoscaling(sv, source)


def _check_autoscaling(sv: ServeConfig, source: str) -> None:
    """Replica bounds Ray Serve accepts: 0 <= min <= max, max >= 1, a positive target, no fixed count."""
    a = sv.autoscaling
    if a is None:
        _bound(source, "serve.replicas", sv.replicas, 1)
        return
    key = f"{source}: serve.autoscaling"
    if a.min_replicas < 0 or a.max_replicas < 1:
        raise ConfigError(
            f"{key}: min_replicas must be >= 0 and max_replicas >= 1, got {a.min_replicas}, {a.max_replicas}"
        )
    if a.min_replicas > a.max_replicas:
        raise ConfigError(
            f"{key}: min_replicas ({a.min_replicas}) must not exceed max_replicas ({a.max_replicas})"
        )
    if a.target_ongoing_requests <= 0:
        raise ConfigError(f"{key}.target_ongoing_requests must be > 0, got {a.target_ongoing_requests}")
    if a.upscale_delay_s < 0 or a.downscale_delay_s < 0:
        raise ConfigError(
            f"{key}: upscale_delay_s and downscale_delay_s must be >= 0, got {a.upscale_delay_s}, {a.downscale_delay_s}"
        )
    if sv.replicas != 1:
        raise ConfigError(
            f"{source}: serve.replicas ({sv.replicas}) conflicts with serve.autoscaling: "
            "the replica count comes from autoscaling.min_replicas/max_replicas (drop one of them)"
        )


# --- recipes and tuning ---------------------------------------------------------------------------


def set_recipe(fmt: C.FormatConfig, values: dict[str, Any], source: str, where: str) -> C.FormatConfig:
    """A copy of the format with dotted recipe keys set (each must name a RecipeConfig field)."""
    recipe = OmegaConf.structured(C.RecipeConfig)
    for key in values:
        if not isinstance(key, str) or OmegaConf.select(recipe, key, default="__absent__") == "__absent__":
            raise ConfigError(f"{source}: {where} key '{key}' is not a recipe field")
    out = copy.deepcopy(fmt)
    try:
        merged = OmegaConf.structured(out.recipe)
        for key, value in values.items():
            OmegaConf.update(merged, key, value, merge=False)
        out.recipe = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {where}: {describe(exc, C.RecipeConfig)}") from None
    return out


def apply_recipe_overrides(sweep: C.SweepConfig, catalog: Catalog, source: str) -> None:
    """Apply the sweep's per-format recipe overrides to the catalog copy this run uses."""
    used = [*sweep.formats, *([sweep.tune.format] if sweep.tune.enabled else [])]
    for name, values in sweep.recipe_overrides.items():
        _known([name], {f: 1 for f in used}, source, "recipe_overrides")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: recipe_overrides.{name} must map recipe keys to values")
        fmt = set_recipe(catalog.formats[name], values, source, f"recipe_overrides.{name}")
        check_format(fmt, f"{source} (recipe_overrides.{name})")
        catalog.formats[name] = fmt


def _check_tune(sweep: C.SweepConfig, catalog: Catalog, source: str) -> None:
    """The tuning space may only name real recipe keys, each with a non-empty list of values."""
    t = sweep.tune
    _known([t.format], catalog.formats, source, "tune.format")
    if not t.suite:
        raise ConfigError(f"{source}: tune.suite is required when tune.enabled is true")
    _known([t.suite], catalog.suites, source, "tune.suite")
    if t.validation_suite is not None:
        _known([t.validation_suite], catalog.suites, source, "tune.validation_suite")
        if t.validation_suite == t.suite:
            raise ConfigError(
                f"{source}: tune.validation_suite must differ from tune.suite (a held-out check)"
            )
    choice(t.search, C.SEARCHES, source, "tune.search")
    choice(t.scheduler, C.SCHEDULERS, source, "tune.scheduler")
    if t.rungs and t.limit is not None:
        raise ConfigError(
            f"{source}: set tune.rungs or tune.limit, not both (the last rung is the full budget)"
        )
    if any(r <= 0 for r in t.rungs) or list(t.rungs) != sorted(set(t.rungs)):
        raise ConfigError(
            f"{source}: tune.rungs must be strictly increasing positive sample counts, got {t.rungs}"
        )
    choice(t.proxy, ("none", "kl"), source, "tune.proxy")
    if t.proxy == "kl" and not sweep.quantize.quality.enabled:
        raise ConfigError(f"{source}: tune.proxy 'kl' needs quantize.quality.enabled (the gate measures it)")
    gate = sweep.quantize.quality
    engine_gated = [m for m in sweep.models if gate.backend_for(catalog.models[m].params_b) == "vllm"]
    if t.proxy == "kl" and engine_gated:
        raise ConfigError(
            f"{source}: tune.proxy 'kl' is measured before a trial starts an engine (a transformers forward), "
            f"but quantize.quality gates {', '.join(engine_gated)} through vLLM (backend, max_params_b)"
        )
    if t.prescreen_keep is not None:
        if t.proxy != "kl":
            raise ConfigError(f"{source}: tune.prescreen_keep needs tune.proxy 'kl' (the screen's measure)")
        _bound(source, "tune.prescreen_keep", t.prescreen_keep, 0, 1, open_low=True)
    if t.scheduler == "asha" and max(len(t.rungs), 1) + (t.proxy == "kl") < 2:
        raise ConfigError(
            f"{source}: tune.scheduler 'asha' needs at least two rungs (tune.rungs, tune.proxy)"
        )
    _bound(source, "tune.reduction_factor", t.reduction_factor, 2)
    _bound(source, "tune.num_samples", t.num_samples, 1)
    _bound(source, "tune.max_concurrent", t.max_concurrent, 1)
    _bound(source, "tune.limit", t.limit, 1)
    _bound(source, "tune.cpus_per_trial", t.cpus_per_trial, 0, open_low=True)
    _bound(source, "tune.gpus_per_trial", t.gpus_per_trial, 0)
    if not t.space:
        raise ConfigError(f"{source}: tune.space must name at least one recipe key")
    fmt = catalog.formats[t.format]
    set_recipe(fmt, {k: getattr_dotted(fmt.recipe, k) for k in t.space}, source, "tune.space")
    for key, values in t.space.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: tune.space.{key} must be a non-empty list of values")
        for value in values:  # every value must make a valid recipe on its own
            trial = set_recipe(fmt, {key: value}, source, f"tune.space.{key}")
            check_format(trial, f"{source} (tune.space.{key}={value})")


def getattr_dotted(obj: Any, dotted: str) -> Any:
    """obj.a.b for 'a.b' (None when a part is missing)."""
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def check_slo(slo: SloConfig, source: str, key: str) -> None:
    """Bounds must be positive, the percentile in (0, 100], the name a plain word."""
    if not NAME_RE.match(slo.name):
        raise ConfigError(f"{source}: {key}.name '{slo.name}' must match {NAME_RE.pattern}")
    for bound in ("ttft_ms", "tpot_ms"):
        value = getattr(slo, bound)
        if value is not None and not value > 0:
            raise ConfigError(f"{source}: {key}.{bound} must be > 0 (or null: unbounded), got {value}")
    if not 0 < slo.percentile <= 100:
        raise ConfigError(f"{source}: {key}.percentile must be in (0, 100], got {slo.percentile}")


def check_report(cfg: ReportConfig, source: str, prefix: str = "report.") -> None:
    """Every SLO valid and uniquely named; floor and margin in range."""
    check_finite(cfg, source, prefix)
    check_slo(cfg.slo, source, f"{prefix}slo")
    for i, slo in enumerate(cfg.slos):
        check_slo(slo, source, f"{prefix}slos.{i}")
    names = [s.name for s in (cfg.slo, *cfg.slos)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup or "none" in names:
        raise ConfigError(
            f"{source}: {prefix}slo names must be unique and not 'none' (the report's "
            f"unconstrained view), got {names}"
        )
    if not 0 < cfg.recovery_floor <= 200:
        raise ConfigError(f"{source}: {prefix}recovery_floor must be in (0, 200] %, got {cfg.recovery_floor}")
    if not 0 <= cfg.cost_margin_pct < 100:
        raise ConfigError(f"{source}: {prefix}cost_margin_pct must be in [0, 100), got {cfg.cost_margin_pct}")
