"""The `report:` section: its checks, and where `python -m cluster report` gets it from.

A run's report judges with the sweep's `report:` section and leaves it in `<out>/config.json`, so a
report regenerated later from the same run directory judges the same way (and agrees with the
loadtest's goodput columns); `--sweep FILE` takes another sweep's section, and `key=value`
overrides (e.g. `recovery_floor=98 slo.ttft_ms=500`) apply last.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from cluster.config import yamlsafe
from cluster.config.checks import NAME_RE, check_finite
from cluster.config.loader import structured
from cluster.config.schema import ReportConfig, SloConfig
from cluster.errors import ConfigError

SAVED = "config.json"  # beside the report it configured


def check_slo(slo: SloConfig, source: str, key: str) -> None:
    """Bounds must be positive, the percentile in (0, 100], the name a plain word."""
    if not NAME_RE.match(slo.name):
        raise ConfigError(f"{source}: {key}.name '{slo.name}' must match {NAME_RE.pattern}")
    for bound in ("ttft_ms", "tpot_ms"):
        value = getattr(slo, bound)
        if value is not None and not value > 0:
            raise ConfigError(f"{source}: {key}.{bound} must be > 0 (or null: unbounded), got {value}")
    if not 0 < slo.percentile <= 100:
        raise ConfigError(f"{source}: {key}.percentile must be in (0, 100], got {slo.percentile}")


def check_report(cfg: ReportConfig, source: str, prefix: str = "report.") -> None:
    """Every SLO valid and uniquely named; floor and margin in range."""
    check_finite(cfg, source, prefix)
    check_slo(cfg.slo, source, f"{prefix}slo")
    for i, slo in enumerate(cfg.slos):
        check_slo(slo, source, f"{prefix}slos.{i}")
    names = [s.name for s in (cfg.slo, *cfg.slos)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup or "none" in names:
        raise ConfigError(
            f"{source}: {prefix}slo names must be unique and not 'none' (the report's "
            f"unconstrained view), got {names}"
        )
    if not 0 < cfg.recovery_floor <= 200:
        raise ConfigError(f"{source}: {prefix}recovery_floor must be in (0, 200] %, got {cfg.recovery_floor}")
    if not 0 <= cfg.cost_margin_pct < 100:
        raise ConfigError(f"{source}: {prefix}cost_margin_pct must be in [0, 100), got {cfg.cost_margin_pct}")


def _base(root: Path, out: Path, sweep_file: str | None) -> tuple[dict, str]:
    """The section to start from: a sweep file's, else the one this run's last report used."""
    if sweep_file:
        data = yamlsafe.read(Path(sweep_file))
        section = data.get("report", {}) if isinstance(data, dict) else {}
        return section or {}, f"{sweep_file} (report)"
    saved = out / SAVED
    if saved.is_file():
        try:
            return json.loads(saved.read_text()), str(saved)
        except ValueError as exc:
            raise ConfigError(f"{saved}: not JSON ({exc}); delete it or pass --sweep") from None
    return {}, "report defaults"


def resolve(root: Path, out: Path, sweep_file: str | None, overrides: list[str]) -> ReportConfig:
    """The report config for a run directory (see the module docstring)."""
    data, source = _base(root, out, sweep_file)
    cfg = structured(ReportConfig, data, source, overrides)
    check_report(cfg, source, "")
    return cfg


def as_data(cfg: ReportConfig) -> dict:
    """The config as JSON data (written beside the report)."""
    return asdict(cfg)
