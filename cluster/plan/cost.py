"""The plan's cost model: hours, GPU-hours, host memory and dollars per cell, before anything runs.

A cell's time is the work it must do divided by the rate its engines reach, plus fixed costs:
- evaluate: tokens of its suite (documents x (few-shot examples + 1) x tokens per example, plus
  one continuation per loglikelihood choice; generated tokens for generation tasks, from
  conf/cost.yaml) through prefill and decode rates of `gpus x peak FLOP/s x efficiency / 2 x params`
  per engine, split over the session's engines;
- health: the session's start (engine start + weights / load bandwidth); generate: its prompts;
- loadtest: synchronous requests at `output tokens x weight bytes / (HBM bandwidth x efficiency)`
  each, then the asynchronous run (its duration, or its requests at the engine's capacity when the
  offered rate exceeds it); the Serve deployment's start is charged to the session's first cell;
- quantize: weights read and written, plus for GPTQ the calibration forward passes and the solves;
- tune: the baseline's measurement, every trial's quantization and the rungs it reaches (ASHA keeps
  1 / reduction_factor at each rung), spread over the trials that run at once, then validation.
GPU-hours count what a cell holds (all its engines or trial slots); dollars price those GPUs with
the hardware's price table. Every assumption lives in conf/ (hardware.yaml, cost.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.config.schema import Catalog, FormatConfig, HardwareConfig, ModelConfig, SweepConfig
from cluster.plan.cells import Cell, Resources
from cluster.plan.placement import BYTES_PER_PARAM, device_count, price_per_hour
from cluster.plan.rates import CPU_PEAK_TFLOPS, Engine, suite_tokens
from cluster.plan.tunecost import tune_seconds

HOUR = 3600.0


@dataclass(frozen=True)
class Estimate:
    """What the cost model expects one cell to take."""

    hours: float  # wall time, its session's start included when it opens the session
    gpus: int  # GPUs held while it runs
    hardware: str  # the catalog's GPU name ('' on CPUs)
    dollars: float
    memory_gb: float  # host memory per process
    start_hours: float = 0.0  # the part of `hours` that starts its session (engine load, Serve deploy)

    @property
    def gpu_hours(self) -> float:
        """GPUs x hours."""
        return self.gpus * self.hours


class CostModel:
    """Estimates for the cells of one plan."""

    def __init__(self, sweep: SweepConfig, catalog: Catalog) -> None:
        self.sweep, self.catalog, self.cost = sweep, catalog, catalog.cost
        self.by_accel = {h.accelerator_type: h for h in catalog.hardware.values() if h.kind == "gpu"}

    def hardware(self, res: Resources) -> HardwareConfig | None:
        """The GPU kind a cell's resources pin it to (None: CPUs)."""
        return self.by_accel.get(res.accelerator) if res.accelerator and res.gpus else None

    def engine(self, cell: Cell, fmt: str | None = None, gpus: int | None = None) -> Engine:
        """The engine a cell's processes run (its format, or `fmt` on the same GPU kind)."""
        hw = self.hardware(cell.resources)
        f = self.catalog.formats[fmt or cell.format]
        model = self.catalog.models[cell.model]
        if gpus is None:
            gpus = cell.resources.gpus if fmt is None or hw is None else device_count(model, f, hw)
        return Engine(self.cost, model, f, hw, gpus)

    # --- stages: seconds of work (the session's start excluded) ----------------------------------

    def prepare(self, cell: Cell) -> float:
        model = self.catalog.models[cell.model]
        local = model.builder or model.path or model.gguf or cell.model in self.sweep.model_paths
        return self.cost.cpu_cell_s + (0.0 if local else model.params_b * 2 / self.cost.download_gbps)

    def quantize(self, cell: Cell) -> float:
        model, fmt = self.catalog.models[cell.model], self.catalog.formats[cell.format]
        return self.quantize_s(model, fmt, self.hardware(cell.resources), cell.resources.gpus)

    def quantize_s(
        self, model: ModelConfig, fmt: FormatConfig, hw: HardwareConfig | None, gpus: int
    ) -> float:
        """Read the BF16 weights, calibrate and solve (GPTQ), write the checkpoint."""
        r = fmt.recipe
        if r.algorithm == "none":
            return 1.0
        io = model.params_b * (2 + BYTES_PER_PARAM[fmt.requires]) / self.cost.load_gbps
        if r.algorithm != "gptq":
            return io + model.params_b  # round to nearest: a second per billion parameters
        passes = 2 if r.smoothquant_strength else 1
        tokens = r.calibration.num_samples * r.calibration.max_seq_length
        flops = max(1, gpus) * ((hw.peak_tflops.get("bf16", 0.0) if hw else 0.0) or CPU_PEAK_TFLOPS) * 1e12
        forward = passes * 2 * model.params_b * 1e9 * tokens / (flops * self.cost.quantize_mfu)
        return io + forward + self.cost.gptq_s_per_b * model.params_b

    def evaluate(self, cell: Cell) -> float:
        suite = self.catalog.suites[cell.suite]
        prefill, gen = suite_tokens(suite, self.cost, self.sweep.eval.limit, self.sweep.eval.task_limits)
        work = self.engine(cell).pass_s(prefill, gen) / cell.resources.processes
        return self.cost.cell_overhead_s + work

    def generate(self, cell: Cell) -> float:
        sim = self.sweep.eval.similarity
        e = self.engine(cell)
        return self.cost.cell_overhead_s + e.pass_s(
            sim.num_prompts * self.cost.similarity_prompt_tokens, sim.num_prompts * sim.max_tokens
        )

    def health(self, cell: Cell) -> float:
        return self.cost.cell_overhead_s

    def loadtest(self, cell: Cell) -> float:
        sv, uc = self.sweep.serve, self.catalog.use_cases[cell.use_case]
        prompt = max(1, round(uc.prompt_tokens * sv.token_scale))
        out = max(1, round(uc.output_tokens * sv.token_scale))
        e = self.engine(cell)
        latency = e.latency_s(prompt, out)
        sync = (sv.sync_requests + sv.warmup_requests) * latency
        capacity = min(e.decode / out, self.sweep.engine.max_num_seqs / latency)  # requests/s
        if sv.profile == "synchronous":
            runs = 0.0
        elif sv.profile == "concurrent":
            rate = min(sv.async_concurrency / latency, capacity)
            runs = sv.async_max_requests / rate
        else:
            offered = sv.async_rate
            runs = min(sv.async_duration_s, sv.async_max_requests / offered)
            if offered > capacity:
                runs = min(sv.async_max_requests, sv.async_duration_s * offered) / capacity
            runs *= sv.sweep_points + 1 if sv.profile == "sweep" else 1
        return self.cost.cell_overhead_s + sync + runs + latency

    def loadtest_bare(self, cell: Cell) -> float:
        """The same load on bare `vllm serve`, which the cell starts itself (no shared session)."""
        return self.loadtest(cell) + self.engine(cell).load_s

    def recovery(self, cell: Cell) -> float:
        return self.cost.cpu_cell_s

    similarity = recovery

    def session_start(self, cell: Cell) -> float:
        """Engine hosts loading the checkpoint (health opens it) or a Serve deployment starting."""
        return self.engine(cell).load_s

    def tune(self, cell: Cell) -> float:
        return tune_seconds(self, cell)


