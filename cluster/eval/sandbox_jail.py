"""The sandbox's jail: fresh namespaces, a minimal read-only root, no privileges, then exec the program.

`cluster.eval.sandbox` runs this file as `python -I -B sandbox_jail.py SPEC` (SPEC is JSON, see
`main`) when the isolation is "namespaces". Three processes:

1. this launcher enters new mount, network, PID, IPC and UTS namespaces (when it is not root, inside
   a new user namespace that maps only its own uid, to root) and forks;
2. the child is PID 1 of the new PID namespace: it builds the new root (a tmpfs holding read-only
   binds of the system and Python directories and of the run's directory, a size-limited noexec
   tmpfs as the work dir, the guard log writable, /dev/null and friends; no /proc or /sys, nothing
   else of /tmp or of home directories), pivots into it, forks the program, reaps, and reports the program's wait status
   through a pipe; when it exits, the kernel kills whatever else is left in the namespace;
3. the program gives up what is left (root: uid and gid 65534, no groups; everyone: an empty
   capability bounding set and no_new_privs), sets RLIMIT_NPROC and execs Python.

Stdlib only, since it runs before anything of quantsweep is importable. A setup failure exits with
SETUP_FAILED after one `qs-sandbox-setup:` line on stderr naming the step and the errno.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import sys
from typing import Any, NoReturn

SETUP_FAILED = 125
MARKER = "qs-sandbox-setup: "
NOBODY = 65534

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1024, 2048, 4096, 1 << 14
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
# A read-only remount in a user namespace must keep the flags the mount was locked with.
_KEPT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    """Raise OSError naming `what` when a libc call returned non-zero."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(rc, f"mount({source or fstype!r} on {target!r})")


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), what)


def _fail(exc: BaseException) -> NoReturn:
    """Say why the jail could not be built (one line on stderr) and exit SETUP_FAILED."""
    os.write(2, f"{MARKER}{exc}\n".encode("utf-8", "replace"))
    os._exit(SETUP_FAILED)


def _enter_namespaces(as_root: bool) -> None:
    """New mount/net/PID/IPC/UTS namespaces; without root, inside a user namespace mapping our uid to 0."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.geteuid(), os.getegid()
    if as_root:
        _check(_libc.unshare(flags), "unshare(mount, net, pid, ipc, uts) as root")
        return
    what = f"unshare(user, mount, net, pid, ipc, uts) as uid {uid}"
    _check(_libc.unshare(flags | CLONE_NEWUSER), what)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
            f.write(text)


def _mountpoint(source: str, target: str) -> bool:
    """Create `target` like `source` (dir, empty file, or the same symlink); False for a symlink."""
    if os.path.lexists(target):
        return True
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if os.path.islink(source):  # e.g. /bin -> usr/bin on a merged-/usr system
        os.symlink(os.readlink(source), target)
        return False
    if os.path.isdir(source):
        os.mkdir(target, 0o755)
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return True


def _bind(source: str, target: str, read_only: bool) -> None:
    """Bind `source` at `target` (read-only unless asked), keeping the flags it is locked with."""
    if not _mountpoint(source, target):
        return
    _mount(source, target, None, MS_BIND)
    if read_only:
        held = os.statvfs(target).f_flag
        kept = sum(ms for st, ms in _KEPT_FLAGS if held & st)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | kept)


def _populate(jail: str, spec: dict[str, Any], as_root: bool) -> None:
    """Mount the new root at `jail`: read-only binds, devices, the work tmpfs and the writable log."""
    _mount("tmpfs", jail, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096")
    for path in spec["binds"]:  # the run's own directory comes last, so the mounts below go on top
        _bind(path, jail + path, read_only=True)
    for path in spec["devices"]:
        _bind(path, jail + path, read_only=False)
    owner = f",uid={NOBODY},gid={NOBODY}" if as_root else ""
    size = f"mode=0700,size={spec['work_bytes']},nr_inodes=65536{owner}"
    _mount("tmpfs", jail + spec["work"], "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, size)
    _bind(spec["log"], jail + spec["log"], read_only=False)


def _pivot(jail: str) -> None:
    """Make `jail` the root, drop the old root entirely, and make the new root read-only."""
    machine = os.uname().machine
    number = SYS_PIVOT_ROOT.get(machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown syscall number on {machine}")
    os.chdir(jail)
    _check(_libc.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount2(old root)")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _limit_user_namespaces() -> None:
    """Forbid nested user namespaces in ours (less kernel surface); best effort: /proc/sys may be read-only."""
    try:
        with open("/proc/sys/user/max_user_namespaces", "w", encoding="ascii") as f:
            f.write("0")
    except OSError:
        pass


def _become_nobody() -> None:
    """Root gives up its uid, gid and groups for 65534's (which must exist in its user namespace)."""
    try:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    except OSError as exc:
        raise OSError(
            exc.errno, f"switching root to uid/gid {NOBODY} (unmapped here?): {exc.strerror}"
        ) from exc


def _exec_program(spec: dict[str, Any], as_root: bool) -> NoReturn:
    """In the program's process: give up every privilege, cap the process count, exec Python."""
    try:
        for cap in range(64):  # an empty bounding set: exec grants no capability, even to uid 0
            if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
                if ctypes.get_errno() != errno.EINVAL:  # EINVAL: past the kernel's last capability
                    _check(-1, f"prctl(PR_CAPBSET_DROP, {cap})")
                break
        if as_root:
            _become_nobody()
        procs = spec["max_procs"]
        resource.setrlimit(resource.RLIMIT_NPROC, (procs, procs))
        _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")
        os.chdir(spec["work"])
        os.execve(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as exc:
        _fail(exc)


def _reap(program: int) -> int:
    """Wait for `program`, reaping the orphans that land on PID 1 meanwhile; its wait status."""
    while True:
        pid, status = os.wait()
        if pid == program:
            return status


def _init(spec: dict[str, Any], as_root: bool, status_w: int) -> NoReturn:
    """PID 1 of the new namespace: build the root, run the program, report its wait status."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "prctl(PR_SET_PDEATHSIG)")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        if not as_root:
            _limit_user_namespaces()
        jail = os.path.join(spec["root"], "jail")
        _populate(jail, spec, as_root)
        _pivot(jail)
        program = os.fork()
    except OSError as exc:
        _fail(exc)
    if program == 0:
        _exec_program(spec, as_root)
    os.write(status_w, b"%d" % _reap(program))
    os._exit(0)


def _relay(init: int, status_r: int) -> NoReturn:
    """End the way the program ended: its exit code, or death by its signal."""
    _, init_status = os.waitpid(init, 0)
    reported = os.read(status_r, 32)
    code = os.waitstatus_to_exitcode(int(reported) if reported else init_status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    os._exit(code)


def main(argv: list[str]) -> NoReturn:
    """SPEC keys: root, work, log, binds, devices, work_bytes, max_procs, argv, env (all set by the sandbox)."""
    spec = json.loads(argv[1])
    as_root = os.geteuid() == 0
    try:
        _enter_namespaces(as_root)
        status_r, status_w = os.pipe()
        init = os.fork()
    except OSError as exc:
        _fail(exc)
    if init == 0:
        os.close(status_r)
        _init(spec, as_root, status_w)
    os.close(status_w)
    _relay(init, status_r)


if __name__ == "__main__":
    main(sys.argv)
