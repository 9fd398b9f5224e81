"""Run untrusted, model-written Python (a HumanEval completion and its test) in a jail, or a weaker guard.

Isolation "namespaces" (the default, and the only one used unless a sweep allows less): the
program runs through `sandbox_jail.py` in new user (when not root), mount, PID, network, IPC and
UTS namespaces. What that stops, checked by tests/integration/test_sandbox.py as root and as a
non-root user:

- network: its network namespace has only a loopback that is down, so no socket (ctypes or not)
  reaches anything, including listeners on the host's 127.0.0.1; abstract Unix sockets are per
  namespace, and no host Unix socket path (Ray's, say) exists in its root;
- files: its root is a fresh tmpfs holding read-only binds of /usr, /bin, /lib*, the Python
  prefixes and the run's directory, plus /dev/null-like devices; the work dir (cwd, HOME, TMPDIR)
  is a size-limited noexec tmpfs (`Limits.work_bytes`); there is no /proc, /sys, /tmp, /etc (but
  ld.so.cache), /home or /root, so it can neither write outside its work dir nor read secrets
  such as tokens in home directories or the parent's `/proc/<pid>/environ`;
- identity: as root it runs as uid/gid 65534 with no groups; otherwise as root of a user namespace
  that maps only the caller's uid. Either way it has no capabilities (empty bounding set),
  no_new_privs, an environment of HOME, TMPDIR, PATH and LC_ALL only, and RLIMIT_NPROC
  (`Limits.max_procs`; as root this counts every uid-65534 process on the node, otherwise only the
  jail's, including its two helper processes), so a fork bomb stops at the limit;
- lifetime: a wall-clock timeout kills the process group, and since PID 1 of the namespace is the
  jail's helper, its death takes every stray process of the program with it; CPU, address-space,
  file-size and core rlimits are set before exec.

Isolation "guard" (only when `eval.sandbox.allow_weak_isolation` is true and the jail cannot be
built, or when a caller asks): no namespaces, the same rlimits (as root without a process limit),
and a preamble in the child that makes writing outside the work dir (`open`, `os.open`,
`io.FileIO`, `os.remove`/`rename`/`mkdir`/...), spawning, signalling, raising rlimits and making
sockets raise `PermissionError`. It stops the accidents model-written code makes, not an
adversary: ctypes gets past every part of it (the tests show a ctypes `connect()` reaching a local
listener and `/proc/<ppid>/environ` being read).

The same preamble also runs inside the jail, so accidents are scored "blocked" there too. Every
result records its isolation. Still not a full jail: there is no seccomp filter, so the whole
syscall table is kernel attack surface; the program may create nested user namespaces (the jail
forbids them only when not root and only where /proc/sys is writable); what it can read of /usr
and the Python prefixes is whatever the image holds; and the run's CPU time and memory are
limited per process, not per cgroup. For hostile code, run HumanEval on the gVisor code-sandbox
worker group (k8s/README.md).
"""

from __future__ import annotations

import functools
import json
import logging
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

from cluster.errors import StageError
from cluster.eval.sandbox_jail import MARKER, NOBODY, SETUP_FAILED

Status = Literal["passed", "failed", "timeout", "error", "blocked"]
Isolation = Literal["namespaces", "guard"]
ISOLATIONS: tuple[Isolation, ...] = ("namespaces", "guard")
STDERR_TAIL_CHARS = 2000
_JAIL = Path(__file__).with_name("sandbox_jail.py")
# Bound read-only into the jail where present, with the Python prefixes; symlinks are copied as such.
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
log = logging.getLogger(__name__)


class SandboxUnavailable(StageError):
    """The jail cannot be built on this node and the sweep does not allow the weak guard."""


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


