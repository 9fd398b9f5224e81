"""Health checks on every quantized artifact, before any evaluation is spent on it.

Three checks, cheapest first:
- the compressed-tensors `quantization_config` in the checkpoint's config.json says what the recipe
  asked for (number format, bits, strategy, group size, observer, activations, ignore list);
- no GPTQ layer fell back to round-to-nearest (recorded by the quantize stage);
- the checkpoint loads in vLLM and greedily generates a few finite-probability tokens (the health
  cell runs it on the engine hosts that then evaluate the checkpoint: `cluster.stages.health`);
- the quality gate: its next-token distributions stay close to the baseline's on held-out text
  (`cluster.quant.quality`), which catches weights that load and generate fluent garbage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cluster.config.schema import RecipeConfig

PROBE_PROMPT = "Question: What is 2 plus 3?\nAnswer:"
# scheme -> (weight type, bits, strategy, activation type or None for weight-only)
SCHEMES: dict[str, tuple[str, int, str, str | None]] = {
    "FP8_DYNAMIC": ("float", 8, "channel", "float"),
    "W8A8": ("int", 8, "channel", "int"),
    "W4A16": ("int", 4, "group", None),
}
# verdicts, worst first; evaluation skips the first three
VERDICTS = ("load_failed", "config_mismatch", "quality_failed", "rtn_fallback", "ok")


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
        found = w.get(key)
        if key == "observer" and found == f"memoryless_{value}":
            continue  # round-to-nearest records the stateless variant of the same observer
        if found != value:
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


def verdict(
    mismatches: list[str], fallback: list[str], probed: dict[str, Any] | None, quality: str | None = None
) -> tuple[str, str]:
    """(verdict, detail) from the checks, the worst one winning (`quality`: the gate's failure, if any)."""
    if probed is not None and not probed["ok"]:
        return "load_failed", probed["error"]
    if mismatches:
        return "config_mismatch", "; ".join(mismatches)
    if quality:
        return "quality_failed", quality
    if fallback:
        return "rtn_fallback", f"{len(fallback)} GPTQ module(s) fell back to round-to-nearest"
    if probed is None:
        return "ok", "config and GPTQ checks only (quantize.health_probe is off)"
    return "ok", f"loaded in vLLM, generated {probed['text']!r}"
