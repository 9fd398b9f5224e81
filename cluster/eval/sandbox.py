"""Run untrusted, model-written Python (a HumanEval completion and its test) in a limited subprocess.

Each run gets a fresh temporary directory (removed afterwards) as cwd, `HOME` and `TMPDIR`; a
wall-clock timeout that kills the child's whole process group; CPU, address-space, file-size (and,
when not root, process-count) limits set with `setrlimit` before exec; and no network: `unshare --net`
puts the child in a new network namespace whose only interface (loopback) is down, and where that
is unavailable a socket guard in the child's preamble replaces `socket.socket` and friends. The
result records which (`sandbox="unshare"` or `"guard"`).

Honest note: apart from the network namespace and the rlimits, this is a *guard, not a jail*. The
child runs `python -I -B` with a preamble that makes writing outside the temp dir (`open`, `os.open`,
`io.FileIO`, `os.remove`/`rename`/`mkdir`/...), spawning, signalling and raising rlimits raise
`PermissionError`. Hostile code can get around it (ctypes, inherited file descriptors, `/proc`):
it stops the accidents model-written code makes, not an adversary (use a container or gVisor).
"""

from __future__ import annotations

import functools
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

Status = Literal["passed", "failed", "timeout", "error", "blocked"]
Isolation = Literal["unshare", "guard"]
STDERR_TAIL_CHARS = 2000

# Runs in the child before the program: argv = [-c, work_dir, program, log, isolation].
# Every blocked action is appended to the log (outside the work dir) before raising, so code that
# catches the PermissionError is still scored "blocked"; "done" is written only if the program
# reached its end, so sys.exit(0) / os._exit(0) half-way is not a pass.
_PREAMBLE = r"""
import _io, builtins, io, os, posix, resource, sys
_WORK, _PROGRAM, _GUARD_NET = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[4] == "guard"
_LOG = posix.open(sys.argv[3], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
sys.argv = [_PROGRAM]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_write, _realpath, _real_open, _real_os_open = posix.write, os.path.realpath, builtins.open, posix.open
def _deny(what):
    _write(_LOG, ("blocked " + what + "\n").encode("utf-8", "replace"))
    raise PermissionError("sandbox: " + what + " is not allowed")
def _inside(path, dir_fd=None):
    if isinstance(path, int):
        return True
    p = os.fsdecode(os.fspath(path))
    if dir_fd is not None and not os.path.isabs(p):
        try:
            p = os.path.join(posix.readlink("/proc/self/fd/%d" % dir_fd), p)
        except OSError:
            return False
    real = _realpath(p)
    return real == _WORK or real.startswith(_WORK + os.sep)
def _check_mode(file, mode, what):
    if any(c in mode for c in "wax+") and not _inside(file):
        _deny("%s(%r, %r)" % (what, file, mode))
def _open(file, mode="r", *args, **kwargs):
    _check_mode(file, mode, "open")
    return _real_open(file, mode, *args, **kwargs)
def _os_open(path, flags, mode=0o777, *, dir_fd=None):
    if flags & _WRITE_FLAGS and not _inside(path, dir_fd):
        _deny("os.open(%r)" % (path,))
    return _real_os_open(path, flags, mode, dir_fd=dir_fd)
class _FileIO(_io.FileIO):
    def __init__(self, file, mode="r", *args, **kwargs):
        _check_mode(file, mode, "FileIO")
        super().__init__(file, mode, *args, **kwargs)
def _guard_paths(name, argnames):
    real = getattr(posix, name)
    def guarded(*args, **kwargs):
        for i, argname in enumerate(argnames):
            path = args[i] if i < len(args) else kwargs.get(argname)
            fd = kwargs.get(("src_dir_fd", "dst_dir_fd")[i], kwargs.get("dir_fd"))
            if argname and path is not None and not _inside(path, fd):
                _deny("os.%s(%r)" % (name, path))
        return real(*args, **kwargs)
    return guarded
def _blocked(name):
    def blocked(*args, **kwargs):
        _deny(name)
    return blocked
builtins.open = io.open = _open
io.FileIO = _io.FileIO = _FileIO
_guarded = {"open": _os_open, "symlink": _guard_paths("symlink", ("", "dst"))}
for _name in ("remove", "unlink", "rmdir", "mkdir", "chmod", "chown", "truncate", "utime", "mkfifo", "mknod"):
    _guarded[_name] = _guard_paths(_name, ("path",))
for _name in ("rename", "replace", "link"):
    _guarded[_name] = _guard_paths(_name, ("src", "dst"))
for _name in ("system", "fork", "forkpty", "execv", "execve", "posix_spawn", "posix_spawnp", "kill", "killpg", "_exit"):
    _guarded[_name] = _blocked("os." + _name)
for _name, _fn in _guarded.items():
    setattr(os, _name, _fn)
    setattr(posix, _name, _fn)
import _posixsubprocess, subprocess
_posixsubprocess.fork_exec = subprocess._fork_exec = _blocked("subprocess")
subprocess._USE_POSIX_SPAWN = False
resource.setrlimit = resource.prlimit = _blocked("resource.setrlimit")
if _GUARD_NET:
    import _socket, socket
    for _mod in (socket, _socket):
        for _name in ("socket", "SocketType", "socketpair", "fromfd", "create_connection", "create_server"):
            setattr(_mod, _name, _blocked("socket." + _name))
with _real_open(_PROGRAM, encoding="utf-8") as _f:
    _code = compile(_f.read(), _PROGRAM, "exec")
exec(_code, {"__name__": "__main__", "__builtins__": builtins})
_write(_LOG, b"done\n")
"""


