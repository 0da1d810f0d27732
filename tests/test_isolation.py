"""The isolated driver against hostile submissions (spec/isolation/isolated.py, spec/isolation/worker.py, spec/isolation/protocol.py).

Each hostile submission is a loose `memoization.py` written to tmp_path that re-exports the
reference and misbehaves in one way. What each case produces is what docs/threat-model.md
promises: only the driver (= the check) in flight is lost, with a message that says what
happened, and nothing the submission does reaches the grader's process other than plain
observations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from spec.isolation import protocol
from spec.discovery import Target, find_target
from spec.isolation.driver import (
    GraderFault,
    Measurement,
    ModelConfig,
    ModelState,
    SubmissionCrashed,
    SubmissionInfo,
    SubmissionRaised,
    SubmissionUnavailable,
)
from spec.isolation.isolated import IsolatedDriver, WorkerError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process isolation tests use /proc")

HEADER = """\
import os, sys, json, pathlib
import numpy as np
from reference.memoization import Tensor, enable_kv_cache, disable_kv_cache
from reference.kv_cache import KVCache as _Base
"""
SHAPE = (1, 2, 1, 3)
KEY = np.arange(6.0).reshape(SHAPE) + 1
VALUE = -KEY
FAST = dict(call_timeout=2.0, import_timeout=30.0)  # small call timeout; generous start under load


def write_submission(root: Path, body: str, header: str = HEADER) -> Target:
    root.mkdir(parents=True, exist_ok=True)
    (root / "memoization.py").write_text(header + textwrap.dedent(body))
    return find_target(str(root))


def cache_class(body: str) -> str:
    """A KVCache subclass of the reference with the methods in `body` replaced."""
    return "class KVCache(_Base):\n" + textwrap.indent(textwrap.dedent(body), "    ")


@pytest.fixture
def drivers() -> Iterator[list[IsolatedDriver]]:
    """Drivers made in a test; all closed at the end, even when the test fails."""
    made: list[IsolatedDriver] = []
    yield made
    for d in made:
        d.close()


def make(drivers: list[IsolatedDriver], target: Target, **kw: object) -> IsolatedDriver:
    options: dict[str, object] = {**FAST, **kw}
    d = IsolatedDriver(target, **options)  # type: ignore[arg-type]
    drivers.append(d)
    return d


def worker_pid(d: IsolatedDriver) -> int:
    assert d._worker is not None
    return d._worker.proc.pid


def is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting for an init that does not reap (it runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in (b"Z", b"X")


def wait_dead(pids: list[int], timeout: float = 5.0) -> list[int]:
    """The pids still alive after `timeout` seconds (SIGKILL is asynchronous)."""
    end = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if not is_dead(p)]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.02)


def exercise(d: IsolatedDriver) -> None:
    """A short correct session: the driver works."""
    c = d.new_cache(1, 4, 2, 2, 3)
    d.update(c, 0, KEY, VALUE)
    d.advance(c)
    keys, values = d.get(c, 0)
    assert np.array_equal(keys, KEY) and np.array_equal(values, VALUE)


# -- the plain path ---------------------------------------------------------------------


def test_every_operation_crosses_as_plain_data(drivers: list[IsolatedDriver]) -> None:
    d = make(drivers, find_target(None))
    info = d.describe()
    assert type(info) is SubmissionInfo and "KVCache" in info.names
    c = d.new_cache(1, 4, 2, 2, 3)
    d.update(c, 0, KEY, VALUE)
    d.update_then_mutate(c, 1, KEY, VALUE, 0.0)
    d.advance(c)
    keys, values = d.get(c, 1)
    assert type(keys) is np.ndarray and keys.dtype == np.float64 and keys.flags.writeable and keys.flags.owndata
    assert np.array_equal(keys, KEY) and np.array_equal(values, VALUE)  # the mutation after update did not leak in
    assert d.attribute(c, "seq_pos") == 1
    assert d.memory_usage(c)["cache_tensors"] == 4.0
    assert type(d.update_allocation(c, 0, KEY, VALUE)) is Measurement
    handle, held = d.construction_retained(1, 4, 2, 2, 3)
    assert type(handle) is int and held.value > 0
    with pytest.raises(ValueError):
        d.attribute(c, "__class__")
    m = d.new_model(ModelConfig(vocab_size=11, embed_dim=8, num_layers=2, num_heads=2, max_seq_len=6, seed=3))
    logits = d.forward(m, np.array([[1, 2, 3]]))
    assert logits.shape == (1, 3, 11) and logits.dtype == np.float64
    cache = d.enable(m)
    step = d.forward(m, np.array([[1]]), 0)
    assert np.allclose(step[0, 0], logits[0, 0], atol=1e-5)
    state = d.model_state(m)
    assert type(state) is ModelState and state.cache_enabled is True and state.kv_cache_is_last_enabled
    assert state.cache_enabled_present and state.kv_cache == "KVCache object"
    assert d.attribute(cache, "num_layers") == 2
    d.disable(m)
    state = d.model_state(m)
    assert state.cache_enabled is False and state.cache_enabled_present and state.kv_cache == "None"
    assert d.model_state(d.new_model(ModelConfig(5, 2, 1, 1, 4))).kv_cache == "absent"
    with pytest.raises(SubmissionRaised) as raised:
        d.new_cache(0, 1, 1, 1, 1)
    assert raised.value.is_a("ValueError")
    with pytest.raises(WorkerError, match="KeyError"):  # a check's own mistake stays the check's
        d.get(12345, 0)
    pid = worker_pid(d)
    d.close()
    assert wait_dead([pid]) == []
    assert not Path(f"/proc/{pid}").exists(), "close() must reap the worker (no zombie)"
    with pytest.raises(RuntimeError):
        d.get(c, 0)


def test_budgets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSPEC_CALL_TIMEOUT", "1.5")
    monkeypatch.setenv("KVSPEC_CHECK_BUDGET", "7")
    monkeypatch.setenv("KVSPEC_IMPORT_TIMEOUT", "9")
    monkeypatch.setenv("KVSPEC_WORKER_MEMORY_MB", "0")
    d = IsolatedDriver(find_target(None))
    assert (d.call_timeout, d.check_budget, d.import_timeout, d.memory_mb) == (1.5, 7.0, 9.0, 0)
    assert IsolatedDriver(find_target(None), call_timeout=3).call_timeout == 3  # the argument wins
    monkeypatch.setenv("KVSPEC_CALL_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="KVSPEC_CALL_TIMEOUT"):
        IsolatedDriver(find_target(None))


def test_a_dropped_driver_still_kills_its_worker(drivers: list[IsolatedDriver]) -> None:
    import gc

    d = IsolatedDriver(find_target(None), **FAST)  # type: ignore[arg-type]
    d.describe()
    pid = worker_pid(d)
    del d
    gc.collect()
    assert wait_dead([pid]) == []


# -- hangs, exits, crashes ----------------------------------------------------------------


def test_infinite_loop_times_out_and_only_that_driver_is_lost(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    target = write_submission(tmp_path / "sub", cache_class("def update(self, layer_idx, key, value):\n    while True:\n        pass\n"))
    d = make(drivers, target, call_timeout=1.0)
    c = d.new_cache(1, 4, 2, 2, 3)
    pid = worker_pid(d)
    with pytest.raises(SubmissionCrashed) as crash:
        d.update(c, 0, KEY, VALUE)
    assert crash.value.kind == "timeout" and "update()" in crash.value.detail and "1 s" in crash.value.detail
    assert wait_dead([pid]) == []
    with pytest.raises(SubmissionCrashed) as again:  # no respawn inside a check: fails at once
        d.advance(c)
    assert (again.value.kind, again.value.detail) == (crash.value.kind, crash.value.detail)
    with pytest.raises(SubmissionCrashed):
        d.describe()
    fresh = make(drivers, target)  # the next check gets a fresh worker, which works
    c2 = fresh.new_cache(1, 4, 2, 2, 3)
    fresh.advance(c2)
    assert fresh.attribute(c2, "seq_pos") == 1


def test_check_budget_caps_the_sum_of_slow_calls(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    target = write_submission(tmp_path / "sub", cache_class("def advance(self):\n    import time\n    time.sleep(0.4)\n    super().advance()\n"))
    d = make(drivers, target, call_timeout=5.0, check_budget=1.5)
    c = d.new_cache(1, 8, 1, 1, 1)
    with pytest.raises(SubmissionCrashed) as crash:
        for _ in range(8):  # 8 x 0.4 s > 1.5 s, while each call is far under its 5 s timeout
            d.advance(c)
    assert crash.value.kind == "budget" and "1.5 s" in crash.value.detail
    assert d.spent >= 1.5


def test_a_missing_name_is_unavailable_for_the_calls_that_need_it(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    target = write_submission(tmp_path / "sub", "", header="from reference.kv_cache import KVCache\n")
    d = make(drivers, target)
    assert d.describe().names == ("KVCache",)
    m = d.new_model(ModelConfig(11, 8, 2, 2, 6))
    with pytest.raises(SubmissionUnavailable, match="enable_kv_cache"):
        d.enable(m)
    exercise(d)


def test_sys_exit_at_import_is_unavailable_with_the_traceback(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    target = write_submission(tmp_path / "sub", "sys.exit(4)\n")
    d = make(drivers, target)
    with pytest.raises(SubmissionUnavailable) as missing:
        d.describe()
    assert "SystemExit" in missing.value.detail and "memoization.py" in missing.value.traceback
    with pytest.raises(SubmissionUnavailable):  # every later call says the same, without a new import
        d.new_cache(1, 2, 1, 1, 1)


def test_exception_at_import_is_unavailable(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    target = write_submission(tmp_path / "sub", "raise RuntimeError('my module is broken')\n")
    with pytest.raises(SubmissionUnavailable) as missing:
        make(drivers, target).describe()
    assert "my module is broken" in missing.value.detail and "memoization.py" in missing.value.traceback


def test_an_import_that_hangs_is_waited_out_once_per_process(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    target = write_submission(tmp_path / "sub", "import time\ntime.sleep(600)\n")
    first = make(drivers, target, import_timeout=1.0)
    with pytest.raises(SubmissionCrashed) as crash:
        first.describe()
    assert crash.value.kind == "timeout" and "importing the submission did not return within 1 s" in crash.value.detail
    second = make(drivers, target, import_timeout=1.0)
    with pytest.raises(SubmissionCrashed) as again:
        second.new_cache(1, 2, 1, 1, 1)
    assert again.value.kind == "timeout" and again.value.detail.endswith("(in an earlier check; not retried)")
    assert second._worker is None, "no worker is started for an import known to hang"


def test_os_exit_at_import_is_a_crash_during_import(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    target = write_submission(tmp_path / "sub", "os._exit(9)\n")
    with pytest.raises(SubmissionCrashed) as crash:  # the submission's crash, not a GraderFault: its import had begun
        make(drivers, target).describe()
    assert crash.value.kind == "exit" and crash.value.detail == "exit code 9 during importing the submission"


# -- grader faults: the worker breaks before the submission's import begins ------------------

# A sitecustomize on PYTHONPATH (which the worker inherits) breaks only `python -m spec.isolation.worker`,
# as a broken grading environment would: no test hook in the grader itself.
BROKEN_WORKERS = {
    # name: (what the sitecustomize does in the worker, what the fault must say)
    "the worker's own import fails": ("""
        class _Refuse:
            def find_spec(self, name, path=None, target=None):
                if name == "spec.isolation.local":
                    raise ImportError("simulated: the worker cannot import spec.isolation.local")
        sys.meta_path.insert(0, _Refuse())
        """, ("exit code 1 during starting the worker", "ImportError: simulated: the worker cannot import spec.isolation.local")),
    "garbage before the handshake": (
        'os.write(int(sys.orig_argv[4]), b"\\x00\\x00\\x00\\x05hello")  # the response pipe\n',
        ("protocol", "during starting the worker"),
    ),
    "an error reported before the import": ("""
        import spec.isolation.local
        def _broken(self, target):
            raise RuntimeError("simulated bug in LocalDriver")
        spec.isolation.local.LocalDriver.__init__ = _broken
        """, ("it reported an error during starting the worker: RuntimeError: simulated bug in LocalDriver",)),
    "death between the handshake and the import": ("""
        import spec.isolation.local
        spec.isolation.local.LocalDriver._ensure_loaded = lambda self: os._exit(5)
        """, ("exit code 5 during importing the submission",)),
}


def broken_worker_path(directory: Path, name: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    code = textwrap.indent(textwrap.dedent(BROKEN_WORKERS[name][0]), "    ")
    (directory / "sitecustomize.py").write_text(f"import os, sys\nif sys.orig_argv[1:3] == ['-m', 'spec.isolation.worker']:\n{code}")
    return str(directory)


@pytest.mark.parametrize("name", sorted(BROKEN_WORKERS))
def test_a_worker_broken_before_the_import_is_a_grader_fault(
    tmp_path: Path, drivers: list[IsolatedDriver], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("PYTHONPATH", broken_worker_path(tmp_path / "site", name))
    d = make(drivers, write_submission(tmp_path / "sub", ""))
    with pytest.raises(GraderFault) as fault:
        d.describe()
    assert fault.value.detail.startswith("the grading worker failed before it began importing the submission")
    for phrase in BROKEN_WORKERS[name][1]:
        assert phrase in fault.value.detail
    with pytest.raises(GraderFault):  # every later call says the same
        d.new_cache(1, 2, 1, 1, 1)
    assert d._worker is not None and d._worker.killed


def test_os_exit_mid_call_reports_the_exit_code(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    target = write_submission(tmp_path / "sub", cache_class("def advance(self):\n    os._exit(3)\n"))
    d = make(drivers, target)
    c = d.new_cache(1, 4, 2, 2, 3)
    with pytest.raises(SubmissionCrashed) as crash:
        d.advance(c)
    assert crash.value.kind == "exit" and crash.value.detail == "exit code 3 during advance()"


def test_segfault_reports_the_signal_and_the_stack(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    target = write_submission(tmp_path / "sub", cache_class("def get(self, layer_idx):\n    import ctypes\n    return ctypes.string_at(0)\n"))
    d = make(drivers, target)
    c = d.new_cache(1, 4, 2, 2, 3)
    with pytest.raises(SubmissionCrashed) as crash:
        d.get(c, 0)
    assert crash.value.kind == "signal" and "SIGSEGV" in crash.value.detail and "get()" in crash.value.detail
    output = d.captured_output()
    assert "Segmentation fault" in output and "memoization.py" in output  # faulthandler's stack


def test_memory_limit_turns_a_huge_allocation_into_memory_error(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    body = cache_class("def reset(self):\n    self.hog = np.empty(1 << 30, dtype=np.uint8)  # 1 GiB, never touched\n")
    target = write_submission(tmp_path / "sub", body)
    capped = make(drivers, target, memory_mb=512)
    c = capped.new_cache(1, 4, 2, 2, 3)
    with pytest.raises(SubmissionRaised) as raised:
        capped.reset(c)
    assert raised.value.is_a("MemoryError")
    exercise(capped)  # MemoryError is the submission's exception; the worker lives on
    uncapped = make(drivers, target, memory_mb=0)  # the cap, not the machine, refused it
    uncapped.reset(uncapped.new_cache(1, 4, 2, 2, 3))


def test_children_are_killed_with_the_worker(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    pids = tmp_path / "pids"
    body = f"""
    import subprocess
    def spawn(new_group):
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             preexec_fn=os.setpgrp if new_group else None)
        with open({str(pids)!r}, "a") as f:
            f.write(f"{{p.pid}}\\n")
    class KVCache(_Base):
        def advance(self):
            spawn(new_group=False)
            spawn(new_group=True)  # setpgid: leaves the process group, stays in the session
            super().advance()
        def reset(self):
            spawn(new_group=False)
            while True:
                pass
    """
    target = write_submission(tmp_path / "sub", body)
    d = make(drivers, target)
    c = d.new_cache(1, 4, 2, 2, 3)
    d.advance(c)
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2 and wait_dead(started, timeout=0.2) == started
    d.close()
    assert wait_dead(started) == [], "close() must kill what the worker spawned"
    pids.unlink()
    hung = make(drivers, target, call_timeout=1.0)
    with pytest.raises(SubmissionCrashed):
        hung.reset(hung.new_cache(1, 4, 2, 2, 3))
    assert wait_dead([int(p) for p in pids.read_text().split()]) == [], "a timeout must kill the whole group"


# -- exceptions ---------------------------------------------------------------------------


@pytest.mark.parametrize("exc", ["KeyboardInterrupt('stop')", "SystemExit(2)", "GeneratorExit()", "Hostile()"])
def test_base_exceptions_become_submission_raised(tmp_path: Path, drivers: list[IsolatedDriver], exc: str) -> None:
    body = f"""
    class Hostile(ValueError):
        def __str__(self):
            raise KeyboardInterrupt("from __str__")
    class KVCache(_Base):
        def get(self, layer_idx):
            raise {exc}
    """
    target = write_submission(tmp_path / "sub", body)
    d = make(drivers, target)
    c = d.new_cache(1, 4, 2, 2, 3)
    with pytest.raises(SubmissionRaised) as raised:
        d.get(c, 0)
    assert raised.value.type_name == exc.partition("(")[0]
    if exc.startswith("Hostile"):
        assert raised.value.is_a("ValueError") and raised.value.message == "<message could not be read>"
    d.advance(c)  # the worker survived its submission's exception
    assert d.attribute(c, "seq_pos") == 1


# -- output ---------------------------------------------------------------------------


def test_megabytes_of_output_are_captured_head_and_tail(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    forged = protocol.frame({"seq": 3, "ok": [1, 2]}).decode("latin-1")
    body = cache_class(
        f"""
        def update(self, layer_idx, key, value):
            sys.stdout.write("HEAD-MARK\\n" + {forged!r} + "\\n")
            line = "x" * 999 + "\\n"
            for _ in range(20_000):  # 20 MB
                sys.stdout.write(line)
            print("TAIL-MARK", file=sys.stderr)
            super().update(layer_idx, key, value)
        """
    )
    target = write_submission(tmp_path / "sub", body)
    d = make(drivers, target, call_timeout=20.0)
    c = d.new_cache(1, 4, 2, 2, 3)
    d.update(c, 0, KEY, VALUE)  # a frame printed to stdout is only output
    d.advance(c)
    keys, values = d.get(c, 0)
    assert np.array_equal(keys, KEY) and np.array_equal(values, VALUE)
    output = d.captured_output()
    assert output.startswith("HEAD-MARK") and output.rstrip().endswith("TAIL-MARK")
    assert len(output) < 70 * 1024 and "bytes of output omitted" in output
    total = len(f"HEAD-MARK\n{forged}\n".encode()) + 20_000 * 1000 + len("TAIL-MARK\n")
    assert output.count("bytes of output omitted") == 1 and f"[... {total - 64 * 1024} bytes" in output


# -- lying data -----------------------------------------------------------------------


def test_monkeypatched_numpy_in_the_worker_cannot_pass_a_wrong_get(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    body = """
    np.allclose = lambda *a, **k: True
    np.array_equal = lambda *a, **k: True
    np.testing.assert_allclose = lambda *a, **k: None
    class KVCache(_Base):
        def get(self, layer_idx):
            keys, values = super().get(layer_idx)
            return Tensor(np.zeros_like(keys.data)), Tensor(np.zeros_like(values.data))
    """
    d = make(drivers, write_submission(tmp_path / "sub", body))
    c = d.new_cache(1, 4, 2, 2, 3)
    d.update(c, 0, KEY, VALUE)
    d.advance(c)
    keys, _ = d.get(c, 0)
    assert np.allclose is not None and not np.allclose([0.0], [1.0])  # the grader's numpy is its own
    assert not np.allclose(keys, KEY) and not np.array_equal(keys, KEY)


def test_ndarray_subclass_with_lying_eq_arrives_as_a_plain_array(tmp_path: Path, drivers: list[IsolatedDriver]) -> None:
    body = """
    import types
    class Liar(np.ndarray):
        def __eq__(self, other):
            return True
        __ne__ = lambda self, other: False
        def __array_ufunc__(self, *args, **kwargs):
            return True
    class KVCache(_Base):
        def get(self, layer_idx):
            shape = (self.batch_size, self.num_heads, self.seq_pos, self.head_dim)
            liar = np.zeros(shape).view(Liar)
            return types.SimpleNamespace(data=liar), types.SimpleNamespace(data=liar)
    """
    d = make(drivers, write_submission(tmp_path / "sub", body))
    c = d.new_cache(1, 4, 2, 2, 3)
    d.update(c, 0, KEY, VALUE)
    d.advance(c)
    keys, values = d.get(c, 0)
    assert type(keys) is np.ndarray and type(values) is np.ndarray and keys.dtype == np.float64
    assert not (keys == KEY).all() and not np.allclose(keys, KEY)


# -- the protocol pipe ----------------------------------------------------------------

GOOD_ARRAY = protocol.encode(np.arange(6.0).reshape(2, 3))
MALFORMED = {
    "extra key in an array": {**GOOD_ARRAY, "verdict": "pass"},
    "float32 dtype": {**GOOD_ARRAY, "dtype": "<f4"},
    "object dtype": {**GOOD_ARRAY, "dtype": "|O"},
    "shape larger than the data": {**GOOD_ARRAY, "shape": [3, 3]},
    "shape smaller than the data": {**GOOD_ARRAY, "shape": [5]},
    "negative dimension": {**GOOD_ARRAY, "shape": [-2, -3]},
    "boolean dimension": {**GOOD_ARRAY, "shape": [True, 6]},
    "huge shape": {**GOOD_ARRAY, "shape": [1 << 40, 1 << 40]},
    "not base64": {**GOOD_ARRAY, "b64": "!" * len(GOOD_ARRAY["b64"])},
    "unknown tag": {"$": "pass", "v": True},
    "untagged object": {"passed": True},
    "tuple with extra key": {"$": "tuple", "v": [], "x": 1},
    "dict with a list key": {"$": "dict", "v": [[[1], 2]]},
    "dataclass with a missing field": {"$": "Measurement", "v": {"value": 1}},
    "dataclass with a wrong field type": {"$": "SubmissionInfo", "v": {"module": "m", "tensor": "t", "names": ["KVCache"]}},
    "measurement with a float value": {"$": "Measurement", "v": {"value": 1.5, "notes": {"$": "dict", "v": []}}},
    "deep nesting": json.loads("[" * 40 + "]" * 40),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_decode_refuses_what_the_protocol_does_not_allow(name: str) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(MALFORMED[name])


def test_decoded_values_are_the_grader_s_own_plain_objects() -> None:
    array = protocol.decode(GOOD_ARRAY)
    assert type(array) is np.ndarray and array.dtype == np.float64 and array.flags.owndata and array.flags.writeable
    assert np.array_equal(array, np.arange(6.0).reshape(2, 3))
    ints = protocol.decode(protocol.encode(np.array([[1, 2]], dtype=np.int32)))
    assert ints.dtype == np.int64 and ints.tolist() == [[1, 2]]
    value = (1, "x", None, True, 2.5, float("inf"), [1, {"k": (2,)}])
    assert protocol.decode(json.loads(json.dumps(protocol.encode(value)))) == value
    info = SubmissionInfo("m", "m:Tensor", ("KVCache",))
    assert protocol.decode(protocol.encode(info)) == info
    with pytest.raises(protocol.ProtocolError):
        protocol.encode(object())  # a submission object never goes on the wire
    with pytest.raises(protocol.ProtocolError):
        protocol.expect_int(True)  # bools are not handles
    with pytest.raises(protocol.ProtocolError):
        protocol.expect_float_array(ints)
    with pytest.raises(protocol.ProtocolError):
        protocol.parse(b"{" * 100_000)


def test_frames_over_the_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_MESSAGE", 100)
    with pytest.raises(protocol.ProtocolError):
        protocol.frame("x" * 200)
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        with pytest.raises(protocol.Deadline):  # nothing comes
            protocol.Reader(r).read(time.monotonic() + 0.05)
        os.write(w, protocol.frame("a") + protocol.frame("b") + protocol.HEADER.pack(101))
        reader = protocol.Reader(r)
        assert [reader.read(time.monotonic() + 5) for _ in "ab"] == [b'"a"', b'"b"']  # one read, two messages
        with pytest.raises(protocol.ProtocolError, match="limit"):  # refused from its length alone
            reader.read(time.monotonic() + 5)
        os.close(w)
        w = -1
        with pytest.raises(protocol.PeerClosed):
            protocol.Reader(r).read(time.monotonic() + 5)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


FORGERIES = {
    # name: (what the submission writes to the response pipe before returning, crash or observation)
    "wrong sequence number": "protocol.frame({'seq': 10**6, 'ok': None})",
    "a verdict field": "protocol.frame({'seq': seq, 'ok': protocol.encode(tuple(t.data for t in super().get(layer_idx))), 'verdict': 'pass'})",
    "an unknown tagged value": "protocol.frame({'seq': seq, 'ok': {'$': 'pass', 'v': True}})",
    "oversized length": "b'\\xff\\xff\\xff\\xff' + b'{' * 64",
    "malformed JSON": "b'\\x00\\x00\\x00\\x05{{{{{'",
    "right sequence number": "protocol.frame({'seq': seq, 'ok': protocol.encode((np.full((1, 2, 1, 3), 7.0), np.full((1, 2, 1, 3), 7.0)))})",
    # the phase message is believed once, before any submission code ran; later it blames no one but the sender
    "a phase message": "protocol.frame({'seq': seq, 'phase': 'import'})",
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_responses_are_protocol_errors_or_mere_observations(tmp_path: Path, drivers: list[IsolatedDriver], forgery: str) -> None:
    body = f"""
    from spec.isolation import protocol
    def current_seq():
        frame = sys._getframe()
        while frame is not None:
            if frame.f_code.co_name == "serve":
                return frame.f_locals["seq"]
            frame = frame.f_back
    class KVCache(_Base):
        def get(self, layer_idx):
            seq = current_seq()
            protocol.write_blocking(int(sys.argv[2]), {FORGERIES[forgery]})  # the worker's response pipe
            return super().get(layer_idx)
    """
    d = make(drivers, write_submission(tmp_path / "sub", body))
    c = d.new_cache(1, 4, 2, 2, 3)
    d.update(c, 0, KEY, VALUE)
    d.advance(c)
    if forgery != "right sequence number":
        with pytest.raises(SubmissionCrashed) as crash:
            d.get(c, 0)
        assert crash.value.kind == "protocol"
        return
    # A well-formed forgery with the right number is one forged observation (as if get had
    # returned it), which the check compares with its own oracle; the real response then
    # arrives out of turn and breaks the protocol on the next call.
    keys, _ = d.get(c, 0)
    assert type(keys) is np.ndarray and np.all(keys == 7.0) and not np.array_equal(keys, KEY)
    with pytest.raises(SubmissionCrashed) as crash:
        d.advance(c)
    assert crash.value.kind == "protocol" and "sequence number" in crash.value.detail


def test_results_files_and_environment_stay_out_of_reach(tmp_path: Path, drivers: list[IsolatedDriver], monkeypatch: pytest.MonkeyPatch) -> None:
    leak = tmp_path / "leak.json"
    from_env = tmp_path / "results-from-env.json"
    grader_cwd = tmp_path / "grader"
    grader_cwd.mkdir()
    monkeypatch.chdir(grader_cwd)
    monkeypatch.setenv("KVSPEC_RESULTS", str(from_env))
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:kvspec")
    monkeypatch.setenv("GRADER_API_TOKEN", "s3cret")
    body = f"""
    seen = {{"env": sorted(k for k in os.environ if k.startswith(("KVSPEC", "PYTEST", "HYPOTHESIS", "GRADER"))), "cwd": os.getcwd()}}
    pathlib.Path("results.json").write_text(json.dumps({{"score": 100}}))
    if os.environ.get("KVSPEC_RESULTS"):
        pathlib.Path(os.environ["KVSPEC_RESULTS"]).write_text(json.dumps({{"score": 100}}))
    pathlib.Path({str(leak)!r}).write_text(json.dumps(seen))  # an absolute path it knows: this works
    """
    sub = tmp_path / "sub"
    d = make(drivers, write_submission(sub, body))
    d.describe()
    seen = json.loads(leak.read_text())
    assert seen["env"] == [], "the worker must not see the grader's variables (KVSPEC_RESULTS, PYTEST_*, secrets)"
    worker_cwd = Path(seen["cwd"])
    assert worker_cwd not in (grader_cwd, sub) and (worker_cwd / "results.json").exists()
    d.close()
    assert not worker_cwd.exists(), "the worker's scratch directory is deleted on close"
    assert not from_env.exists() and not (grader_cwd / "results.json").exists() and not (sub / "results.json").exists()


# -- the whole suite under isolation ----------------------------------------------------


def run_suite(
    tmp_path: Path, sub: Path, *args: str, env: dict[str, str] | None = None, isolation: str = "process"
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    """The suite in a pytest subprocess, isolated, quick profile; its verdicts."""
    results = tmp_path / "results.json"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KVSPEC_", "PYTEST_XDIST", "PYTEST_CURRENT"))}
    command = [
        sys.executable, "-m", "pytest", "--pyargs", "spec.checks", "-p", "no:xdist", "-q", *args,
        f"--kvspec-submission={sub}", f"--kvspec-isolation={isolation}", "--kvspec-profile=quick", f"--kvspec-results={results}",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=600)
    verdicts = json.loads(results.read_text()) if results.exists() else []
    return run, verdicts


def test_a_hang_under_hypothesis_is_reported_as_a_timeout(tmp_path: Path) -> None:
    """A crash stops Hypothesis at once: no replays that fail elsewhere (Flaky), no shrinking by timeouts."""
    sub = tmp_path / "sub"
    write_submission(sub, cache_class("def update(self, layer_idx, key, value):\n    while True:\n        pass\n"))
    run, verdicts = run_suite(tmp_path, sub, "-k", "test_update_writes_in_place_and_keeps_seq_pos", env={"KVSPEC_CALL_TIMEOUT": "1"})
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    (verdict,) = verdicts
    message = str(verdict["message"])
    assert "timeout: update() did not return within 1 s" in message and "check itself failed" not in message
    assert "cache.update(" in message  # the calls that led to the hang


def test_suite_under_isolation_never_imports_the_submission_into_the_grader(tmp_path: Path) -> None:
    """A full quick run over a tinytorch-layout submission (the reference, re-exported, which
    also leaves a sleeping child behind in every worker): everything passes, the grader's
    sys.modules holds nothing from the submission, and no process outlives the run."""
    sub = tmp_path / "sub"
    pkg = sub / "tinytorch" / "perf"
    pkg.mkdir(parents=True)
    (sub / "tinytorch" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    pids = tmp_path / "pids"
    (pkg / "memoization.py").write_text(
        textwrap.dedent(
            f"""
            import os, subprocess, sys
            from reference.memoization import Tensor, KVCache, enable_kv_cache, disable_kv_cache
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{os.getpid()}} {{child.pid}}\\n")
            """
        )
    )
    probe = tmp_path / "probe"
    probe.mkdir()
    modules = tmp_path / "modules.json"
    (probe / "kvspec_probe.py").write_text(
        textwrap.dedent(
            f"""
            import ctypes, json, os, sys
            def pytest_sessionfinish(session):
                files = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
                dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
                with open({str(modules)!r}, "w") as f:
                    json.dump({{"pid": os.getpid(), "modules": sorted(sys.modules), "files": files, "dumpable": dumpable}}, f)
            """
        )
    )
    pythonpath = os.pathsep.join([str(probe)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    run, verdicts = run_suite(tmp_path, sub, "-p", "kvspec_probe", env={"PYTHONPATH": pythonpath})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    grader = json.loads(modules.read_text())
    assert not [m for m in grader["modules"] if m.split(".")[0] in ("tinytorch", "memoization")]
    assert not [f for f in grader["files"] if f.startswith(str(sub))]
    assert grader["dumpable"] == 0, "the grader must be non-dumpable: a same-user worker cannot ptrace or read it"
    rows = [line.split() for line in pids.read_text().splitlines()]
    assert verdicts and all(v["passed"] for v in verdicts)
    assert len(rows) >= len(verdicts), "every check ran the submission in a worker of its own"
    assert all(int(worker) != grader["pid"] for worker, _ in rows)
    assert wait_dead([int(p) for row in rows for p in row]) == [], "no worker or child outlives the run"


@pytest.mark.parametrize("isolation", ["process", "user", "sandbox"])
def test_a_failed_check_reports_what_the_worker_printed(tmp_path: Path, isolation: str) -> None:
    """Also the plugin's own wall: `pytest --kvspec-isolation=sandbox` (or user) without a
    fork server given starts one for its session (not skipped under CI: see test_wall.py)."""
    from spec.isolation import wall

    if wall.unavailable(isolation):
        if os.environ.get("CI"):
            pytest.fail(f"isolation {isolation!r} must work on the CI machine: {wall.unavailable(isolation)}")
        pytest.skip(f"isolation {isolation!r} is not available here: {wall.unavailable(isolation)}")
    body = cache_class(
        """
        def __init__(self, *args):
            print("DEBUG: building my cache", args)
            super().__init__(*args)
            self.seq_pos = 5
        """
    )
    sub = tmp_path / "sub"
    write_submission(sub, body)
    run, verdicts = run_suite(tmp_path, sub, "-k", "test_attributes_read_back_as_given", isolation=isolation)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    (verdict,) = verdicts
    message = str(verdict["message"])
    assert not verdict["passed"] and "KV-CON-1" in message
    assert "What your code printed (stdout and stderr):\nDEBUG: building my cache (" in message
