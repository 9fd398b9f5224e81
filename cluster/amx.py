"""Ask Linux for Intel AMX tile permission at interpreter start.

vLLM's CPU build runs AMX (tile) instructions in bf16 without first asking the kernel for
permission (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); the worker then dies with
SIGILL. Permission is per process and vLLM spawns fresh interpreters (engine core, Ray workers),
so the request must run in every interpreter: `python -m cluster.amx` installs a one-line `.pth`
hook into the active environment's site-packages that does it at start-up. It is a no-op on other
CPUs, other OSes and other architectures.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

PTH_NAME = "quantsweep_amx.pth"
# x86-64 only: arch_prctl is syscall 158 there; ARCH_REQ_XCOMP_PERM = 0x1023; XTILEDATA = 18.
HOOK = (
    "import platform, sys; "
    'exec("try:\\n import ctypes\\n ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18)\\n'
    'except Exception:\\n pass") '
    "if sys.platform == 'linux' and platform.machine() == 'x86_64' else None\n"
)


def request_permission() -> bool:
    """Request AMX tile permission for this process; True when the kernel granted it."""
    import platform

    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18) == 0


def install_pth() -> Path:
    """Write the start-up hook into this interpreter's site-packages; return its path."""
    target = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text(HOOK)
    return target


if __name__ == "__main__":
    print(f"installed {install_pth()}")
