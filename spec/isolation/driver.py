"""The one door between the suite and the code under test.

Every property in the suite drives a submission through a `Driver` and nothing else.
What crosses it is plain data: ints, floats, strings, float64/int64 ndarrays, and
handles (small ints) that name caches and models living on the submission's side.
When submission code raises, the driver raises `SubmissionRaised` describing the
exception; when the submission's process dies or hangs (out-of-process drivers), it
raises `SubmissionCrashed`, unless that happened before the submission's import began:
then it is the grader's fault (`GraderFault`). Properties never hold a submission object.

Two implementations sit behind this interface: `spec.isolation.local.LocalDriver` runs the
submission in this process (trusted code, course CI, the reference), and
`spec.isolation.isolated.IsolatedDriver` runs it in a worker process that it can kill.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

CacheId = int
ModelId = int


@dataclass(frozen=True)
class SubmissionInfo:
    """What was loaded: module path, where Tensor came from, and which names exist."""

    module: str
    tensor: str  # "module.path:Name"
    names: tuple[str, ...]  # which of KVCache, enable_kv_cache, disable_kv_cache, Tensor, _cached_generate exist


@dataclass(frozen=True)
class ModelConfig:
    """A reference GPT, built around the submission's Tensor class."""

    vocab_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    max_seq_len: int
    seed: int = 0
    # Multiplies every layer's q_proj and k_proj weights after construction, so attention
    # scores grow by qk_scale**2 (KV-MOD-7: scores of several hundred, as trained models have).
    qk_scale: int = 1


@dataclass(frozen=True)
class ModelState:
    """What the grader may observe of its own model after enable/disable."""

    cache_enabled: object  # value of model._cache_enabled, or None when absent
    cache_enabled_present: bool  # the model has an attribute _cache_enabled (tells None from absent)
    kv_cache_is_last_enabled: bool  # model._kv_cache is the object the last enable returned
    kv_cache: str  # what model._kv_cache holds: "absent", "None", "str ''" (a plain value), "KVCache object"
    weights_digest: str  # sha256 over every weight array of the model
    key_rows: tuple[int, ...]  # per layer: rows projected by k_proj so far
    value_rows: tuple[int, ...]  # per layer: rows projected by v_proj so far
    query_rows: tuple[int, ...]  # per layer: rows projected by q_proj so far


