"""Session: the checks' view of a submission, written down as the student's own code.

Every call a check makes goes through a Session, which forwards it to the Driver and
records the line a student would have typed. When a check fails, `SpecFailure` carries
the clause, what was expected, what came back, and the recorded calls as a script the
student can paste into Python and replay. Under Hypothesis the last (shrunk) example
is the one whose failure is reported, so the script is the minimal one.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, TypeVar

import numpy as np

from spec.clauses import BY_ID
from spec.data import ATTEND_SOURCE, NOISE_SOURCE, PATTERN_SOURCE, Data
from spec.isolation.driver import (
    CacheId,
    Driver,
    FloatArray,
    IntArray,
    ModelConfig,
    ModelId,
    ModelState,
    SubmissionCrashed,
    SubmissionInfo,
    SubmissionRaised,
    SubmissionUnavailable,
)

T = TypeVar("T")

_current: Driver | None = None


def set_current_driver(driver: Driver | None) -> None:
    """The plugin sets this around each check, for state machines (which take no fixtures)."""
    global _current
    _current = driver


def current_driver() -> Driver:
    if _current is None:
        raise RuntimeError("no driver: run the checks through pytest with the kvspec plugin")
    return _current


class SpecFailure(AssertionError):
    """A clause was violated. str() is the whole student-facing message."""

    def __init__(self, clause: str, message: str) -> None:
        super().__init__(message)
        self.clause = clause


class NotMeasured(SpecFailure):
    """The check could not measure its clause: it earns nothing, and the message names the
    clause (`blocked_by`) whose failure stood in the way, so the student fixes that first."""

    def __init__(self, clause: str, blocked_by: str, message: str) -> None:
        super().__init__(clause, message)
        self.blocked_by = blocked_by


class Refused(SubmissionRaised):
    """update or advance raised a ValueError while seq_pos < max_seq_len: a capacity check
    that fires early, the bounds checks' failure (`owner`: KV-BND-3 or KV-BND-4). Checks of
    other groups go around it (spec.checks._evidence.tolerant) instead of failing for it."""

    def __init__(self, exc: SubmissionRaised, owner: str) -> None:
        super().__init__(exc.type_name, exc.mro, exc.message, exc.traceback)
        self.owner = owner


def not_measured(clause: str, blocked_by: str, what: str, script: str = "") -> NotMeasured:
    """Build the report of a check that measured nothing (raise it)."""
    c, b = BY_ID[clause], BY_ID[blocked_by]
    parts = [
        f"[{c.id}] not measured: blocked by {b.id} ({b.group})",
        f"Clause:   {c.level}: {c.text}",
        f"Why not:  {what}",
        f"Blocker:  [{b.id}] {b.text}",
        "No credit: a check earns its points by measuring its clause. Once "
        f"{b.id} holds, this check can measure it.",
    ]
    if script:
        parts += ["Example of the blocked measurement (run it from your submission's directory):", script]
    return NotMeasured(clause, blocked_by, "\n".join(parts))


def _fmt(value: object) -> str:
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=4, threshold=40, separator=", ")
    return repr(value)


def code(value: object) -> str:
    """Python source for a plain value (repr, except the floats whose repr is not code)."""
    if isinstance(value, float) and not np.isfinite(value):
        return f"float('{value}')"
    return repr(value)


@dataclass
class Script:
    """The calls made so far, as code."""

    info: SubmissionInfo
    lines: list[str] = field(default_factory=list)
    uses_model: bool = False

    def prelude(self, body: list[str]) -> list[str]:
        module = self.info.module
        tensor_module, _, tensor_name = self.info.tensor.partition(":")
        out = ["import numpy as np"]
        out.append(f"from {module} import KVCache, enable_kv_cache, disable_kv_cache")
        out.append(f"from {tensor_module} import {tensor_name} as Tensor")
        if self.uses_model:
            out.append("from reference.gpt import GPT  # the grader's model (pip install kvspec)")
        code = "\n".join(body)
        for helper, source in (("pattern(", PATTERN_SOURCE), ("noise(", NOISE_SOURCE), ("attend(", ATTEND_SOURCE)):
            if helper in code:
                out += ["", source]
        return out + [""]

    def render(self, last: str | None = None, show: str | None = None) -> str:
        """The example as a script that runs pasted as-is (into a file, or `python -`):
        unindented, between two comment lines that mark where it starts and ends, and
        ending with `show` (the print of the wrong value) when there is one."""
        if last and self.lines and self.lines[-1].endswith(last):
            last = None  # the failing call is already the script's last line
        body = self.lines + ([last] if last else []) + ([show] if show else [])
        return "\n".join([EXAMPLE_START] + self.prelude(body) + body + [EXAMPLE_END])


EXAMPLE_INTRO = "Minimal example (paste it into a file, or into `python -`, in your submission's directory):"
EXAMPLE_START = "# ---- kvspec minimal example ----"
EXAMPLE_END = "# ---- end of the example ----"
_ASSIGNED = re.compile(r"^([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*=[^=]")
_PRINTED = re.compile(r"^print\((.*)\)$")


def show_line(call: str | None, got: object, show: str | None = None) -> str | None:
    """The script's last line: a print of what came back, so that running the example
    shows the wrong value. `show` names the expression the check compared (e.g.
    `keys.data[:, :, 2, :]`); without it, the failing call's result is printed whole."""
    if show:
        return f"print(\"got:\", {show})"
    if isinstance(got, str) and got == "no exception":
        return "print(\"got: no exception (the call above returned normally)\")"
    if not call:
        return None
    head = call.split("  #", 1)[0].strip()
    printed = _PRINTED.match(head)
    if printed:
        return f"print(\"got:\", {printed.group(1)})"
    assigned = _ASSIGNED.match(head)
    if assigned:
        names = [n.strip() for n in assigned.group(1).split(",")]
        return "print(\"got:\", " + ", ".join(f"{n}.data" for n in names) + ")"
    return None


