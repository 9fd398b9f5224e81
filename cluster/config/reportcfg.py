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
from cluster.config.checks import check_report
from cluster.config.merge import structured
from cluster.config.schema import ReportConfig
from cluster.errors import ConfigError

SAVED = "config.json"  # beside the report it configured


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
