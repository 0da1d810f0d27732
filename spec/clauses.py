"""The normative clauses of the KV-cache spec: one registry, read by the checks, the
grader and the generator of docs/spec.md (a test keeps the document equal to it).

Each check (a test in spec/checks) cites its clauses with `@checks("KV-...")`; all
clauses a check cites belong to one rubric group, which is the check's group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

Level = Literal["MUST", "SHOULD"]
GROUPS = (
    "import",
    "construction",
    "update",
    "get",
    "advance",
    "reset",
    "bounds",
    "shapes",
    "memory",
    "attention",
    "model",
    "non-invasive",
    "memoization",
    "performance",
    "generate",
)
# Groups graded only when the submission offers what they check (the 2026 course's
# `_cached_generate`): when it does not, their checks are not applicable and their points
# are spread over the other scored groups, in proportion to those groups' points.
OPTIONAL_GROUPS = ("generate",)
# A check that does not apply (an optional group's, or KV-MOD-8 for a cache without a
# generation() scope) skips with a reason starting with this; it is not scored.
NOT_APPLICABLE = "kvspec-not-applicable"


@dataclass(frozen=True)
class Clause:
    id: str
    level: Level
    group: str
    text: str
    why: str


CLAUSES: tuple[Clause, ...] = (
    # -- import ------------------------------------------------------------------------
    Clause(
        "KV-IMP-1", "MUST", "import",
        "The submission's cache module imports without error and defines `KVCache`, "
        "`enable_kv_cache` and `disable_kv_cache`.",
        "Nothing else can be graded; an import failure is reported with the student's traceback.",
    ),
    # -- construction ------------------------------------------------------------------
    Clause(
        "KV-CON-1", "MUST", "construction",
        "`KVCache(batch_size, max_seq_len, num_layers, num_heads, head_dim)` with positive ints "
        "constructs; the five attributes of those names read back as given and `seq_pos` is 0.",
        "The model and the student's attention code size their work from these attributes.",
    ),
    Clause(
        "KV-CON-2", "MUST", "construction",
        "A dimension that is zero or negative raises `ValueError` at construction.",
        "A zero-size cache can hold nothing and a negative one fails later inside NumPy, far from the mistake.",
    ),
    Clause(
        "KV-CON-3", "MUST", "construction",
        "A dimension that is not an integer (for example 2.5 or \"4\") raises `TypeError` or `ValueError` "
        "at construction.",
        "Either type names the mistake; which one is an implementation's choice, so both conform.",
    ),
    Clause(
        "KV-CON-4", "MUST", "construction",
        "Two caches never share storage: updates, advances and resets of one are invisible in the other.",
        "Class-level buffers (a mutable default or a class attribute) make a second model's decoding read "
        "the first one's keys.",
    ),
    Clause(
        "KV-CON-5", "MUST", "construction",
        "A `bool` dimension (`KVCache(True, ...)`, `False` anywhere) raises `TypeError` or `ValueError` at "
        "construction: a bool is not taken for 1 or 0.",
        "Python counts `True` as the int 1, so an `isinstance(x, int)` check lets it through and a flag passed "
        "in the wrong position silently builds a one-element dimension. The 2026 course's own solution refuses "
        "bools; which of the two exceptions is, as in KV-CON-3, the implementation's choice.",
    ),
    # -- update ------------------------------------------------------------------------
    Clause(
        "KV-UPD-1", "MUST", "update",
        "`update(layer_idx, key, value)` stores `key` and `value` of shape (B, H, 1, D) at position `seq_pos` "
        "of layer `layer_idx`, each batch element and head in its own place, keys as keys and values as "
        "values; no other layer or position changes.",
        "This is the memoization: each token's keys and values are written exactly once, where attention "
        "will read them.",
    ),
    Clause(
        "KV-UPD-2", "MUST", "update",
        "`update` does not change `seq_pos`; updating the same layer twice at one position keeps the last "
        "write.",
        "All layers write at one position before `advance` moves on; the course's decode loop relies on it.",
    ),
    Clause(
        "KV-UPD-3", "MUST", "update",
        "The cache holds copies: changing the caller's key or value arrays in place after `update` does not "
        "change what `get` returns.",
        "Callers reuse buffers; a cache that keeps references reads back whatever the caller wrote last.",
    ),
    # -- get ---------------------------------------------------------------------------
    Clause(
        "KV-GET-1", "MUST", "get",
        "`get(layer_idx)` returns a pair `(keys, values)`, each of shape (B, H, seq_pos, D): the valid prefix "
        "only, (B, H, 0, D) when nothing is cached.",
        "Attention over positions never written would attend to garbage; a full (B, H, max_seq_len, D) "
        "buffer is the classic mistake.",
    ),
    Clause(
        "KV-GET-2", "MUST", "get",
        "Position p < seq_pos of `get(layer)` holds the last key and value written to that layer at p since "
        "the last reset; a position that was not written since then reads as zeros.",
        "Equal contents are what make cached attention equal to uncached attention; zeros make an "
        "unwritten slot visible instead of stale.",
    ),
    Clause(
        "KV-GET-3", "MUST", "get",
        "`get` changes nothing observable: neither `seq_pos` nor what a later `get` returns. Whether the "
        "arrays it returned earlier reflect later writes (views) or not (copies) is unspecified.",
        "Views and copies are both sound designs; a get that advances or clears is not.",
    ),
    # -- advance -----------------------------------------------------------------------
    Clause(
        "KV-ADV-1", "MUST", "advance",
        "`seq_pos` starts at 0 and each `advance()` increases it by exactly one.",
        "seq_pos is the number of cached tokens; the model's positions and get's shape follow it.",
    ),
    Clause(
        "KV-ADV-2", "MUST", "advance",
        "`advance` changes no stored key or value.",
        "Advancing only moves the write position; the history stays as written.",
    ),
    # -- reset -------------------------------------------------------------------------
    Clause(
        "KV-RST-1", "MUST", "reset",
        "`reset()` sets `seq_pos` to 0; `get` then returns (B, H, 0, D) for every layer.",
        "A new sequence starts empty.",
    ),
    Clause(
        "KV-RST-2", "MUST", "reset",
        "After `reset()`, no value written before it is ever visible: a position the new sequence has not "
        "written reads as zeros in every layer.",
        "The course: reset clears the data so that no stale data from previous generations affects the "
        "current one.",
    ),
    Clause(
        "KV-RST-3", "MUST", "reset",
        "After `reset()` the cache is fully usable again: it holds `max_seq_len` new tokens.",
        "One cache serves many generations; a reset that forgets to rewind capacity fails the second prompt.",
    ),
    # -- bounds ------------------------------------------------------------------------
    Clause(
        "KV-BND-1", "MUST", "bounds",
        "`update` and `get` with `layer_idx >= num_layers` raise `ValueError` (a subclass conforms).",
        "The course's message is `Layer index 4 >= num_layers 4`; an IndexError from NumPy says nothing.",
    ),
    Clause(
        "KV-BND-2", "MUST", "bounds",
        "`update` and `get` with a negative `layer_idx` raise `ValueError`.",
        "Some releases accept -1, which NumPy silently maps to the last layer: an off-by-one in a layer loop "
        "then corrupts the cache with no error.",
    ),
    Clause(
        "KV-BND-3", "MUST", "bounds",
        "`update` when `seq_pos == max_seq_len` raises `ValueError` whose message contains that number "
        "(position and limit are then equal; the course's `Sequence position 128 >= max_seq_len 128`); "
        "below it, a valid update does not raise.",
        "A full cache is the course's first common error; the message must say which limit was hit.",
    ),
    Clause(
        "KV-BND-4", "MUST", "bounds",
        "`advance` when `seq_pos == max_seq_len` raises `ValueError`; below it, advance does not raise.",
        "Every other rule relies on 0 <= seq_pos <= max_seq_len; past it, get cannot return seq_pos "
        "positions. Releases that let advance run on are the edge this clause decides.",
    ),
    Clause(
        "KV-BND-5", "MUST", "bounds",
        "A call that raises for a bad layer index or a full cache leaves `seq_pos` and every stored value "
        "unchanged.",
        "Students catch the error and carry on; a half-done write would poison the rest of the sequence.",
    ),
    # -- shapes ------------------------------------------------------------------------
    Clause(
        "KV-SHP-1", "MUST", "shapes",
        "`update` raises `ValueError` unless key and value each have shape exactly (B, H, 1, D), including "
        "shapes NumPy would broadcast ((1, H, 1, D) for B > 1, (B, H, 1, 1) for D > 1, (H, 1, D)) and "
        "multi-token ones ((B, H, 2, D), the classic (1, 8, 64, 64) for (1, 8, 1, 64)).",
        "Broadcasting would silently copy one batch element or one number everywhere.",
    ),
    Clause(
        "KV-SHP-2", "MUST", "shapes",
        "An `update` rejected for its shapes writes nothing: neither the key nor the value, in any layer, "
        "and `seq_pos` is unchanged.",
        "A good key with a bad value must not leave the key half-stored.",
    ),
    # -- memory ------------------------------------------------------------------------
    Clause(
        "KV-MEM-1", "MUST", "memory",
        "`get_memory_usage()` returns a dict with numeric `total_mb`, `per_layer_mb`, `cache_tensors` and "
        "`total_elements` (extra keys are allowed).",
        "The course's analysis code reads these four keys.",
    ),
    Clause(
        "KV-MEM-2", "MUST", "memory",
        "`total_elements == 2 * L * B * H * S * D` and `cache_tensors == 2 * L`, independent of `seq_pos`.",
        "Keys and values (the factor 2) for every layer are pre-allocated for the full max_seq_len.",
    ),
    Clause(
        "KV-MEM-3", "MUST", "memory",
        "`total_mb == total_elements * 4 / 2**20` and `per_layer_mb == total_mb / L` (relative tolerance "
        "1e-9); so GPT-2 small (L=12, H=12, S=1024, D=64, B=1) reports 72.0 and L=12, H=8, D=64, S=1024, "
        "B=4 reports 192.0.",
        "float32 is 4 bytes and the course's MB is 1024 x 1024 bytes; memory is linear in batch size.",
    ),
    Clause(
        "KV-MEM-4", "MUST", "memory",
        "The storage is allocated when the cache is built: the bytes a new cache holds are at least 95% of "
        "`2 * L * B * H * S * D * 4` (the formula, not the cache's own report) and less than 1.5 times it.",
        "Pre-allocation in float32 is the design the module teaches: lazy storage holds nothing at "
        "construction and float64 holds twice the formula. How the bytes are laid out is the "
        "implementation's business: the bound leaves room for the object overhead of a layout of many "
        "small arrays (one per layer and position costs about a tenth more at the check's 2 KiB slices), "
        "not for a second copy.",
    ),
    # -- attention ---------------------------------------------------------------------
    Clause(
        "KV-ATT-1", "MUST", "attention",
        "For any queries and any key/value history fed one token at a time, attention computed over "
        "`get(layer)` plus the current token equals full causal attention over the whole history.",
        "This is the promise of the module: caching changes the cost of attention, never its result.",
    ),
    # -- model -------------------------------------------------------------------------
    Clause(
        "KV-MOD-1", "MUST", "model",
        "`enable_kv_cache(model)` returns a cache with batch_size 1, the model's max_seq_len, num_layers and "
        "num_heads, head_dim = embed_dim // num_heads and seq_pos 0, and sets `model._kv_cache` to it and "
        "`model._cache_enabled = True`.",
        "The course's generation code finds the cache through these attributes.",
    ),
    Clause(
        "KV-MOD-2", "MUST", "model",
        "With the cache enabled, decoding one token at a time (forward at start_pos t, then advance) gives "
        "at every step logits equal to row t of the uncached forward of all tokens, within rtol 1e-4 and "
        "atol 1e-4.",
        "float32 attention summed in another order differs by a few ulps (at most 5e-6 measured on the "
        "grading models); a wrong key, position or layer differs by orders of magnitude more.",
    ),
    Clause(
        "KV-MOD-3", "MUST", "model",
        "Greedy generation with the cache produces the same tokens as without it (where the two largest "
        "logits tie within KV-MOD-2's tolerance, either token conforms and the runs may part there).",
        "The user-visible promise: the cache makes generation faster, not different.",
    ),
    Clause(
        "KV-MOD-4", "MUST", "model",
        "With the cache enabled, a forward of more than one token returns the same logits as the original "
        "model (within KV-MOD-2's tolerance) and leaves the cache untouched: its `seq_pos` and what `get` returns.",
        "Multi-token forwards (a whole prompt at once) take the original path in the course design.",
    ),
    Clause(
        "KV-MOD-5", "MUST", "model",
        "`enable_kv_cache` raises `AttributeError` for a model lacking embed_dim, num_layers, num_heads, "
        "max_seq_len or blocks, and `ValueError` when embed_dim % num_heads != 0.",
        "The course's contract; a cache sized from a wrong head_dim fails far from the cause.",
    ),
    Clause(
        "KV-MOD-6", "MUST", "model",
        "After `reset()` on the enabled cache, decoding a second sequence is again equal to the uncached "
        "forward.",
        "The course's fourth common error: no reset between sequences mixes two prompts' keys.",
    ),
    Clause(
        "KV-MOD-7", "MUST", "model",
        "For models whose attention scores reach several hundred (every layer's q_proj and k_proj weights "
        "multiplied by 12, so scores grow 144-fold), cached decoding returns finite logits wherever the "
        "uncached forward does, equal to them within 100 times KV-MOD-2's tolerance (rtol = atol = 1e-2).",
        "Trained models have attention scores in the hundreds, and float32 exp overflows above 88: a softmax "
        "that exponentiates raw scores, without subtracting each row's maximum, returns inf/inf = nan there "
        "while the model's own attention is fine. The wide tolerance is for conditioning, not for the bug "
        "(which gives nan; KV-MOD-2 judges everything else at its own tolerance): with scores 144 times "
        "larger, float32 rounding near tied top scores used up to 0.414 of KV-MOD-2's tolerance on the "
        "reference over 1000 random models, 45.1 times what ordinary models use (bench/tolerance.py, "
        "output in docs/measurements/tolerance.txt), and more the more models are tried.",
    ),
    Clause(
        "KV-MOD-8", "MUST", "model",
        "When the cache offers a `generation()` scope, the decode protocol runs every step inside "
        "`with cache.generation():`, and a forward outside the scope, of one token too, returns the original "
        "model's logits (within KV-MOD-2's tolerance) and leaves the cache untouched: its `seq_pos` and what `get` "
        "returns. A cache without `generation()` is decoded without a scope and this clause does not apply.",
        "The scope is how the 2026 course tells decoding from an ordinary forward: a one-token forward for "
        "training or evaluation, with the cache enabled, must neither consume the cached history of another "
        "sequence nor write into it. Releases without the scope (2025, the course site's module 17) cache every "
        "single-token forward, and the protocol then needs no scope.",
    ),
    # -- non-invasive ------------------------------------------------------------------
    Clause(
        "KV-NI-1", "MUST", "non-invasive",
        "`enable_kv_cache` and cached decoding change no weight of the model.",
        "Caching is an inference optimisation; it must not train, re-initialise or replace parameters.",
    ),
    Clause(
        "KV-NI-2", "MUST", "non-invasive",
        "After `disable_kv_cache(model)`, every forward returns bit-identical logits to the never-enabled "
        "model, for one token and for many. Where the original forward is kept is unspecified.",
        "Disable is how a user leaves the optimisation; anything left behind changes their model.",
    ),
    Clause(
        "KV-NI-3", "MUST", "non-invasive",
        "`disable_kv_cache` on a model that was never enabled does not raise and changes nothing (setting the "
        "flags of KV-NI-5 to their disabled values aside); a model `enable_kv_cache` refused, one without "
        "`blocks` (KV-MOD-5), included.",
        "Cleanup code calls disable unconditionally, in a `finally` after an enable that may have raised. Every "
        "course release returns at once when `_cache_enabled` is not set, before it looks at the blocks.",
    ),
    Clause(
        "KV-NI-4", "MUST", "non-invasive",
        "Enabling twice is harmless: decoding with the cache the second call returned is correct, and one "
        "`disable_kv_cache` then restores bit-identical outputs.",
        "A patch that wraps its own patch runs the cache twice per token or saves the patched method as the "
        "original.",
    ),
    Clause(
        "KV-NI-5", "MUST", "non-invasive",
        "After `disable_kv_cache(model)`, whether or not the model was enabled, `model._cache_enabled` is `False` "
        "and `model._kv_cache` is `None`; either attribute may instead be absent.",
        "The course's generation code reads `_cache_enabled` to choose the cached path: left `True`, it decodes "
        "through a cache that is no longer wired in, and a `_kv_cache` left set keeps the cache's storage alive. "
        "Absent is the state of a model never enabled (the model defines neither attribute), which that code "
        "already handles, so deleting the attributes conforms. `False` exactly, as `True` exactly after enable "
        "(KV-MOD-1): None is neither, and code testing `model._cache_enabled is False` or `== False` misreads it.",
    ),
    # -- memoization -------------------------------------------------------------------
    Clause(
        "KV-MEMO-1", "MUST", "memoization",
        "Over n cached decode steps, each layer's key and value projections process n rows in total, not "
        "n(n+1)/2.",
        "Computing each token's keys and values once is the point of the module; correct outputs from "
        "recomputed projections are not a cache.",
    ),
    Clause(
        "KV-MEMO-2", "MUST", "memoization",
        "Each cached decode step runs each layer's query projection on the new token only (one row per step).",
        "Recomputing queries for the whole prefix costs what the cache was meant to save.",
    ),
    # -- performance -------------------------------------------------------------------
    Clause(
        "KV-PERF-1", "MUST", "performance",
        "The bytes allocated during one `update` do not grow with `seq_pos` (at most 16 KiB more at position "
        "`max_seq_len - 2` than at 0) and stay below 1/8 of the cache's storage.",
        "An indexed write is O(1); reallocating or concatenating history makes decoding quadratic. "
        "Counted with tracemalloc, so the check is deterministic on a noisy machine.",
    ),
    # -- generate (only when the module defines _cached_generate) -------------------------
    Clause(
        "KV-GEN-1", "MUST", "generate",
        "When the module defines `_cached_generate(model, prompt_tokens, max_new_tokens, temperature, cache)`, "
        "then on an enabled model, with the cache `enable_kv_cache` returned and temperature 0, it returns a list "
        "of `max_new_tokens` token ids equal to uncached greedy decoding of the prompt (where the two largest "
        "logits tie within KV-MOD-2's tolerance, either token conforms and the runs may part there).",
        "The 2026 course grades this function; temperature 0 is greedy argmax, so its tokens are fully determined "
        "by the model, and the cache must not change them (KV-MOD-3 for the course's own loop).",
    ),
    Clause(
        "KV-GEN-2", "MUST", "generate",
        "`_cached_generate` resets the cache first: with a cache still holding another sequence it returns the "
        "same tokens as with a fresh one; afterwards `seq_pos == len(prompt_tokens) + max_new_tokens - 1` (for "
        "max_new_tokens >= 1: every prompt token and every new token but the last was fed and advanced).",
        "One cache serves many generations; keys left from the previous prompt would be attended to. seq_pos "
        "afterwards is what the course's text states, and tells a loop that feeds the last token (wasted work) "
        "or skips advancing from a correct one.",
    ),
    Clause(
        "KV-GEN-3", "MUST", "generate",
        "`_cached_generate` raises `ValueError` for `max_new_tokens` that is not a non-negative int (-1, 2.5), "
        "a temperature that is negative or not finite (-0.5, nan, inf), an empty prompt, and a prompt plus new "
        "tokens longer than `cache.max_seq_len`.",
        "The course's contract for this function; each would otherwise fail later, inside the model or the "
        "cache, far from the argument at fault (or, for nan, sample garbage).",
    ),
    Clause(
        "KV-GEN-4", "MUST", "generate",
        "`_cached_generate` accepts every argument KV-GEN-3 does not refuse: `max_new_tokens = 0` returns an "
        "empty list, and a temperature above 0 returns `max_new_tokens` token ids, each an int in "
        "`[0, vocab_size)` (which ones is the sampler's own business).",
        "The edges of the contract cut both ways: a guard that refuses 0 new tokens, or sampling that crashes "
        "or returns something else than token ids above temperature 0, breaks callers that stay inside it.",
    ),
)

BY_ID: dict[str, Clause] = {c.id: c for c in CLAUSES}
assert len(BY_ID) == len(CLAUSES), "duplicate clause id"
assert all(c.group in GROUPS for c in CLAUSES)


def group_of(ids: tuple[str, ...] | list[str]) -> str:
    """The one group shared by these clauses (ValueError if they span several)."""
    groups = {BY_ID[i].group for i in ids}
    if len(groups) != 1:
        raise ValueError(f"clauses {ids} span groups {sorted(groups)}; a check belongs to one group")
    return groups.pop()


def checks(*ids: str) -> pytest.MarkDecorator:
    """Mark a check with the clauses it verifies: `@checks("KV-GET-1", "KV-GET-2")`."""
    unknown = [i for i in ids if i not in BY_ID]
    if not ids or unknown:
        raise ValueError(f"unknown clause ids {unknown}" if unknown else "a check must cite at least one clause")
    group_of(ids)
    return pytest.mark.kvspec(*ids)
