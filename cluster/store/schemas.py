"""The schema catalog: one explicit pyarrow schema per dataset quantsweep writes.

Writers never infer types from the first batch (Ray Data breaks on blocks whose nullability
differs); every row also carries the provenance columns (run id, time, config hash, git sha,
package versions, seed) and the cell that wrote it (its key, the compute dtype and threads it ran
with, the host). Each dataset is partitioned (hive layout) by exactly the coordinates that separate
its cells, so every cell owns one partition and no cell's commit can touch another's rows; the
partition columns live in the directory names and come back when read with plain pyarrow.
"""

from __future__ import annotations

import pyarrow as pa

BASE_PARTITION = ("sweep", "model", "format")

PROVENANCE = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),
    pa.field("git_sha", pa.string(), nullable=False),
    pa.field("versions", pa.map_(pa.string(), pa.string()), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("cell_key", pa.string(), nullable=False),
    pa.field("compute_dtype", pa.string(), nullable=False),
    pa.field("threads", pa.int64(), nullable=False),
    pa.field("host", pa.string(), nullable=False),
    # "quantsweep" for what a run measured; else where imported numbers come from (null in older runs)
    pa.field("source", pa.string()),
]

_F64 = pa.float64()


def _schema(*fields: pa.Field, extra_keys: tuple[str, ...] = ()) -> pa.Schema:
    keys = [pa.field(c, pa.string(), nullable=False) for c in (*BASE_PARTITION, *extra_keys)]
    return pa.schema([*keys, *fields, *PROVENANCE])


