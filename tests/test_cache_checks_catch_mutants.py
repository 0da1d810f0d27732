"""The cache-level checks catch the bugs they exist for, and pass correct designs they must
not punish.

Each mutant is reference/kv_cache.py with one named string edit that must match exactly
once, laid out as a loose submission module that also exposes Tensor, enable_kv_cache and
disable_kv_cache (from `reference`). The cache-level check files run against it with the
quick profile, and the verdicts (--kvspec-results) say which checks failed.

Speed: starting Python with Hypothesis and pytest costs about 2 s of CPU, more than the
checks themselves, so mutants are run in a few groups: one subprocess per group runs
`python -m pytest <files> --kvspec-submission=DIR --kvspec-module=<mutant> ...` once per
mutant of the group, through a small runner that calls pytest's own entry point in turn
(each mutant is its own module, so nothing leaks between them). Every failing check's
minimal example is also replayed in that subprocess: it must run as printed.

If an edit no longer matches, reference/kv_cache.py changed: update the edit's `old`
text to the new source, keeping the bug the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from spec.results import Verdict, load_verdicts

ROOT = Path(__file__).resolve().parent.parent
KV_CACHE = (ROOT / "reference" / "kv_cache.py").read_text()
TAIL = "\n\nfrom reference.memoization import disable_kv_cache, enable_kv_cache  # noqa: E402\n"

C = "spec/checks/"
FILES = {
    "construction": C + "test_construction.py",
    "machine": C + "test_cache_machine.py",
    "bounds": C + "test_bounds.py",
    "shapes": C + "test_shapes.py",
    "memory": C + "test_memory.py",
    "attention": C + "test_attention.py",
    "performance": C + "test_performance.py",
}
ALL = tuple(FILES)
# Smaller sets where running everything would only repeat what other mutants show: the
# semantics machines are included wherever a bug must not leak into the other groups.
BOUNDS_AND_NEIGHBOURS = ("bounds", "machine", "shapes")
MEMORY_AND_NEIGHBOURS = ("memory", "performance", "machine")
RESET_AND_NEIGHBOURS = ("machine", "construction", "attention")
NOT_ATTENTION = ("construction", "machine", "bounds", "shapes", "memory", "performance")  # attention integrates all

# check names
ATTRS, NONPOS, NONINT, SHARED = (
    "test_attributes_read_back_as_given", "test_non_positive_dimension_raises_value_error",
    "test_non_integer_dimension_raises", "test_two_caches_never_share_storage",
)
BOOL = "test_bool_dimension_raises"
UPDATE, GET, ADVANCE, RESET = (
    "test_update_writes_in_place_and_keeps_seq_pos", "test_get_returns_the_written_prefix",
    "test_advance_moves_by_one_and_keeps_data", "test_reset_starts_a_clean_sequence",
)
COPIES = "test_update_stores_copies"
LAYER_HIGH, LAYER_NEG, FULL_UPDATE, FULL_ADVANCE, UNCHANGED = (
    "test_layer_index_past_the_last_raises", "test_negative_layer_index_raises",
    "test_update_on_a_full_cache_raises_naming_the_limit", "test_advance_on_a_full_cache_raises",
    "test_a_call_that_raises_leaves_the_cache_unchanged",
)
WRONG_SHAPE, WRITES_NOTHING = "test_update_rejects_every_wrong_shape", "test_a_rejected_update_writes_nothing"
MEM_KEYS, MEM_COUNT, MEM_MB, MEM_LINEAR, MEM_72, MEM_192, MEM_HELD = (
    "test_memory_report_has_four_numeric_entries", "test_memory_counts_every_element_of_the_storage",
    "test_memory_megabytes_follow_from_the_element_count", "test_memory_is_linear_in_batch_size",
    "test_gpt2_small_cache_is_72_mb", "test_batch_4_cache_is_192_mb", "test_storage_is_allocated_at_construction_as_reported",
)
ATTENTION = "test_cached_attention_equals_full_causal_attention"
PERF = "test_update_allocation_does_not_grow_with_seq_pos"


@dataclass(frozen=True)
class Mutant:
    name: str
    old: str
    new: str
    fails: tuple[str, ...]  # checks that must fail
    files: tuple[str, ...] = ALL  # which check files to run (keys of FILES)
    only: bool = False  # every other check run must pass
    says: tuple[str, ...] = ()  # phrases the first expected failure's message must contain


WRITES = (
    "        self._keys[layer_idx][:, :, self.seq_pos, :] = k[:, :, 0, :]\n"
    "        self._values[layer_idx][:, :, self.seq_pos, :] = v[:, :, 0, :]\n"
)
VALIDATE = (
    "        for name, array in ((\"key\", k), (\"value\", v)):\n"
    "            if array.shape != expected:\n"
    "                raise ValueError(f\"{name} shape {array.shape} != expected {expected} (B, H, 1, D)\")\n"
)
GET_RETURN = (
    "        return Tensor(self._keys[layer_idx][:, :, :n, :], copy=False), Tensor(self._values[layer_idx][:, :, :n, :], copy=False)\n"
)
ALLOCATE = (
    "        self._keys = [np.zeros(shape, dtype=np.float32) for _ in range(self.num_layers)]\n"
    "        self._values = [np.zeros(shape, dtype=np.float32) for _ in range(self.num_layers)]\n"
)
ADVANCE_BODY = (
    "        if self.seq_pos >= self.max_seq_len:\n"
    "            raise ValueError(f\"Cannot advance: sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}\")\n"
    "        self.seq_pos += 1\n"
)
RESET_BODY = (
    "        self.seq_pos = 0\n"
    "        for keys, values in zip(self._keys, self._values):\n"
    "            keys.fill(0.0)\n"
    "            values.fill(0.0)\n"
)

MUTANTS = (
    # -- hints: each mutant has exactly the cause its hint names -------------------------------
    Mutant(
        "heads mixed with positions by reshape in get (storage read as (B, S, H, D))",
        GET_RETURN,
        "        B, H, D = self.batch_size, self.num_heads, self.head_dim\n"
        "        keys = self._keys[layer_idx][:, :, :n, :].transpose(0, 2, 1, 3).reshape(B, H, n, D)\n"
        "        values = self._values[layer_idx][:, :, :n, :].transpose(0, 2, 1, 3).reshape(B, H, n, D)\n"
        "        return Tensor(keys), Tensor(values)\n",
        (GET,), ("machine",), says=("heads and positions are mixed", "transpose(1, 2)"),
    ),
    # -- construction -----------------------------------------------------------------------
    Mutant("zero dimension accepted", "    if value <= 0:\n", "    if value < 0:\n", (NONPOS,), ("construction",), only=True),
    Mutant(
        "2.5 accepted (no type check)",
        "    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):\n",
        "    if isinstance(value, (bool, str)) or value is None:\n",
        (NONINT,), ("construction",), only=True,
    ),
    Mutant(
        "True accepted as 1 (bool not refused)",
        "    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):\n",
        "    if not isinstance(value, (int, np.integer)):\n",
        (BOOL,), ("construction",), only=True, says=("bool is a subclass of int",),
    ),
    Mutant(
        "num_heads stored as a float",
        ALLOCATE, ALLOCATE + "        self.num_heads = self.num_heads * 1.0\n",
        (ATTRS,), ("construction", "memory"), only=True,
    ),
    Mutant(
        "storage shared by every cache of one shape (class-level dict)",
        ALLOCATE,
        "        shared = KVCache.__dict__.get('_shared')\n"
        "        if shared is None:\n"
        "            shared = {}\n"
        "            KVCache._shared = shared\n"
        "        self._keys, self._values = shared.setdefault((shape, self.num_layers), (\n"
        "            [np.zeros(shape, dtype=np.float32) for _ in range(self.num_layers)],\n"
        "            [np.zeros(shape, dtype=np.float32) for _ in range(self.num_layers)]))\n",
        (SHARED,), ("construction",), says=("class attribute",),
    ),
    # -- update -------------------------------------------------------------------------------
    Mutant(
        "update advances seq_pos", WRITES, WRITES + "        self.seq_pos += 1\n", (UPDATE,), NOT_ATTENTION, only=True,
        says=("KV-UPD-2", "update must not change seq_pos"),
    ),
    Mutant(
        "keys and values swapped",
        WRITES,
        WRITES.replace("= k[:, :, 0, :]", "= V").replace("= v[:, :, 0, :]", "= k[:, :, 0, :]").replace("= V", "= v[:, :, 0, :]"),
        (UPDATE, GET, ATTENTION), ("machine", "attention"), says=("swapped",),
    ),
    Mutant(
        "batch element 0 written to every batch element",
        WRITES, WRITES.replace("= k[:, :, 0, :]", "= k[0, :, 0, :]"), (UPDATE, GET, ATTENTION), ("machine", "attention"),
        says=("batch element",),
    ),
    Mutant(
        "heads written in reverse order",
        WRITES, WRITES.replace("= v[:, :, 0, :]", "= v[:, ::-1, 0, :]"), (UPDATE, GET, ATTENTION), ("machine", "attention"),
        says=("head",),
    ),
    Mutant(
        "update writes one position too far",
        WRITES, WRITES.replace("self.seq_pos, :] = k", "min(self.seq_pos + 1, self.max_seq_len - 1), :] = k"),
        (UPDATE, GET, ATTENTION), ("machine", "attention"),
    ),
    Mutant(
        "update keeps a reference to the caller's arrays",
        WRITES + "\n    def get(self, layer_idx: int) -> tuple[Tensor, Tensor]:\n",
        "        self.__dict__.setdefault('_live', {})[(layer_idx, self.seq_pos)] = (k, v)\n" + WRITES +
        "\n    def get(self, layer_idx: int) -> tuple[Tensor, Tensor]:\n"
        "        for (layer, p), (k, v) in self.__dict__.get('_live', {}).items():\n"
        "            if layer == layer_idx and self._keys[layer][:, :, p, :].any():  # not cleared by reset\n"
        "                self._keys[layer][:, :, p, :] = k[:, :, 0, :]\n"
        "                self._values[layer][:, :, p, :] = v[:, :, 0, :]\n",
        (COPIES,), ("machine",), only=True, says=("KV-UPD-3",),
    ),
    # -- get ------------------------------------------------------------------------------------
    Mutant(
        "get slice off by one (includes the slot being written)",
        "        n = self.seq_pos\n", "        n = self.seq_pos + 1\n", (GET, ATTENTION), says=("off by one",),
    ),
    Mutant(
        "get returns the whole max_seq_len buffer",
        GET_RETURN, GET_RETURN.replace(":n, :]", ":, :]"), (GET, ATTENTION), says=("whole max_seq_len buffer",),
    ),
    Mutant(
        "get consumes what it returns",
        GET_RETURN,
        "        out = Tensor(self._keys[layer_idx][:, :, :n, :]), Tensor(self._values[layer_idx][:, :, :n, :])  # copies\n"
        "        self._keys[layer_idx][:, :, :n, :] = 0\n"
        "        return out\n",
        (GET,), ("machine",), says=("KV-GET-3",),
    ),
    # -- advance ---------------------------------------------------------------------------------
    Mutant(
        "advance by 2", "        self.seq_pos += 1\n", "        self.seq_pos += 2\n", (ADVANCE,), NOT_ATTENTION, only=True,
        says=("each advance() adds exactly 1",),
    ),
    Mutant(
        "advance shifts the history along",
        "        self.seq_pos += 1\n",
        "        self.seq_pos += 1\n"
        "        for keys in self._keys:\n"
        "            keys[...] = np.roll(keys, 1, axis=2)\n",
        (ADVANCE,), ("machine",), says=("KV-ADV-2",),
    ),
    # -- reset ------------------------------------------------------------------------------------
    Mutant(
        "reset does not zero the storage", RESET_BODY, "        self.seq_pos = 0\n", (RESET,), RESET_AND_NEIGHBOURS, only=True,
        says=("still holds a value written before",),
    ),
    Mutant(
        "reset does not rewind seq_pos", RESET_BODY, RESET_BODY.replace("        self.seq_pos = 0\n", ""), (RESET,),
        RESET_AND_NEIGHBOURS, only=True,
        says=("seq_pos back to 0",),
    ),
    Mutant(
        # Needs update, then reset without an advance between: the quick profile once found
        # it with two seeds of four; the reset machine's explicit triples hold that history.
        "reset clears only the positions below seq_pos",
        RESET_BODY,
        "        for keys, values in zip(self._keys, self._values):\n"
        "            keys[:, :, : self.seq_pos] = 0.0\n"
        "            values[:, :, : self.seq_pos] = 0.0\n"
        "        self.seq_pos = 0\n",
        (RESET,), ("machine",), only=True, says=("still holds a value written before",),
    ),
    Mutant(
        "reset gives back only the unused capacity",
        RESET_BODY, "        self.max_seq_len -= self.seq_pos\n" + RESET_BODY, (RESET,), ("machine",), says=("KV-RST-3",),
    ),
    Mutant(
        "reset leaves garbage (np.empty) instead of zeros",
        RESET_BODY,
        "        self.seq_pos = 0\n"
        "        for keys, values in zip(self._keys, self._values):\n"
        "            keys.fill(7.5)\n"
        "            values.fill(7.5)\n",
        (RESET,), ("machine",), says=("not zeros",),
    ),
    # -- bounds -----------------------------------------------------------------------------------
    Mutant(
        "negative layer index accepted",
        "        if layer_idx < 0:\n            raise ValueError(f\"Layer index {layer_idx} < 0\")\n", "",
        (LAYER_NEG,), BOUNDS_AND_NEIGHBOURS, only=True, says=("-1",),
    ),
    Mutant(
        "layer index == num_layers gives IndexError",
        "        if layer_idx >= self.num_layers:\n", "        if layer_idx > self.num_layers:\n",
        (LAYER_HIGH,), BOUNDS_AND_NEIGHBOURS, only=True,
    ),
    Mutant(
        "full-cache message without the numbers",
        "raise ValueError(f\"Sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}\")",
        "raise ValueError(\"the KV cache is full\")",
        (FULL_UPDATE,), BOUNDS_AND_NEIGHBOURS, only=True,
    ),
    Mutant("advance runs past max_seq_len", ADVANCE_BODY, "        self.seq_pos += 1\n", (FULL_ADVANCE,), BOUNDS_AND_NEIGHBOURS,
           only=True),
    Mutant(
        "advance moves before checking (seq_pos past the end after the error)",
        ADVANCE_BODY,
        "        self.seq_pos += 1\n"
        "        if self.seq_pos > self.max_seq_len:\n"
        "            raise ValueError(f\"Cannot advance: sequence position {self.seq_pos} > max_seq_len {self.max_seq_len}\")\n",
        (UNCHANGED,), BOUNDS_AND_NEIGHBOURS, only=True, says=("seq_pos",),
    ),
    Mutant(
        "update writes a negative layer before refusing it",
        "        self._check_layer(layer_idx)\n        if self.seq_pos >= self.max_seq_len:\n",
        "        if layer_idx < 0 and self.seq_pos < self.max_seq_len:\n"
        "            self._keys[layer_idx % self.num_layers][:, :, self.seq_pos, :] = 1.0\n"
        "        self._check_layer(layer_idx)\n        if self.seq_pos >= self.max_seq_len:\n",
        (UNCHANGED,), BOUNDS_AND_NEIGHBOURS, only=True,
    ),
    # -- shapes -----------------------------------------------------------------------------------
    Mutant("no shape validation", VALIDATE, "", (WRONG_SHAPE, WRITES_NOTHING), ("shapes",)),
    Mutant(
        "shapes that broadcast are accepted",
        "            if array.shape != expected:\n",
        "            if np.broadcast_shapes(array.shape, expected) != expected:\n",
        (WRONG_SHAPE,), ("shapes",), says=("broadcast",),
    ),
    Mutant(
        "the key is written before the value is checked",
        VALIDATE + WRITES,
        "        for name, array in ((\"key\", k), (\"value\", v)):\n"
        "            if array.shape != expected:\n"
        "                raise ValueError(f\"{name} shape {array.shape} != expected {expected} (B, H, 1, D)\")\n"
        "            if name == \"key\":\n"
        "                self._keys[layer_idx][:, :, self.seq_pos, :] = k[:, :, 0, :]\n"
        "        self._values[layer_idx][:, :, self.seq_pos, :] = v[:, :, 0, :]\n",
        (WRITES_NOTHING,), BOUNDS_AND_NEIGHBOURS, only=True, says=("validate both shapes",),
    ),
    # -- memory -----------------------------------------------------------------------------------
    Mutant("float64 storage", ALLOCATE, ALLOCATE.replace("np.float32", "np.float64"), (MEM_HELD,), MEMORY_AND_NEIGHBOURS, only=True,
           says=("float32",)),
    Mutant(
        "storage allocated lazily, on first update",
        ALLOCATE,
        "        num_layers = self.num_layers\n"
        "\n"
        "        class Lazy(list):  # allocates every layer on first use\n"
        "            def __getitem__(inner, i):\n"
        "                if not list.__len__(inner):\n"
        "                    inner.extend(np.zeros(shape, dtype=np.float32) for _ in range(num_layers))\n"
        "                return list.__getitem__(inner, i)\n"
        "\n"
        "        self._keys, self._values = Lazy(), Lazy()\n",
        (MEM_HELD, PERF), MEMORY_AND_NEIGHBOURS, only=True, says=("pre-allocate",),  # its first update allocates everything
    ),
    Mutant("MB = 10**6 bytes", "MB = 1024 * 1024\n", "MB = 1000 * 1000\n", (MEM_MB, MEM_72, MEM_192), ("memory",), only=True,
           says=("1024 * 1024",)),
    Mutant(
        "missing factor 2 (keys only)",
        "        total_elements = 2 * self.num_layers", "        total_elements = self.num_layers",
        # Only the report is wrong: KV-MEM-4 compares the storage with the formula, which it matches.
        (MEM_COUNT, MEM_MB, MEM_72, MEM_192), ("memory",), says=("factor 2",),
    ),
    Mutant(
        "per_layer_mb is the whole cache",
        "\"per_layer_mb\": total_mb / self.num_layers", "\"per_layer_mb\": total_mb",
        (MEM_MB, MEM_72, MEM_192), ("memory",), only=True, says=("divide total_mb by num_layers",),
    ),
    # -- performance -------------------------------------------------------------------------------
    Mutant(
        "update concatenates the history (O(n) per token)",
        WRITES,
        WRITES + "        self.__dict__.setdefault('_history', {})[layer_idx] = np.concatenate(\n"
        "            [self._keys[layer_idx][:, :, : self.seq_pos, :], k], axis=2)\n",
        (PERF,), MEMORY_AND_NEIGHBOURS, only=True, says=("concatenating",),
    ),
    Mutant(
        "update copies the layer's whole buffer",
        WRITES,
        "        self._keys[layer_idx] = self._keys[layer_idx].copy()\n" + WRITES,
        (PERF,), MEMORY_AND_NEIGHBOURS, only=True,
    ),
)

# -- correct designs: every cache-level check passes ---------------------------------------------
ALTERNATIVE_5D = '''class CacheError(ValueError):
    """A custom subclass with its own wording conforms."""


def _view(array):
    """A Tensor over a view of the storage (no copy)."""
    t = Tensor.__new__(Tensor)
    t.data = array
    t.requires_grad = False
    return t


class KVCache:
    """One 6-D float32 array (K/V, layer, B, H, S, D); get returns views, not copies."""

    def __init__(self, batch_size, max_seq_len, num_layers, num_heads, head_dim):
        for name, value in (("batch_size", batch_size), ("max_seq_len", max_seq_len), ("num_layers", num_layers),
                            ("num_heads", num_heads), ("head_dim", head_dim)):
            if type(value) is not int:
                raise TypeError(f"{name}: need an int")
            if value < 1:
                raise CacheError(f"{name} = {value} is too small")
        self.batch_size, self.max_seq_len, self.num_layers = batch_size, max_seq_len, num_layers
        self.num_heads, self.head_dim = num_heads, head_dim
        self.seq_pos = 0
        self._kv = np.zeros((2, num_layers, batch_size, num_heads, max_seq_len, head_dim), dtype=np.float32)

    def _layer(self, layer_idx):
        if not 0 <= layer_idx < self.num_layers:
            raise CacheError(f"no layer {layer_idx} (this cache has {self.num_layers})")

    def update(self, layer_idx, key, value):
        self._layer(layer_idx)
        if self.seq_pos == self.max_seq_len:
            raise CacheError(f"cache full: all {self.max_seq_len} positions used")
        k, v = np.asarray(getattr(key, "data", key)), np.asarray(getattr(value, "data", value))
        want = (self.batch_size, self.num_heads, 1, self.head_dim)
        if k.shape != want or v.shape != want:
            raise CacheError(f"want {want}, got {k.shape} and {v.shape}")
        self._kv[0, layer_idx, :, :, self.seq_pos] = k[:, :, 0]
        self._kv[1, layer_idx, :, :, self.seq_pos] = v[:, :, 0]

    def get(self, layer_idx):
        self._layer(layer_idx)
        return _view(self._kv[0, layer_idx, :, :, : self.seq_pos]), _view(self._kv[1, layer_idx, :, :, : self.seq_pos])

    def advance(self):
        if self.seq_pos == self.max_seq_len:
            raise CacheError("no room to advance")
        self.seq_pos += 1

    def reset(self):
        self._kv[...] = 0
        self.seq_pos = 0

    def get_memory_usage(self):
        total = self._kv.size
        mb = total * 4 / (1 << 20)
        return {"total_mb": mb, "per_layer_mb": mb / self.num_layers, "cache_tensors": 2 * self.num_layers,
                "total_elements": total, "dtype": "float32"}
'''

ALTERNATIVE_SPLIT = '''class KVCache:
    """Separate key and value arrays of shape (L, B, H, S, D); reset reallocates them."""

    def __init__(self, batch_size, max_seq_len, num_layers, num_heads, head_dim):
        dims = (batch_size, max_seq_len, num_layers, num_heads, head_dim)
        if not all(isinstance(d, int) for d in dims):
            raise ValueError("dimensions must be integers")
        if min(dims) <= 0:
            raise ValueError("dimensions must be positive")
        self.batch_size, self.max_seq_len, self.num_layers, self.num_heads, self.head_dim = dims
        self.seq_pos = 0
        self._allocate()

    def _allocate(self):
        shape = (self.num_layers, self.batch_size, self.num_heads, self.max_seq_len, self.head_dim)
        self.k = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)

    def _check(self, layer_idx):
        if layer_idx < 0 or layer_idx >= self.num_layers:
            raise ValueError(f"Layer index {layer_idx} out of range for num_layers {self.num_layers}")

    def update(self, layer_idx, key, value):
        self._check(layer_idx)
        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"KV cache full (max_seq_len={self.max_seq_len})")
        expected = (self.batch_size, self.num_heads, 1, self.head_dim)
        if key.shape != expected:
            raise ValueError(f"key shape {key.shape}, expected {expected}")
        if value.shape != expected:
            raise ValueError(f"value shape {value.shape}, expected {expected}")
        self.k[layer_idx, :, :, self.seq_pos : self.seq_pos + 1] = key.data
        self.v[layer_idx, :, :, self.seq_pos : self.seq_pos + 1] = value.data

    def get(self, layer_idx):
        self._check(layer_idx)
        return Tensor(self.k[layer_idx, :, :, : self.seq_pos]), Tensor(self.v[layer_idx, :, :, : self.seq_pos])

    def advance(self):
        if self.seq_pos >= self.max_seq_len:
            raise ValueError("advance past max_seq_len")
        self.seq_pos += 1

    def reset(self):
        self.seq_pos = 0
        self._allocate()

    def get_memory_usage(self):
        n = self.k.size + self.v.size
        return {"total_mb": n * 4 / 1024 / 1024, "per_layer_mb": n * 4 / 1024 / 1024 / self.num_layers,
                "cache_tensors": 2 * self.num_layers, "total_elements": n}
'''

REFERENCE_CLASS = KV_CACHE[KV_CACHE.index("class KVCache:"):]
CORRECT = (
    Mutant("the reference, as a loose module", "", "", ()),
    Mutant("one 6-D array, views from get, a ValueError subclass", REFERENCE_CLASS, ALTERNATIVE_5D, ()),
    Mutant("separate K and V arrays, reset reallocates", REFERENCE_CLASS, ALTERNATIVE_SPLIT, ()),
)


def apply(source: str, old: str, new: str, what: str) -> str:
    if not old:
        return source
    count = source.count(old)
    assert count == 1, f"{what}: the edit's old text occurs {count} times in reference/kv_cache.py (expected once); update it"
    return source.replace(old, new)


RUNNER = r'''
import contextlib, io, json, sys, traceback
import pytest
from spec.results import load_verdicts
from spec.session import EXAMPLE_END, EXAMPLE_START
from tests.zoo.replay import problem

jobs = json.loads(sys.argv[1])
for job in jobs:
    pytest.main(job["args"])
    replays = {}
    for v in load_verdicts(__import__("pathlib").Path(job["results"])):
        if v.passed or EXAMPLE_START not in v.message:
            continue
        # Verbatim, as a student pastes it (no dedent); it must end the way the message says.
        script = v.message[v.message.index(EXAMPLE_START):v.message.index(EXAMPLE_END) + len(EXAMPLE_END)]
        namespace = {"__name__": "__replay__"}
        out, err, code = io.StringIO(), "", 0
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(script, v.name, "exec"), namespace)
        except BaseException as exc:
            code, err = 1, "".join(traceback.format_exception_only(type(exc), exc))
        why = problem(v.message, code, out.getvalue(), err)
        replays[v.name] = "" if why is None else why + "\n" + script
    with open(job["replays"], "w") as f:
        json.dump(replays, f)
'''


def run_group(mutants: tuple[Mutant, ...], tmp_path: Path) -> list[tuple[dict[str, Verdict], dict[str, str]]]:
    """Run each mutant's check files against it; verdicts and replay errors per mutant."""
    submission = tmp_path / "submissions"
    submission.mkdir()
    jobs = []
    for i, mutant in enumerate(mutants):
        module = f"kv_mutant_{i}"
        (submission / f"{module}.py").write_text(apply(KV_CACHE, mutant.old, mutant.new, mutant.name) + TAIL)
        results, replays = tmp_path / f"verdicts_{i}.json", tmp_path / f"replays_{i}.json"
        args = [*(FILES[f] for f in mutant.files), f"--kvspec-submission={submission}", f"--kvspec-module={module}",
                "--kvspec-profile=quick", "-p", "no:xdist", "-p", "no:cacheprovider", f"--kvspec-results={results}",
                "-q", "--tb=no", "--no-header", "-rN"]
        jobs.append({"args": args, "results": str(results), "replays": str(replays)})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVSPEC_", "PYTEST_", "HYPOTHESIS"))}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(jobs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = []
    for job in jobs:
        results, replays = Path(job["results"]), Path(job["replays"])
        assert results.exists() and replays.exists(), f"no verdicts:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        out.append(({v.name: v for v in load_verdicts(results)}, json.loads(replays.read_text())))
    return out


