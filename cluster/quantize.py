"""The quantize stage: one llmcompressor `oneshot` run per (model, format) in its own Ray task.

A checkpoint is stored under the hash of (base model, recipe, tool versions) and written to a
temporary directory that is renamed into place only when complete, so a rerun finds finished
artifacts and never a half-written one. Each task runs in a fresh worker process (`max_calls=1`)
so its peak RSS is its own. GPTQ layers that silently fell back to round-to-nearest (Hessian not
invertible, llm-compressor issue 2952) are captured while the modifier finalizes (it clears its
own list there) and recorded, never hidden.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.config import RecipeConfig
from cluster.recipes import build_modifiers, recipe_hash, save_recipe

ARTIFACT_FILE = "quantsweep_artifact.json"
QUANT_TOOLS = ("llmcompressor", "compressed-tensors", "transformers", "torch")


@dataclass
class QuantizeJob:
    """Everything one quantization needs; picklable for Ray."""

    model: str
    format: str
    base_path: str
    recipe: RecipeConfig
    artifact_root: str
    instruct_source: str | None  # local jsonl file or hub dataset id
    base_identity: str  # what makes the base model unique (hub id, path, or builder hash)


def tool_versions(names: tuple[str, ...] = QUANT_TOOLS) -> dict[str, str]:
    """Installed versions of the given distributions (missing ones as 'absent')."""
    import importlib.metadata as md

    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def artifact_key(job: QuantizeJob) -> str:
    """Content hash of (base model, recipe, quantization tool versions)."""
    return recipe_hash(job.recipe, job.base_identity, tool_versions())[:16]


def artifact_dir(job: QuantizeJob) -> Path:
    """Where the finished checkpoint lives."""
    return Path(job.artifact_root) / job.model / f"{job.format}-{artifact_key(job)}"


def find_artifact(job: QuantizeJob) -> dict[str, Any] | None:
    """The metadata of a finished artifact, or None when it must be built."""
    meta = artifact_dir(job) / ARTIFACT_FILE
    return json.loads(meta.read_text()) if meta.is_file() else None


def _calibration_texts(source: str, n: int, seed: int) -> list[str]:
    """Instruction-style calibration text from a local jsonl file or a hub dataset."""
    path = Path(source)
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        texts = [r.get("text") or "\n".join(m["content"] for m in r["messages"]) for r in rows]
    else:
        from datasets import load_dataset

        ds = load_dataset(source, split="train")
        texts = [f"{r.get('instruction', '')}\n{r.get('output', '')}" for r in ds]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def calibration_dataset(recipe: RecipeConfig, tokenizer, instruct_source: str | None):
    """A tokenized calibration `datasets.Dataset` for the recipe's source."""
    from datasets import Dataset

    cal = recipe.calibration
    rng = random.Random(cal.seed)
    if cal.source == "random":
        special = set(tokenizer.all_special_ids)
        vocab = [i for i in range(len(tokenizer)) if i not in special]
        ids = [[rng.choice(vocab) for _ in range(cal.max_seq_length)] for _ in range(cal.num_samples)]
    else:
        if not instruct_source:
            raise ValueError("calibration.source is 'instruct' but the model names no instruct_dataset")
        texts = _calibration_texts(instruct_source, cal.num_samples, cal.seed)
        ids = [tokenizer(t, truncation=True, max_length=cal.max_seq_length)["input_ids"] for t in texts]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_quantize(job: QuantizeJob) -> dict[str, Any]:
    """Quantize one checkpoint (or find it) and return its artifact metadata."""
    found = find_artifact(job)
    if found is not None:
        return {**found, "cache_hit": True}
    final = artifact_dir(job)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{job.format}-", dir=final.parent))
    try:
        meta = _quantize_into(job, tmp)
        meta["path"] = str(final)
        (tmp / ARTIFACT_FILE).write_text(json.dumps(meta, indent=2, default=str))
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**meta, "cache_hit": False}


@contextmanager
def recording_rtn_fallbacks() -> Iterator[list[str]]:
    """Collect the names of GPTQ modules quantized with round-to-nearest during `oneshot`.

    GPTQModifier logs and then empties `_rtn_fallback_module_names` in `on_finalize`, so reading it
    after `oneshot` returns finds nothing; the summary hook sees the list just before it is cleared.
    """
    from llmcompressor.modifiers.gptq.base import GPTQModifier

    names: list[str] = []
    original = GPTQModifier._log_rtn_fallback_summary

    def record(self) -> None:
        names.extend(self._rtn_fallback_module_names)
        original(self)

    GPTQModifier._log_rtn_fallback_summary = record  # type: ignore[method-assign]
    try:
        yield names
    finally:
        GPTQModifier._log_rtn_fallback_summary = original  # type: ignore[method-assign]