class SubmissionRaised(Exception):
    """Submission code raised; carries a plain description, never the exception object."""

    def __init__(self, type_name: str, mro: tuple[str, ...], message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.mro = mro  # class names along the MRO, e.g. ("LayerError", "ValueError", "Exception", ...)
        self.message = message
        self.traceback = traceback

    def is_a(self, *names: str) -> bool:
        """True if the exception is an instance of any builtin named (subclasses count)."""
        return any(name in self.mro for name in names)


class SubmissionCrashed(BaseException):
    """The submission's process died, hung past its budget, or broke the protocol.

    A BaseException, like KeyboardInterrupt, so Hypothesis stops at once instead of
    replaying and shrinking: after a crash every call fails immediately, so replays would
    fail at a different point (reported as Flaky) and each replay of a hang would cost a
    full timeout. The check fails with this crash and the calls that led to it."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind  # "timeout", "exit", "signal", "protocol", "budget"
        self.detail = detail


class GraderFault(BaseException):
    """The grader's own machinery failed before any submission code could run: the worker
    did not start, or died or broke the protocol before it began importing the submission
    (spec.isolation.isolated). Not the submission's fault, so no check may count it against the
    submission: the check fails with this, its verdict says so, and the grader stops with
    exit code 2 instead of writing a score. A BaseException for the reason given at
    SubmissionCrashed."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class SubmissionUnavailable(Exception):
    """The submission could not be imported, or lacks a name the operation needs."""

    def __init__(self, detail: str, traceback: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.traceback = traceback


@dataclass
class Measurement:
    """A figure measured on the submission's side (only as honest as that side)."""

    value: int
    notes: dict[str, Any] = field(default_factory=dict)


class Driver(ABC):
    """Operations on a submission. Arrays in are wrapped in the submission's Tensor class;
    arrays out are converted to float64 ndarray copies."""

    @abstractmethod
    def describe(self) -> SubmissionInfo:
        """Import the submission (once) and say what was found. Raises SubmissionUnavailable."""

    # -- the cache ---------------------------------------------------------------------
    @abstractmethod
    def new_cache(self, *args: object) -> CacheId:
        """KVCache(*args). Arguments are plain scalars (bad ones included, for construction checks)."""

    @abstractmethod
    def update(self, cache: CacheId, layer_idx: int, key: FloatArray, value: FloatArray) -> None:
        """cache.update(layer_idx, Tensor(key), Tensor(value))."""

    @abstractmethod
    def update_then_mutate(self, cache: CacheId, layer_idx: int, key: FloatArray, value: FloatArray, fill: float) -> None:
        """cache.update(layer_idx, k, v) with k, v Tensors; then overwrite k.data and v.data
        in place with `fill`, as a caller reusing its buffers would."""

    @abstractmethod
    def get(self, cache: CacheId, layer_idx: int) -> tuple[FloatArray, FloatArray]:
        """cache.get(layer_idx), converted immediately to float64 copies."""

    @abstractmethod
    def advance(self, cache: CacheId) -> None:
        """cache.advance()."""

    @abstractmethod
    def reset(self, cache: CacheId) -> None:
        """cache.reset()."""

    @abstractmethod
    def attribute(self, cache: CacheId, name: str) -> object:
        """Read a public attribute: seq_pos, batch_size, max_seq_len, num_layers, num_heads, head_dim.

        Returns an int when the attribute holds an integer, else a repr string."""

    @abstractmethod
    def memory_usage(self, cache: CacheId) -> dict[str, float]:
        """cache.get_memory_usage(), numeric values only (others become NaN)."""

    @abstractmethod
    def update_allocation(self, cache: CacheId, layer_idx: int, key: FloatArray, value: FloatArray) -> Measurement:
        """Bytes allocated at peak during one cache.update (tracemalloc), the update included."""

    @abstractmethod
    def construction_retained(self, *args: object) -> tuple[CacheId, Measurement]:
        """Build KVCache(*args) under tracemalloc; bytes still held after construction."""

    # -- the model ---------------------------------------------------------------------
    @abstractmethod
    def new_model(self, config: ModelConfig, remove: tuple[str, ...] = (), override: dict[str, int] | None = None) -> ModelId:
        """A reference GPT around the submission's Tensor; then delete the attributes in
        `remove` and set those in `override` (to build models enable_kv_cache must refuse)."""

    @abstractmethod
    def forward(self, model: ModelId, tokens: IntArray, start_pos: int = 0) -> FloatArray:
        """model.forward(Tensor(tokens), start_pos) -> logits (B, T, vocab) as float64."""

    @abstractmethod
    def enable(self, model: ModelId) -> CacheId:
        """enable_kv_cache(model); the returned cache becomes a handle."""

    @abstractmethod
    def disable(self, model: ModelId) -> None:
        """disable_kv_cache(model)."""

    @abstractmethod
    def model_state(self, model: ModelId) -> ModelState:
        """Observe the grader's own model: flags, weights digest, projection row counts."""

    # -- what some course releases add -------------------------------------------------
    @abstractmethod
    def has_generation(self, cache: CacheId) -> bool:
        """Whether the cache offers a `generation()` scope (the 2026 course's context manager)."""

    @abstractmethod
    def forward_in_generation(self, model: ModelId, cache: CacheId, tokens: IntArray, start_pos: int = 0) -> FloatArray:
        """`with cache.generation(): logits = model.forward(Tensor(tokens), start_pos)`."""

    @abstractmethod
    def cached_generate(self, model: ModelId, cache: CacheId, prompt: object, max_new_tokens: object,
                        temperature: object) -> list[int]:
        """The module's `_cached_generate(model, prompt, max_new_tokens, temperature, cache)`;
        arguments are plain values (bad ones included); the tokens it returns, as ints."""

    def close(self) -> None:
        """Release the submission's side (a worker process, loaded objects)."""
