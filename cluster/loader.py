"""Load and validate conf/ and sweep files into the structured configs of `cluster.config`.

Every problem becomes one `ConfigError` whose message names the file and the key; cross-field
checks (unknown format names, missing model paths, impossible values) run here, before any stage
starts and before anything is written.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from cluster import config as C
from cluster.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONF_DIR = REPO_ROOT / "conf"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

T = TypeVar("T")


@dataclass
class Catalog:
    """Everything conf/ defines, keyed by name."""

    models: dict[str, C.ModelConfig]
    formats: dict[str, C.FormatConfig]
    suites: dict[str, C.SuiteConfig]
    use_cases: dict[str, C.UseCaseConfig]
    hardware: dict[str, C.HardwareConfig]
    conf_dir: Path


def _read_yaml(path: Path) -> Any:
    """Read one YAML file or raise a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _describe(exc: OmegaConfBaseException, schema: type) -> str:
    """Turn an omegaconf error into a short phrase naming the key."""
    key = getattr(exc, "full_key", "") or ""
    if isinstance(exc, ConfigKeyError):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        return f"unknown key '{key}'" + (
            f" under '{parent}'" if parent else f" (not a field of {schema.__name__})"
        )
    if isinstance(exc, MissingMandatoryValue):
        return f"missing required key '{key}'"
    if isinstance(exc, ValidationError):
        msg = str(exc).splitlines()[0]
        return f"bad value for '{key}': {msg}"
    return str(exc).splitlines()[0]


def structured(schema: type[T], data: Any, source: str, overrides: list[str] | None = None) -> T:
    """Merge `data` (and dotlist overrides) into `schema` in struct mode; return the object."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at top level, got {type(data).__name__}")
    try:
        cfg: Any = OmegaConf.structured(schema)
        cfg = OmegaConf.merge(cfg, data)
        if overrides:
            cfg = OmegaConf.merge(cfg, _parse_overrides(overrides, source))
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{source}: missing required key '{missing[0]}'")
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_describe(exc, schema)}") from None


def _parse_overrides(overrides: list[str], source: str) -> DictConfig:
    """Parse CLI `key=value` overrides; a token without '=' is an error."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"{source}: override '{bad[0]}' is not of the form key=value")
    return OmegaConf.from_dotlist(overrides)


def _load_dir(directory: Path, schema: type[T]) -> dict[str, T]:
    """Load every *.yaml in a conf/ subdirectory; the file stem must equal its `name`."""
    items: dict[str, T] = {}
    for path in sorted(directory.glob("*.yaml")):
        obj = structured(schema, _read_yaml(path), str(path))
        name = obj.name  # type: ignore[attr-defined]
        if name != path.stem:
            raise ConfigError(f"{path}: name '{name}' must match the file name '{path.stem}'")
        items[name] = obj
    return items


def _load_table(path: Path, schema: type[T]) -> dict[str, T]:
    """Load a file mapping name -> entry (use cases, hardware)."""
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of name -> entry")
    return {
        name: structured(schema, {"name": name, **(entry or {})}, f"{path} [{name}]")
        for name, entry in data.items()
    }


def load_catalog(conf_dir: Path | str | None = None) -> Catalog:
    """Load and validate every entry under conf/."""
    root = Path(conf_dir) if conf_dir else DEFAULT_CONF_DIR
    if not root.is_dir():
        raise ConfigError(f"conf_dir '{root}' is not a directory")
    catalog = Catalog(
        models=_load_dir(root / "models", C.ModelConfig),
        formats=_load_dir(root / "formats", C.FormatConfig),
        suites=_load_dir(root / "suites", C.SuiteConfig),
        use_cases=_load_table(root / "use_cases.yaml", C.UseCaseConfig),
        hardware=_load_table(root / "hardware.yaml", C.HardwareConfig),
        conf_dir=root,
    )
    for fmt in catalog.formats.values():
        check_format(fmt, f"{root / 'formats' / fmt.name}.yaml")
    for model in catalog.models.values():
        check_model(model, f"{root / 'models' / model.name}.yaml", catalog)
    for suite in catalog.suites.values():
        for task in suite.tasks:
            _check_choice(
                task.kind, C.TASK_KINDS, f"{root / 'suites' / suite.name}.yaml", f"task {task.name}: kind"
            )
    for hw in catalog.hardware.values():
        _check_choice(
            hw.capabilities, C.CAPABILITIES, f"{root / 'hardware.yaml'} [{hw.name}]", "capabilities"
        )
    return catalog


