"""The wall around one submission: start a fork server behind it, hand its socket to the
test run, kill everything behind it afterwards.

    with wall.start(target, mode, private_dir) as w:
        cmd += w.pytest_args()      # --kvspec-forkserver=PATH; the submission is w.target.path
        ... run pytest ...
    # leaving the block kills every process behind the wall (w.kill_all())

Modes, strongest first (`strongest()` picks the first this machine offers):

- `sandbox`: the fork server and every worker it forks run inside bubblewrap
  (spec.isolation.sandbox.bwrap_command): their own user, PID, mount, IPC, UTS and network
  namespaces, uid nobody without capabilities, a read-only view of Python, the
  dependencies, the grader's code and the submission, a private tmpfs. Killing the bwrap
  process kills the sandbox's PID namespace, and with it everything the submission started.
- `user`: no namespaces, the grader is root: the fork server (the grader's uid) forks
  workers that drop to a dedicated unprivileged uid with limits; a read-only staged copy of
  the submission; afterwards every process of that uid is killed.
- `process`: the fork server and its workers run as the grader's user. Not protected against
  hostile code (see docs/threat-model.md).
- `none`: no worker at all; the submission runs in the test process (trusted code only).

The fork server's socket lives in `private_dir` (0700, the grader's); the server gets only
the listening descriptor. A server that cannot start, or does not say it is ready within
START_TIMEOUT, is a WallError: the grader's fault, never the submission's.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from spec.discovery import Target
from spec.isolation import procfs, sandbox
from spec.isolation.workers import worker_env

MODES = ("sandbox", "user", "process", "none")
START_TIMEOUT = 60.0  # seconds for a fork server to import NumPy and the worker and say it is ready
LOG_LIMIT = 64 * 1024  # bytes of the fork server's own output kept for a fault message
UNPROTECTED = "isolation 'process': submission code ran as the grader's own user; this result is not protected against hostile code."
USER_LIMITS = {"nproc": 128, "fsize_mb": 256, "nofile": 256}


class WallError(Exception):
    """The wall could not be built (no fork server, no sandbox): the grader's fault."""


def unavailable(mode: str) -> str | None:
    """Why `mode` cannot run on this machine; None if it can."""
    if mode == "sandbox":
        return sandbox.sandbox_unavailable()
    if mode == "user":
        return sandbox.user_unavailable()
    if mode in ("process", "none"):
        return None
    return f"unknown isolation mode {mode!r} (one of {', '.join(MODES)})"


def strongest() -> str:
    """The strongest mode this machine offers (never `none`: that one is only on request)."""
    return next(m for m in MODES[:3] if unavailable(m) is None)


def warning(mode: str) -> str | None:
    """The one line every report carries when the result is not protected."""
    return UNPROTECTED if mode == "process" else None