def _quantize_into(job: QuantizeJob, out: Path) -> dict[str, Any]:
    """Load the base model, run oneshot, save compressed weights, tokenizer and recipe."""
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(job.base_path)
    model = AutoModelForCausalLM.from_pretrained(job.base_path, dtype=torch.bfloat16)
    modifiers = build_modifiers(job.recipe)
    cal = job.recipe.calibration
    kwargs: dict[str, Any] = {"recipe": modifiers, "max_seq_length": cal.max_seq_length}
    if cal.source != "none":
        kwargs["dataset"] = calibration_dataset(job.recipe, tokenizer, job.instruct_source)
        kwargs["num_calibration_samples"] = cal.num_samples
    with recording_rtn_fallbacks() as fallback:
        oneshot(model=model, **kwargs)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    save_recipe(job.recipe, out)
    return {
        "key": artifact_key(job),
        "model": job.model,
        "format": job.format,
        "base_identity": job.base_identity,
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "size_bytes": _dir_size(out),
        "rtn_fallback_modules": sorted(set(fallback)),
        "versions": tool_versions(),
    }


def quantize_all(jobs: list[QuantizeJob], num_cpus: float, num_gpus: float) -> list[dict[str, Any]]:
    """Run every job as a Ray task (cache hits return at once); results in job order."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_calls=1)(run_quantize)
    found = [find_artifact(job) for job in jobs]
    refs = {i: remote.remote(job) for i, job in enumerate(jobs) if found[i] is None}
    built = dict(zip(refs, ray.get(list(refs.values())), strict=True))
    return [built[i] if i in built else {**(found[i] or {}), "cache_hit": True} for i in range(len(jobs))]


def _check_health(ctx, jobs: list[QuantizeJob]) -> None:
    """Check every new or cached artifact (config, GPTQ fallbacks, a vLLM load) before evaluation."""
    from cluster import health

    if not jobs:
        return
    metas = [ctx.checkpoints[(j.model, j.format)].meta for j in jobs]
    tps = [1 if ctx.cpu_only else ctx.models[j.model].config.gpus.get(j.format, 1) for j in jobs]
    probe = ctx.sweep.quantize.health_probe
    ctx.console.log(f"health: {len(jobs)} artifact(s){', loading each in vLLM' if probe else ''}")
    records = health.check_all(
        [(j.recipe, meta, tp) for j, meta, tp in zip(jobs, metas, tps, strict=True)],
        ctx.sweep.serve.engine.max_model_len,
        ctx.sweep.seed,
        ctx.cpu_only,
        probe,
    )
    for job, meta, record in zip(jobs, metas, records, strict=True):
        meta["health"], meta["health_detail"] = record["health"], record["detail"]
        style = "" if record["health"] == "ok" else "[bold red]"
        ctx.console.log(f"  {style}{job.model} {job.format}: {record['health']}: {record['detail']}")


def run_stage(ctx) -> None:
    """Quantize every (model, format) of the sweep; record checkpoints and `quantized` rows."""
    import yaml

    from cluster.context import Checkpoint
    from cluster.recipes import recipe_dict

    sweep, catalog = ctx.sweep, ctx.catalog
    todo: list[QuantizeJob] = []
    for name, model in ctx.models.items():
        for f in sweep.formats:
            recipe = catalog.formats[f].recipe
            if recipe.algorithm == "none":
                meta = {
                    "key": "base",
                    "path": model.path,
                    "wall_s": 0.0,
                    "peak_rss_mb": None,
                    "size_bytes": None,
                    "rtn_fallback_modules": [],
                    "cache_hit": True,
                    "health": "ok",
                    "health_detail": "the unquantized base model",
                }
                ctx.checkpoints[(name, f)] = Checkpoint(name, f, model.path, meta)
                continue
            todo.append(
                QuantizeJob(
                    name,
                    f,
                    model.path,
                    recipe,
                    str(ctx.root / "artifacts" / "quantized"),
                    model.instruct_source,
                    model.identity,
                )
            )
    ctx.console.log(f"quantize: {len(todo)} checkpoint(s) with llmcompressor")
    for job, meta in zip(
        todo, quantize_all(todo, sweep.quantize.num_cpus, sweep.quantize.num_gpus), strict=True
    ):
        ctx.checkpoints[(job.model, job.format)] = Checkpoint(job.model, job.format, meta["path"], meta)
        note = "cache hit" if meta["cache_hit"] else f"{meta['wall_s']:.1f}s"
        ctx.console.log(f"  {job.model} {job.format}: {note} -> {meta['path']}")
    _check_health(ctx, todo)
    rows = []
    for (m, f), ck in ctx.checkpoints.items():
        fmt = catalog.formats[f]
        rows.append(
            {
                "sweep": sweep.name,
                "model": m,
                "format": f,
                "label": fmt.label,
                "algorithm": fmt.recipe.algorithm,
                "scheme": fmt.recipe.scheme,
                "recipe_yaml": yaml.safe_dump(recipe_dict(fmt.recipe), sort_keys=True),
                "artifact_key": ck.meta["key"],
                "path": ck.path,
                "wall_s": ck.meta.get("wall_s"),
                "peak_rss_mb": ck.meta.get("peak_rss_mb"),
                "size_bytes": ck.meta.get("size_bytes"),
                "cache_hit": bool(ck.meta.get("cache_hit")),
                "rtn_fallback_modules": list(ck.meta.get("rtn_fallback_modules", [])),
                "health": ck.meta["health"],
                "health_detail": ck.meta.get("health_detail"),
            }
        )
    ctx.results["quantized"] = rows
