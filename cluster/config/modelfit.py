"""Recipes that fit the model: a model's own recipe settings, and the W4A16 group-size check.

A model entry may set `group_size` (every W4A16 recipe this model gets) and `recipe_overrides`
(format -> recipe keys, like a sweep's); `recipe_for` is the one place a (model, format) recipe is
made. Group quantization needs each quantized Linear's input size to be a multiple of the group
size: `check_group_sizes` reads the model's `config.json` (a local path or `model_paths` entry) or
a built model's spec, never its weights, and stops `plan` with one error naming the layers that do
not divide and the group sizes that would. Hub-only models are checked where their config is.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from cluster.config import schema as C
from cluster.config.schema import Catalog, RecipeConfig
from cluster.errors import ConfigError

DEFAULT_GROUP = 128  # llmcompressor's W4A16 preset
CANDIDATES = (256, 128, 64, 32, 16)  # group sizes worth proposing, largest first


def recipe_for(catalog: Catalog, model: str, fmt: str) -> RecipeConfig:
    """The format's recipe with the model's own settings applied (`group_size`, then `recipe_overrides`)."""
    from cluster.config.checks import set_recipe

    m, f = catalog.models[model], catalog.formats[fmt]
    recipe = f.recipe
    if m.group_size is not None and recipe.scheme == "W4A16":
        recipe = replace(recipe, group_size=m.group_size)
    values = m.recipe_overrides.get(fmt)
    if values:
        recipe = set_recipe(replace(f, recipe=recipe), values, str(model), f"recipe_overrides.{fmt}").recipe
    return recipe


def check_model_recipes(catalog: Catalog) -> None:
    """A model's `group_size` is positive and its `recipe_overrides` name known formats and recipe keys."""
    from cluster.config.checks import check_format

    for model in catalog.models.values():
        source = f"{catalog.conf_dir / 'models' / model.name}.yaml"
        if model.group_size is not None and model.group_size < 1:
            raise ConfigError(f"{source}: group_size must be at least 1, got {model.group_size}")
        for fmt, values in model.recipe_overrides.items():
            if fmt not in catalog.formats:
                raise ConfigError(
                    f"{source}: recipe_overrides names unknown format '{fmt}' "
                    f"(known: {', '.join(sorted(catalog.formats))})"
                )
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: recipe_overrides.{fmt} must map recipe keys to values")
            check_format(
                replace(catalog.formats[fmt], recipe=_recipe_or_error(catalog, model.name, fmt, source)),
                f"{source} (recipe_overrides.{fmt})",
            )


def _recipe_or_error(catalog: Catalog, model: str, fmt: str, source: str) -> RecipeConfig:
    try:
        return recipe_for(catalog, model, fmt)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {str(exc).split(': ', 1)[-1]}") from None


def linear_inputs(config: dict[str, Any]) -> dict[str, int]:
    """Input size of each Linear in a decoder block, from a (Llama-style) `config.json`."""
    hidden = int(config["hidden_size"])
    heads = int(config.get("num_attention_heads") or 1)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config.get("intermediate_size") or 4 * hidden)
    return {
        "q_proj": hidden,
        "k_proj": hidden,
        "v_proj": hidden,
        "o_proj": heads * head_dim,
        "gate_proj": hidden,
        "up_proj": hidden,
        "down_proj": inter,
    }


def _ignored(layer: str, ignore: list[str]) -> bool:
    """Whether the recipe's `ignore` list keeps this layer unquantized (names or `re:` patterns)."""
    probe = f"model.layers.0.{'self_attn' if layer.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{layer}"
    for entry in ignore:
        if entry.startswith("re:"):
            if re.search(entry[3:], probe):
                return True
        elif entry == layer or probe.endswith(entry):
            return True
    return False


def misfits(inputs: dict[str, int], group_size: int, ignore: list[str]) -> dict[str, int]:
    """The quantized layers whose input size the group size does not divide."""
    return {n: size for n, size in inputs.items() if size % group_size and not _ignored(n, ignore)}


def fitting_sizes(inputs: dict[str, int]) -> list[int]:
    """Common group sizes that divide every input size, largest first."""
    g = math.gcd(*inputs.values())
    return [c for c in CANDIDATES if g % c == 0]


def model_config(sweep: C.SweepConfig, model: C.ModelConfig) -> tuple[dict[str, Any], str] | None:
    """The model's architecture numbers and where they came from (None: only on the hub)."""
    path = sweep.model_paths.get(model.name) or (model.path if not model.builder else None)
    if path:
        file = Path(path).expanduser() / "config.json"
        try:
            return json.loads(file.read_text()), str(file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model '{model.name}': cannot read '{file}' ({exc})") from None
    if model.builder:
        from cluster.models.organism import OrganismSpec
        from cluster.models.tinymodel import TinySpec

        spec_type = {"tiny-llama": TinySpec, "organism": OrganismSpec}[model.builder]
        spec = asdict(spec_type(**model.builder_args))
        return {**spec, "num_attention_heads": spec["num_heads"]}, f"the {model.builder} builder's spec"
    return None


def _formats(sweep: C.SweepConfig) -> list[tuple[str, list[int]]]:
    """Each format of the sweep with the extra group sizes tuning will try on it."""
    tried: list[int] = []
    if sweep.tune.enabled:
        tried = [int(v) for v in sweep.tune.space.get("group_size") or [] if v is not None]
    out = [(f, tried if f == sweep.tune.format else []) for f in sweep.formats]
    if sweep.tune.enabled and sweep.tune.format not in sweep.formats:
        out.append((sweep.tune.format, tried))
    return out


def check_group_sizes(sweep: C.SweepConfig, catalog: Catalog, source: str) -> None:
    """Every W4A16 group size the sweep uses divides every quantized Linear's input size."""
    for name in sweep.models:
        model = catalog.models[name]
        found = None
        for fmt, tried in _formats(sweep):
            recipe = recipe_for(catalog, name, fmt)
            if recipe.algorithm == "none" or recipe.scheme != "W4A16":
                continue
            found = found or model_config(sweep, model)
            if found is None:
                break  # a hub-only model: its config.json is read where the hub is reachable
            inputs = linear_inputs(found[0])
            for size in [recipe.group_size or DEFAULT_GROUP, *tried]:
                bad = misfits(inputs, size, list(recipe.ignore))
                if bad:
                    entry = f"{catalog.conf_dir / 'models' / name}.yaml"
                    raise ConfigError(_message(source, name, fmt, size, bad, inputs, found[1], entry))


def _message(
    source: str, model: str, fmt: str, size: int, bad: dict[str, int], inputs: dict, where: str, entry: str
) -> str:
    by_size: dict[int, list[str]] = {}
    for layer, n in bad.items():
        by_size.setdefault(n, []).append(layer)
    layers = "; ".join(f"{', '.join(names)} (input {n})" for n, names in by_size.items())
    fits = fitting_sizes(inputs)
    hint = (
        f"group sizes that divide every layer: {', '.join(map(str, fits))} "
        f"(set `group_size: {fits[0]}` in {entry})"
        if fits
        else "no common group size divides every layer (quantize per channel instead)"
    )
    return (
        f"{source}: model '{model}', format '{fmt}': W4A16 group size {size} does not divide the input size "
        f"of {layers} (from {where}); {hint}"
    )
