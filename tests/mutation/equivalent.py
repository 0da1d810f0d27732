"""Surviving mutants that no conforming check can kill, with the reason (docs/mutation.md).

Each entry: (function, the original line(s) as mutmut shows them after '-', the mutated
line(s) after '+', both stripped, several lines joined by ' / '), and a one-line reason.
The original line pins the entry to one source line: the same mutated text on another
line (`raise ValueError(None)` on the full-cache message, which KV-BND-3 constrains,
rather than on the shape message, which no clause constrains) matches no entry. Only a
mutant whose status is "survived" can match; a timeout or a suspicious mutant never
does. A survivor matching no entry is a missing or weak check.

tests/test_mutation_bookkeeping.py checks that every original line occurs exactly once
in its function of the reference, that each entry changes it, and each reason that a
test can check.

Most of them change only an error *message* where the spec fixes the exception type and
leaves the wording to the implementation (KV-CON-2/3, KV-BND-1/2/4, KV-SHP-1, KV-MOD-5:
only KV-BND-3 constrains a message, and its mutants are killed).
"""

from __future__ import annotations

MESSAGE = "changes only an error message the spec leaves free (it fixes the exception type only)"
NAME_IN_MESSAGE = "the name only appears in the error message, which the spec leaves free"
BATCH_ONE = ("enable_kv_cache always builds a batch-1 cache, so the patched attention only ever sees B = 1, "
             "where (1, E), (B, E) and (B, 1, E) broadcast to the same residual")
VIEWS = ("get may hand out views or copies (KV-GET-3 leaves it unspecified, and no check measures get's "
         "allocations); copy=None wraps without copying, exactly as copy=False does")
_KEYS = "Tensor(self._keys[layer_idx][:, :, :n, :], {})"
_VALUES = "Tensor(self._values[layer_idx][:, :, :n, :], {})"
GET_RETURN = f"return {_KEYS.format('copy=False')}, {_VALUES.format('copy=False')}"
WAS_OWN = ("the grader's model never has an instance-level attention.forward before enable, so the "
           "'restore an instance attribute' branch of disable is unreachable")

# Original lines of the reference, as mutmut shows them (stripped).
TYPE_MSG = 'raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")'
POSITIVE_MSG = 'raise ValueError(f"{name} must be positive, got {value}")'
LAYER_NOT_INT = 'raise ValueError(f"Layer index must be an int, got {layer_idx!r}")'
LAYER_NEGATIVE = 'raise ValueError(f"Layer index {layer_idx} < 0")'
LAYER_TOO_LARGE = 'raise ValueError(f"Layer index {layer_idx} >= num_layers {self.num_layers}")'
SHAPE_MSG = 'raise ValueError(f"{name} shape {array.shape} != expected {expected} (B, H, 1, D)")'
NAMES = 'for name, array in (("key", k), ("value", v)):'
ADVANCE_MSG = 'raise ValueError(f"Cannot advance: sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")'
MISSING_ATTR = 'raise AttributeError(f"enable_kv_cache needs model.{name}; {type(model).__name__} has none")'
NOT_DIVISIBLE = 'raise ValueError(f"embed_dim {model.embed_dim} is not divisible by num_heads {model.num_heads}")'
MERGE = "out = (softmax(scores) @ values).reshape(batch, 1, heads * head_dim)  # (B, H, 1, D) -> (B, 1, E)"
WAS_OWN_LINE = 'block._attention_forward_was_own = "forward" in vars(attention)'
GEN_NEW_TOKENS_MSG = 'raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")'
GEN_TEMPERATURE_MSG = 'raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")'
GEN_TEMPERATURE_GUARD = ("if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not "
                         "math.isfinite(temperature) or temperature < 0:")
GEN_EMPTY_MSG = 'raise ValueError("the prompt is empty")'
GEN_TOO_LONG_MSG = 'raise ValueError(f"{len(prompt)} prompt + {max_new_tokens} new tokens exceed max_seq_len {cache.max_seq_len}")'
GEN_SOFTMAX = "p = softmax((last / temperature)[None, :])[0]"
GEN_CHOICE = "token = int(rng.choice(len(p), p=p / p.sum()))"
GEN_SCOPE = ('scope: ContextManager[Any] = cache.generation() if callable(getattr(cache, "generation", None)) '
             "else nullcontext()")
SAMPLER = ("above temperature 0 which token is sampled is the sampler's own business (KV-GEN-4 wants token ids in "
           "the vocabulary, KV-GEN-1 fixes temperature 0 only): another seed, scale or distribution is still a sampler")
