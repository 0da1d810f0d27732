"""The wall (spec/isolation/wall.py, sandbox.py, forkserver.py): what a submission behind it
can and cannot reach, in every mode this machine offers.

Each test starts a wall around a small submission written to tmp_path and drives it with
an IsolatedDriver through the wall's fork server, as a grading phase does. The submission
probes from the inside (its findings come back as what it printed); the test checks from
the outside. Where a mode is not available the test is skipped, except under CI (the CI
machine offers `sandbox` and `user`: a skip there would hide a broken wall), where it fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import spec
from spec.discovery import Target, find_target
from spec.isolation import procfs, wall
from spec.isolation.driver import SubmissionCrashed, SubmissionRaised
from spec.isolation.isolated import IsolatedDriver

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the wall is Linux-only")

WALLED = ("sandbox", "user")
HEADER = "import os, sys, json, time, signal, socket\nfrom reference.memoization import Tensor, KVCache as _Base, enable_kv_cache, disable_kv_cache\n"
SHAPE = (1, 2, 1, 3)
KEY = np.arange(6.0).reshape(SHAPE) + 1


def require(mode: str) -> None:
    reason = wall.unavailable(mode)
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"isolation {mode!r} must work on the CI machine, but: {reason}")
    pytest.skip(f"isolation {mode!r} is not available here: {reason}")


def submission(root: Path, body: str) -> Target:
    root.mkdir(parents=True, exist_ok=True)
    (root / "memoization.py").write_text(HEADER + textwrap.dedent(body))
    return find_target(str(root))


@pytest.fixture
def walls(tmp_path: Path) -> Iterator[list[wall.Wall]]:
    made: list[wall.Wall] = []
    yield made
    for w in made:
        w.kill_all()


def build(walls: list[wall.Wall], target: Target, mode: str, private: Path) -> wall.Wall:
    require(mode)
    private.mkdir(mode=0o700, exist_ok=True)
    w = wall.Wall(target, mode, private)
    walls.append(w)
    w.start()
    return w


def driver(w: wall.Wall, **kw: float) -> IsolatedDriver:
    assert w.socket_path is not None
    return IsolatedDriver(w.target, forkserver=w.socket_path, call_timeout=kw.get("call_timeout", 5.0), import_timeout=30.0, memory_mb=int(kw.get("memory_mb", 4096)))


def findings(d: IsolatedDriver) -> dict[str, object]:
    """The JSON line the probe printed while it was imported."""
    d.describe()
    line = next(ln for ln in d.captured_output().splitlines() if ln.startswith("{"))
    found: dict[str, object] = json.loads(line)
    return found


# -- the driver works through every wall -------------------------------------------------------

MISBEHAVES = """
class KVCache(_Base):
    def update(self, layer_idx, key, value):
        if float(key.data.ravel()[0]) == 99.0:
            while True:
                pass
        super().update(layer_idx, key, value)
    def advance(self):
        if self.seq_pos == 1:
            os._exit(3)
        super().advance()
    def get(self, layer_idx):
        if layer_idx == 1:
            import ctypes
            ctypes.string_at(0)
        return super().get(layer_idx)
    def reset(self):
        import numpy
        self.hog = numpy.empty(1 << 30, dtype=numpy.uint8)  # 1 GiB, never touched: over a 512 MiB cap
"""


@pytest.mark.parametrize("mode", ("process",) + WALLED)
def test_checks_run_and_crash_the_same_behind_every_wall(tmp_path: Path, walls: list[wall.Wall], mode: str) -> None:
    """Each check gets a fresh worker from the fork server: a hang, an exit, a segfault or a
    memory cap costs that check alone, reported as it is without a wall."""
    w = build(walls, submission(tmp_path / "sub", MISBEHAVES), mode, tmp_path / "private")
    ok = driver(w)
    c = ok.new_cache(1, 4, 2, 2, 3)
    ok.update(c, 0, KEY, -KEY)
    ok.advance(c)
    keys, values = ok.get(c, 0)
    assert np.array_equal(keys, KEY) and np.array_equal(values, -KEY)
    hang = driver(w, call_timeout=1.0)
    with pytest.raises(SubmissionCrashed) as crash:
        hang.update(hang.new_cache(1, 4, 2, 2, 3), 0, KEY * 0 + 99.0, KEY)
    assert crash.value.kind == "timeout"
    dies = driver(w)
    c = dies.new_cache(1, 4, 2, 2, 3)
    dies.advance(c)
    with pytest.raises(SubmissionCrashed) as crash:
        dies.advance(c)
    assert (crash.value.kind, crash.value.detail) == ("exit", "exit code 3 during advance()")
    segv = driver(w)
    with pytest.raises(SubmissionCrashed) as crash:
        segv.get(segv.new_cache(1, 4, 2, 2, 3), 1)
    assert crash.value.kind == "signal" and "SIGSEGV" in crash.value.detail
    assert "Segmentation fault" in segv.captured_output()  # faulthandler, in the forked worker too
    capped = driver(w, memory_mb=512)
    with pytest.raises(SubmissionRaised) as raised:
        capped.reset(capped.new_cache(1, 4, 2, 2, 3))
    assert raised.value.is_a("MemoryError")
    assert ok.attribute(c, "seq_pos") == 1, "the first check's worker was untouched by the others"
    for d in (ok, hang, dies, segv, capped):
        d.close()


# -- what a submission behind the wall can reach ------------------------------------------------

PROBE = """
GRADER_PID = {grader_pid}
PRIVATE = {private!r}
GRADER_CODE = {grader_code!r}
PORT = {port}
found = {{"uid": os.getuid(), "pid": os.getpid()}}
def attempt(name, action):
    try:
        action()
        found[name] = "allowed"
    except BaseException as exc:
        found[name] = type(exc).__name__
