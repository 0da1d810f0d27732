"""Linux process plumbing shared by the grader and the fork server: prctl flags, /proc scans, kills.

Every function is a no-op (or returns nothing found) where it cannot work (not Linux, no
/proc, no prctl), so callers need no platform checks of their own.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
LINUX = sys.platform.startswith("linux")


def _prctl(option: int, arg: int = 0) -> int | None:
    if not LINUX:
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0))
    except (OSError, AttributeError):
        return None


def set_dumpable(dumpable: bool) -> bool:
    """PR_SET_DUMPABLE: a non-dumpable process cannot be ptraced, nor its /proc/<pid>/mem,
    environ or fds read, by a process of the same uid without CAP_SYS_PTRACE. True if the
    flag now has the value asked for."""
    _prctl(PR_SET_DUMPABLE, int(dumpable))
    return _prctl(PR_GET_DUMPABLE) == int(dumpable)


def harden_grader_process() -> bool:
    """Make this grader process non-dumpable (see set_dumpable). No effect against root
    (CAP_SYS_PTRACE); see docs/threat-model.md. True if it took effect."""
    return set_dumpable(False)


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (PR_SET_PDEATHSIG); if the parent is
    already gone (it died before the flag took effect), exit now."""
    _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent:
        os._exit(70)


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of init, so a sweep
    of its `descendants` finds what a submission daemonised."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0


def _stats() -> list[tuple[int, list[bytes]]]:
    """(pid, the fields of /proc/<pid>/stat after the command name) of every process seen."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        found.append((int(entry), stat.rpartition(b")")[2].split()))  # state, ppid, pgrp, session, ...
    return found


def session_members(session: int) -> list[int]:
    """Processes in a session: catches children that moved to a new process group with
    setpgid (setsid escapes it: see docs/threat-model.md)."""
    key = str(session).encode()
    return [pid for pid, fields in _stats() if len(fields) > 3 and fields[3] == key]


def kill_session(leader: int) -> None:
    """SIGKILL a process group and every process still in the session it leads."""
    for target in [None] + session_members(leader):
        try:
            if target is None:
                os.killpg(leader, signal.SIGKILL)
            else:
                os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def children(parent: int | None = None) -> list[int]:
    """Live (not zombie) children of `parent` (default: this process)."""
    key = str(os.getpid() if parent is None else parent).encode()
    return [pid for pid, fields in _stats() if len(fields) > 1 and fields[1] == key and fields[0] != b"Z"]


def descendants(root: int | None = None) -> list[int]:
    """Every live (not zombie) process below `root` (default: this process)."""
    parents: dict[int, list[int]] = {}
    for pid, fields in _stats():
        if len(fields) > 1 and fields[0] != b"Z":
            parents.setdefault(int(fields[1]), []).append(pid)
    found: list[int] = []
    todo = [os.getpid() if root is None else root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def process_group(pid: int) -> int | None:
    """The process group of `pid`, or None if it is gone."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def is_alive(pid: int) -> bool:
    """Whether `pid` is a live process (not a zombie, not gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return False
    return bool(fields) and fields[0] not in (b"Z", b"X")


def reap() -> None:
    """Collect the exit status of every child of this process that has ended."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def uid_processes(uid: int) -> list[int]:
    """Processes whose real uid is `uid` (from /proc/<pid>/status)."""
    found = []
    for pid, _ in _stats():
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(pid)
                        break
        except (OSError, ValueError, IndexError):
            continue
    return found