_MINIMA = {"timeout_s": 1e-3, "cpu_s": 1, "memory_bytes": 64 << 20, "file_bytes": 1 << 20, "max_procs": 1}


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed run; invalid values raise ValueError."""

    timeout_s: float = 10.0
    cpu_s: int = 20
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    max_procs: int = 256

    def __post_init__(self) -> None:
        for name, low in _MINIMA.items():
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value < math.inf
            if not ok or (name != "timeout_s" and not isinstance(value, int)):
                raise ValueError(f"sandbox Limits.{name} must be a finite number >= {low}, got {value!r}")


@dataclass(frozen=True)
class SandboxResult:
    """How one sandboxed run ended."""

    passed: bool
    status: Status
    stderr_tail: str
    wall_s: float
    sandbox: Isolation


@functools.cache
def network_isolation() -> Isolation:
    """The best network isolation this host offers: "unshare" when `unshare -n true` works, else "guard"."""
    exe = shutil.which("unshare")
    if exe is None:
        return "guard"
    try:
        probe = subprocess.run([exe, "-n", "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "guard"
    return "unshare" if probe.returncode == 0 else "guard"


def _set_limits(limits: Limits) -> None:
    """Apply the rlimits in the forked child, before exec (runs as the Popen preexec_fn)."""
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() != 0:
        # Root is exempt from RLIMIT_NPROC, so setting it there would only pretend.
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_procs, limits.max_procs))


def _command(isolation: Isolation, work: Path, program: Path, log: Path) -> list[str]:
    """The argv that runs `program` under the preamble, inside a new network namespace if chosen."""
    python = [sys.executable, "-I", "-B", "-c", _PREAMBLE, str(work), str(program), str(log), isolation]
    if isolation == "unshare":
        return [shutil.which("unshare") or "unshare", "--net", *python]
    return python


def _kill_group(pid: int) -> None:
    """Kill the child's process group (the child is its leader), ignoring a group already gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _status(returncode: int, timed_out: bool, log: str) -> Status:
    """Classify a finished run: a guard hit beats everything, then the clock, then the exit."""
    if any(line.startswith("blocked ") for line in log.splitlines()):
        return "blocked"
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0 and "done" in log.splitlines():
        return "passed"
    return "failed"


def _spawn(cmd: list[str], work: Path, stderr: BinaryIO, limits: Limits) -> tuple[int, bool]:
    """Run `cmd` to its end or its timeout; return (returncode, timed_out)."""
    env = {"HOME": str(work), "TMPDIR": str(work), "PATH": os.defpath, "LC_ALL": "C.UTF-8"}
    # preexec_fn is unsafe with threads in the parent, so callers run checks one at a time.
    proc = subprocess.Popen(
        cmd,
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=functools.partial(_set_limits, limits),
    )
    timed_out = False
    try:
        proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    _kill_group(proc.pid)  # also ends strays the program left running in the background
    return proc.wait(), timed_out


def run_python(
    source: str, limits: Limits | None = None, *, isolation: Isolation | None = None
) -> SandboxResult:
    """Run `source` as a Python program in the sandbox; bad code never raises, a bad call raises ValueError."""
    if not isinstance(source, str):
        raise ValueError(f"sandbox source must be a str, got {type(source).__name__}")
    limits = limits or Limits()
    best = network_isolation()
    isolation = isolation or best
    if isolation not in ("unshare", "guard") or (isolation == "unshare" and best != "unshare"):
        raise ValueError(f"sandbox isolation {isolation!r} is not available here; allowed: 'guard', {best!r}")
    root = Path(tempfile.mkdtemp(prefix="qs-sandbox-"))
    start = time.monotonic()
    try:
        work, program, log, stderr = root / "work", root / "program.py", root / "guard.log", root / "stderr"
        work.mkdir()
        program.write_text(source, encoding="utf-8")
        with stderr.open("wb") as err:
            try:
                returncode, timed_out = _spawn(_command(isolation, work, program, log), work, err, limits)
            except (OSError, subprocess.SubprocessError) as exc:
                return SandboxResult(False, "error", repr(exc), time.monotonic() - start, isolation)
        wall = time.monotonic() - start
        # The file is bounded by RLIMIT_FSIZE, so reading it whole is fine.
        tail = stderr.read_bytes()[-4 * STDERR_TAIL_CHARS :].decode("utf-8", "replace")[-STDERR_TAIL_CHARS:]
        status = _status(returncode, timed_out, log.read_text(errors="replace") if log.exists() else "")
        return SandboxResult(status == "passed", status, tail, wall, isolation)
    finally:
        shutil.rmtree(root, ignore_errors=True)