SESSION_STAGES = {"health": "engines", "evaluate": "engines", "generate": "engines", "loadtest": "serve"}


def session_of(cell: Cell) -> tuple[str, ...] | None:
    """The session a cell shares (None: it runs alone): a checkpoint's engines, or its Serve app."""
    kind = SESSION_STAGES.get(cell.stage)
    if kind == "engines":
        return ("engines", cell.model, cell.format) + ((cell.session,) if cell.session else ())
    if kind == "serve":
        return ("serve", cell.model, cell.format, cell.hardware)
    return None


def estimate(cells: list[Cell], sweep: SweepConfig, catalog: Catalog) -> dict[str, Estimate]:
    """cell key -> Estimate for every planned cell (skipped cells cost nothing)."""
    model = CostModel(sweep, catalog)
    opened: set[tuple[str, ...]] = set()
    out: dict[str, Estimate] = {}
    for c in cells:
        if c.status != "planned":
            out[c.key] = Estimate(0.0, 0, "", 0.0, 0.0)
            continue
        seconds = getattr(model, c.stage)(c)
        start = 0.0
        group = session_of(c)
        if group is not None and group not in opened:
            opened.add(group)
            start = model.session_start(c)
        out[c.key] = _priced(model, c, seconds + start, start)
    return out


def _priced(model: CostModel, c: Cell, seconds: float, start: float) -> Estimate:
    res = c.resources
    hw = model.hardware(res)
    gpus = res.total_gpus if hw else 0
    dollars = (price_per_hour(hw, res.gpus) * res.processes * seconds / HOUR) if hw else 0.0
    return Estimate(seconds / HOUR, gpus, hw.name if hw else "", dollars, res.memory_gb, start / HOUR)