class Session:
    """Recorded access to one submission for one example."""

    def __init__(self, driver: Driver | None = None) -> None:
        self.driver = driver if driver is not None else current_driver()
        self.script = Script(self.driver.describe())
        self._names: dict[tuple[str, int], str] = {}
        self._last_query: str | None = None

    def call(self, fn: Callable[[], T]) -> T:
        """Run a driver call; if the submission raises or dies, the exception carries the
        script so far, so even an unexpected error comes with its minimal example."""
        try:
            return fn()
        except (SubmissionRaised, SubmissionCrashed, SubmissionUnavailable) as exc:
            exc.kvspec_script = self.script.render(self._last_query)  # type: ignore[union-attr]
            raise

    # -- recording ---------------------------------------------------------------------
    def record(self, line: str) -> None:
        self.script.lines.append(line)
        self._last_query = None

    def query(self, line: str) -> None:
        """A read whose result may be the failing observation; kept only if it is."""
        self._last_query = line

    def name(self, kind: str, handle: int) -> str:
        return self._names[(kind, handle)]

    def _new_name(self, kind: str, handle: int) -> str:
        count = sum(1 for k, _ in self._names if k == kind)
        name = kind if count == 0 else f"{kind}{count + 1}"
        self._names[(kind, handle)] = name
        return name

    def capacity_refusal(self, config: ModelConfig, upto: int) -> str | None:
        """Does a fresh KVCache sized to `config`'s model refuse, with ValueError, an update
        (of every layer) or an advance at some position <= `upto` (< max_seq_len), where the
        spec says it must accept them? The clause it breaks (KV-BND-3 for update, KV-BND-4
        for advance), or None. Not recorded: a probe of the grader's, not part of the example."""
        if not 0 <= upto < config.max_seq_len:
            return None
        d, heads = self.driver, config.num_heads
        head_dim = config.embed_dim // heads
        shape = (1, heads, 1, head_dim)
        try:
            cache = d.new_cache(1, config.max_seq_len, config.num_layers, heads, head_dim)
        except (SubmissionRaised, SubmissionCrashed, SubmissionUnavailable):
            return None
        ones = np.ones(shape)
        for pos in range(upto + 1):
            for layer in range(config.num_layers + 1):  # every layer's update, then the advance
                owner = "KV-BND-3" if layer < config.num_layers else "KV-BND-4"
                try:
                    if layer < config.num_layers:
                        d.update(cache, layer, ones, ones)
                    else:
                        d.advance(cache)
                except SubmissionRaised as exc:
                    return owner if exc.is_a("ValueError") else None
                except (SubmissionCrashed, SubmissionUnavailable):
                    return None
        return None

    # -- failing -----------------------------------------------------------------------
    def fail(self, clause: str, expected: object, got: object, call: str | None = None, hint: str = "",
             show: str | None = None) -> SpecFailure:
        """Build the failure (raise it: `raise s.fail(...)`). `show`: the expression, in the
        script's names, whose value is `got` (printed at the end of the example)."""
        c = BY_ID[clause]
        call = call or self._last_query
        parts = [f"[{c.id}] {c.level}: {c.text}"]
        if call:
            parts.append(f"Call:     {call}")
        parts.append(f"Expected: {_fmt(expected)}")
        parts.append(f"Got:      {_fmt(got)}")
        if hint:
            parts.append(f"Hint:     {hint}")
        parts.append("Why:      " + c.why)
        parts.append(EXAMPLE_INTRO)
        last = show_line(call, got, show)
        script = self.script
        if call and not show and _PRINTED.match(call.split("  #", 1)[0].strip()):
            # The failing read is a print: the "got:" print replaces it (recorded or not).
            if script.lines and script.lines[-1] == call:
                script = replace(script, lines=script.lines[:-1])
            call = None
        parts.append(script.render(call, last))
        return SpecFailure(clause, "\n".join(parts))

    @contextmanager
    def expect_raises(self, clause: str, call: str, *types: str, hint: str = "") -> Iterator[None]:
        """The block must make the submission raise one of `types` (subclasses count);
        `hint` is shown to the student when it does not."""
        wanted = " or ".join(types)
        start = len(self.script.lines)
        try:
            yield
        except SubmissionRaised as exc:
            if not exc.is_a(*types):
                raise self.fail(clause, f"{wanted}", f"{exc.type_name}: {exc.message}", call, hint=hint) from None
            # Replayable: the raising lines go in a try block, so the script runs on past them.
            body = self.script.lines[start:] or [call]
            del self.script.lines[start:]
            block = ["try:"] + ["    " + line for line in body]
            caught = types[0] if len(types) == 1 else "(" + ", ".join(types) + ")"
            block += [f"except {caught} as e:", "    print('raised as required:', repr(e))"]
            self.record("\n".join(block))
            return
        raise self.fail(clause, f"{wanted} raised", "no exception", call, hint=hint)

    # -- the cache ---------------------------------------------------------------------
    def new_cache(self, *args: object) -> "CacheRef":
        handle = self.call(lambda: self.driver.new_cache(*args))
        return CacheRef(self, handle, self._line_for_new_cache(handle, args))

    def _line_for_new_cache(self, handle: CacheId, args: tuple[object, ...]) -> str:
        name = self._new_name("cache", handle)
        self.record(f"{name} = KVCache({', '.join(repr(a) for a in args)})")
        return name

    def adopt_cache(self, handle: CacheId) -> "CacheRef":
        """A cache the submission made (enable_kv_cache returned it)."""
        return CacheRef(self, handle, self._new_name("cache", handle))

    # -- the model ---------------------------------------------------------------------
    def new_model(self, config: ModelConfig, remove: tuple[str, ...] = (), override: dict[str, int] | None = None) -> "ModelRef":
        handle = self.call(lambda: self.driver.new_model(config, remove, override))
        name = self._new_name("model", handle)
        self.script.uses_model = True
        self.record(
            f"{name} = GPT({config.vocab_size}, {config.embed_dim}, {config.num_layers}, {config.num_heads}, "
            f"{config.max_seq_len}, seed={config.seed}, tensor=Tensor)"
        )
        if config.qk_scale != 1:
            self.record(
                f"for b in {name}.blocks: b.attention.q_proj.weight *= {config.qk_scale}; "
                f"b.attention.k_proj.weight *= {config.qk_scale}  # attention scores x{config.qk_scale ** 2}"
            )
        for attr in remove:
            self.record(f"del {name}.{attr}")
        for attr, value in (override or {}).items():
            self.record(f"{name}.{attr} = {value!r}")
        return ModelRef(self, handle, name, config)


