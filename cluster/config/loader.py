"""Load conf/ and sweep files (plus CLI `key=value` overrides) into the structured configs of
`cluster.config.schema`, then run every check of `cluster.config.checks`.

Every problem becomes one `ConfigError` whose message names the file and the key. Files are read
strictly (`cluster.config.yamlsafe`: UTF-8, size cap, no aliases, no duplicate keys); overrides are
parsed with the same strict YAML, one value at a time. Nothing is written and nothing heavy is
imported: `plan` and `run` share this path, and it answers in well under a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from cluster.config import schema as C
from cluster.config import yamlsafe
from cluster.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
DEFAULT_CONF_DIR = REPO_ROOT / "conf"

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


def describe(exc: OmegaConfBaseException, schema: type) -> str:
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
        for key, value in parse_overrides(overrides or [], source):
            nested: Any = value
            for part in reversed(key.split(".")):
                nested = {part: nested}
            try:
                cfg = OmegaConf.merge(cfg, nested)
            except OmegaConfBaseException as exc:
                raise ConfigError(f"{source}: override '{key}': {describe(exc, schema)}") from None
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{source}: missing required key '{missing[0]}'")
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {describe(exc, schema)}") from None


def parse_overrides(overrides: list[str], source: str) -> list[tuple[str, Any]]:
    """CLI `key=value` overrides as (dotted key, strictly parsed YAML value); keys must be unique."""
    out: list[tuple[str, Any]] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or not all(KEY_PART.match(part) for part in key.split(".")):
            raise ConfigError(f"{source}: override '{item}' is not of the form key=value")
        if key in {k for k, _ in out}:
            raise ConfigError(f"{source}: override '{key}' given twice")
        out.append((key, yamlsafe.parse(raw, f"{source}: override '{key}'") if raw else ""))
    return out


def _load_dir(directory: Path, schema: type[T]) -> dict[str, T]:
    """Load every *.yaml in a conf/ subdirectory; the file stem must equal its `name`."""
    items: dict[str, T] = {}
    for path in sorted(directory.glob("*.yaml")):
        obj = structured(schema, yamlsafe.read(path), str(path))
        name = obj.name  # type: ignore[attr-defined]
        if name != path.stem:
            raise ConfigError(f"{path}: name '{name}' must match the file name '{path.stem}'")
        items[name] = obj
    return items


def _load_table(path: Path, schema: type[T]) -> dict[str, T]:
    """Load a file mapping name -> entry (use cases, hardware)."""
    data = yamlsafe.read(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of name -> entry")
    out = {}
    for name, entry in data.items():
        if entry is not None and not isinstance(entry, dict):
            raise ConfigError(f"{path} [{name}]: expected a mapping, got {type(entry).__name__}")
        out[str(name)] = structured(schema, {"name": str(name), **(entry or {})}, f"{path} [{name}]")
    return out


def load_catalog(conf_dir: Path | str | None = None) -> Catalog:
    """Load and validate every entry under conf/."""
    from cluster.config.checks import check_catalog

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
    check_catalog(catalog)
    return catalog


def load_sweep(path: Path | str, overrides: list[str] | None = None) -> tuple[C.SweepConfig, Catalog]:
    """Load a sweep file plus CLI overrides, and validate it against the catalog."""
    from cluster.config.checks import apply_recipe_overrides, check_sweep

    source = str(path)
    sweep = structured(C.SweepConfig, yamlsafe.read(Path(path)), source, overrides)
    catalog = load_catalog(sweep.conf_dir)
    check_sweep(sweep, catalog, source)
    apply_recipe_overrides(sweep, catalog, source)
    return sweep, catalog
