"""Merging YAML data and CLI overrides into the structured configs, with errors that name the key.

`structured` merges a mapping (and `key=value` overrides, parsed with the same strict YAML as files)
into a schema dataclass in omegaconf's struct mode, so unknown keys and wrong types fail here;
`describe` turns omegaconf's exceptions into one short phrase naming the key.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from cluster.config import yamlsafe
from cluster.errors import ConfigError

KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
T = TypeVar("T")
# keys that moved, and what to write instead
MOVED = {
    "serve.api_key": "keys do not belong in configs: put it in an environment variable and name that "
    "variable in serve.api_key_env",
}


def describe(exc: OmegaConfBaseException, schema: type) -> str:
    """Turn an omegaconf error into a short phrase naming the key."""
    key = getattr(exc, "full_key", "") or ""
    if isinstance(exc, ConfigKeyError):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        if key in MOVED:
            return f"'{key}' is no longer a key: {MOVED[key]}"
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
