"""Run the suite on one submission in pytest subprocesses and bring back its verdicts.

The grader process never imports submission code. Each phase starts a fresh pytest
(`python -I -X pycache_prefix=<private> -c <bootstrap> --pyargs spec.checks ...`) in a
private (0700) scratch directory that is never named to the submission:

- isolated mode (-I): no cwd or script directory, PYTHON* variable or user site on
  sys.path; the bootstrap puts the grader's own install root first, so nothing a
  submission can write is imported (no conftest.py is read: `--noconftest`, and the
  suite's own conftest is loaded as a plugin by name);
- bytecode comes only from the grader's private cache (pycache_prefix), never from a
  `__pycache__` beside the installed sources, where a submission could plant a .pyc;
- plugin autoloading off and an empty configuration file of ours: a submission's or a
  repository's pytest.ini or conftest.py is never read;
- the bootstrap makes the process non-dumpable before anything else, and only then is
  the verdict-signing key written to its key pipe; verdicts come back on a pipe the
  grader holds (a descriptor, never a path on a command line), each signed, read with a
  size cap;
- a wall-clock limit on the whole run; the run is its own session, and after it (and
  before the next one starts) every process left in the grader's tree is frozen and
  killed (`sweep`). Whatever finished by then keeps its verdict; every other check is
  failed with a message saying what happened.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import importlib.util
import json
import os
import secrets
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from spec.clauses import NOT_APPLICABLE
from spec.discovery import Target
from spec.grader.rubric import Check
from spec.grader.safe_io import UnsafeFile, private_dir, read_bounded, remove_tree
from spec.isolation import procfs, wall
from spec.grader.stream import sign
from spec.plugin import OPTIONS
from spec.results import Verdict

OUTPUT_TAIL = 64 * 1024
# Hard wall-clock limit of one submission's run, per profile (seconds); --time-limit overrides.
TIME_LIMITS = {"quick": 180.0, "default": 300.0, "thorough": 1800.0}
COLLECT_LIMIT = 120.0
MAX_MANIFEST = 8 << 20  # bytes: the check list is about 20 KB
MAX_STREAM = 64 << 20  # bytes of verdict lines kept from one run (a verdict's message is capped at 20 KB)
SWEEP_LIMIT = 20.0  # seconds spent freezing and killing leftovers after one phase
SWEEP_QUIET_SCANS = 5  # the tree must look empty this many times in a row ...
SWEEP_QUIET_SECONDS = 0.05  # ... over at least this long before a sweep believes it
PR_SET_DUMPABLE = 4
_subreaper = False  # set by become_subreaper(): only the grader's CLI process kills leftovers
ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the grader's `spec` and `reference`

# The first code of every grader pytest process (python -I -c BOOTSTRAP ROOT ...):
# non-dumpable before it holds anything (a same-user, non-root process can then neither
# ptrace it nor open its /proc/<pid>/fd or mem), then the grader's install root first on
# sys.path. The stream plugin (spec/grader/stream.py) then sends one byte on the ready
# pipe at configure time and reads the key, which the grader writes only on that byte.
BOOTSTRAP = """\
import sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(%d, 0, 0, 0, 0)
sys.path.insert(0, sys.argv.pop(1))
import pytest
sys.exit(pytest.console_main())
""" % PR_SET_DUMPABLE


class GraderError(Exception):
    """The grader itself could not run (exit code 2)."""


@dataclass(frozen=True)
class Options:
    profile: str
    seed: int
    jobs: int
    isolation: str
    time_limit: float
    groups: tuple[str, ...] = ()  # --groups: only these groups' checks run (and the import checks); () for all


@dataclass
class Outcome:
    check: Check
    passed: bool
    message: str
    duration: float


@dataclass
class RunResult:
    outcomes: list[Outcome]
    notes: list[str] = field(default_factory=list)  # what went wrong with the run itself
    output_tail: str = ""
    elapsed: float = 0.0
    returncode: int | None = None
    timed_out: bool = False  # the run hit its wall-clock limit (a gradebook status)


# -- the grader's private bytecode cache -----------------------------------------------------

_pycache: Path | None = None


def _owned_private(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


def pycache_dir() -> Path:
    """Where every grader Python process reads and writes bytecode (-X pycache_prefix):
    $XDG_CACHE_HOME/kvspec/pycache (else ~/.cache/...), a 0700 directory of this user,
    kept between runs (compiling NumPy, pytest and Hypothesis afresh costs seconds). A
    .pyc planted beside the installed sources is never read. If that directory cannot be
    made private, a fresh one for this run (removed at exit)."""
    global _pycache
    if _pycache is not None:
        return _pycache
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "kvspec" / f"pycache-{sys.implementation.cache_tag}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (path.parent, path):
            if os.lstat(d).st_uid == os.geteuid():
                os.chmod(d, 0o700)
    except OSError:
        pass
    if not _owned_private(path) or not _owned_private(path.parent):
        path = private_dir("kvspec-pycache-")
        import atexit

        atexit.register(remove_tree, path)
    _pycache = path
    return path


def python_command() -> list[str]:
    """The interpreter of every grader Python process: isolated, private bytecode."""
    return [sys.executable, "-I", "-X", f"pycache_prefix={pycache_dir()}"]


def _environment() -> dict[str, str]:
    """The grader's environment without anything that could steer pytest or the suite.
    (-I makes the interpreter ignore PYTHON* variables; they stay in os.environ only for
    the isolated workers, which build their own environment from an allow-list.)"""
    steering = {env for env, _ in OPTIONS.values()}  # KVSPEC_SUBMISSION etc.: we pass options instead
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in steering and not k.startswith(("PYTEST_", "HYPOTHESIS_", "PYTHONBREAKPOINT", "PYTHONSTARTUP"))
    }
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONPYCACHEPREFIX"] = str(pycache_dir())  # for the isolated workers (not under -I)
    return env


def _plugins() -> list[str]:
    args = ["-p", "spec.plugin", "-p", "spec.grader.stream", "-p", "xdist.plugin"]
    if importlib.util.find_spec("_hypothesis_pytestplugin") is not None:
        args += ["-p", "_hypothesis_pytestplugin"]
    return args


def _base_command(workdir: Path) -> list[str]:
    """pytest in `workdir` (its cwd; every path on the command line is relative to it)."""
    (workdir / "kvspec-grader.ini").write_text("[pytest]\n")
    return [
        *python_command(), "-c", BOOTSTRAP, ROOT,
        "--pyargs", "spec.checks", "-c", "kvspec-grader.ini", "--rootdir", ".",
        "--noconftest", "-p", "spec.checks.conftest",  # (pytest reads ./conftest.py when --pyargs names no path)
        *_plugins(), "-p", "no:cacheprovider",
        "-q", "--tb=no", "--no-header", "-r", "N", "--color=no",
    ]  # fmt: skip


def _xdist_workers(options: Options) -> int:
    """xdist workers of the checks' run: one job runs the checks in pytest's own process (0:
    no xdist), one interpreter start fewer per submission, as the import phase does. Behind
    a wall the submission's code runs only in the wall's workers; without one (`none`,
    trusted code only) it runs in the test process, as the help says, crash and all."""
    return 0 if options.jobs == 1 else options.jobs


def _xdist(jobs: int) -> list[str]:
    """N xdist workers started with the same isolated interpreter as their controller."""
    if jobs <= 0:
        return []
    return ["--dist", "load", "--tx", f"{jobs}*popen//python={shlex.join(python_command())}"]


def _suite_options(target: Target, options: Options) -> list[str]:
    args = [f"--kvspec-profile={options.profile}", f"--kvspec-seed={options.seed}", f"--kvspec-isolation={options.isolation}"]
    if target.path is not None:
        args.append(f"--kvspec-submission={os.path.abspath(target.path)}")
    args.append(f"--kvspec-module={target.module}")
    if target.tensor is not None:
        args.append(f"--kvspec-tensor={target.tensor}")
    return args


class _Tail:
    """Read a pipe to the end in a thread, keeping only its last OUTPUT_TAIL bytes."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.pipe = pipe
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.total = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                chunk = os.read(self.pipe.fileno(), 65536)
            except OSError:
                break
            if not chunk:
                break
            self.chunks.append(chunk)
            self.size += len(chunk)
            self.total += len(chunk)
            while self.size - len(self.chunks[0]) >= OUTPUT_TAIL:
                self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        self.thread.join(timeout=5)
        data = b"".join(self.chunks)[-OUTPUT_TAIL:]
        text = data.decode("utf-8", errors="replace")
        if self.total > len(data):
            text = f"[... {self.total - len(data)} bytes of output cut ...]\n" + text
        return text


