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