def _check_choice(value: Any, allowed: tuple, source: str, key: str) -> None:
    """Raise unless value (or each item of a list value) is one of `allowed`."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v not in allowed:
            raise ConfigError(f"{source}: {key} '{v}' is not one of {', '.join(map(str, allowed))}")


def check_format(fmt: C.FormatConfig, source: str) -> None:
    """Cross-field checks of a format's recipe."""
    r = fmt.recipe
    _check_choice(r.algorithm, C.ALGORITHMS, source, "recipe.algorithm")
    _check_choice(r.observer, C.OBSERVERS, source, "recipe.observer")
    _check_choice(r.calibration.source, C.CALIBRATION_SOURCES, source, "recipe.calibration.source")
    _check_choice(fmt.requires, C.CAPABILITIES, source, "requires")
    if r.algorithm != "none":
        _check_choice(r.scheme, C.SCHEMES, source, "recipe.scheme")
    if not 0.0 < r.dampening_frac < 1.0:
        raise ConfigError(f"{source}: recipe.dampening_frac must be in (0, 1), got {r.dampening_frac}")
    if r.smoothquant_strength is not None and not 0.0 < r.smoothquant_strength < 1.0:
        raise ConfigError(
            f"{source}: recipe.smoothquant_strength must be in (0, 1), got {r.smoothquant_strength}"
        )
    if r.group_size is not None and r.group_size <= 0:
        raise ConfigError(f"{source}: recipe.group_size must be positive, got {r.group_size}")
    if r.algorithm == "gptq" and r.calibration.source == "none":
        raise ConfigError(f"{source}: recipe.calibration.source must be random or instruct for gptq")
    for key in ("num_samples", "max_seq_length"):
        if getattr(r.calibration, key) <= 0:
            raise ConfigError(f"{source}: recipe.calibration.{key} must be positive")


def check_model(model: C.ModelConfig, source: str, catalog: Catalog) -> None:
    """A model needs a source of weights, and its GPU table may only name known formats."""
    if model.builder is not None:
        _check_choice(model.builder, C.BUILDERS, source, "builder")
    if not (model.hub_id or model.path or model.builder):
        raise ConfigError(f"{source}: a model needs one of hub_id, path or builder")
    unknown = sorted(set(model.gpus) - set(catalog.formats))
    if unknown:
        raise ConfigError(f"{source}: gpus names unknown format '{unknown[0]}'")


def load_sweep(path: Path | str, overrides: list[str] | None = None) -> tuple[C.SweepConfig, Catalog]:
    """Load a sweep file plus CLI overrides, and validate it against the catalog."""
    source = str(path)
    sweep = structured(C.SweepConfig, _read_yaml(Path(path)), source, overrides)
    catalog = load_catalog(sweep.conf_dir)
    check_sweep(sweep, catalog, source)
    _apply_recipe_overrides(sweep, catalog, source)
    return sweep, catalog


def _check_recipe_keys(keys: list[str], source: str, where: str) -> None:
    """Each dotted key must name a RecipeConfig field."""
    recipe = OmegaConf.structured(C.RecipeConfig)
    for key in keys:
        if OmegaConf.select(recipe, key, default="__absent__") == "__absent__":
            raise ConfigError(f"{source}: {where} key '{key}' is not a recipe field")


def _apply_recipe_overrides(sweep: C.SweepConfig, catalog: Catalog, source: str) -> None:
    """Apply the sweep's per-format recipe overrides to the catalog copy this run uses."""
    used = [*sweep.formats, *([sweep.tune.format] if sweep.tune.enabled else [])]
    for name, values in sweep.recipe_overrides.items():
        _known([name], {f: 1 for f in used}, source, "recipe_overrides")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: recipe_overrides.{name} must map recipe keys to values")
        _check_recipe_keys(list(values), source, f"recipe_overrides.{name}")
        fmt = catalog.formats[name]
        try:
            merged = OmegaConf.structured(fmt.recipe)
            for key, value in values.items():
                OmegaConf.update(merged, key, value, merge=False)
            fmt.recipe = OmegaConf.to_object(merged)  # type: ignore[assignment]
        except OmegaConfBaseException as exc:
            raise ConfigError(
                f"{source}: recipe_overrides.{name}: {_describe(exc, C.RecipeConfig)}"
            ) from None
        check_format(fmt, f"{source} (recipe_overrides.{name})")


