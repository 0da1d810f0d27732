"""LocalDriver: runs the submission in this process.

For trusted code (the reference, a course's own solution in CI) and as the engine inside
the isolated worker. Converts everything that leaves a submission call into plain data
at once: float64 ndarray copies (never subclasses), ints, strings.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import sys
import traceback
import tracemalloc
from typing import Any, Callable, TypeVar

import numpy as np

from reference.gpt import GPT, Linear
from spec.discovery import REFERENCE_TENSOR, Target
from spec.isolation.driver import (
    CacheId,
    Driver,
    FloatArray,
    IntArray,
    Measurement,
    ModelConfig,
    ModelId,
    ModelState,
    SubmissionInfo,
    SubmissionRaised,
    SubmissionUnavailable,
)

T = TypeVar("T")
MAX_MESSAGE = 2000
CACHE_ATTRIBUTES = ("seq_pos", "batch_size", "max_seq_len", "num_layers", "num_heads", "head_dim")
MEMORY_KEYS = ("total_mb", "per_layer_mb", "cache_tensors", "total_elements")
MODULE_NAMES = ("KVCache", "enable_kv_cache", "disable_kv_cache", "Tensor", "_cached_generate")


def describe_exception(exc: BaseException) -> SubmissionRaised:
    """A plain description of a submission's exception (its class names, message, traceback)."""
    mro = tuple(cls.__name__ for cls in type(exc).__mro__)
    try:
        message = str(exc)[:MAX_MESSAGE]
    except BaseException:  # a hostile __str__
        message = "<message could not be read>"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8 * MAX_MESSAGE :]
    return SubmissionRaised(type(exc).__name__, mro, message, tb)


def contract_error(message: str) -> SubmissionRaised:
    """A call returned something outside the contract. Its MRO holds no builtin exception,
    so it never satisfies a property that expects the submission to raise."""
    return SubmissionRaised("ContractViolation", ("ContractViolation",), message)


def plain_array(x: object, what: str) -> FloatArray:
    """float64 ndarray copy of a Tensor-like (reads `.data`) or array-like; never a subclass."""
    data = getattr(x, "data", x)
    try:
        out = np.array(data, dtype=np.float64, copy=True, subok=False)
    except Exception as exc:
        raise contract_error(f"{what} is not numeric array data ({type(x).__name__}: {exc})") from None
    return out


def _load(dotted: str) -> Any:
    module_name, _, attr = dotted.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def _held(value: object) -> str:
    """What an attribute holds, for a message: "None", a plain value with its type ("str ''"),
    or only the type of anything else (its repr would run submission code and hold an address)."""
    if value is None:
        return "None"
    if type(value) in (bool, int, float, str):
        return f"{type(value).__name__} {repr(value)[:80]}"
    return f"{type(value).__name__[:100]} object"


class _Projections:
    """The grader's own references to a model's weights and projections, taken at
    construction, so replacing `block.attention` with a wrapper cannot hide them."""

    def __init__(self, model: GPT) -> None:
        self.queries = [b.attention.q_proj for b in model.blocks]
        self.keys = [b.attention.k_proj for b in model.blocks]
        self.values = [b.attention.v_proj for b in model.blocks]
        linears: list[Linear] = [model.lm_head]
        for b in model.blocks:
            a = b.attention
            linears += [a.q_proj, a.k_proj, a.v_proj, a.out_proj, b.mlp.fc1, b.mlp.fc2]
        self.linears = linears
        self.arrays = [model.token_embedding, model.position_embedding]
        self.norms = [n for b in model.blocks for n in (b.ln1, b.ln2)] + [model.ln_f]

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in self.arrays + [x for lin in self.linears for x in (lin.weight, lin.bias)] + [
            x for n in self.norms for x in (n.gamma, n.beta)
        ]:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