attempt("list_private", lambda: os.listdir(PRIVATE))
attempt("grader_environ", lambda: open(f"/proc/{{GRADER_PID}}/environ", "rb").read())
attempt("grader_fds", lambda: os.listdir(f"/proc/{{GRADER_PID}}/fd"))
attempt("grader_visible", lambda: os.stat(f"/proc/{{GRADER_PID}}") and None)
attempt("signal_grader", lambda: os.kill(GRADER_PID, 0))  # signal 0: the permission check alone
attempt("write_grader_code", lambda: open(GRADER_CODE, "a").close())
attempt("write_submission", lambda: open(__file__, "a").close())
attempt("plant_in_submission", lambda: open(os.path.join(os.path.dirname(__file__), "spec.py"), "w").close())
attempt("network", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2).close())
if os.fork() == 0:  # a daemon: leaves the worker's session and sleeps; must not outlive the phase
    os.setsid()
    if os.fork() == 0:
        time.sleep(120)
    os._exit(0)
print(json.dumps(found), flush=True)
"""


@pytest.mark.parametrize("mode", WALLED)
def test_behind_the_wall_the_grader_is_out_of_reach(tmp_path: Path, walls: list[wall.Wall], mode: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    private = tmp_path / "private"
    grader_code = str(Path(spec.__file__ or "").resolve())
    probe = PROBE.format(grader_pid=os.getpid(), private=str(private), grader_code=grader_code, port=port)
    w = build(walls, submission(tmp_path / "sub", probe), mode, private)
    (private / "key").write_bytes(b"secret")
    try:
        found = findings(driver(w))
    finally:
        listener.close()
    assert found["uid"] != os.getuid() or mode == "sandbox" and found["uid"] == 65534
    for name in ("list_private", "grader_environ", "grader_fds", "signal_grader", "write_grader_code", "write_submission", "plant_in_submission"):
        assert found[name] != "allowed", f"{mode}: the submission could {name}: {found}"
    if mode == "sandbox":
        assert found["grader_visible"] == "FileNotFoundError", "the grader's processes must not be in the sandbox's /proc"
        assert found["network"] != "allowed", "no network in the sandbox"
        assert found["pid"] != os.getpid() and int(str(found["pid"])) < 100  # its own PID namespace
    assert not (Path(w.target.path or "") / "spec.py").exists()
    # The daemon is alive behind the wall until the phase ends, then dead with everything else.
    alive = behind(w, mode)
    assert alive, "the probe's daemon should be running until the wall comes down"
    w.kill_all()
    assert wait_gone(alive) == [], f"{mode}: processes outlived their wall"


def behind(w: wall.Wall, mode: str) -> list[int]:
    """Host pids of the processes behind the wall (sandbox: its PID namespace; user: its uid)."""
    if mode == "user":
        assert w.lease is not None
        return procfs.uid_processes(w.lease.uid)
    assert w.proc is not None
    ours = os.readlink("/proc/self/ns/pid")
    namespace = next(ns for ns in (os.readlink(f"/proc/{p}/ns/pid") for p in procfs.children(w.proc.pid)) if ns != ours)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    end = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if running(p)]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.05)


# -- the wall's own failures are the grader's --------------------------------------------------


def test_a_fork_server_that_cannot_start_is_a_wall_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, walls: list[wall.Wall]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif sys.orig_argv[-4:-3] and 'spec.isolation.forkserver' in sys.orig_argv:\n"
        "    sys.stderr.write('simulated: the fork server cannot start\\n')\n    os._exit(1)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    with pytest.raises(wall.WallError, match="did not start.*simulated: the fork server cannot start"):
        build(walls, find_target(None), "process", tmp_path / "private")


def test_the_strongest_mode_is_chosen_and_process_carries_a_warning() -> None:
    assert wall.strongest() in ("sandbox", "user", "process")
    assert wall.unavailable(wall.strongest()) is None
    assert wall.warning("process") and "not protected" in str(wall.warning("process"))
    assert wall.warning("sandbox") is None and wall.warning("user") is None
    if os.environ.get("CI"):
        assert wall.strongest() == "sandbox", wall.unavailable("sandbox")


@pytest.mark.parametrize("mode", ("process",) + WALLED)
def test_a_wall_is_gone_when_kill_all_returns(tmp_path: Path, walls: list[wall.Wall], mode: str) -> None:
    """kill_all returns only once every process below the launcher is dead: the grader's
    sweep right after it must find nothing of the wall's own (it once counted the sandbox's
    fork server, still dying of --die-with-parent, as the reference's leftover process)."""
    w = build(walls, find_target(None), mode, tmp_path / "private")
    assert w.proc is not None
    tree = [w.proc.pid] + procfs.descendants(w.proc.pid)  # sandbox: bwrap, then the fork server
    assert len(tree) == (2 if mode == "sandbox" else 1), tree
    w.kill_all()
    assert [pid for pid in tree if procfs.is_alive(pid)] == []


def test_uid_leases_hold_across_graders_with_other_temp_dirs(tmp_path: Path) -> None:
    """Two graders on one machine never lease the same uid, whatever their TMPDIR: with the
    lock files under each one's temp dir, a batch run with its own TMPDIR leased the uid a
    concurrent wall held, and each sweep killed the other's workers (a CI failure)."""
    require("user")
    from spec.isolation import sandbox

    held = sandbox.UidLease()
    try:
        code = "from spec.isolation import sandbox; print(sandbox.UidLease().uid)"
        env = dict(os.environ, TMPDIR=str(tmp_path))
        other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert int(other.stdout) != held.uid
    finally:
        held.release()
