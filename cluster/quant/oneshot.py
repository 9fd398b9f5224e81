"""One llmcompressor `oneshot` run: load the base model, calibrate, quantize, save compressed weights.

The model is loaded in the host's compute dtype (float32 where bf16 has no hardware path) with the
cell's torch threads; GPTQ layers that silently fell back to round-to-nearest (Hessian not
invertible, llm-compressor issue 2952) are captured while the modifier finalizes (it clears its own
list there) and returned, never hidden. Progress (layer k of n) goes to a callback. SmoothQuant's
layer pairs are traced from the loaded model (`cluster.quant.smoothmap`), saved beside the checkpoint
and returned.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.config.schema import RecipeConfig
from cluster.quant.recipes import build_modifiers, save_recipe

SMOOTHQUANT_FILE = "quantsweep_smoothquant.json"
DTYPES = {"bfloat16": "bfloat16", "float32": "float32", "float16": "float16"}


def calibration_dataset(recipe: RecipeConfig, tokenizer, instruct_source: str | None):
    """A tokenized calibration `datasets.Dataset` for the recipe's source."""
    from datasets import Dataset

    from cluster.config.calibration import calibration_texts

    cal = recipe.calibration
    rng = random.Random(cal.seed)
    if cal.source == "random":
        special = set(tokenizer.all_special_ids)
        vocab = [i for i in range(len(tokenizer)) if i not in special]
        ids = [[rng.choice(vocab) for _ in range(cal.max_seq_length)] for _ in range(cal.num_samples)]
    else:
        if not instruct_source:
            raise ValueError("calibration.source is 'instruct' but the model names no instruct_dataset")
        texts = calibration_texts(instruct_source, cal.num_samples, cal.seed)
        ids = [tokenizer(t, truncation=True, max_length=cal.max_seq_length)["input_ids"] for t in texts]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})


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


@contextmanager
def layer_progress(model, report: Callable[[str], None]) -> Iterator[None]:
    """Report `quantization: layer k of n` as calibration reaches each decoder layer."""
    layers = getattr(getattr(model, "model", model), "layers", [])
    seen: set[int] = set()
    hooks = []
    for i, layer in enumerate(layers):

        def hook(_module, _args, i=i) -> None:
            if i not in seen:
                seen.add(i)
                report(f"quantization: layer {i + 1} of {len(layers)}")

        hooks.append(layer.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def peak_rss(every_s: float = 0.05) -> Iterator[dict[str, float]]:
    """Sample this process's RSS while the block runs; `out["peak_mb"]` is the highest seen.

    Worker processes are reused between cells, so the process-lifetime `ru_maxrss` would mix cells.
    """
    import threading

    import psutil

    proc, out, stop = psutil.Process(), {"peak_mb": 0.0}, threading.Event()

    def sample() -> None:
        while True:
            out["peak_mb"] = max(out["peak_mb"], proc.memory_info().rss / 2**20)
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def smoothing_for(model: Any, recipe: RecipeConfig, out: Path) -> dict[str, Any] | None:
    """SmoothQuant's traced mappings for `model` (None when the recipe does not smooth), saved in `out`."""
    if recipe.algorithm in ("none", "rtn") or recipe.smoothquant_strength is None:
        return None
    from cluster.quant.smoothmap import smoothquant_mappings

    smooth = smoothquant_mappings(model, recipe.ignore)
    out.mkdir(parents=True, exist_ok=True)
    (out / SMOOTHQUANT_FILE).write_text(json.dumps(smooth, indent=1))
    return smooth


def quantize_into(
    base_path: str,
    recipe: RecipeConfig,
    out: Path,
    dtype: str,
    instruct_source: str | None,
    report: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Quantize `base_path` with `recipe` into `out`; return what happened (time, RSS, fallbacks)."""
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, DTYPES[dtype]))
    cal = recipe.calibration
    smooth = smoothing_for(model, recipe, out)
    modifiers = build_modifiers(recipe, smooth["mappings"] if smooth else None)
    kwargs: dict[str, Any] = {"recipe": modifiers, "max_seq_length": cal.max_seq_length}
    if cal.source != "none":
        kwargs["dataset"] = calibration_dataset(recipe, tokenizer, instruct_source)
        kwargs["num_calibration_samples"] = cal.num_samples
    with peak_rss() as rss, recording_rtn_fallbacks() as fallback, layer_progress(model, report):
        oneshot(model=model, **kwargs)
    report("saving compressed weights")
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    save_recipe(recipe, out)
    return {
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": round(rss["peak_mb"], 1),
        "size_bytes": _dir_size(out),
        "rtn_fallback_modules": sorted(set(fallback)),
        "smoothquant": smooth,
    }
