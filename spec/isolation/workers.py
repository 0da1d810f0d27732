"""The grader's handle on one worker process: its pipes, its captured output, its death.

Two ways to get a worker, one interface (`WorkerHandle`):

- `SpawnedWorker`: `python -m spec.isolation.worker` started as a child of this process
  (a fresh interpreter per check; what `pytest --kvspec-isolation=process` does when no
  fork server is given);
- `ForkedWorker`: asks a fork server (`spec.isolation.forkserver`, started by
  `spec.isolation.wall` inside the submission's sandbox) over its unix socket for a fresh
  child, handing it the three pipes. The server reports the child's exit status and kills
  it on request, or when this side's connection closes.

Either way the worker reads requests on one pipe, answers on another, and writes
everything it prints to a third, which a thread here drains into bounded memory (the
first and last 32 KiB).
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
import threading
import time
from pathlib import Path
from typing import Any

from spec.isolation import procfs, protocol

OUTPUT_HEAD = OUTPUT_TAIL = 32 * 1024
KILL_WAIT = 10.0  # seconds to wait for a killed worker's status before giving up on it
# The worker's environment is built from these (and LC_*), not copied: the grader's own
# settings (KVSPEC_RESULTS, PYTEST_*, HYPOTHESIS_*) and any secrets stay out of its os.environ.
# PYTHONPYCACHEPREFIX: the grader's private bytecode cache (spec/grader/run.py), never a
# __pycache__ beside the installed sources, where a submission could have planted a .pyc.
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT", "COVERAGE_PROCESS_START",
                 "PYTHONPYCACHEPREFIX")


class Output:
    """Bytes a worker wrote to stdout/stderr: the first and last 32 KiB are kept."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = OUTPUT_HEAD - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 4 * OUTPUT_TAIL:
                del self.tail[:-OUTPUT_TAIL]

    def text(self) -> str:
        tail = bytes(self.tail[-OUTPUT_TAIL:])
        omitted = self.total - len(self.head) - len(tail)
        middle = f"\n[... {omitted} bytes of output omitted ...]\n".encode() if omitted else b""
        return (bytes(self.head) + middle + tail).decode("utf-8", errors="replace")


def package_roots() -> list[str]:
    """The directories holding the `spec` and `reference` packages (for PYTHONPATH)."""
    import reference
    import spec

    roots = []
    for package in (spec, reference):
        root = str(Path(package.__file__ or ".").resolve().parent.parent)
        if root not in roots:
            roots.append(root)
    return roots


def worker_env() -> dict[str, str]:
    """The allow-listed environment of a worker (and of a fork server)."""
    env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV or k.startswith("LC_")}
    existing = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(package_roots() + existing)
    env["PYTHONHASHSEED"] = "0"  # same submission, same seed: same set and dict orders
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ left in the submission directory
    env["PYTHONUNBUFFERED"] = "1"  # output written before a kill is not lost in a buffer
    env["PYTHONIOENCODING"] = "utf-8:backslashreplace"
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


class WorkerHandle:
    """The pipes of one worker and the thread draining its output. Subclasses start the
    process and know how to learn its exit status and kill it. Holds no reference to the
    driver, so it can be the target of the driver's weakref.finalize safety net."""

    pid: int

    def __init__(self) -> None:
        self.output = Output()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.killed = False
        self.fds: list[int] = []
        try:
            self.worker_req_r, self.req_w = self._pipe()
            self.resp_r, self.worker_resp_w = self._pipe()
            self.out_fd, self.worker_out_w = self._pipe()
        except BaseException:
            self._close_fds()
            raise

    def _started(self) -> None:
        """The worker holds its ends now: close ours, start draining its output."""
        for fd in (self.worker_req_r, self.worker_resp_w, self.worker_out_w):
            self._close(fd)
        os.set_blocking(self.req_w, False)
        os.set_blocking(self.resp_r, False)
        self.reader = protocol.Reader(self.resp_r)
        os.set_blocking(self.out_fd, False)
        self.thread = threading.Thread(target=self._drain, name="kvspec-output", daemon=True)
        self.thread.start()

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.fds += [r, w]
        return r, w

    def _close(self, fd: int) -> None:
        if fd in self.fds:
            self.fds.remove(fd)
            try:
                os.close(fd)
            except OSError:
                pass

    def _close_fds(self) -> None:
        for fd in list(self.fds):
            self._close(fd)

    # -- captured output ---------------------------------------------------------------
    def _read_available(self) -> bool:
        """Read what the pipe holds now (call with the lock held); False at end of file."""
        if self.out_fd not in self.fds:
            return False
        while True:
            try:
                chunk = os.read(self.out_fd, 1 << 16)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            self.output.add(chunk)

    def _drain(self) -> None:
        poller = select.poll()
        poller.register(self.out_fd, select.POLLIN)
        while not self.stop.is_set():
            with self.lock:
                if not self._read_available():
                    return
            poller.poll(100)

    def captured(self) -> str:
        with self.lock:
            self._read_available()
            return self.output.text()

    # -- status and death --------------------------------------------------------------
    def exit_status(self, wait: float) -> tuple[str, str] | None:
        """("exit", "exit code N") or ("signal", "killed by SIGX") once the worker has
        exited (waiting up to `wait` s); None if it is still running."""
        raise NotImplementedError

    def _terminate(self) -> None:
        """SIGKILL the worker and what it started in its session; wait for it to end."""
        raise NotImplementedError

    def kill(self) -> None:
        """Kill the worker (and its session), collect the last of its output, close the
        pipes, clean up. Idempotent."""
        if self.killed:
            return
        self.killed = True
        self._terminate()
        self.thread.join(1.0)  # end of file comes once every holder of the pipe is dead
        self.stop.set()
        self.thread.join(1.0)
        with self.lock:
            if self.thread.is_alive():  # not expected: leave the capture pipe to the thread
                self.fds.remove(self.out_fd)
            self._close_fds()


