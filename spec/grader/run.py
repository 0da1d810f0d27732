"""Run the suite on one submission in a pytest subprocess and bring back its verdicts.

The grader process never imports submission code. It starts
`python -m pytest --pyargs spec.checks ...` in a fresh temporary directory, with plugin
autoloading off (a plugin installed in the grading environment cannot interfere) and no
configuration file but an empty one of ours (a submission's or a repository's pytest.ini
or conftest.py is never read), under a wall-clock limit on the whole run. The run is
its own process group: at the limit the group is killed. Whatever finished by then keeps
its verdict; every other check is failed with a message saying what happened.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import hmac
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from spec.discovery import Target
from spec.grader.rubric import Check
from spec.grader.stream import sign
from spec.plugin import OPTIONS
from spec.results import Verdict

OUTPUT_TAIL = 64 * 1024
# Hard wall-clock limit of one submission's run, per profile (seconds); --time-limit overrides.
TIME_LIMITS = {"quick": 180.0, "default": 300.0, "thorough": 1800.0}
COLLECT_LIMIT = 120.0
PR_SET_CHILD_SUBREAPER = 36
_subreaper = False  # set by become_subreaper(): only the grader's CLI process kills leftovers


class GraderError(Exception):
    """The grader itself could not run (exit code 2)."""


@dataclass(frozen=True)
class Options:
    profile: str
    seed: int
    jobs: int
    isolation: str
    time_limit: float


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


def _environment() -> dict[str, str]:
    """The grader's environment without anything that could steer pytest or the suite."""
    steering = {env for env, _ in OPTIONS.values()}  # KVSPEC_SUBMISSION etc.: we pass options instead
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in steering and not k.startswith(("PYTEST_", "HYPOTHESIS_", "PYTHONBREAKPOINT", "PYTHONSTARTUP"))
    }
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONHASHSEED"] = "0"
    # spec (and reference) must import from the temporary working directory too.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _plugins() -> list[str]:
    args = ["-p", "spec.plugin", "-p", "spec.grader.stream", "-p", "xdist.plugin"]
    if importlib.util.find_spec("_hypothesis_pytestplugin") is not None:
        args += ["-p", "_hypothesis_pytestplugin"]
    return args


def _base_command(workdir: Path) -> list[str]:
    ini = workdir / "kvspec-grader.ini"
    ini.write_text("[pytest]\n")
    return [
        sys.executable, "-m", "pytest", "--pyargs", "spec.checks",
        "-c", str(ini), "--rootdir", str(workdir),
        *_plugins(), "-p", "no:cacheprovider",
        "-q", "--tb=no", "--no-header", "-r", "N", "--color=no",
    ]  # fmt: skip


def _suite_options(target: Target, options: Options) -> list[str]:
    args = [f"--kvspec-profile={options.profile}", f"--kvspec-seed={options.seed}", f"--kvspec-isolation={options.isolation}"]
    if target.path is not None:
        args.append(f"--kvspec-submission={target.path}")
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
            chunk = os.read(self.pipe.fileno(), 65536)
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


def become_subreaper() -> None:
    """Orphaned descendants (a submission's daemonised child) are re-parented to this
    process instead of init, so `kill_descendants` can find them. Linux only; harmless
    elsewhere."""
    global _subreaper
    if not sys.platform.startswith("linux"):
        return
    _subreaper = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _children() -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # state, ppid, ...
        if len(fields) > 1 and fields[1] == str(me) and fields[0] != "Z":
            found.append(int(entry))
    return found


def kill_descendants() -> int:
    """SIGKILL every child of this process (with the subreaper flag: every descendant
    left over from a run) and reap them. Only for the grader's own CLI process, whose
    only children are the runs it started. Returns how many were killed."""
    if not _subreaper:
        return 0
    killed = 0
    for _ in range(100):
        _reap()
        children = _children()
        if not children:
            break
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    _reap()
    return killed