QUANTIZED = _schema(
    pa.field("label", pa.string(), nullable=False),
    pa.field("algorithm", pa.string(), nullable=False),
    pa.field("scheme", pa.string()),
    pa.field("recipe_yaml", pa.string(), nullable=False),
    pa.field("artifact_key", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("wall_s", _F64),
    pa.field("peak_rss_mb", _F64),
    pa.field("size_bytes", pa.int64()),
    pa.field("rtn_fallback_modules", pa.list_(pa.string()), nullable=False),
    pa.field("health", pa.string(), nullable=False),
    pa.field("health_detail", pa.string()),
    # the quality gate's figures vs the baseline (cluster.quant.quality); null where not gated
    pa.field("quality_kl", _F64),
    pa.field("quality_top1", _F64),
    pa.field("quality_ppl", _F64),
    pa.field("quality_ppl_ratio", _F64),
    pa.field("quality_tokens", pa.int64()),
)

# Cheap recovery proxies per checkpoint (the health cell's gate, or a tuning trial's first rung)
PROXIES = _schema(
    pa.field("artifact_key", pa.string(), nullable=False),
    pa.field("trial_id", pa.string(), nullable=False),  # "-" outside tuning
    pa.field("kl_mean", _F64, nullable=False),  # nats per scored token, KL(baseline || checkpoint)
    pa.field("kl_p99", _F64, nullable=False),
    pa.field("top1_agreement", _F64, nullable=False),
    pa.field("flip_rate", _F64, nullable=False),  # 1 - top-1 agreement
    pa.field("ppl", _F64, nullable=False),
    pa.field("ppl_baseline", _F64),
    pa.field("ppl_ratio", _F64, nullable=False),
    pa.field("tokens", pa.int64(), nullable=False),
    pa.field("top_k", pa.int64(), nullable=False),  # baseline log-probabilities kept per token
    pa.field("exact", pa.bool_(), nullable=False),  # top_k covered the vocabulary: KL is exact
    pa.field("texts", pa.string(), nullable=False),
    pa.field("max_kl", _F64, nullable=False),
    pa.field("error", pa.string()),
    extra_keys=("stage",),
)

EVAL_SCORES = _schema(
    pa.field("task", pa.string(), nullable=False),
    pa.field("metric", pa.string(), nullable=False),
    pa.field("value", _F64),
    pa.field("stderr", _F64),
    pa.field("n", pa.int64()),
    pa.field("chance", _F64),  # a uniform random guesser's value of the metric (null: unknown)
    pa.field("num_fewshot", pa.int64()),
    pa.field("limit", pa.int64()),
    pa.field("backend", pa.string(), nullable=False),
    pa.field("actors", pa.int64(), nullable=False),
    pa.field("batch_size", pa.string(), nullable=False),
    pa.field("add_bos_token", pa.bool_(), nullable=False),
    pa.field("apply_chat_template", pa.bool_(), nullable=False),
    pa.field("fewshot_as_multiturn", pa.bool_(), nullable=False),
    pa.field("eval_seed", pa.int64(), nullable=False),
    pa.field("engine_args", pa.string(), nullable=False),
    pa.field("weights", pa.string(), nullable=False),  # base | compressed | dequantized (see plan.route)
    pa.field("status", pa.string(), nullable=False),  # measured | not_measured
    pa.field("reason", pa.string(), nullable=False),
    extra_keys=("suite",),
)

EVAL_SAMPLES = _schema(
    pa.field("task", pa.string(), nullable=False),
    pa.field("doc_id", pa.int64(), nullable=False),
    pa.field("prompt_hash", pa.string()),
    pa.field("target", pa.string()),
    pa.field("response", pa.string()),
    pa.field("metrics", pa.map_(pa.string(), _F64), nullable=False),
    pa.field("isolation", pa.string()),  # HumanEval: how the sandbox isolated the code (else null)
    pa.field("subtask", pa.string()),  # an lm-eval group's subtask the document belongs to (else null)
    pa.field("chance", _F64),  # a random guesser's expected value here: 1 / choices, 0 for free-form
    extra_keys=("suite",),
)

RECOVERY = _schema(
    pa.field("baseline_format", pa.string(), nullable=False),
    pa.field("score", _F64),
    pa.field("baseline_score", _F64),
    pa.field("recovery_pct", _F64),
    pa.field("recovery_ci_low", _F64),
    pa.field("recovery_ci_high", _F64),
    # the baseline's suite score interval (paired bootstrap) and what chance scores on the same
    # documents: recovery is reported only where the interval lies above chance
    pa.field("baseline_ci_low", _F64),
    pa.field("baseline_ci_high", _F64),
    pa.field("chance_score", _F64),
    pa.field("flips_right_to_wrong", pa.int64()),
    pa.field("flips_wrong_to_right", pa.int64()),
    pa.field("n_tasks", pa.int64(), nullable=False),
    pa.field("health", pa.string(), nullable=False),
    pa.field("backend", pa.string(), nullable=False),  # the same engine scores a format and its baseline
    pa.field("weights", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # measured | baseline_at_chance | not_measured | failed
    pa.field("reason", pa.string(), nullable=False),
    extra_keys=("suite",),
)

REQUESTS = _schema(
    pa.field("mode", pa.string(), nullable=False),
    pa.field("profile", pa.string(), nullable=False),
    pa.field("target_rate", _F64),
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("send_time", _F64, nullable=False),
    pa.field("first_token_s", _F64),
    pa.field("chunk_s", pa.list_(_F64), nullable=False),
    pa.field("end_s", _F64),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("output_tokens", pa.int64(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
    pa.field("warmup", pa.bool_(), nullable=False),
    pa.field("replicas", pa.int64()),  # replicas serving the model when the request was sent
    extra_keys=("hardware", "use_case", "server"),
)

PERF = _schema(
    pa.field("device", pa.string(), nullable=False),
    pa.field("device_count", pa.int64(), nullable=False),
    pa.field("price_per_hour", _F64),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("output_tokens", pa.int64(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),
    pa.field("profile", pa.string(), nullable=False),
    pa.field("target_rate", _F64),
    pa.field("status", pa.string(), nullable=False),
    pa.field("skip_reason", pa.string(), nullable=False),
    pa.field("completed", pa.int64()),
    pa.field("failed", pa.int64()),
    pa.field("error_rate", _F64),
    pa.field("request_throughput", _F64),
    pa.field("output_throughput", _F64),
    pa.field("mean_ttft_ms", _F64),
    pa.field("p99_ttft_ms", _F64),
    pa.field("mean_tpot_ms", _F64),
    pa.field("p99_tpot_ms", _F64),
    pa.field("mean_tpot_incl_first_ms", _F64),
    pa.field("mean_itl_ms", _F64),
    pa.field("mean_e2el_ms", _F64),
    pa.field("p99_e2el_ms", _F64),
    pa.field("queries_per_dollar", _F64),
    pa.field("loadgen_capacity_rps", _F64),
    pa.field("client_bound", pa.bool_(), nullable=False),
    pa.field("replicas_min", pa.int64()),  # replicas serving the model during the run (autoscaling)
    pa.field("replicas_max", pa.int64()),
    pa.field("engine_args", pa.string(), nullable=False),
    pa.field("deployment_config", pa.string(), nullable=False),  # Ray Serve replicas / autoscaling
    # judged against the sweep's `report.slo` (described in `slo`; the report re-judges from `requests`):
    pa.field("slo", pa.string()),
    pa.field("goodput_rps", _F64),  # requests/s that completed within every SLO bound
    pa.field("slo_met", pa.bool_()),  # TTFT and TPOT at the SLO percentile within the bounds
    pa.field("slo_max_qps", _F64),  # async: the highest achieved req/s of the cell's rates meeting the SLO
    pa.field("slo_queries_per_dollar", _F64),  # queries/$ at slo_max_qps (sync: its own, when met)
    pa.field("cost_reduction", _F64),  # mean over use cases of queries/$ / the baseline's (see loadtest)
    pa.field("cost_reduction_note", pa.string()),
    # server (a partition key): ray-serve | vllm-serve (bare, serve.bare_baseline) | external (imported)
    extra_keys=("hardware", "use_case", "server"),
)

TRIALS = _schema(
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("params", pa.map_(pa.string(), pa.string()), nullable=False),
    pa.field("suite", pa.string(), nullable=False),
    pa.field("search", pa.string(), nullable=False),
    pa.field("scheduler", pa.string(), nullable=False),
    pa.field("score", _F64),
    pa.field("baseline_score", _F64),
    pa.field("recovery_pct", _F64),
    pa.field("rung_recovery_pct", pa.list_(_F64), nullable=False),  # one per report, in order
    pa.field("budget", pa.int64()),  # documents scored when the trial ended
    pa.field("stopped_early", pa.bool_(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("artifact_key", pa.string()),
    pa.field("rtn_fallback_modules", pa.list_(pa.string()), nullable=False),
    pa.field("wall_s", _F64),
    pa.field("is_best", pa.bool_(), nullable=False),
    pa.field("validation_suite", pa.string()),
    pa.field("validation_recovery_pct", _F64),
    pa.field("proxy_kl", _F64),  # the trial checkpoint's quality-gate figures (cluster.stages.tuneproxy)
    pa.field("proxy_top1", _F64),
    pa.field("proxy_ppl_ratio", _F64),
)

GENERATIONS = _schema(
    pa.field("prompt_id", pa.int64(), nullable=False),
    pa.field("prompt_hash", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("max_tokens", pa.int64(), nullable=False),
    pa.field("weights", pa.string(), nullable=False),
)

SIMILARITY = _schema(
    pa.field("baseline_format", pa.string(), nullable=False),
    pa.field("prompt_id", pa.int64(), nullable=False),
    pa.field("prompt_hash", pa.string(), nullable=False),
    pa.field("reference", pa.string(), nullable=False),
    pa.field("candidate", pa.string(), nullable=False),
    pa.field("rouge1", _F64, nullable=False),
    pa.field("rougeL", _F64, nullable=False),
    pa.field("bertscore_f1", _F64, nullable=False),
    pa.field("sts", _F64, nullable=False),
    pa.field("max_tokens", pa.int64(), nullable=False),
    pa.field("sts_model", pa.string(), nullable=False),
    pa.field("bertscore_model", pa.string(), nullable=False),
)

GUIDELINE = pa.schema(
    [
        pa.field("sweep", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("hardware", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),  # sync | async
        pa.field("slo", pa.string(), nullable=False),  # an SLO's name; "none": latency unconstrained
        pa.field("slo_detail", pa.string(), nullable=False),
        pa.field("use_case", pa.string(), nullable=False),  # a use case, or "all" (every one measured)
        pa.field("format", pa.string()),  # the format to deploy; null when the data cannot decide
        pa.field("decision", pa.string(), nullable=False),  # deploy | tie | undecided
        pa.field("reason", pa.string(), nullable=False),
        pa.field("queries_per_dollar", _F64),
        pa.field("cost_reduction", _F64),  # vs the baseline format, mean over the use cases
        pa.field("recovery_pct", _F64),  # the lowest over the suites the floor applies to
        pa.field("recovery_floor", _F64, nullable=False),
        pa.field("baseline_format", pa.string(), nullable=False),
        pa.field("runner_up", pa.string()),
        pa.field("considered", pa.list_(pa.string()), nullable=False),  # one verdict per format
        *PROVENANCE,
    ]
)

CATALOG: dict[str, pa.Schema] = {
    "quantized": QUANTIZED,
    "eval_scores": EVAL_SCORES,
    "eval_samples": EVAL_SAMPLES,
    "recovery": RECOVERY,
    "requests": REQUESTS,
    "perf": PERF,
    "trials": TRIALS,
    "proxies": PROXIES,
    "generations": GENERATIONS,
    "similarity": SIMILARITY,
    "guideline": GUIDELINE,  # written by `report` (not a cell): one file per sweep x model
}


def partition_cols(name: str) -> tuple[str, ...]:
    """The hive partition columns of a dataset: sweep/model/format plus what separates its cells."""
    if name in _KEYS:
        return _KEYS[name]
    schema = CATALOG[name]
    return tuple(f.name for f in schema)[: len(BASE_PARTITION) + _EXTRA[name]]


_KEYS = {"guideline": ("sweep", "model")}
_EXTRA = {"eval_scores": 1, "eval_samples": 1, "recovery": 1, "requests": 3, "perf": 3, "proxies": 1}
_EXTRA.update({k: 0 for k in ("quantized", "trials", "generations", "similarity")})