class _Head:
    """Read a pipe to the end in a thread, keeping its first `cap` bytes (the verdict channel)."""

    def __init__(self, fd: int, cap: int) -> None:
        self.fd = fd
        self.cap = cap
        self.data = bytearray()
        self.overflow = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                room = self.cap - len(self.data)
                self.data += chunk[: max(room, 0)]
                self.overflow += max(len(chunk) - max(room, 0), 0)
        finally:
            os.close(self.fd)

    def bytes(self, wait: float) -> bytes:
        self.thread.join(timeout=wait)
        return bytes(self.data)


def become_subreaper() -> None:
    """Orphaned descendants (a submission's daemonised child) are re-parented to this
    process instead of init, so `sweep` can find them. Linux only; harmless elsewhere."""
    global _subreaper
    if not sys.platform.startswith("linux"):
        return
    _subreaper = True
    procfs.become_subreaper()


def harden_self() -> None:
    """Make this process non-dumpable (Linux): it will hold verdict keys. A same-user
    process can then neither ptrace it nor read its memory or descriptors in /proc."""
    procfs.harden_grader_process()


def sweep(limit: float = SWEEP_LIMIT) -> int:
    """Kill every process left in this process's tree (with the subreaper flag, every
    descendant of every run, however it daemonised): freeze them all with SIGSTOP, rescan
    until no new one appears (a chain that forks as it dies cannot outrun that), SIGKILL
    the frozen and their process groups, reap; repeat until the tree has looked empty
    `SWEEP_QUIET_SCANS` times in a row over at least `SWEEP_QUIET_SECONDS` (one empty scan
    proves little: a /proc scan is not atomic, and a chain whose every generation lives a
    few milliseconds can be between the directory listing and the read of its stat file
    each time), or until `limit` seconds have passed. Only for the grader's own CLI
    process, between runs, when no process of its own is running. Returns how many
    processes were killed. (The isolation modes that confine a submission to a namespace
    or a uid extend this with their own sweep.)"""
    if not _subreaper:
        return 0
    killed: set[int] = set()
    own_group = os.getpgrp()
    deadline = time.monotonic() + limit
    quiet_scans, quiet_since = 0, time.monotonic()
    while time.monotonic() < deadline:
        procfs.reap()
        frozen: set[int] = set()
        while time.monotonic() < deadline:
            new = [pid for pid in procfs.descendants() if pid not in frozen]
            if not new:
                break
            for pid in new:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except (ProcessLookupError, PermissionError):
                    pass
                frozen.add(pid)
        if not frozen:
            quiet_scans += 1
            if quiet_scans >= SWEEP_QUIET_SCANS and time.monotonic() - quiet_since >= SWEEP_QUIET_SECONDS:
                break
            time.sleep(0.005)
            continue
        for pid in frozen:
            group = procfs.process_group(pid)
            if group is not None and group not in (own_group, 0):
                try:
                    os.killpg(group, signal.SIGKILL)  # atomic against a fork in the same group
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        killed |= frozen
        quiet_scans, quiet_since = 0, time.monotonic()
        time.sleep(0.01)
        procfs.reap()
    procfs.reap()
    return len(killed)