def _known(names: list[str], table: dict, source: str, key: str) -> None:
    """Every name must be a catalog entry."""
    for name in names:
        if name not in table:
            raise ConfigError(f"{source}: {key} names unknown '{name}' (known: {', '.join(sorted(table))})")


def check_sweep(sweep: C.SweepConfig, catalog: Catalog, source: str) -> None:
    """Cross-field checks that need the catalog; nothing has been written yet."""
    if not NAME_RE.match(sweep.name):
        raise ConfigError(f"{source}: name '{sweep.name}' must match {NAME_RE.pattern}")
    _known(sweep.models, catalog.models, source, "models")
    _known(sweep.formats, catalog.formats, source, "formats")
    if not sweep.models or not sweep.formats:
        raise ConfigError(f"{source}: models and formats must not be empty")
    if sweep.baseline not in sweep.formats:
        raise ConfigError(f"{source}: baseline '{sweep.baseline}' must be one of formats")
    for name, mpath in sweep.model_paths.items():
        _known([name], {m: 1 for m in sweep.models}, source, "model_paths")
        if not (Path(mpath) / "config.json").is_file():
            raise ConfigError(
                f"{source}: model_paths.{name}: '{mpath}' is not a model directory (no config.json)"
            )
    for name in sweep.models:
        model = catalog.models[name]
        _check_builder_args(model, source)
        if model.path and not model.builder and name not in sweep.model_paths:
            if not (Path(model.path) / "config.json").is_file():
                raise ConfigError(
                    f"model '{name}': path '{model.path}' is not a model directory (no config.json)"
                )
    _check_stages(sweep, catalog, source)


def _check_builder_args(model: C.ModelConfig, source: str) -> None:
    """builder_args may only name fields of the builder's spec."""
    if not model.builder_args:
        return
    from dataclasses import fields

    from cluster.organism import OrganismSpec
    from cluster.tinymodel import TinySpec

    spec = {"tiny-llama": TinySpec, "organism": OrganismSpec}.get(model.builder or "")
    if spec is None:
        raise ConfigError(f"{source}: model '{model.name}' has builder_args but no builder")
    unknown = sorted(set(model.builder_args) - {f.name for f in fields(spec)})
    if unknown:
        raise ConfigError(
            f"{source}: model '{model.name}': builder_args {unknown} are not {spec.__name__} fields"
        )


def _check_stages(sweep: C.SweepConfig, catalog: Catalog, source: str) -> None:
    """Stage-level checks: suites, use cases, hardware, tuning space, serving safety."""
    if sweep.eval.enabled:
        _known(sweep.eval.suites, catalog.suites, source, "eval.suites")
        kinds = {t.kind for s in sweep.eval.suites for t in catalog.suites[s].tasks}
        if "arena" in kinds and not sweep.eval.judge.base_url:
            raise ConfigError(
                f"{source}: eval.judge.base_url is required for the arena task(s) in eval.suites"
            )
        if sweep.eval.actors < 1:
            raise ConfigError(f"{source}: eval.actors must be >= 1, got {sweep.eval.actors}")
    if sweep.serve.enabled:
        _known(sweep.serve.use_cases, catalog.use_cases, source, "serve.use_cases")
        _known(sweep.serve.hardware, catalog.hardware, source, "serve.hardware")
        _check_choice(sweep.serve.profile, C.LOAD_PROFILES, source, "serve.profile")
        _check_choice(sweep.serve.ingress, C.SERVE_INGRESS, source, "serve.ingress")
        if sweep.serve.token_scale <= 0:
            raise ConfigError(f"{source}: serve.token_scale must be positive")
        if sweep.serve.host not in C.LOOPBACK and not sweep.serve.api_key:
            raise ConfigError(f"{source}: serve.api_key is required when serve.host is '{sweep.serve.host}'")
        if sweep.serve.host not in C.LOOPBACK and sweep.serve.ingress == "proxy":
            raise ConfigError(
                f"{source}: serve.ingress 'proxy' cannot check an API key; bind loopback or use 'haproxy'"
            )
        _check_autoscaling(sweep.serve, source)
    if sweep.tune.enabled:
        _check_tune(sweep, catalog, source)