_MINIMA = {
    "timeout_s": 1e-3,
    "cpu_s": 1,
    "memory_bytes": 64 << 20,
    "file_bytes": 1 << 20,
    "max_procs": 1,
    "work_bytes": 1 << 20,
}


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed run; invalid values raise ValueError."""

    timeout_s: float = 10.0
    cpu_s: int = 20
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    max_procs: int = 256
    work_bytes: int = 64 << 20  # the jail's work dir (a tmpfs) holds at most this much

    def __post_init__(self) -> None:
        for name, low in _MINIMA.items():
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value < math.inf
            if not ok or (name != "timeout_s" and not isinstance(value, int)):
                raise ValueError(f"sandbox Limits.{name} must be a finite number >= {low}, got {value!r}")


@dataclass(frozen=True)
class SandboxResult:
    """How one sandboxed run ended, and under which isolation it ran."""

    passed: bool
    status: Status
    stderr_tail: str
    wall_s: float
    isolation: Isolation


@functools.cache
def jail_unavailable() -> str | None:
    """None when this process can run code in the namespace jail, else why not (the step and errno)."""
    result = _run("pass\n", Limits(timeout_s=60), "namespaces")
    if result.status == "passed":
        return None
    lines = [line for line in result.stderr_tail.splitlines() if line.startswith(MARKER)]
    if lines:
        return lines[-1][len(MARKER) :]
    return f"a probe run ended {result.status}: {result.stderr_tail[-500:]}"


def unavailable_message(why: str) -> str:
    """The error for a node without the jail: what failed, what it needs, and what to do."""
    return (
        f"the HumanEval code sandbox cannot isolate model-written code on this node: {why}. It needs "
        "mount, PID and network namespaces, and a user namespace unless it runs as root (blocked by "
        "user.max_user_namespaces=0, kernel.unprivileged_userns_clone=0, AppArmor's "
        "restrict_unprivileged_userns or a seccomp profile that forbids unshare). Allow them on the node, "
        "run HumanEval on the code-sandbox (gVisor) worker group (see k8s/README.md), or accept the weak "
        "in-process guard with eval.sandbox.allow_weak_isolation=true"
    )


def choose_isolation(allow_weak: bool = False) -> Isolation:
    """The jail where it can be built; else the guard with a warning if allowed, else SandboxUnavailable."""
    why = jail_unavailable()
    if why is None:
        return "namespaces"
    if not allow_weak:
        raise SandboxUnavailable(unavailable_message(why))
    log.warning(
        "WARNING: sandbox isolation is WEAK: the namespace jail is unavailable (%s); model-written code "
        "runs under the in-process guard only, which ctypes gets past (eval.sandbox.allow_weak_isolation=true)",
        why,
    )
    return "guard"


def _set_limits(limits: Limits, nproc: bool) -> None:
    """Apply the rlimits in the forked child, before exec (runs as the Popen preexec_fn)."""
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nproc and os.geteuid() != 0:
        # Root is exempt from RLIMIT_NPROC, so setting it there would only pretend. The jail sets
        # its own inside its user namespace, where it counts the jail's processes only.
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_procs, limits.max_procs))


def _python() -> str:
    """This interpreter with its directory resolved, so that the jail's binds of the prefixes hold it."""
    return os.path.join(os.path.realpath(os.path.dirname(sys.executable)), os.path.basename(sys.executable))


@functools.cache
def _read_only_paths() -> tuple[str, ...]:
    """System and Python directories the jail binds read-only (nested ones are covered by their parent)."""
    exe_prefix = os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, exe_prefix)}
    found = [p for p in (*_SYSTEM_PATHS, *sorted(prefixes)) if os.path.lexists(p)]
    dirs = [p for p in found if os.path.isdir(p) and not os.path.islink(p)]
    return tuple(p for p in found if not any(p.startswith(d + os.sep) for d in dirs))


def _env(work: Path) -> dict[str, str]:
    return {"HOME": str(work), "TMPDIR": str(work), "PATH": os.defpath, "LC_ALL": "C.UTF-8"}


def _command(isolation: Isolation, root: Path, limits: Limits) -> list[str]:
    """The argv that runs the program under the preamble, through the jail when chosen."""
    work, program, guard_log = root / "work", root / "program.py", root / "guard.log"
    python = [_python(), "-I", "-B", "-c", _PREAMBLE, str(work), str(program), str(guard_log), isolation]
    if isolation == "guard":
        return python
    spec = {
        "root": str(root),
        "work": str(work),
        "log": str(guard_log),
        "binds": [*_read_only_paths(), str(root)],
        "devices": [d for d in _DEVICES if os.path.exists(d)],
        "work_bytes": limits.work_bytes,
        "max_procs": limits.max_procs,
        "argv": python,
        "env": _env(work),
    }
    return [_python(), "-I", "-B", str(_JAIL), json.dumps(spec)]