def _kill_group(proc: "subprocess.Popen[bytes]") -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Scratch:
    """A private (0700) scratch directory for one pytest run, removed without raising."""

    def __init__(self, prefix: str) -> None:
        self.path = private_dir(prefix)
        self.problem: str | None = None

    def __enter__(self) -> "_Scratch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.problem = remove_tree(self.path)


def collect(target: Target, options: Options) -> list[Check]:
    """The checks of the suite (runs pytest --collect-only; imports no submission code)."""
    with _Scratch("kvspec-") as scratch:
        workdir = scratch.path
        cmd = _base_command(workdir) + ["--collect-only", "--kvspec-grader-manifest=manifest.json"]
        cmd += _suite_options(target, options)
        try:
            proc = subprocess.run(
                cmd, cwd=workdir, env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, timeout=COLLECT_LIMIT, start_new_session=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise GraderError(f"collecting the checks took longer than {COLLECT_LIMIT:.0f} s") from None
        try:
            raw = read_bounded(workdir / "manifest.json", MAX_MANIFEST) if proc.returncode in (0, 5) else None
        except UnsafeFile:
            raw = None
        if raw is None:
            lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.strip()]
            detail = next((ln for ln in lines if "rror" in ln), lines[-1] if lines else "no output")
            raise GraderError(f"could not collect the checks (pytest exit {proc.returncode}): {detail.strip()}")
        entries = json.loads(raw)
    checks = [Check(e["nodeid"], e["name"], tuple(e["clauses"]), e["group"]) for e in entries]
    if not checks:
        raise GraderError("the suite has no checks (spec/checks collected nothing)")
    names = collections.Counter(c.name for c in checks)
    return [
        Check(c.nodeid, c.nodeid.replace(".py::", ".").replace("::", ".") if names[c.name] > 1 else c.name, c.clauses, c.group)
        for c in checks
    ]