class SpawnedWorker(WorkerHandle):
    """`python -m spec.isolation.worker` as a child of this process, in a fresh empty
    temporary directory, in a session of its own."""

    def __init__(self, memory_mb: int) -> None:
        super().__init__()
        self.tmpdir = tempfile.mkdtemp(prefix="kvspec-worker-")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spec.isolation.worker", str(self.worker_req_r), str(self.worker_resp_w), str(int(memory_mb)), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=self.worker_out_w,
                stderr=self.worker_out_w,
                pass_fds=(self.worker_req_r, self.worker_resp_w),
                close_fds=True,
                cwd=self.tmpdir,
                env=worker_env(),
                start_new_session=True,
            )
        except BaseException:
            self._close_fds()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            raise
        self.pid = self.proc.pid
        self._started()

    def exit_status(self, wait: float) -> tuple[str, str] | None:
        end = time.monotonic() + wait
        while True:
            try:
                info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:
                code = self.proc.returncode
                if code is None:
                    return None
                return ("signal", f"killed by {signal_name(-code)}") if code < 0 else ("exit", f"exit code {code}")
            if info is not None and info.si_pid:
                if info.si_code == os.CLD_EXITED:
                    return "exit", f"exit code {info.si_status}"
                return "signal", f"killed by {signal_name(info.si_status)}"
            if time.monotonic() >= end:
                return None
            time.sleep(0.005)

    def _terminate(self) -> None:
        # The worker is not reaped yet (a zombie at worst), so its pid, which is also its
        # process group and session id, cannot have been reused.
        procfs.kill_session(self.proc.pid)
        try:
            self.proc.wait(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:  # stuck in the kernel (uninterruptible): give up, never hang
            pass

    def kill(self) -> None:
        super().kill()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


class ForkedWorker(WorkerHandle):
    """A child of the fork server listening at `socket_path` (see spec.isolation.forkserver)."""

    def __init__(self, socket_path: str, memory_mb: int, connect_timeout: float = 30.0) -> None:
        super().__init__()
        self.pid = 0
        self.status: tuple[str, str] | None = None
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.conn.settimeout(connect_timeout)
            self.conn.connect(socket_path)
            request = json.dumps({"memory_mb": int(memory_mb)}).encode()
            socket.send_fds(self.conn, [request], [self.worker_req_r, self.worker_resp_w, self.worker_out_w])
        except BaseException:
            self.conn.close()
            self._close_fds()
            raise
        self.conn.setblocking(False)
        self._started()

    def _receive(self, wait: float) -> None:
        """Read the server's messages (the pid, then the exit status) for up to `wait` s."""
        end = time.monotonic() + wait
        while self.status is None:
            try:
                data = self.conn.recv(4096)
            except (BlockingIOError, InterruptedError):
                left = end - time.monotonic()
                if left <= 0:
                    return
                select.select([self.conn], [], [], min(left, 0.5))
                continue
            except OSError:
                data = b""
            if not data:  # the server went away without a status: the sandbox is gone
                self.status = ("signal", "killed: the fork server ended")
                return
            try:
                message: Any = json.loads(data)
            except ValueError:
                continue
            if "pid" in message:
                self.pid = int(message["pid"])
            elif "exit" in message:
                self.status = ("exit", f"exit code {int(message['exit'])}")
            elif "signal" in message:
                self.status = ("signal", f"killed by {signal_name(int(message['signal']))}")

    def exit_status(self, wait: float) -> tuple[str, str] | None:
        self._receive(wait)
        return self.status

    def _terminate(self) -> None:
        try:
            self.conn.send(b'{"kill": true}')
        except OSError:
            pass
        self._receive(KILL_WAIT)
        self.conn.close()  # the server kills the worker too when this closes