def _reap() -> None:
    """Collect the exit status of every child that has ended (orphans re-parented to us)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_group(proc: "subprocess.Popen[bytes]") -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def collect(target: Target, options: Options) -> list[Check]:
    """The checks of the suite (runs pytest --collect-only; imports no submission code)."""
    with tempfile.TemporaryDirectory(prefix="kvspec-collect-") as tmp:
        workdir = Path(tmp)
        manifest = workdir / "manifest.json"
        cmd = _base_command(workdir) + ["--collect-only", f"--kvspec-grader-manifest={manifest}"]
        cmd += _suite_options(target, options)
        try:
            proc = subprocess.run(
                cmd, cwd=workdir, env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, timeout=COLLECT_LIMIT, start_new_session=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise GraderError(f"collecting the checks took longer than {COLLECT_LIMIT:.0f} s") from None
        if proc.returncode not in (0, 5) or not manifest.exists():
            lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.strip()]
            detail = next((ln for ln in lines if "rror" in ln), lines[-1] if lines else "no output")
            raise GraderError(f"could not collect the checks (pytest exit {proc.returncode}): {detail.strip()}")
        entries = json.loads(manifest.read_text())
    checks = [Check(e["nodeid"], e["name"], tuple(e["clauses"]), e["group"]) for e in entries]
    if not checks:
        raise GraderError("the suite has no checks (spec/checks collected nothing)")
    names = collections.Counter(c.name for c in checks)
    return [
        Check(c.nodeid, c.nodeid.replace(".py::", ".").replace("::", ".") if names[c.name] > 1 else c.name, c.clauses, c.group)
        for c in checks
    ]


def _read_stream(path: Path, key: bytes) -> tuple[dict[str, Verdict], int]:
    """Verdicts whose HMAC checks, and how many lines did not."""
    verdicts: dict[str, Verdict] = {}
    rejected = 0
    try:
        raw = path.read_bytes()
    except OSError:
        return verdicts, 0
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


def _run_pytest(target: Target, options: Options, group: str, select: bool, jobs: int, limit: float) -> _Phase:
    """One pytest run over the checks of `group` (select) or all but `group` (not select)."""
    with tempfile.TemporaryDirectory(prefix="kvspec-run-") as run_tmp, tempfile.TemporaryDirectory(prefix="kvspec-grader-") as private_tmp:
        workdir, private = Path(run_tmp), Path(private_tmp)
        os.chmod(private, 0o700)
        stream = private / "verdicts.jsonl"
        key = secrets.token_bytes(32)
        read_fd, write_fd = os.pipe()
        os.write(write_fd, key)
        os.close(write_fd)
        cmd = _base_command(workdir) + [
            f"--kvspec-results={private / 'results.json'}",
            f"--kvspec-grader-stream={stream}",
            f"--kvspec-grader-key-fd={read_fd}",
            f"--kvspec-grader-{'only' if select else 'skip'}-group={group}",
            "-p", "no:randomly",
        ] + (["-n", str(jobs)] if jobs > 0 else []) + _suite_options(target, options)  # fmt: skip
        try:
            proc = subprocess.Popen(
                cmd, cwd=workdir, env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, pass_fds=(read_fd,), start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(read_fd)
        assert proc.stdout is not None
        tail = _Tail(proc.stdout)
        timed_out = False
        try:
            proc.wait(timeout=max(limit, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            proc.wait()
        except BaseException:  # Ctrl-C: the run is in its own session and would outlive us
            _kill_group(proc)
            proc.wait()
            kill_descendants()
            raise
        _kill_group(proc)  # anything left in the run's process group
        output = tail.text()
        verdicts, rejected = _read_stream(stream, key)
    if proc.returncode == 4:  # pytest's usage error: our options, not the submission
        lines = [ln.strip() for ln in output.splitlines() if "rror" in ln]
        raise GraderError(f"the test run refused its options: {lines[0] if lines else 'pytest exit code 4'}")
    return _Phase(verdicts, rejected, output, proc.returncode, timed_out)


def _describe(phase: _Phase, options: Options, total: int, limit: float) -> list[str]:
    notes = []
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
        phase = _run_pytest(target, options, "import", False, options.jobs, limit)
        _stop_on_fault(phase)
        phases.append((rest, phase, limit))
    for members, phase, limit in phases:
        verdicts.update({c.nodeid: phase.verdicts[c.nodeid] for c in members if c.nodeid in phase.verdicts})
        notes += _describe(phase, options, len(members), limit)
        if phase.output.strip():
            outputs.append(phase.output)
    outcomes = []
    for check in checks:
        v = verdicts.get(check.nodeid)
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
    return RunResult(outcomes, notes, "\n".join(outputs), time.monotonic() - start, phases[-1][1].returncode if phases else None)
