"""The fork server: one pre-initialised process per wall that forks a fresh worker per check.

Started by `spec.isolation.wall` inside a submission's sandbox (or as the grader's user,
for `user` and `process` modes) as

    python -m spec.isolation.forkserver LISTEN_FD READY_FD OPTIONS_JSON

It imports NumPy, `reference` and the worker's code (never the submission), writes one
byte to READY_FD, then accepts connections on the listening unix socket LISTEN_FD (a
SOCK_SEQPACKET socket the grader made in its private directory; the path is not visible
in the sandbox, only this descriptor is). Each connection asks for one worker:

    client -> server   {"memory_mb": N}  with the request, response and output pipe
                                         descriptors attached (SCM_RIGHTS)
    server -> client   {"pid": P}        the worker was forked (P: in the server's PID namespace)
    client -> server   {"kill": true}    (or the connection closed): SIGKILL the worker's session
    server -> client   {"exit": N} | {"signal": N}   once the worker is reaped; then the server closes

The forked child closes every descriptor but its three pipes before anything else (so it
holds neither the listening socket nor another check's connection), starts a new session,
puts stdout and stderr on the output pipe, makes a fresh empty directory its cwd, HOME and
TMPDIR, drops to the wall's uid/gid if it has one (`user` mode: the server itself stays the
grader's), and then serves the protocol exactly as `python -m spec.isolation.worker` does:
the submission is imported fresh by each child, so no state leaks from one check to the next.

The server is non-dumpable, so the workers it forks (same uid in `sandbox` and `process`
modes) cannot ptrace it or read its descriptors; in `sandbox` mode it is PID 1 of the
sandbox's PID namespace, which ignores SIGKILL and SIGSTOP sent from inside it.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from spec.isolation import procfs

MAX_REQUEST = 4096
START_ROOM_MB = 64  # address space a worker needs beyond the server's before it serves


@dataclass
class _Child:
    conn: socket.socket
    pid: int = 0
    workdir: str = ""


@dataclass(frozen=True)
class Drop:
    """`user` mode: what a forked worker becomes before it imports the submission."""

    uid: int
    gid: int
    nproc: int
    fsize_mb: int
    nofile: int
    path_fds: dict[str, int]  # O_PATH descriptors of import directories the uid cannot traverse to


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.send(json.dumps(message).encode())
    except OSError:
        pass


class Server:
    def __init__(self, listener: socket.socket, options: dict[str, Any]) -> None:
        self.listener = listener
        self.options = options
        self.workdirs = str(options.get("workdirs") or tempfile.gettempdir())
        self.drop = _drop_from(options)
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, _Child] = {}  # by pid
        self.pending: dict[int, _Child] = {}  # by connection fd, before the fork
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def run(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup byte is written
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        while True:
            for key, _ in self.selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self._reap()
                else:
                    self._on_message(key.fileobj)  # type: ignore[arg-type]
            self._reap()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self.pending[conn.fileno()] = _Child(conn)
        self.selector.register(conn, selectors.EVENT_READ, "conn")

    def _on_message(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        if fd in self.pending:
            child = self.pending.pop(fd)
            try:
                data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
            except (BlockingIOError, InterruptedError):
                self.pending[fd] = child
                return
            except OSError:
                data, fds = b"", []
            if len(fds) != 3 or not data:
                for extra in fds:
                    os.close(extra)
                self._drop_conn(child)
                return
            try:
                request = json.loads(data)
                memory_mb = int(request["memory_mb"])
            except (ValueError, KeyError, TypeError):
                for extra in fds:
                    os.close(extra)
                self._drop_conn(child)
                return
            self._fork(child, fds, memory_mb)
            return
        forked = next((c for c in self.children.values() if c.conn.fileno() == fd), None)
        if forked is None:
            return
        try:
            data = conn.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        # A kill request, or the client went away (its check ended, or its process died):
        # either way the worker's session dies now; the connection stays open for the status.
        procfs.kill_session(forked.pid)
        if not data:
            self.selector.unregister(conn)

    def _drop_conn(self, child: _Child) -> None:
        try:
            self.selector.unregister(child.conn)
        except (KeyError, ValueError):
            pass
        child.conn.close()

    def _fork(self, child: _Child, fds: list[int], memory_mb: int) -> None:
        workdir = tempfile.mkdtemp(prefix="kvspec-worker-", dir=self.workdirs)
        if self.drop is not None:
            os.chown(workdir, self.drop.uid, self.drop.gid)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into this loop
            try:
                _become_worker(fds, workdir, memory_mb, self.drop)
            except BaseException:
                import traceback

                traceback.print_exc()  # onto the output pipe once it is fd 2: the fault's detail
                sys.stderr.flush()
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)
        child.pid, child.workdir = pid, workdir
        self.children[pid] = child
        _send(child.conn, {"pid": pid})

    def _reap(self) -> None:
        while True:
            try:  # peek first: while the exited worker is a zombie, its pid (= its session id) cannot be reused
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or not info.si_pid:
                return
            if info.si_pid in self.children:
                procfs.kill_session(info.si_pid)  # what the worker left in its session dies with it
            try:
                pid, status = os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                continue
            child = self.children.pop(pid, None)
            if child is None:  # an orphan re-parented to us (we are PID 1 in a sandbox)
                continue
            if os.WIFSIGNALED(status):
                _send(child.conn, {"signal": os.WTERMSIG(status)})
            else:
                _send(child.conn, {"exit": os.waitstatus_to_exitcode(status)})
            self._drop_conn(child)
            shutil.rmtree(child.workdir, ignore_errors=True)


def _drop_from(options: dict[str, Any]) -> Drop | None:
    if options.get("uid") is None:
        return None
    path_fds = {}
    for path in options.get("opaque_paths", []):
        try:
            path_fds[str(path)] = os.open(str(path), os.O_PATH | os.O_DIRECTORY)
        except OSError:
            pass
    return Drop(int(options["uid"]), int(options["gid"]), int(options["nproc"]), int(options["fsize_mb"]), int(options["nofile"]), path_fds)


def _become_worker(fds: list[int], workdir: str, memory_mb: int, drop: Drop | None) -> None:
    """In the forked child: shed the server's descriptors and identity, then serve."""
    request_fd, response_fd, output_fd = fds
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    keep = {request_fd, response_fd, output_fd} | (set(drop.path_fds.values()) if drop else set())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    for fd in _open_fds():
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    os.setsid()
    os.chdir(workdir)
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    tempfile.tempdir = None
    parent = os.getppid()
    if drop is not None:
        _drop_privileges(drop)
    procfs.die_with_parent(parent)
    from spec.isolation import worker

    _check_room(memory_mb)
    worker.limit_resources(memory_mb)
    import faulthandler

    faulthandler.enable()
    worker.serve(request_fd, response_fd)
    worker.flush_output()
    os._exit(0)


