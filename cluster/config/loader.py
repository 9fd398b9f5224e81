"""Load conf/ and sweep files (plus CLI `key=value` overrides) into the structured configs of
`cluster.config.schema`, then run every check of `cluster.config.checks`.

Every problem becomes one `ConfigError` whose message names the file and the key. Files are read
strictly (`cluster.config.yamlsafe`: UTF-8, size cap, no aliases, no duplicate keys); overrides are
parsed with the same strict YAML, one value at a time. Nothing is written and nothing heavy is
imported: `plan` and `run` share this path, and it answers in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from cluster.config import schema as C
from cluster.config import yamlsafe
from cluster.config.checks import apply_recipe_overrides, check_catalog, check_sweep
from cluster.config.clusters import check_placement, load_cost
from cluster.config.merge import structured
from cluster.config.modelfit import check_group_sizes, check_model_recipes
from cluster.config.schema import Catalog
from cluster.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONF_DIR = REPO_ROOT / "conf"

T = TypeVar("T")


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
        cost=load_cost(root),
    )
    check_catalog(catalog)
    check_model_recipes(catalog)
    return catalog


def load_sweep(path: Path | str, overrides: list[str] | None = None) -> tuple[C.SweepConfig, Catalog]:
    """Load a sweep file plus CLI overrides, and validate it against the catalog."""
    source = str(path)
    sweep = structured(C.SweepConfig, yamlsafe.read(Path(path)), source, overrides)
    catalog = load_catalog(sweep.conf_dir)
    check_sweep(sweep, catalog, source)
    check_placement(sweep, catalog, source)
    apply_recipe_overrides(sweep, catalog, source)
    check_group_sizes(sweep, catalog, source)
    return sweep, catalog


__all__ = ["Catalog", "load_catalog", "load_sweep", "structured", "REPO_ROOT"]