def _check_autoscaling(sv: C.ServeStage, source: str) -> None:
    """Replica bounds Ray Serve accepts: 0 <= min <= max, max >= 1, a positive target, no fixed count."""
    a = sv.autoscaling
    if a is None:
        if sv.replicas < 1:
            raise ConfigError(f"{source}: serve.replicas must be >= 1, got {sv.replicas}")
        return
    key = f"{source}: serve.autoscaling"
    if a.min_replicas < 0 or a.max_replicas < 1:
        raise ConfigError(
            f"{key}: min_replicas must be >= 0 and max_replicas >= 1, got {a.min_replicas}, {a.max_replicas}"
        )
    if a.min_replicas > a.max_replicas:
        raise ConfigError(
            f"{key}: min_replicas ({a.min_replicas}) must not exceed max_replicas ({a.max_replicas})"
        )
    if a.target_ongoing_requests <= 0:
        raise ConfigError(f"{key}.target_ongoing_requests must be > 0, got {a.target_ongoing_requests}")
    if a.upscale_delay_s < 0 or a.downscale_delay_s < 0:
        raise ConfigError(
            f"{key}: upscale_delay_s and downscale_delay_s must be >= 0, "
            f"got {a.upscale_delay_s}, {a.downscale_delay_s}"
        )
    if sv.replicas != 1:
        raise ConfigError(
            f"{source}: serve.replicas ({sv.replicas}) conflicts with serve.autoscaling: "
            "the replica count comes from autoscaling.min_replicas/max_replicas (drop one of them)"
        )


def _check_tune(sweep: C.SweepConfig, catalog: Catalog, source: str) -> None:
    """The tuning space may only name real recipe keys, each with a non-empty list of values."""
    t = sweep.tune
    _known([t.format], catalog.formats, source, "tune.format")
    if not t.suite:
        raise ConfigError(f"{source}: tune.suite is required when tune.enabled is true")
    _known([t.suite], catalog.suites, source, "tune.suite")
    if t.validation_suite is not None:
        _known([t.validation_suite], catalog.suites, source, "tune.validation_suite")
        if t.validation_suite == t.suite:
            raise ConfigError(
                f"{source}: tune.validation_suite must differ from tune.suite (a held-out check)"
            )
    _check_choice(t.search, C.SEARCHES, source, "tune.search")
    _check_choice(t.scheduler, C.SCHEDULERS, source, "tune.scheduler")
    if t.rungs and t.limit is not None:
        raise ConfigError(
            f"{source}: set tune.rungs or tune.limit, not both (the last rung is the full budget)"
        )
    if any(r <= 0 for r in t.rungs) or list(t.rungs) != sorted(set(t.rungs)):
        raise ConfigError(
            f"{source}: tune.rungs must be strictly increasing positive sample counts, got {t.rungs}"
        )
    if t.scheduler == "asha" and len(t.rungs) < 2:
        raise ConfigError(f"{source}: tune.scheduler 'asha' needs at least two tune.rungs")
    if t.reduction_factor < 2:
        raise ConfigError(f"{source}: tune.reduction_factor must be >= 2, got {t.reduction_factor}")
    if t.num_samples < 1 or t.max_concurrent < 1:
        raise ConfigError(f"{source}: tune.num_samples and tune.max_concurrent must be >= 1")
    if not t.space:
        raise ConfigError(f"{source}: tune.space must name at least one recipe key")
    _check_recipe_keys(list(t.space), source, "tune.space")
    for key, values in t.space.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: tune.space.{key} must be a non-empty list of values")
        for value in values:  # every value must make a valid recipe on its own
            trial = copy.deepcopy(catalog.formats[t.format])
            try:
                merged = OmegaConf.structured(trial.recipe)
                OmegaConf.update(merged, key, value, merge=False)
                trial.recipe = OmegaConf.to_object(merged)  # type: ignore[assignment]
            except OmegaConfBaseException as exc:
                raise ConfigError(f"{source}: tune.space.{key}: {_describe(exc, C.RecipeConfig)}") from None
            check_format(trial, f"{source} (tune.space.{key}={value})")