NO_SCOPE = ("the reference KVCache has no generation() scope, so whether the reference's _cached_generate would enter "
            "one is unobservable in the mutation run; the zoo's course_2026_module18 grades the scoped path")


def _dimension(name: str) -> list[tuple[str, str, str, str]]:
    original = f'self.{name} = _positive_int("{name}", {name})'
    return [("xǁKVCacheǁ__init__", original, original.replace(f'"{name}"', new), NAME_IN_MESSAGE)
            for new in ("None", f'"XX{name}XX"', f'"{name.upper()}"')]


EQUIVALENT: list[tuple[str, str, str, str]] = [
    # -- kv_cache.py: messages ---------------------------------------------------------------
    ("x__positive_int", TYPE_MSG, "raise TypeError(None)", MESSAGE),
    ("x__positive_int", TYPE_MSG, 'raise TypeError(f"{name} must be an int, got {type(None).__name__} {value!r}")', MESSAGE),
    ("x__positive_int", POSITIVE_MSG, "raise ValueError(None)", MESSAGE),
    *(entry for name in ("batch_size", "max_seq_len", "num_layers", "num_heads", "head_dim") for entry in _dimension(name)),
    *(("xǁKVCacheǁ_check_layer", original, "raise ValueError(None)", MESSAGE)
      for original in (LAYER_NOT_INT, LAYER_NEGATIVE, LAYER_TOO_LARGE)),
    ("xǁKVCacheǁupdate", NAMES, 'for name, array in (("XXkeyXX", k), ("value", v)):', NAME_IN_MESSAGE),
    ("xǁKVCacheǁupdate", NAMES, 'for name, array in (("KEY", k), ("value", v)):', NAME_IN_MESSAGE),
    ("xǁKVCacheǁupdate", NAMES, 'for name, array in (("key", k), ("XXvalueXX", v)):', NAME_IN_MESSAGE),
    ("xǁKVCacheǁupdate", NAMES, 'for name, array in (("key", k), ("VALUE", v)):', NAME_IN_MESSAGE),
    ("xǁKVCacheǁupdate", SHAPE_MSG, "raise ValueError(None)", MESSAGE),
    ("xǁKVCacheǁadvance", ADVANCE_MSG, "raise ValueError(None)", MESSAGE),
    # -- kv_cache.py: get's views or copies ---------------------------------------------------
    *(("xǁKVCacheǁget", GET_RETURN, f"return {_KEYS.format(k)}, {_VALUES.format('copy=False')}", VIEWS)
      for k in ("copy=None", "", "copy=True")),
    *(("xǁKVCacheǁget", GET_RETURN, f"return {_KEYS.format('copy=False')}, {_VALUES.format(v)}", VIEWS)
      for v in ("copy=None", "", "copy=True")),
    # -- kv_cache.py: inputs outside the spec's domain ----------------------------------------
    ("xǁKVCacheǁ_check_layer", "if isinstance(layer_idx, bool) or not isinstance(layer_idx, (int, np.integer)):",
     "if isinstance(layer_idx, bool) and not isinstance(layer_idx, (int, np.integer)):",
     "only a non-int layer index (1.5, '0', True) reaches the guard; the spec decides ints only (KV-BND-1/2)"),
    ("x__as_array", 'return np.asarray(getattr(x, "data", x))', 'return np.asarray(getattr(x, "data", None))',
     "update is only ever given Tensors (they have .data); bare arrays are outside the contract"),
    ("x__as_array", 'return np.asarray(getattr(x, "data", x))', 'return np.asarray(getattr(x, "data", ))',
     "update is only ever given Tensors (they have .data); bare arrays are outside the contract"),
    # -- memoization.py ----------------------------------------------------------------------
    ("x__cached_attention_forward", MERGE, MERGE.replace("reshape(batch, 1, ", "reshape(1, "), BATCH_ONE),
    ("x__cached_attention_forward", MERGE, MERGE.replace("reshape(batch, 1, ", "reshape(batch, "), BATCH_ONE),
    ("x_enable_kv_cache", MISSING_ATTR, "raise AttributeError(None)", MESSAGE),
    ("x_enable_kv_cache", MISSING_ATTR, MISSING_ATTR.replace("type(model)", "type(None)"), MESSAGE),
    ("x_enable_kv_cache", NOT_DIVISIBLE, "raise ValueError(None)", MESSAGE),
    ("x_enable_kv_cache", 'if getattr(model, "_cache_enabled", False):', 'if getattr(model, "_cache_enabled", None):',
     "None and False are both falsy"),
    ("x_enable_kv_cache", 'if getattr(model, "_cache_enabled", False):', 'if getattr(model, "_cache_enabled", True):',
     "on a never-enabled model the extra disable_kv_cache call changes nothing but the flags, which enable "
     "then sets (KV-NI-3, KV-NI-5)"),
    ("x_enable_kv_cache", "block._original_attention_forward = attention.forward", "block._original_attention_forward = None",
     WAS_OWN),
    ("x_enable_kv_cache", WAS_OWN_LINE, "block._attention_forward_was_own = None", "None and False are both falsy"),
    ("x_enable_kv_cache", WAS_OWN_LINE, WAS_OWN_LINE.replace('"forward"', '"XXforwardXX"'), "False either way: " + WAS_OWN),
    ("x_enable_kv_cache", WAS_OWN_LINE, WAS_OWN_LINE.replace('"forward"', '"FORWARD"'), "False either way: " + WAS_OWN),
    ("x_enable_kv_cache", WAS_OWN_LINE, WAS_OWN_LINE.replace(" in ", " not in "),
     "restoring the saved bound method as an instance attribute gives bit-identical forwards to deleting it"),
    # Not equivalent, so not listed: disable's `getattr(model, "blocks", [])` with default None or no
    # default raises on a model without `blocks` (KV-MOD-5's models), which KV-NI-3 forbids (checked since f631c8a).
    ("x_disable_kv_cache", "continue", "break",
     "blocks are patched all or none, so the first unpatched block means no block is patched"),
    ("x_disable_kv_cache", "block.attention.forward = block._original_attention_forward", "block.attention.forward = None",
     WAS_OWN),
    # -- memoization.py: _cached_generate (KV-GEN-1..4) ----------------------------------------
    *(("x__cached_generate", original, mutated, MESSAGE) for original, mutated in (
        (GEN_NEW_TOKENS_MSG, "raise ValueError(None)"), (GEN_TEMPERATURE_MSG, "raise ValueError(None)"),
        (GEN_EMPTY_MSG, "raise ValueError(None)"), (GEN_EMPTY_MSG, 'raise ValueError("XXthe prompt is emptyXX")'),
        (GEN_EMPTY_MSG, 'raise ValueError("THE PROMPT IS EMPTY")'), (GEN_TOO_LONG_MSG, "raise ValueError(None)"))),
    ("x__cached_generate", GEN_TEMPERATURE_GUARD, GEN_TEMPERATURE_GUARD.replace("bool) or not", "bool) and not", 1),
     "only a temperature that is not a real number (True, '1') reaches the type guard; KV-GEN-3 decides numbers only"),
    *(("x__cached_generate", "rng = np.random.default_rng(0)", mutated, SAMPLER)
      for mutated in ("rng = np.random.default_rng(None)", "rng = np.random.default_rng(1)")),
    ("x__cached_generate", GEN_SOFTMAX, GEN_SOFTMAX.replace("last / temperature", "last * temperature"), SAMPLER),
    ("x__cached_generate", GEN_CHOICE, GEN_CHOICE.replace("p=p / p.sum()", "p=None"), SAMPLER),
    ("x__cached_generate", GEN_CHOICE, GEN_CHOICE.replace(", p=p / p.sum()", ", "), SAMPLER),
    ("x__cached_generate", GEN_CHOICE, GEN_CHOICE.replace("p=p / p.sum()", "p=p * p.sum()"),
     "p comes from softmax and sums to 1 within rounding, so p * p.sum() is p / p.sum(): " + SAMPLER),
    *(("x__cached_generate", GEN_SCOPE, mutated, NO_SCOPE) for mutated in (
        GEN_SCOPE.replace('callable(getattr(cache, "generation", None))', "callable(None)"),
        GEN_SCOPE.replace("getattr(cache,", "getattr(None,"),
        GEN_SCOPE.replace('"generation", None', '"XXgenerationXX", None'),
        GEN_SCOPE.replace('"generation", None', '"GENERATION", None'),
        GEN_SCOPE.replace('if callable(getattr(cache, "generation", None))', 'if (callable(getattr(cache, "generation", None))) and False'))),
    ("x__cached_generate", "return logits[0, -1].astype(np.float64)", "return logits[0, -1].astype(None)",
     "astype(None) is astype(float64): NumPy's default float"),
    ("x__cached_generate", "last: Any = None", 'last: Any = ""', "the prompt is never empty (KV-GEN-3), so its first "
     "step overwrites the initial value before anything reads it"),
]