def _check_room(memory_mb: int) -> None:
    """A cap on the address space below what this pre-loaded process already maps is the
    grader's misconfiguration, not the submission's failure: exit before the phase message
    (a GraderFault), as a fresh worker that cannot start under the cap would."""
    if memory_mb <= 0:
        return
    try:
        with open("/proc/self/status", "rb") as f:
            size_kb = next(int(line.split()[1]) for line in f if line.startswith(b"VmSize:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return
    needed = size_kb // 1024 + START_ROOM_MB
    if memory_mb < needed:
        sys.stderr.write(f"KVSPEC_WORKER_MEMORY_MB={memory_mb} is below what a worker needs to start here (about {needed} MiB)\n")
        sys.stderr.flush()
        os._exit(1)


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


def _drop_privileges(drop: Drop) -> None:
    """`user` mode: become the wall's unprivileged uid/gid, with limits on processes,
    file size and open files. Limits first: once the uid is dropped they cannot be raised."""
    import resource

    resource.setrlimit(resource.RLIMIT_NPROC, (drop.nproc, drop.nproc))
    fsize = drop.fsize_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (drop.nofile, drop.nofile))
    os.setgroups([])
    os.setgid(drop.gid)
    os.setuid(drop.uid)
    if os.getuid() != drop.uid or os.geteuid() != drop.uid:
        os._exit(71)
    if drop.path_fds:
        # Changing uid made us non-dumpable, which hides /proc/self/fd from ourselves;
        # the descriptors below are how we reach the Python install through a parent
        # directory this uid may not traverse (e.g. a pyenv under a 0700 /root).
        procfs.set_dumpable(True)
        _reroute_imports(drop.path_fds)


def _reroute_imports(path_fds: dict[str, int]) -> None:
    """Rewrite import directories this uid cannot reach into /proc/self/fd/N paths (N an
    O_PATH descriptor the server opened as the grader), in sys.path and in the __path__ of
    packages already imported."""
    import importlib

    def reroute(entry: str) -> str:
        if not entry or os.access(entry, os.R_OK | os.X_OK):
            return entry
        for root, fd in path_fds.items():
            if entry == root or entry.startswith(root + os.sep):
                return f"/proc/self/fd/{fd}" + entry[len(root) :]
        return entry

    sys.path[:] = [reroute(p) for p in sys.path]
    for module in list(sys.modules.values()):
        path = getattr(module, "__path__", None)
        if type(path) is list:
            path[:] = [reroute(p) if isinstance(p, str) else p for p in path]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    listen_fd, ready_fd, options = int(args[0]), int(args[1]), json.loads(args[2])
    procfs.set_dumpable(False)  # the workers (same uid but in user mode) cannot ptrace us
    # `python -m` put the cwd first on sys.path: a directory workers can write in a sandbox.
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != os.getcwd()]
    # The grader's modules, before any submission exists here: every worker inherits them.
    import numpy  # noqa: F401
    import numpy.random  # noqa: F401  (loaded lazily by the reference model: load it here, under no cap)

    import reference.gpt  # noqa: F401
    import reference.tensor  # noqa: F401
    import spec.isolation.local  # noqa: F401
    import spec.isolation.worker  # noqa: F401

    listener = socket.socket(fileno=listen_fd)
    server = Server(listener, options)
    os.write(ready_fd, b"R")
    os.close(ready_fd)
    server.run()


if __name__ == "__main__":
    main()