def parse_stream(raw: bytes, key: bytes) -> tuple[dict[str, Verdict], int]:
    """Verdicts whose HMAC checks, and how many lines did not."""
    verdicts: dict[str, Verdict] = {}
    rejected = 0
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            data = entry["verdict"]
            good = isinstance(data, dict) and hmac.compare_digest(sign(key, data), str(entry["mac"]))
            verdict = Verdict(**data) if good else None
        except (ValueError, KeyError, TypeError):
            verdict = None
        if verdict is None:
            rejected += 1
        elif verdict.nodeid not in verdicts:
            verdicts[verdict.nodeid] = verdict
    return verdicts, rejected


def _crash_line(tail: str, check: Check) -> str:
    for line in tail.splitlines():
        if check.nodeid in line and ("crash" in line or "error" in line.lower()):
            return line.strip()
    return ""


@dataclass
class _Phase:
    verdicts: dict[str, Verdict]
    rejected: int
    output: str
    returncode: int
    timed_out: bool
    notes: list[str] = field(default_factory=list)


def _hardened(pid: int) -> bool:
    """Linux: has process `pid` made itself non-dumpable? Its /proc files then belong to
    root. (Running as root, the check says nothing and is skipped: root ignores it anyway.)"""
    if not sys.platform.startswith("linux") or os.geteuid() == 0:
        return True
    try:
        return os.stat(f"/proc/{pid}/fd").st_uid == 0
    except OSError:
        return False


def _hand_over_key(proc: "subprocess.Popen[bytes]", ready_r: int, key_w: int, key: bytes, limit: float) -> None:
    """Wait for the run's ready byte (it is non-dumpable by then), check that it is, and
    only then write the key. A run that dies or never gets ready gets no key."""
    try:
        ready, _, _ = select.select([ready_r], [], [], max(limit, 1.0))
        if ready and os.read(ready_r, 1) == b"1" and _hardened(proc.pid):
            os.write(key_w, key)
    except OSError:
        pass
    finally:
        os.close(ready_r)
        os.close(key_w)


