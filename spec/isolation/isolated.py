"""IsolatedDriver: the submission runs in a worker process that the grader can kill.

Every Driver method becomes a request to a worker (`python -m spec.isolation.worker`) that runs a
`spec.isolation.local.LocalDriver` on the same Target and answers with plain data (spec.isolation.protocol:
length-prefixed JSON on two dedicated pipes, never pickle). This process never imports
the submission's code; what comes back is rebuilt here from bytes (float64/int64
ndarrays we allocate, dataclasses with checked field types), so a returned object can
not carry behaviour, and an ndarray subclass with a lying `__eq__` arrives as a plain
ndarray.

One worker per driver, started on the first call: forked by the fork server of a wall
(`forkserver=` its socket; spec.isolation.wall, spec.isolation.forkserver) or, without one,
spawned as a fresh interpreter (spec.isolation.workers); the plugin makes one driver per check,
so a hang or a crash costs only the check in flight. Budgets (each raises
SubmissionCrashed and kills the worker's whole process group):

  call timeout   KVSPEC_CALL_TIMEOUT, or call_timeout=      (default 10 s per call)
  import         KVSPEC_IMPORT_TIMEOUT, or import_timeout=  (default 30 s to import; starting gets at least 30 s)
  check budget   KVSPEC_CHECK_BUDGET, or check_budget=      (default 60 s of calls per driver)
  memory         KVSPEC_WORKER_MEMORY_MB, or memory_mb=     (default 4096; RLIMIT_AS; 0 = none)

After a crash every later call raises the same SubmissionCrashed at once; there is no
respawn within a driver. `captured_output()` returns what the worker wrote to its stdout
and stderr: the first and last 32 KiB, with the number of bytes left out between.

Whose fault a failure is depends on the phase the worker reported. Until it says that the
submission's import begins (the phase message, spec.isolation.protocol), no submission code has
run: a worker that cannot be started, dies, hangs, breaks the protocol or reports an
error before then is the grader's own failure, and raises GraderFault instead of
SubmissionCrashed (the grader then exits 2 rather than score the submission). From the
phase message on, everything is the submission's: its code shares the worker's process.

The worker runs in a fresh empty temporary directory (its cwd, deleted on close), with an
environment built from a short allow-list (PATH, HOME, LANG, LC_*, TMPDIR, ...: no
KVSPEC_*, PYTEST_*, HYPOTHESIS_* or other variables of the grader), PYTHONHASHSEED=0, and
single-threaded BLAS. If importing the submission times out, later drivers for the same
target in this process fail at once with the same timeout rather than wait again. See docs/threat-model.md for what this does and does not defend.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import Any, Callable, NoReturn, TypeVar

import numpy as np

from spec.isolation import protocol
from spec.discovery import Target
from spec.isolation.driver import (
    CacheId,
    Driver,
    FloatArray,
    GraderFault,
    IntArray,
    Measurement,
    ModelConfig,
    ModelId,
    ModelState,
    SubmissionCrashed,
    SubmissionInfo,
    SubmissionRaised,
    SubmissionUnavailable,
)
from spec.isolation.local import CACHE_ATTRIBUTES
from spec.isolation.workers import ForkedWorker, SpawnedWorker, WorkerHandle

T = TypeVar("T")

DEFAULT_CALL_TIMEOUT = 10.0
DEFAULT_IMPORT_TIMEOUT = 30.0
DEFAULT_CHECK_BUDGET = 60.0
DEFAULT_MEMORY_MB = 4096
EXIT_GRACE = 2.0  # seconds to wait for an exit status after the worker closed its pipe
# Targets whose import hung past the import timeout in this process: later drivers fail at
# once instead of each waiting out the same hang (an import is the same in every check).
_IMPORT_HANGS: dict[Target, str] = {}


class WorkerError(RuntimeError):
    """The worker failed outside submission code (the same failure LocalDriver would raise
    in-process, e.g. an unknown handle): a fault of the check or of the grader."""


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds (or MB), got {text!r}") from None
    if value <= 0 and name != "KVSPEC_WORKER_MEMORY_MB":
        raise ValueError(f"{name} must be positive, got {text!r}")
    return value


class IsolatedDriver(Driver):
    """A Driver whose submission runs in a killable worker process (see the module docstring).

    Not thread-safe; use one driver from one thread. On Linux the worker is SIGKILLed when
    the thread that started it exits (PR_SET_PDEATHSIG), so start it from the thread that
    lives as long as the driver (the plugin uses the main thread)."""

    def __init__(
        self,
        target: Target,
        *,
        call_timeout: float | None = None,
        import_timeout: float | None = None,
        check_budget: float | None = None,
        memory_mb: int | None = None,
        forkserver: str | None = None,
    ) -> None:
        self.target = target
        self.forkserver = forkserver  # a fork server's socket (spec.isolation.wall), else spawn a worker
        self.call_timeout = call_timeout or _env_number("KVSPEC_CALL_TIMEOUT", DEFAULT_CALL_TIMEOUT)
        self.import_timeout = import_timeout or _env_number("KVSPEC_IMPORT_TIMEOUT", DEFAULT_IMPORT_TIMEOUT)
        self.check_budget = check_budget or _env_number("KVSPEC_CHECK_BUDGET", DEFAULT_CHECK_BUDGET)
        self.memory_mb = int(memory_mb if memory_mb is not None else _env_number("KVSPEC_WORKER_MEMORY_MB", DEFAULT_MEMORY_MB))
        self.spent = 0.0  # seconds spent waiting on the worker (start, import and calls)
        self._worker: WorkerHandle | None = None
        self._finalizer: weakref.finalize[[], IsolatedDriver] | None = None
        self._seq = 0
        self._crash: tuple[str, str] | None = None  # kind "grader": a GraderFault
        self._began_import = False  # the worker reported that the submission's import begins
        self._info: SubmissionInfo | None = None
        self._unavailable: tuple[str, str] | None = None
        self._closed = False

    # -- plumbing ----------------------------------------------------------------------
    def _fail_crashed(self) -> NoReturn:
        # One raise site for every report of this crash: Hypothesis sees the same failure
        # when it replays an example, whether the crash happened now or earlier.
        assert self._crash is not None
        if self._crash[0] == "grader":
            raise GraderFault(self._crash[1])
        raise SubmissionCrashed(*self._crash)

    def _crashed(self, kind: str, detail: str) -> NoReturn:
        if not self._began_import:
            self._grader_fault(f"{kind}: {detail}")
        self._crash = (kind, detail)
        self._stop_worker()
        self._fail_crashed()

    def _grader_fault(self, detail: str) -> NoReturn:
        """Fail before any submission code ran: the grader's fault (see the module docstring)."""
        self._stop_worker()  # collects the worker's last output
        lines = [ln.strip() for ln in self.captured_output().splitlines() if ln.strip()]
        last = f"; the worker's last output: {lines[-1][:300]}" if lines else ""
        self._crash = ("grader", f"the grading worker failed before it began importing the submission ({detail}){last}")
        self._fail_crashed()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.kill()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def _start(self) -> None:
        if self._worker is None:
            start = time.monotonic()
            try:
                if self.forkserver:
                    self._worker = ForkedWorker(self.forkserver, self.memory_mb, max(self.import_timeout, DEFAULT_IMPORT_TIMEOUT))
                else:
                    self._worker = SpawnedWorker(self.memory_mb)
            except Exception as exc:
                self._crash = ("grader", f"could not start the grading worker: {type(exc).__name__}: {exc}")
                self._fail_crashed()
            self._finalizer = weakref.finalize(self, self._worker.kill)
            self.spent += time.monotonic() - start
            # Starting runs no submission code: a generous fixed allowance, so a loaded
            # machine does not turn a slow start into a timeout of a short import budget.
            self._exchange("init", (self.target,), max(self.import_timeout, DEFAULT_IMPORT_TIMEOUT))

    def _exchange(self, op: str, args: tuple[object, ...], timeout: float) -> Any:
        """Send one request; return the decoded result, or raise what the worker reported."""
        worker = self._worker
        assert worker is not None
        remaining = self.check_budget - self.spent
        if remaining <= 0:
            self._crashed("budget", f"this check's calls already used its whole budget of {self.check_budget:g} s (KVSPEC_CHECK_BUDGET) before {op}()")
        limit, kind = (timeout, "timeout") if timeout < remaining else (remaining, "budget")
        self._seq += 1
        seq = self._seq
        try:
            request = protocol.frame({"seq": seq, "op": op, "args": protocol.encode(list(args))})
        except protocol.ProtocolError as exc:  # the check passed something that is not plain data
            raise TypeError(f"cannot send {op}{args!r:.200} to the worker: {exc}") from None
        start = time.monotonic()
        deadline = start + limit
        crash: tuple[str, str] | None = None
        try:
            protocol.write_with_deadline(worker.req_w, request, deadline)
            reply = protocol.parse(worker.reader.read(deadline))
            if not self._began_import and _is_import_phase(reply, seq):
                self._began_import = True
                reply = protocol.parse(worker.reader.read(deadline))
            if type(reply) is not dict or reply.get("seq") != seq or type(reply.get("seq")) is not int:
                raise protocol.ProtocolError(f"a response to request {seq} carried sequence number {str(reply.get('seq') if type(reply) is dict else None)[:20]}")
            if set(reply) == {"seq", "ok"}:
                return protocol.decode(reply["ok"])
            if set(reply) == {"seq", "err"} and type(reply["err"]) is dict:
                self._raise_reported(op, reply["err"])
            raise protocol.ProtocolError("a response must hold exactly seq and ok, or seq and err")
        except protocol.Deadline:
            if kind == "timeout":
                crash = ("timeout", f"{_call_name(op)} did not return within {limit:g} s (KVSPEC_CALL_TIMEOUT); the worker was killed")
            else:
                crash = (
                    "budget",
                    f"this check's calls took more than its budget of {self.check_budget:g} s in total (KVSPEC_CHECK_BUDGET); "
                    f"{_call_name(op)} was still running and the worker was killed",
                )
        except protocol.PeerClosed:
            status = worker.exit_status(min(EXIT_GRACE, max(0.0, deadline - time.monotonic()) + 0.05))
            if status is None:
                crash = ("protocol", f"the worker closed its response pipe during {_call_name(op)}")
            else:
                crash = (status[0], f"{status[1]} during {_call_name(op)}")
        except protocol.ProtocolError as exc:
            crash = ("protocol", f"{exc} (during {_call_name(op)})")
        finally:
            self.spent += time.monotonic() - start
        # Raised here, outside the except blocks, so the crash carries no __context__: every
        # report of it looks the same to Hypothesis.
        self._crashed(*crash)

    def _raise_reported(self, op: str, err: dict[str, Any]) -> NoReturn:
        kind = err.get("kind")
        if not self._began_import:  # no submission code has run: whatever failed is ours
            what = protocol.clip(err.get("message"), 300) or protocol.clip(err.get("detail"), 300)
            self._grader_fault(f"it reported an error during {_call_name(op)}: {protocol.clip(err.get('type_name'), 200)}: {what}")
        if kind == "raised":
            mro = err.get("mro")
            if type(mro) is not list or not all(type(n) is str for n in mro) or len(mro) > 256:
                raise protocol.ProtocolError("an exception's MRO must be a list of names")
            raise SubmissionRaised(
                protocol.clip(err.get("type_name"), 200), tuple(n[:200] for n in mro), protocol.clip(err.get("message")), protocol.clip(err.get("traceback"))
            )
        if kind == "unavailable":
            raise SubmissionUnavailable(protocol.clip(err.get("detail")), protocol.clip(err.get("traceback")))
        if kind == "internal":
            raise WorkerError(
                f"the worker failed in {_call_name(op)} outside submission code: "
                f"{protocol.clip(err.get('type_name'), 200)}: {protocol.clip(err.get('message'))}\n{protocol.clip(err.get('traceback'))}"
            )
        raise protocol.ProtocolError(f"unknown error kind {str(kind)[:40]!r}")

    def _request(self, op: str, args: tuple[object, ...], check: Callable[[Any], T]) -> T:
        if self._closed:
            raise RuntimeError("IsolatedDriver used after close()")
        if self._crash is not None:
            self._fail_crashed()
        self._load()
        try:
            return check(self._exchange(op, args, self.call_timeout))
        except protocol.ProtocolError as exc:
            problem = f"{exc} (in the result of {_call_name(op)})"
        self._crashed("protocol", problem)

    def _load(self) -> SubmissionInfo:
        """Start the worker and import the submission (once, under the import timeout)."""
        if self._crash is not None:
            self._fail_crashed()
        if self._unavailable is not None:
            raise SubmissionUnavailable(*self._unavailable)
        if self._info is None:
            hang = _IMPORT_HANGS.get(self.target)
            if hang is not None:
                self._crash = ("timeout", f"{hang} (in an earlier check; not retried)")
                self._fail_crashed()
            self._start()
            try:
                self._info = protocol.expect_info(self._exchange("describe", (), self.import_timeout))
                if not self._began_import:
                    self._grader_fault("it answered describe() without reporting that the submission's import begins")
            except SubmissionUnavailable as exc:
                self._unavailable = (exc.detail, exc.traceback)
                raise
            except SubmissionCrashed as exc:
                if exc.kind == "timeout":
                    _IMPORT_HANGS[self.target] = exc.detail
                raise
            except protocol.ProtocolError as exc:
                problem = f"{exc} (in the result of describe())"
            if self._info is None:
                self._crashed("protocol", problem)
        return self._info

    # -- output ------------------------------------------------------------------------
    def captured_output(self) -> str:
        """What the worker printed so far (stdout and stderr interleaved): the first and
        last 32 KiB, with a note of how many bytes were left out between."""
        return "" if self._worker is None else self._worker.captured()

    # -- Driver ------------------------------------------------------------------------
    def describe(self) -> SubmissionInfo:
        if self._closed:
            raise RuntimeError("IsolatedDriver used after close()")
        return self._load()

    def new_cache(self, *args: object) -> CacheId:
        return self._request("new_cache", args, protocol.expect_int)

    def update(self, cache: CacheId, layer_idx: int, key: FloatArray, value: FloatArray) -> None:
        self._request("update", (cache, layer_idx, _f64(key), _f64(value)), protocol.expect_none)

    def update_then_mutate(self, cache: CacheId, layer_idx: int, key: FloatArray, value: FloatArray, fill: float) -> None:
        self._request("update_then_mutate", (cache, layer_idx, _f64(key), _f64(value), fill), protocol.expect_none)

    def get(self, cache: CacheId, layer_idx: int) -> tuple[FloatArray, FloatArray]:
        return self._request("get", (cache, layer_idx), protocol.expect_pair_of_arrays)

    def advance(self, cache: CacheId) -> None:
        self._request("advance", (cache,), protocol.expect_none)

    def reset(self, cache: CacheId) -> None:
        self._request("reset", (cache,), protocol.expect_none)

    def attribute(self, cache: CacheId, name: str) -> object:
        if name not in CACHE_ATTRIBUTES:
            raise ValueError(f"not a public cache attribute: {name}")
        return self._request("attribute", (cache, name), protocol.expect_attribute)

    def memory_usage(self, cache: CacheId) -> dict[str, float]:
        return self._request("memory_usage", (cache,), protocol.expect_float_dict)

    def update_allocation(self, cache: CacheId, layer_idx: int, key: FloatArray, value: FloatArray) -> Measurement:
        return self._request("update_allocation", (cache, layer_idx, _f64(key), _f64(value)), protocol.expect_measurement)

    def construction_retained(self, *args: object) -> tuple[CacheId, Measurement]:
        return self._request("construction_retained", args, protocol.expect_retained)

    def new_model(self, config: ModelConfig, remove: tuple[str, ...] = (), override: dict[str, int] | None = None) -> ModelId:
        return self._request("new_model", (config, tuple(remove), dict(override or {})), protocol.expect_int)

    def forward(self, model: ModelId, tokens: IntArray, start_pos: int = 0) -> FloatArray:
        ids = np.asarray(tokens, dtype=np.int64)
        return self._request("forward", (model, ids, start_pos), protocol.expect_float_array)

    def enable(self, model: ModelId) -> CacheId:
        return self._request("enable", (model,), protocol.expect_int)

    def disable(self, model: ModelId) -> None:
        self._request("disable", (model,), protocol.expect_none)

    def model_state(self, model: ModelId) -> ModelState:
        return self._request("model_state", (model,), protocol.expect_model_state)

    def has_generation(self, cache: CacheId) -> bool:
        return self._request("has_generation", (cache,), protocol.expect_bool)

    def forward_in_generation(self, model: ModelId, cache: CacheId, tokens: IntArray, start_pos: int = 0) -> FloatArray:
        ids = np.asarray(tokens, dtype=np.int64)
        return self._request("forward_in_generation", (model, cache, ids, start_pos), protocol.expect_float_array)

    def cached_generate(self, model: ModelId, cache: CacheId, prompt: object, max_new_tokens: object,
                        temperature: object) -> list[int]:
        return self._request("cached_generate", (model, cache, prompt, max_new_tokens, temperature), protocol.expect_int_list)

    def close(self) -> None:
        """Kill the worker (and its process group), reap it, delete its directory."""
        if not self._closed:
            self._closed = True
            self._stop_worker()


def _is_import_phase(reply: object, seq: int) -> bool:
    """The worker's phase message for request `seq`: the submission's import begins now."""
    return type(reply) is dict and set(reply) == {"seq", "phase"} and type(reply["seq"]) is int and reply["seq"] == seq and reply["phase"] == "import"


def _f64(array: FloatArray) -> FloatArray:
    return np.asarray(array, dtype=np.float64)


def _call_name(op: str) -> str:
    return {"init": "starting the worker", "describe": "importing the submission"}.get(op, f"{op}()")