class Wall:
    """One fork server behind one wall (see the module docstring)."""

    def __init__(self, target: Target, mode: str, private_dir: Path) -> None:
        self.mode = mode
        self.target = target
        self.socket_path: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.lease: sandbox.UidLease | None = None
        self.scratch: list[str] = []
        self.started = 0.0  # seconds the fork server took to be ready
        self.private = private_dir

    def pytest_args(self) -> list[str]:
        """The plugin option that sends the drivers of a test run to this wall's fork server
        (with --kvspec-isolation=MODE and --kvspec-submission=w.target.path, which in
        `user` mode is the staged copy)."""
        return [] if self.socket_path is None else [f"--kvspec-forkserver={self.socket_path}"]

    # -- start ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.mode == "none":
            return
        reason = unavailable(self.mode)
        if reason is not None:
            raise WallError(f"isolation {self.mode!r} is not available here: {reason}")
        os.chmod(self.private, 0o700)
        path = self.private / "forkserver.sock"
        if len(str(path)) > 100:  # AF_UNIX paths are short: a private directory of our own
            self.scratch.append(tempfile.mkdtemp(prefix="kvspec-wall-"))
            path = Path(self.scratch[-1]) / "forkserver.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ready_r, ready_w = os.pipe()
        log = open(self.private / "forkserver.log", "w+b")
        try:
            listener.bind(str(path))
            os.chmod(path, 0o600)
            listener.listen(128)
            command, options, cwd = self._command()
            command += [str(listener.fileno()), str(ready_w), json.dumps(options)]
            if self.mode == "sandbox":
                bwrap = sandbox.bwrap_binary()
                assert bwrap is not None
                command = sandbox.bwrap_command(bwrap, self.target.path, command)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")} if self.mode == "sandbox" else self._env(cwd)
            start = time.monotonic()
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(listener.fileno(), ready_w),
                cwd=cwd, env=env, start_new_session=True,
            )  # fmt: skip
            os.close(ready_w)
            ready_w = -1
            if not _wait_ready(ready_r, START_TIMEOUT):
                self.kill_all()
                raise WallError(f"the {self.mode} fork server did not start within {START_TIMEOUT:.0f} s{_last_line(log)}")
            self.started = time.monotonic() - start
            self.socket_path = str(path)
        finally:
            listener.close()  # the fork server holds it now
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)
            log.close()

    def _command(self) -> tuple[list[str], dict[str, Any], str]:
        """The fork server's command (without its three arguments), options and cwd."""
        command = [sys.executable, "-s", "-m", "spec.isolation.forkserver"]
        if self.mode == "sandbox":
            return command, {"workdirs": "/tmp"}, "/"
        workdirs = tempfile.mkdtemp(prefix="kvspec-workers-")
        self.scratch.append(workdirs)
        if self.mode == "process":
            return command, {"workdirs": workdirs}, workdirs
        self.lease = sandbox.UidLease()
        os.chmod(workdirs, 0o711)  # the uid may enter its own directories inside, not list them
        if self.target.path is not None:
            stage = tempfile.mkdtemp(prefix="kvspec-stage-")
            self.scratch.append(stage)
            os.chmod(stage, 0o711)
            self.target = replace(self.target, path=sandbox.stage_submission(self.target.path, Path(stage)))
        options = {"workdirs": workdirs, "uid": self.lease.uid, "gid": self.lease.gid, **USER_LIMITS, "opaque_paths": sandbox.import_roots()}
        return command, options, workdirs

    def _env(self, cwd: str) -> dict[str, str]:
        env = worker_env()
        env.update(HOME=cwd, TMPDIR=cwd)
        for name in ("USER", "LOGNAME", "TEMP", "TMP"):
            env.pop(name, None)
        return env

    # -- stop -------------------------------------------------------------------------------
    def kill_all(self) -> int:
        """Kill the fork server and everything behind the wall; returns how many processes
        of the wall's uid were found (user mode), else 0. Idempotent."""
        found = 0
        if self.proc is not None:
            # Everything below the launcher: in sandbox mode bwrap's child (the namespace's
            # pid 1, in a session of its own) would die of --die-with-parent only after bwrap,
            # a moment too late for the grader's sweep, which then counted it as a leftover.
            below = procfs.descendants(self.proc.pid)
            if self.mode == "process":  # its workers left its session: kill theirs too
                for child in procfs.children(self.proc.pid):
                    procfs.kill_session(child)
            for pid in below:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
            _wait_gone(below, timeout=5.0)
        if self.lease is not None:
            found = sandbox.sweep_uid(self.lease.uid)
            self.lease.release()
            self.lease = None
        for directory in self.scratch:
            shutil.rmtree(directory, ignore_errors=True)
        self.scratch = []
        self.socket_path = None
        return found


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until none of `pids` is alive (reaping those re-parented to this process)."""
    end = time.monotonic() + timeout
    alive = [p for p in pids if procfs.is_alive(p)]
    while alive and time.monotonic() < end:
        time.sleep(0.01)
        procfs.reap()
        alive = [p for p in alive if procfs.is_alive(p)]


def _wait_ready(fd: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            return os.read(fd, 1) == b"R"


def _last_line(log: Any) -> str:
    log.flush()
    log.seek(max(0, os.fstat(log.fileno()).st_size - LOG_LIMIT))
    lines = [ln.strip() for ln in log.read(LOG_LIMIT).decode(errors="replace").splitlines() if ln.strip()]
    return f"; its last output: {lines[-1][:300]}" if lines else ""


@contextmanager
def start(target: Target, mode: str, private_dir: Path) -> Iterator[Wall]:
    """A wall for `target` in `mode`, its fork server ready; everything behind it is killed
    when the block ends, however it ends."""
    wall = Wall(target, mode, private_dir)
    try:
        wall.start()
        yield wall
    finally:
        wall.kill_all()
