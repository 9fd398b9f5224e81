"""SmoothQuant layer mappings read from the model's own forward pass, not from a name table.

SmoothQuant divides a norm's weight by per-channel scales and multiplies the input columns of the
Linear layers it feeds by the same scales; that is an identity only if the norm's output *is* those
Linears' input. llmcompressor picks the pairs from a table of architecture names whose default
assumes Llama's layout, which is wrong for, e.g., Gemma 2/3 (`post_attention_layernorm` normalises
the attention *output*; the MLP reads `pre_feedforward_layernorm`) and OLMo 2 (post-norms only: no
norm feeds q/k/v or gate/up at all). Here one tiny forward pass with hooks records which norm's
output tensor is, by identity, the input tensor of which Linear modules; only those pairs are
smoothed, and a disagreement with llmcompressor's table is logged and returned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

Mapping = list[Any]  # llmcompressor's form: [[balance regex, ...], smooth regex]


def _is_norm(module: Any) -> bool:
    """A leaf that is not a Linear and carries a 1-D weight (RMSNorm, LayerNorm, their variants)."""
    import torch

    weight = getattr(module, "weight", None)
    return (
        not isinstance(module, torch.nn.Linear)
        and not any(True for _ in module.children())
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 1
    )


def trace_feeds(model: Any, tokens: int = 8) -> dict[str, list[str]]:
    """Norm module name -> the Linear modules whose input tensor is exactly that norm's output."""
    import torch

    outputs: dict[int, tuple[str, Any]] = {}  # keeps the tensors alive so ids are not reused
    feeds: dict[str, list[str]] = {}
    handles = []

    def on_norm(name: str):
        def hook(_module, _args, out) -> None:
            out = out[0] if isinstance(out, tuple) else out
            outputs[id(out)] = (name, out)

        return hook

    def on_linear(name: str):
        def hook(_module, args) -> None:
            hit = outputs.get(id(args[0])) if args else None
            if hit is not None and hit[1] is args[0] and name not in feeds.setdefault(hit[0], []):
                feeds[hit[0]].append(name)

        return hook

    for name, module in model.named_modules():
        if _is_norm(module):
            handles.append(module.register_forward_hook(on_norm(name)))
        elif isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_pre_hook(on_linear(name)))
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    ids = (torch.arange(tokens, device=device) * 7 + 1) % vocab
    try:
        with torch.inference_mode():
            model(input_ids=ids[None])
    finally:
        for h in handles:
            h.remove()
    return {norm: linears for norm, linears in feeds.items() if linears}


def _pattern(name: str) -> str:
    """An anchored regex for a module name with every numeric path part (layer index) generalised."""
    return "re:^" + r"\.".join(r"\d+" if p.isdigit() else re.escape(p) for p in name.split(".")) + "$"


def to_mappings(feeds: dict[str, list[str]]) -> list[Mapping]:
    """llmcompressor mappings for traced pairs; one per layer shape, exact names where shapes differ."""
    keyed = {norm: (_pattern(norm), tuple(_pattern(x) for x in lins)) for norm, lins in feeds.items()}
    by_smooth: dict[str, set[tuple[str, ...]]] = {}
    for smooth, balance in keyed.values():
        by_smooth.setdefault(smooth, set()).add(balance)
    mappings: list[Mapping] = []
    for norm, (smooth, balance) in keyed.items():
        if len(by_smooth[smooth]) == 1:
            entry = [list(balance), smooth]
        else:  # layers of one name that feed different Linears (hybrid stacks): name them exactly
            entry = [[f"re:^{re.escape(x)}$" for x in feeds[norm]], f"re:^{re.escape(norm)}$"]
        if entry not in mappings:
            mappings.append(entry)
    return mappings


def _quantized(name: str, ignore: Sequence[str]) -> bool:
    """Whether a Linear is quantized under the recipe's `ignore` list."""
    for target in ignore:
        if target.startswith("re:") and re.match(target[3:], name):
            return False
        if name == target or name.endswith("." + target):
            return False
    return True


def table_pairs(model: Any, table: Sequence[Any]) -> dict[str, list[str]]:
    """What a name-table mapping would smooth: norm name -> balance Linears in the norm's layer."""
    names = [n for n, _ in model.named_modules()]

    def hits(target: str) -> list[str]:
        regex = target[3:] if target.startswith("re:") else rf"(.*\.)?{re.escape(target)}$"
        return [n for n in names if re.match(regex, n)]

    pairs: dict[str, list[str]] = {}
    for balance, smooth in (tuple(m) for m in table):
        for norm in hits(smooth):
            scope = norm.rsplit(".", 1)[0] + "." if "." in norm else ""
            found = dict.fromkeys(n for t in balance for n in hits(t) if n.startswith(scope))
            if found:
                pairs[norm] = list(found)
    return pairs


def smoothquant_mappings(model: Any, ignore: Sequence[str] = ("lm_head",)) -> dict[str, Any]:
    """The traced mappings for `model`, and where llmcompressor's table for it differs.

    A norm is smoothed only if at least one Linear it feeds is quantized; all the Linears it feeds
    are balanced (ignored ones too), or smoothing would change their input uncompensated.
    """
    from llmcompressor.modifiers.transform.smoothquant.dynamic_mappings import (
        get_layer_mappings_from_model,
    )

    feeds = {n: ls for n, ls in trace_feeds(model).items() if any(_quantized(x, ignore) for x in ls)}
    table = table_pairs(model, get_layer_mappings_from_model(model))
    wrong = sorted(
        f"{norm} -> {', '.join(table.get(norm, [])) or 'none'} (traced: {', '.join(feeds.get(norm, [])) or 'none'})"
        for norm in set(table) | set(feeds)
        if sorted(table.get(norm, [])) != sorted(feeds.get(norm, []))
    )
    arch = type(model).__name__
    if wrong:
        log.warning(
            "SmoothQuant: llmcompressor's mappings for %s disagree with the traced structure in %d "
            "norm(s), e.g. %s; using the traced ones",
            arch,
            len(wrong),
            wrong[0],
        )
    return {"mappings": to_mappings(feeds), "table_disagrees": wrong, "architecture": arch}