def problems(mutant: Mutant, verdicts: dict[str, Verdict], replays: dict[str, str]) -> list[str]:
    found = []
    failed = {name for name, v in verdicts.items() if not v.passed}
    missed = [name for name in mutant.fails if name not in failed]
    if missed:
        found.append(f"expected {missed} to fail; failed: {sorted(failed)}")
    if mutant.only and failed - set(mutant.fails):
        found.append(f"only {list(mutant.fails)} should fail; also failed: {sorted(failed - set(mutant.fails))}")
    if mutant.fails and not missed:
        message = verdicts[mutant.fails[0]].message
        for phrase in mutant.says:
            if phrase not in message:
                found.append(f"the message lacks {phrase!r}:\n{message}")
    for name in failed & set(mutant.fails):
        message = verdicts[name].message
        if "Minimal example" not in message or "Expected" not in message:
            found.append(f"{name}: not a student-facing failure:\n{message}")
        elif replays.get(name):
            found.append(f"{name}: the minimal example does not replay: {replays[name]}")
    return found


GROUPS = 4
EVERYTHING = MUTANTS + CORRECT


@pytest.mark.parametrize("group", range(GROUPS))
def test_mutants_are_caught_and_correct_designs_pass(group: int, tmp_path: Path) -> None:
    mutants = EVERYTHING[group::GROUPS]
    report = []
    for mutant, (verdicts, replays) in zip(mutants, run_group(mutants, tmp_path)):
        assert verdicts, f"{mutant.name}: no verdicts"
        if not mutant.fails:  # a correct design
            failed = {n: v.message for n, v in verdicts.items() if not v.passed}
            if failed:
                report.append(f"{mutant.name} must pass every check; failed: {json.dumps(failed, indent=1)}")
            continue
        report += [f"{mutant.name}: {p}" for p in problems(mutant, verdicts, replays)]
    assert not report, "\n\n".join(report)


def test_every_edit_matches_exactly_once() -> None:
    for mutant in EVERYTHING:
        apply(KV_CACHE, mutant.old, mutant.new, mutant.name)