def _run_pytest(target: Target, options: Options, group: str, select_group: bool, jobs: int, limit: float) -> _Phase:
    """One pytest run over the checks of `group` (select) or all but `group` (not select)."""
    notes: list[str] = []
    killed = sweep()  # nothing of an earlier run may watch or touch this one
    if killed:
        notes.append(f"{killed} process(es) left running before this run started were killed.")
    with _Scratch("kvspec-") as scratch, contextlib.ExitStack() as phase:
        workdir = scratch.path
        try:  # the submission's wall and its fork server, for this phase only (killed below)
            walled = phase.enter_context(wall.start(target, options.isolation, workdir))
        except wall.WallError as exc:
            raise GraderError(f"internal error, a grader fault and not the submission's: {exc} (no score was written)") from None
        key = secrets.token_bytes(32)
        key_r, key_w = os.pipe()
        ready_r, ready_w = os.pipe()
        stream_r, stream_w = os.pipe()
        cmd = _base_command(workdir) + [
            "--kvspec-results=results.json",
            f"--kvspec-grader-stream-fd={stream_w}",
            f"--kvspec-grader-key-fd={key_r}",
            f"--kvspec-grader-ready-fd={ready_w}",
            f"--kvspec-grader-{'only' if select_group else 'skip'}-group={group}",
            *([f"--kvspec-grader-groups={','.join(options.groups)}"] if options.groups and not select_group else []),
            "-p", "no:randomly",
        ] + _xdist(jobs) + walled.pytest_args() + _suite_options(walled.target, options)  # fmt: skip
        try:
            proc = subprocess.Popen(
                cmd, cwd=workdir, env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, pass_fds=(key_r, ready_w, stream_w), start_new_session=True,
            )  # fmt: skip
        except BaseException:
            for fd in (key_w, ready_r, stream_r):
                os.close(fd)
            raise
        finally:
            for fd in (key_r, ready_w, stream_w):
                os.close(fd)
        assert proc.stdout is not None
        tail = _Tail(proc.stdout)
        stream = _Head(stream_r, MAX_STREAM)
        start = time.monotonic()
        timed_out = False
        try:
            _hand_over_key(proc, ready_r, key_w, key, limit)
            proc.wait(timeout=max(limit - (time.monotonic() - start), 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            proc.wait()
        except BaseException:  # Ctrl-C: the run is in its own session and would outlive us
            _kill_group(proc)
            proc.wait()
            sweep()
            raise
        _kill_group(proc)  # anything left in the run's process group
        walled.kill_all()  # everything behind the wall: its namespace, or its uid
        killed = sweep()  # and anywhere else in our tree: nothing may outlive its phase
        if killed:
            notes.append(f"{killed} process(es) left running after the run were killed.")
        output = tail.text()
        raw = stream.bytes(wait=5.0)
        verdicts, rejected = parse_stream(raw, key)
        if stream.overflow:
            notes.append(f"{stream.overflow} bytes of verdicts past the {MAX_STREAM} allowed were ignored.")
    if scratch.problem:
        notes.append(scratch.problem)
    if proc.returncode == 4:  # pytest's usage error: our options, not the submission
        lines = [ln.strip() for ln in output.splitlines() if "rror" in ln]
        raise GraderError(f"the test run refused its options: {lines[0] if lines else 'pytest exit code 4'}")
    return _Phase(verdicts, rejected, output, proc.returncode, timed_out, notes)


def _describe(phase: _Phase, options: Options, total: int, limit: float) -> list[str]:
    notes = list(phase.notes)
    if phase.timed_out:
        notes.append(f"The grading run hit its time limit of {limit:.0f} s and was stopped; {len(phase.verdicts)} of {total} checks had finished.")
    elif phase.returncode not in (0, 1, 5):
        rc = phase.returncode
        what = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        notes.append(f"The test run {what} before every check had finished.")
    if phase.rejected:
        notes.append(f"{phase.rejected} verdict line(s) failed authentication and were ignored (something other than the grader wrote them).")
    return notes


def _stop_on_fault(phase: _Phase) -> None:
    """A verdict that records a GraderFault (the grader failed before any submission code
    ran): nothing of this run may be scored against the submission. GraderError, one line."""
    faults = sorted((v for v in phase.verdicts.values() if v.fault), key=lambda v: v.nodeid)
    if faults:
        detail = " ".join(faults[0].fault.split())[:600]
        raise GraderError(f"internal error, a grader fault and not the submission's: {detail} (in {faults[0].name}; no score was written)")


def run_suite(target: Target, checks: list[Check], options: Options) -> RunResult:
    """Run every check on `target`; one Outcome per check, in `checks` order.

    The import checks run first, alone: if none passes, the module cannot be loaded and
    every other check would fail the same way (after the import timeout, for a module
    that hangs), so the rest are failed at once instead of being run. A check whose
    verdict records a grader fault stops the grading with GraderError (exit code 2).
    """
    start = time.monotonic()
    deadline = start + options.time_limit
    gate = [c for c in checks if c.group == "import"]
    rest = [c for c in checks if c.group != "import"]
    verdicts: dict[str, Verdict] = {}
    notes: list[str] = []
    outputs: list[str] = []
    phases: list[tuple[list[Check], _Phase, float]] = []
    loaded = True
    if gate:
        limit = deadline - time.monotonic()
        phase = _run_pytest(target, options, "import", True, 0, limit)
        _stop_on_fault(phase)
        phases.append((gate, phase, limit))
        loaded = any(phase.verdicts.get(c.nodeid, None) is not None and phase.verdicts[c.nodeid].passed for c in gate)
    if rest and loaded:
        limit = deadline - time.monotonic()
        phase = _run_pytest(target, options, "import", False, _xdist_workers(options), limit)
        _stop_on_fault(phase)
        phases.append((rest, phase, limit))
    for members, phase, limit in phases:
        verdicts.update({c.nodeid: phase.verdicts[c.nodeid] for c in members if c.nodeid in phase.verdicts})
        notes += _describe(phase, options, len(members), limit)
        if phase.output.strip():
            outputs.append(phase.output)
    outcomes = []
    not_applicable: dict[str, list[tuple[Check, str]]] = {}
    for check in checks:
        v = verdicts.get(check.nodeid)
        if v is not None and not v.applicable:  # a check that does not apply to this submission: not scored
            why = v.message.split(NOT_APPLICABLE + ": ")[-1].strip().rstrip("')\"")[:200]
            not_applicable.setdefault(check.group, []).append((check, why))
            continue
        if v is not None:
            outcomes.append(Outcome(check, bool(v.passed), str(v.message), float(v.duration)))
            continue
        cited = ", ".join(check.clauses)
        ran = next((p for members, p, _ in phases if check in members), None)
        if ran is None:
            why = "not graded: the cache module could not be loaded (see the import check for why)"
        elif ran.timed_out:
            why = f"not graded: the run reached its time limit of {options.time_limit:.0f} s before this check finished (does your code hang or loop forever?)"
        elif ran.returncode not in (0, 1):
            why = f"not graded: the test run stopped (exit {ran.returncode}) before this check finished"
        else:
            line = _crash_line(ran.output, check)
            why = "no verdict: the process running this check died" + (f" ({line})" if line else "")
        outcomes.append(Outcome(check, False, f"[{cited}] {why}", 0.0))
    timed_out = any(phase.timed_out for _, phase, _ in phases)
    scored_groups = {o.check.group for o in outcomes}
    for group, dropped in not_applicable.items():
        if group in scored_groups:  # the group's other checks share its points
            for check, why in dropped:
                notes.append(f"{check.name} ({', '.join(check.clauses)}) does not apply ({why}): "
                             f"its points are shared by the other checks of group {group!r}.")
        else:
            notes.append(f"Group {group!r} does not apply ({dropped[0][1]}): its points are spread over the other groups.")
    return RunResult(outcomes, notes, "\n".join(outputs), time.monotonic() - start, phases[-1][1].returncode if phases else None, timed_out)
