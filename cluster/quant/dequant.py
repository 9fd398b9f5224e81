"""A dense copy of a weight-only checkpoint, for hosts whose vLLM build lacks the scheme's kernel.

W4A16 multiplies bf16/fp32 activations by dequantized weights (scale x int4 value); vLLM's AVX2 CPU
build has no kernel for it. The dense copy holds exactly those dequantized weights (compressed-tensors
decompresses what is on disk), with no quantization config, so vLLM's dense path computes the same
products the kernel would, and scores it with the same engine that scores the baseline. `on_grid`
checks the copy: every weight divided by its group's scale is an integer in the scheme's range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def dequantize(path: str, out: Path, dtype: str) -> dict[str, Any]:
    """Write a dense (unquantized) copy of the compressed checkpoint at `path` to `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import CompressedTensorsConfig

    torch_dtype = getattr(torch, dtype)
    quantized = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype, quantization_config=CompressedTensorsConfig(run_compressed=False)
    )
    check = on_grid(quantized)
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dense = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    wanted = dense.state_dict()
    state = {k: v for k, v in quantized.state_dict().items() if k in wanted}
    dense.load_state_dict(state, strict=True)
    dense.save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return check


def on_grid(model: Any, bits: int = 4) -> dict[str, Any]:
    """How far the decompressed weights lie from scale x integer in [-2^(bits-1), 2^(bits-1)-1]."""
    import torch

    worst, layers = 0.0, 0
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for module in model.modules():
        scale = getattr(module, "weight_scale", None)
        if scale is None or not isinstance(module, torch.nn.Linear):
            continue
        w = module.weight.detach().float()
        s = scale.detach().float()
        group = w.shape[1] // s.shape[1] if s.dim() == 2 and s.shape[1] else w.shape[1]
        q = w / s.repeat_interleave(group, dim=1)[:, : w.shape[1]]
        worst = max(worst, float((q - q.round()).abs().max()))
        if q.round().min() < lo or q.round().max() > hi:
            worst = max(worst, 1.0)
        layers += 1
    return {"dequantized_layers": layers, "max_grid_error": worst}