@dataclass
class CacheRef:
    """A submission's KVCache, seen through the session."""

    s: Session
    handle: CacheId
    name: str
    _scoped: bool | None = None

    @property
    def scoped(self) -> bool:
        """The cache offers `generation()` (the 2026 course): decode steps run inside it."""
        if self._scoped is None:
            self._scoped = self.s.call(lambda: self.s.driver.has_generation(self.handle))
        return self._scoped

    def update(self, layer_idx: int, key: Data, value: Data) -> None:
        self.s.record(f"{self.name}.update({layer_idx!r}, {key.code()}, {value.code()})")
        with self.refusals("KV-BND-3"):
            self.s.call(lambda: self.s.driver.update(self.handle, layer_idx, key.array(), value.array()))

    def update_then_mutate(self, layer_idx: int, key: Data, value: Data, fill: float) -> None:
        self.s.record(f"k, v = {key.code()}, {value.code()}")
        self.s.record(f"{self.name}.update({layer_idx!r}, k, v)")
        self.s.record(f"k.data[...] = {fill!r}; v.data[...] = {fill!r}  # the caller reuses its buffers")
        with self.refusals("KV-BND-3"):
            self.s.call(lambda: self.s.driver.update_then_mutate(self.handle, layer_idx, key.array(), value.array(), fill))

    @contextmanager
    def refusals(self, owner: str) -> Iterator[None]:
        """A ValueError while seq_pos < max_seq_len becomes Refused (see there)."""
        try:
            yield
        except SubmissionRaised as exc:
            if not exc.is_a("ValueError") or isinstance(exc, Refused):
                raise
            try:
                pos, limit = (self.s.driver.attribute(self.handle, a) for a in ("seq_pos", "max_seq_len"))
            except (SubmissionRaised, SubmissionCrashed, SubmissionUnavailable):
                raise exc from None
            if isinstance(pos, int) and isinstance(limit, int) and 0 <= pos < limit:
                refused = Refused(exc, owner)
                refused.kvspec_script = getattr(exc, "kvspec_script", "")  # type: ignore[attr-defined]
                raise refused from None
            raise

    def get(self, layer_idx: int) -> tuple[FloatArray, FloatArray]:
        self.s.query(f"keys, values = {self.name}.get({layer_idx!r})")
        return self.s.call(lambda: self.s.driver.get(self.handle, layer_idx))

    def advance(self) -> None:
        self.s.record(f"{self.name}.advance()")
        with self.refusals("KV-BND-4"):
            self.s.call(lambda: self.s.driver.advance(self.handle))

    def reset(self) -> None:
        self.s.record(f"{self.name}.reset()")
        self.s.call(lambda: self.s.driver.reset(self.handle))

    def attr(self, name: str) -> object:
        self.s.query(f"print({self.name}.{name})")
        return self.s.call(lambda: self.s.driver.attribute(self.handle, name))

    @property
    def seq_pos(self) -> object:
        return self.attr("seq_pos")

    def memory_usage(self) -> dict[str, float]:
        self.s.query(f"print({self.name}.get_memory_usage())")
        return self.s.call(lambda: self.s.driver.memory_usage(self.handle))


