"""Turn a declarative `RecipeConfig` into llmcompressor modifiers, and back into a saved recipe.

One function per direction: `build_modifiers` (config -> modifier objects for `oneshot`) and
`recipe_dict` (config -> the plain data quantsweep saves beside every checkpoint, hashes, and
reloads with `load_recipe`). llmcompressor is imported lazily: planning never needs it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from cluster.config.merge import structured
from cluster.config.schema import RecipeConfig

RECIPE_FILE = "quantsweep_recipe.yaml"


def recipe_dict(recipe: RecipeConfig) -> dict[str, Any]:
    """The recipe as plain, JSON-able data."""
    return asdict(recipe)


def recipe_hash(recipe: RecipeConfig, *extra: Any) -> str:
    """A content hash of the recipe plus anything else that determines the artifact."""
    blob = json.dumps([recipe_dict(recipe), *extra], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def save_recipe(recipe: RecipeConfig, directory: Path) -> Path:
    """Write the recipe YAML beside a checkpoint."""
    path = Path(directory) / RECIPE_FILE
    path.write_text(yaml.safe_dump(recipe_dict(recipe), sort_keys=True))
    return path


def load_recipe(path: Path) -> RecipeConfig:
    """Read a saved recipe back into a validated RecipeConfig."""
    return structured(RecipeConfig, yaml.safe_load(Path(path).read_text()), str(path))


def _weights_group(recipe: RecipeConfig) -> dict[str, Any]:
    """An explicit W4A16 config group, used when the group size is not the preset's 128."""
    return {
        "group_0": {
            "targets": list(recipe.targets),
            "weights": {
                "num_bits": 4,
                "type": "int",
                "symmetric": True,
                "strategy": "group",
                "group_size": recipe.group_size,
                "observer": recipe.observer,
            },
        }
    }


def build_modifiers(recipe: RecipeConfig, smooth_mappings: list[Any] | None = None) -> list[Any]:
    """llmcompressor modifiers for a recipe (empty for the baseline).

    `smooth_mappings` are SmoothQuant's [[balance layers], smooth layer] pairs, traced from the model
    by `cluster.quant.smoothmap`; None leaves them to llmcompressor's name table.
    """
    if recipe.algorithm == "none":
        return []
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    common: dict[str, Any] = {"targets": list(recipe.targets), "ignore": list(recipe.ignore)}
    if recipe.scheme == "W4A16" and recipe.group_size not in (None, 128):
        common = {"ignore": list(recipe.ignore), "config_groups": _weights_group(recipe)}
    else:
        common["scheme"] = recipe.scheme
        if recipe.observer != "minmax":
            common["weight_observer"] = recipe.observer
    if recipe.algorithm == "rtn":
        return [QuantizationModifier(**common)]
    modifiers: list[Any] = []
    if recipe.smoothquant_strength is not None:
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        modifiers.append(
            SmoothQuantModifier(smoothing_strength=recipe.smoothquant_strength, mappings=smooth_mappings)
        )
    modifiers.append(
        GPTQModifier(
            dampening_frac=recipe.dampening_frac,
            block_size=recipe.block_size,
            actorder=recipe.actorder,
            **common,
        )
    )
    return modifiers