def _prepare(root: Path, source: str) -> None:
    """The run's directory: work dir, program, guard log, the jail's mount point; as root, usable by 65534."""
    (root / "work").mkdir()
    (root / "jail").mkdir()
    program = root / "program.py"
    program.write_text(source, encoding="utf-8")
    guard_log = root / "guard.log"
    os.close(os.open(guard_log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    if os.geteuid() == 0:
        # The jail runs the program as 65534: it may enter the directory (not list it), read the
        # program and append to the log; its work dir is a tmpfs of its own.
        root.chmod(0o711)
        program.chmod(0o644)
        try:
            os.chown(guard_log, NOBODY, NOBODY)
        except OSError as exc:
            raise OSError(
                exc.errno, f"chown of the guard log to uid {NOBODY} (unmapped here?): {exc.strerror}"
            ) from exc


def _kill_group(pid: int) -> None:
    """Kill the child's process group (the child is its leader), ignoring a group already gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _status(returncode: int, timed_out: bool, log_text: str, tail: str) -> Status:
    """Classify a finished run: a jail that failed to build, a guard hit, then the clock, then the exit."""
    if returncode == SETUP_FAILED and MARKER in tail:
        return "error"
    if any(line.startswith("blocked ") for line in log_text.splitlines()):
        return "blocked"
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0 and "done" in log_text.splitlines():
        return "passed"
    return "failed"


def _spawn(cmd: list[str], work: Path, stderr: BinaryIO, limits: Limits, nproc: bool) -> tuple[int, bool]:
    """Run `cmd` to its end or its timeout; return (returncode, timed_out)."""
    # preexec_fn is unsafe with threads in the parent, so callers run checks one at a time.
    proc = subprocess.Popen(
        cmd,
        cwd=work,
        env=_env(work),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=functools.partial(_set_limits, limits, nproc),
    )
    timed_out = False
    try:
        proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    _kill_group(proc.pid)  # also ends strays left running in the background (the jail's die with PID 1)
    return proc.wait(), timed_out


def _run(source: str, limits: Limits, isolation: Isolation) -> SandboxResult:
    """One run in a fresh directory, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="qs-sandbox-"))
    start = time.monotonic()
    try:
        stderr = root / "stderr"
        with stderr.open("wb") as err:
            try:
                _prepare(root, source)
                cmd = _command(isolation, root, limits)
                returncode, timed_out = _spawn(cmd, root / "work", err, limits, isolation == "guard")
            except (OSError, subprocess.SubprocessError) as exc:
                return SandboxResult(False, "error", f"{MARKER}{exc}", time.monotonic() - start, isolation)
        wall = time.monotonic() - start
        # The file is bounded by RLIMIT_FSIZE, so reading it whole is fine.
        tail = stderr.read_bytes()[-4 * STDERR_TAIL_CHARS :].decode("utf-8", "replace")[-STDERR_TAIL_CHARS:]
        guard_log = root / "guard.log"
        log_text = guard_log.read_text(errors="replace") if guard_log.exists() else ""
        status = _status(returncode, timed_out, log_text, tail)
        return SandboxResult(status == "passed", status, tail, wall, isolation)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_python(
    source: str, limits: Limits | None = None, *, isolation: Isolation | None = None
) -> SandboxResult:
    """Run `source` as a Python program in the sandbox; bad code never raises, a bad call raises ValueError.

    `isolation` None means the jail, and SandboxUnavailable where it cannot be built; "guard" is
    the weak in-process guard (see the module docstring), for callers allowed to accept it.
    """
    if not isinstance(source, str):
        raise ValueError(f"sandbox source must be a str, got {type(source).__name__}")
    if isolation is not None and isolation not in ISOLATIONS:
        raise ValueError(f"sandbox isolation {isolation!r} is unknown; allowed: {', '.join(ISOLATIONS)}")
    isolation = isolation or "namespaces"
    if isolation == "namespaces" and (why := jail_unavailable()) is not None:
        raise SandboxUnavailable(unavailable_message(why))
    return _run(source, limits or Limits(), isolation)