@dataclass
class ModelRef:
    """The grader's reference GPT built around the submission's Tensor."""

    s: Session
    handle: ModelId
    name: str
    config: ModelConfig | None = None

    def forward(self, tokens: IntArray, start_pos: int = 0) -> FloatArray:
        self.s.query(f"logits = {self.name}.forward(Tensor(np.array({np.asarray(tokens).tolist()})), start_pos={start_pos})")
        return self.s.call(lambda: self.s.driver.forward(self.handle, tokens, start_pos))

    def forward_recorded(self, tokens: IntArray, start_pos: int = 0) -> FloatArray:
        """A forward that stays in the script (a step of a decode loop, not the failing read)."""
        logits = self.forward(tokens, start_pos)
        assert self.s._last_query is not None
        self.s.record(self.s._last_query)
        return logits

    def step(self, cache: CacheRef, tokens: IntArray, start_pos: int) -> FloatArray:
        """One decode step of the protocol, recorded: a forward inside `with cache.generation():`
        when the cache offers that scope, a plain forward otherwise."""
        with self.refusals(start_pos):
            if not cache.scoped:
                return self.forward_recorded(tokens, start_pos)
            self.s.record(f"with {cache.name}.generation():\n    logits = {self.name}.forward("
                          f"Tensor(np.array({np.asarray(tokens).tolist()})), start_pos={start_pos})")
            return self.s.call(lambda: self.s.driver.forward_in_generation(self.handle, cache.handle, tokens, start_pos))

    @contextmanager
    def refusals(self, start_pos: int) -> Iterator[None]:
        """A ValueError from a cached forward at `start_pos` (< max_seq_len) becomes Refused
        when a fresh KVCache sized to this model, driven through its own API, refuses an
        update or advance at or before that position too: the capacity check fires early
        (KV-BND-3/4, the bounds group's failure), and the model checks go around it
        (spec.checks._evidence.tolerant) instead of failing for it. A ValueError the fresh
        cache does not reproduce is the cached step's own and stays the failure."""
        try:
            yield
        except SubmissionRaised as exc:
            if not exc.is_a("ValueError") or isinstance(exc, Refused) or self.config is None:
                raise
            owner = self.s.capacity_refusal(self.config, start_pos)
            if owner is None:
                raise
            refused = Refused(exc, owner)
            refused.kvspec_script = getattr(exc, "kvspec_script", "")  # type: ignore[attr-defined]
            raise refused from None

    def forward_in_scope(self, cache: CacheRef, tokens: IntArray, start_pos: int = 0, recorded: bool = False) -> FloatArray:
        """A forward inside the cache's generation scope if it has one; kept in the script if
        `recorded`, else only if it is the failing call."""
        with self.refusals(start_pos):
            if not cache.scoped:
                return self.forward_recorded(tokens, start_pos) if recorded else self.forward(tokens, start_pos)
            line = (f"with {cache.name}.generation():\n    logits = {self.name}.forward("
                    f"Tensor(np.array({np.asarray(tokens).tolist()})), start_pos={start_pos})")
            self.s.query(line)
            logits = self.s.call(lambda: self.s.driver.forward_in_generation(self.handle, cache.handle, tokens, start_pos))
            if recorded:
                self.s.record(line)
            return logits

    def generate(self, cache: CacheRef, prompt: object, max_new_tokens: object, temperature: object) -> list[int]:
        """`_cached_generate(model, prompt, max_new_tokens, temperature, cache)`."""
        args = ", ".join(code(a) for a in (prompt, max_new_tokens, temperature))
        self.s.query(f"new_tokens = _cached_generate({self.name}, {args}, {cache.name})")
        return self.s.call(lambda: self.s.driver.cached_generate(self.handle, cache.handle, prompt, max_new_tokens, temperature))

    def enable(self) -> CacheRef:
        handle = self.s.call(lambda: self.s.driver.enable(self.handle))
        cache = self.s.adopt_cache(handle)
        self.s.record(f"{cache.name} = enable_kv_cache({self.name})")
        return cache

    def disable(self) -> None:
        self.s.record(f"disable_kv_cache({self.name})")
        self.s.call(lambda: self.s.driver.disable(self.handle))

    def state(self) -> ModelState:
        return self.s.call(lambda: self.s.driver.model_state(self.handle))