class LocalDriver(Driver):
    def __init__(self, target: Target) -> None:
        self.target = target
        self._module: Any = None
        self._tensor: Callable[[Any], Any] | None = None
        self._tensor_name = ""
        self._caches: dict[int, Any] = {}
        self._models: dict[int, tuple[GPT, _Projections]] = {}
        self._last_enabled: dict[int, Any] = {}
        self._next = 0
        # Called once, just before the submission's directory goes on sys.path and its
        # module is imported: the isolated worker reports there that submission code may
        # run from now on (everything before is the grader's own, see spec.isolation.isolated).
        self.before_import: Callable[[], None] | None = None

    # -- loading -----------------------------------------------------------------------
    def describe(self) -> SubmissionInfo:
        self._ensure_loaded()
        names = tuple(n for n in MODULE_NAMES if hasattr(self._module, n))
        return SubmissionInfo(self.target.module, self._tensor_name, names)

    def _ensure_loaded(self) -> None:
        if self._module is not None:
            return
        announce, self.before_import = self.before_import, None
        if announce is not None:
            announce()
        if self.target.path is not None and self.target.path not in sys.path:
            sys.path.insert(0, self.target.path)
        try:
            module = importlib.import_module(self.target.module)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt at import are the student's too
            raise SubmissionUnavailable(
                f"importing {self.target.module} raised {type(exc).__name__}: {exc}", describe_exception(exc).traceback
            ) from None
        if self.target.tensor is not None:
            try:
                tensor = _load(self.target.tensor)
            except BaseException as exc:
                raise SubmissionUnavailable(f"loading Tensor {self.target.tensor} raised {type(exc).__name__}: {exc}") from None
            name = self.target.tensor
        elif isinstance(getattr(module, "Tensor", None), type):
            tensor, name = module.Tensor, f"{self.target.module}:Tensor"
        else:
            tensor, name = _load(REFERENCE_TENSOR), REFERENCE_TENSOR
        self._module, self._tensor, self._tensor_name = module, tensor, name

    def _name(self, name: str) -> Any:
        self._ensure_loaded()
        try:
            return getattr(self._module, name)
        except AttributeError:
            raise SubmissionUnavailable(f"{self.target.module} has no {name}") from None

    def _wrap(self, array: FloatArray) -> Any:
        assert self._tensor is not None
        return self._tensor(np.asarray(array, dtype=np.float32))

    def _call(self, fn: Callable[[], T]) -> T:
        """Run submission code; any exception it raises becomes a plain description."""
        try:
            return fn()
        except SubmissionRaised:
            raise
        except BaseException as exc:
            raise describe_exception(exc) from None

    def _register(self, table: dict[int, Any], obj: Any) -> int:
        self._next += 1
        table[self._next] = obj
        return self._next

    # -- the cache ---------------------------------------------------------------------
    def new_cache(self, *args: object) -> CacheId:
        cls = self._name("KVCache")
        return self._register(self._caches, self._call(lambda: cls(*args)))

    def update(self, cache: CacheId, layer_idx: int, key: FloatArray, value: FloatArray) -> None:
        c, k, v = self._caches[cache], self._wrap(key), self._wrap(value)
        self._call(lambda: c.update(layer_idx, k, v))

    def update_then_mutate(self, cache: CacheId, layer_idx: int, key: FloatArray, value: FloatArray, fill: float) -> None:
        c, k, v = self._caches[cache], self._wrap(key), self._wrap(value)
        self._call(lambda: c.update(layer_idx, k, v))
        for t in (k, v):
            data = getattr(t, "data", None)
            if isinstance(data, np.ndarray) and data.flags.writeable:
                data[...] = fill

    def get(self, cache: CacheId, layer_idx: int) -> tuple[FloatArray, FloatArray]:
        c = self._caches[cache]
        result = self._call(lambda: c.get(layer_idx))
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise contract_error(f"get({layer_idx}) returned {type(result).__name__}, expected a (keys, values) pair")
        return plain_array(result[0], "keys"), plain_array(result[1], "values")

    def advance(self, cache: CacheId) -> None:
        c = self._caches[cache]
        self._call(lambda: c.advance())

    def reset(self, cache: CacheId) -> None:
        c = self._caches[cache]
        self._call(lambda: c.reset())

    def attribute(self, cache: CacheId, name: str) -> object:
        if name not in CACHE_ATTRIBUTES:
            raise ValueError(f"not a public cache attribute: {name}")
        c = self._caches[cache]
        value = self._call(lambda: getattr(c, name))
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        return repr(value)[:200]

    def memory_usage(self, cache: CacheId) -> dict[str, float]:
        c = self._caches[cache]
        report = self._call(lambda: c.get_memory_usage())
        if not isinstance(report, dict):
            raise contract_error(f"get_memory_usage() returned {type(report).__name__}, expected a dict")
        out: dict[str, float] = {}
        for key, value in report.items():
            if not isinstance(key, str):
                continue
            try:
                out[key] = float(value)
            except (TypeError, ValueError):
                out[key] = float("nan")
        return out

    def update_allocation(self, cache: CacheId, layer_idx: int, key: FloatArray, value: FloatArray) -> Measurement:
        c, k, v = self._caches[cache], self._wrap(key), self._wrap(value)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            self._call(lambda: c.update(layer_idx, k, v))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return Measurement(max(0, peak - before))

    def construction_retained(self, *args: object) -> tuple[CacheId, Measurement]:
        cls = self._name("KVCache")
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            cache = self._call(lambda: cls(*args))
            gc.collect()
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        return self._register(self._caches, cache), Measurement(max(0, held - before))

    # -- the model ---------------------------------------------------------------------
    def new_model(self, config: ModelConfig, remove: tuple[str, ...] = (), override: dict[str, int] | None = None) -> ModelId:
        self._ensure_loaded()
        assert self._tensor is not None
        model = GPT(
            config.vocab_size, config.embed_dim, config.num_layers, config.num_heads, config.max_seq_len,
            seed=config.seed, tensor=self._tensor,
        )
        if config.qk_scale != 1:
            for block in model.blocks:
                block.attention.q_proj.weight *= np.float32(config.qk_scale)
                block.attention.k_proj.weight *= np.float32(config.qk_scale)
        projections = _Projections(model)
        for name in remove:
            delattr(model, name)
        for name, value in (override or {}).items():
            setattr(model, name, value)
        return self._register(self._models, (model, projections))

    def forward(self, model: ModelId, tokens: IntArray, start_pos: int = 0) -> FloatArray:
        m, _ = self._models[model]
        t = self._wrap(np.asarray(tokens, dtype=np.float64))
        return plain_array(self._call(lambda: m.forward(t, start_pos=start_pos)), "logits")

    def enable(self, model: ModelId) -> CacheId:
        m, _ = self._models[model]
        enable = self._name("enable_kv_cache")
        cache = self._call(lambda: enable(m))
        self._last_enabled[model] = cache
        return self._register(self._caches, cache)

    def disable(self, model: ModelId) -> None:
        m, _ = self._models[model]
        disable = self._name("disable_kv_cache")
        self._call(lambda: disable(m))

    def model_state(self, model: ModelId) -> ModelState:
        m, p = self._models[model]
        enabled = getattr(m, "_cache_enabled", None)
        last = self._last_enabled.get(model)
        missing = object()
        held = getattr(m, "_kv_cache", missing)
        return ModelState(
            cache_enabled=enabled if isinstance(enabled, (bool, int, type(None))) else repr(enabled)[:200],
            cache_enabled_present=hasattr(m, "_cache_enabled"),
            kv_cache_is_last_enabled=last is not None and held is last,
            kv_cache="absent" if held is missing else _held(held),
            weights_digest=p.digest(),
            key_rows=tuple(lin.rows_seen for lin in p.keys),
            value_rows=tuple(lin.rows_seen for lin in p.values),
            query_rows=tuple(lin.rows_seen for lin in p.queries),
        )

    # -- what some course releases add -------------------------------------------------
    def has_generation(self, cache: CacheId) -> bool:
        c = self._caches[cache]
        return bool(self._call(lambda: callable(getattr(c, "generation", None))))

    def forward_in_generation(self, model: ModelId, cache: CacheId, tokens: IntArray, start_pos: int = 0) -> FloatArray:
        m, _ = self._models[model]
        c = self._caches[cache]
        t = self._wrap(np.asarray(tokens, dtype=np.float64))

        def step() -> Any:
            with c.generation():
                return m.forward(t, start_pos=start_pos)

        return plain_array(self._call(step), "logits")

    def cached_generate(self, model: ModelId, cache: CacheId, prompt: object, max_new_tokens: object,
                        temperature: object) -> list[int]:
        m, _ = self._models[model]
        c = self._caches[cache]
        generate = self._name("_cached_generate")
        result = self._call(lambda: generate(m, prompt, max_new_tokens, temperature, c))
        try:
            tokens = [int(t) for t in result]
        except Exception as exc:
            raise contract_error(f"_cached_generate returned {type(result).__name__}, expected a list of token ids ({exc})") from None
        return tokens

    def close(self) -> None:
        self._caches.clear()
        self._models.clear()
        self._last_enabled.clear()
