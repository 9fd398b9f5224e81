"""Processor detection: which vLLM kernel library each kind of x86-64 host gets, what it can run,
and the compute dtype chosen for it, for all three kinds whatever processor runs the test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from serve import host

pytestmark = pytest.mark.unit

BASE = frozenset("fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma f16c".split())
AVX2 = BASE | {"avx2"}
AVX512 = AVX2 | {"avx512f", "avx512vl", "avx512bw", "avx512dq"}
AMX = AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
VLLM = Path(importlib.util.find_spec("vllm").origin).parent  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "flags, isa, library, bf16",
    [
        (AVX2, "avx2", "_C_AVX2", False),
        (AVX512, "avx512", "_C_AVX512", False),
        (AMX, "avx512_bf16", "_C", True),
        (AVX2 | {"avx512f"}, "avx2", "_C_AVX2", False),  # AVX-512F alone is not what torch calls AVX-512
    ],
)
def test_kernel_library_follows_vllms_choice(flags, isa, library, bf16):
    assert host.isa(flags) == isa
    assert host.kernel_library(flags) == library
    assert host.hardware_bf16(flags) is bf16


def test_flags_are_read_from_cpuinfo_text():
    text = "processor\t: 0\nflags\t\t: fpu avx2 avx512f\nbugs\t\t: none\n"
    assert host.cpu_flags(text) == {"fpu", "avx2", "avx512f"}


@pytest.mark.parametrize("library, has_wna16", [("_C", True), ("_C_AVX512", True), ("_C_AVX2", False)])
def test_operators_are_read_from_each_shipped_library_without_loading_it(tmp_path, library, has_wna16):
    ops = host.library_ops(VLLM / f"{library}.abi3.so", cache=tmp_path / "ops.json")
    assert ("cpu_gemm_wna16" in ops) is has_wna16
    assert "onednn_scaled_mm" in ops  # W8A8 runs on every kind
    # the second lookup comes from the cache file, keyed by the library's path, size and mtime
    assert host.library_ops(VLLM / f"{library}.abi3.so", cache=tmp_path / "ops.json") == ops
    assert (tmp_path / "ops.json").is_file()


@pytest.mark.parametrize(
    "flags, dtype, w4a16_gap",
    [
        (AVX2, "float32", "AVX2 CPU build (_C_AVX2) has no W4A16 kernel"),
        (AVX512, "float32", ""),
        (AMX, "bfloat16", ""),
    ],
)
def test_profile_of_each_kind(flags, dtype, w4a16_gap):
    p = host.detect(flags)
    assert p.vllm_build == "cpu" and p.compute_dtype == dtype
    assert w4a16_gap in p.missing_kernel("W4A16") and bool(p.missing_kernel("W4A16")) is bool(w4a16_gap)
    assert p.missing_kernel("W8A8") == "" and p.missing_kernel("FP8_DYNAMIC") == ""
    assert p.describe().startswith(host.isa(flags))


def test_this_host_is_profiled_consistently():
    p = host.detect()
    assert p.vllm_library == host.kernel_library(host.cpu_flags())
    assert p.cores >= 1
