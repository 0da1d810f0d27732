"""Correct designs other than the base's: each must get full marks (a false failure here is
a grader bug, not a student's)."""

from __future__ import annotations

from tests.zoo import course2026
from tests.zoo.bugs import GET_SLICES, PATCH_LOOP, RESET_BODY, RESTORE, WRITES
from tests.zoo.variants import MEMO, TENSOR, Variant, edit

ALLOCATION = """        self.caches = []
        for _ in range(num_layers):
            key_cache = Tensor(np.zeros(self.cache_shape))
            value_cache = Tensor(np.zeros(self.cache_shape))
            self.caches.append((key_cache, value_cache))
"""
UPDATE_LOOKUP = "        key_cache, value_cache = self.caches[layer_idx]\n        pos = self.seq_pos\n"
GET_LOOKUP = "        key_cache, value_cache = self.caches[layer_idx]\n        valid_len = self.seq_pos\n"


def alternative(name: str, description: str, *edits: object, **extra: object) -> Variant:
    return Variant(name=name, kind="alternative", description=description, edits=tuple(edits), **extra)  # type: ignore[arg-type]


MODELS_TRANSFORMER = '''"""Module 13: Transformers (the student's own GPT; the grader builds its own model)."""

import numpy as np

from tinytorch.core.tensor import Tensor


class GPT:
    def __init__(self, vocab_size, embed_dim, num_layers, num_heads, max_seq_len=128):
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.max_seq_len = max_seq_len
        self.blocks = []

    def forward(self, tokens):
        raise NotImplementedError("module 13")
'''

VARIANTS: list[Variant] = [
    alternative("base", "The base submission itself, unchanged."),
    alternative(
        "array_per_layer_and_position",
        "One small pre-allocated float32 array (B, H, D) per layer, position and kind, all made in "
        "__init__; get stacks the valid prefix. The per-array object overhead must not fail KV-MEM-4.",
        edit(MEMO, ALLOCATION,
             "        slot = (batch_size, num_heads, head_dim)\n"
             "        self.slots = [[(np.zeros(slot, dtype=np.float32), np.zeros(slot, dtype=np.float32))\n"
             "                       for _ in range(max_seq_len)] for _ in range(num_layers)]\n"),
        edit(MEMO, UPDATE_LOOKUP + WRITES,
             "        key_slot, value_slot = self.slots[layer_idx][self.seq_pos]\n"
             "        key_slot[...] = key.data[:, :, 0, :]\n"
             "        value_slot[...] = value.data[:, :, 0, :]\n"),
        edit(MEMO, GET_LOOKUP + GET_SLICES,
             "        valid = self.slots[layer_idx][: self.seq_pos]\n"
             "        empty = np.zeros((self.batch_size, self.num_heads, 0, self.head_dim), dtype=np.float32)\n"
             "        cached_keys = np.stack([k for k, _ in valid], axis=2) if valid else empty\n"
             "        cached_values = np.stack([v for _, v in valid], axis=2) if valid else empty\n"),
        edit(MEMO, RESET_BODY,
             "        self.seq_pos = 0\n"
             "        for layer in self.slots:\n"
             "            for key_slot, value_slot in layer:\n"
             "                key_slot.fill(0.0)\n"
             "                value_slot.fill(0.0)\n"),
    ),
    alternative(
        "one_5d_array",
        "One pre-allocated 5-D array (2L, B, H, S, D) for every layer's keys and values: layer l's keys "
        "at 2l, its values at 2l + 1.",
        edit(MEMO, ALLOCATION, "        self.storage = np.zeros((2 * num_layers,) + self.cache_shape, dtype=np.float32)\n"),
        edit(MEMO, UPDATE_LOOKUP + WRITES,
             "        pos = self.seq_pos\n"
             "        self.storage[2 * layer_idx, :, :, pos, :] = key.data[:, :, 0, :]\n"
             "        self.storage[2 * layer_idx + 1, :, :, pos, :] = value.data[:, :, 0, :]\n"),
        edit(MEMO, GET_LOOKUP + GET_SLICES,
             "        valid_len = self.seq_pos\n"
             "        cached_keys = self.storage[2 * layer_idx, :, :, :valid_len, :]\n"
             "        cached_values = self.storage[2 * layer_idx + 1, :, :, :valid_len, :]\n"),
        edit(MEMO, RESET_BODY, "        self.seq_pos = 0\n        self.storage[...] = 0.0\n"),
    ),
    alternative(
        "separate_kv_arrays",
        "Two pre-allocated arrays, keys and values, each (L, B, H, S, D), written with np.copyto.",
        edit(MEMO, ALLOCATION,
             "        self.keys = np.zeros((num_layers,) + self.cache_shape, dtype=np.float32)\n"
             "        self.values = np.zeros((num_layers,) + self.cache_shape, dtype=np.float32)\n"),
        edit(MEMO, UPDATE_LOOKUP + WRITES,
             "        pos = self.seq_pos\n"
             "        np.copyto(self.keys[layer_idx, :, :, pos : pos + 1, :], key.data)\n"
             "        np.copyto(self.values[layer_idx, :, :, pos : pos + 1, :], value.data)\n"),
        edit(MEMO, GET_LOOKUP + GET_SLICES,
             "        valid_len = self.seq_pos\n"
             "        cached_keys = self.keys[layer_idx, :, :, :valid_len, :].copy()\n"
             "        cached_values = self.values[layer_idx, :, :, :valid_len, :].copy()\n"),
        edit(MEMO, RESET_BODY, "        self.seq_pos = 0\n        self.keys.fill(0.0)\n        self.values.fill(0.0)\n"),
    ),
    alternative(
        "tensor_without_copy",
        "A Tensor that does not copy on construction (np.asarray): get's Tensors are views into the "
        "cache's storage, which later writes show through.",
        edit(TENSOR, "        self.data = np.array(data, dtype=np.float32)\n", "        self.data = np.asarray(data, dtype=np.float32)\n"),
    ),
    alternative(
        "get_returns_views",
        "get hands out views of the storage (Tensors built without copying), not copies.",
        edit(MEMO, "        return Tensor(cached_keys), Tensor(cached_values)\n",
             "        return self._view(cached_keys), self._view(cached_values)\n\n"
             "    @staticmethod\n"
             "    def _view(array):\n"
             "        tensor = Tensor(np.zeros(0))  # then share the storage instead of copying it\n"
             "        tensor.data = array\n"
             "        tensor.shape = array.shape\n"
             "        return tensor\n"),
    ),
    alternative(
        "wrapper_object",
        "enable_kv_cache replaces block.attention with a wrapper object (delegating attribute access "
        "to the original) instead of patching the method; disable puts the original object back.",
        edit(MEMO, "def enable_kv_cache(model):\n", '''class CachedAttention:
    """Stands in for a block's attention while the cache is enabled."""

    def __init__(self, attention, layer_idx, cache):
        self.original = attention
        self._cached_forward = _make_cached_forward(layer_idx, attention, attention.forward, cache)

    def forward(self, x, mask=None):
        return self._cached_forward(x, mask)

    __call__ = forward

    def __getattr__(self, name):
        return getattr(self.original, name)


def enable_kv_cache(model):
'''),
        edit(MEMO, PATCH_LOOP, """    for layer_idx, block in enumerate(model.blocks):
        block.attention = CachedAttention(block.attention, layer_idx, cache)
"""),
        edit(MEMO, RESTORE, """        if isinstance(block.attention, CachedAttention):
            block.attention = block.attention.original
"""),
    ),
    alternative(
        "custom_error_subclass",
        "Errors are a KVCacheError(ValueError) subclass, with messages worded differently from the "
        "course's (the full-cache one still names the position and the limit).",
        edit(MEMO, "BYTES_PER_FLOAT32 = 4\n", '''BYTES_PER_FLOAT32 = 4


class KVCacheError(ValueError):
    """Anything the cache refuses to do."""

'''),
        edit(MEMO, 'raise ValueError(f"Layer index {layer_idx} must not be negative")',
             'raise KVCacheError(f"no layer {layer_idx}: layers are numbered from 0")'),
        edit(MEMO, 'raise ValueError(f"Layer index {layer_idx} >= num_layers {self.num_layers}")',
             'raise KVCacheError(f"no layer {layer_idx}: this cache has {self.num_layers} layers")'),
        edit(MEMO, 'raise ValueError(f"Sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")',
             'raise KVCacheError(f"cache full: {self.seq_pos} of {self.max_seq_len} positions used")'),
        edit(MEMO, 'raise ValueError(f"Key shape {tuple(key.shape)} does not match expected {expected}")',
             'raise KVCacheError(f"bad key: {tuple(key.shape)}, want {expected}")'),
        edit(MEMO, 'raise ValueError(f"Value shape {tuple(value.shape)} does not match expected {expected}")',
             'raise KVCacheError(f"bad value: {tuple(value.shape)}, want {expected}")'),
        edit(MEMO, 'raise ValueError(f"Cannot advance: sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")',
             'raise KVCacheError("cannot advance a full cache")'),
    ),
    alternative(
        "np_empty_then_reset",
        "Storage allocated with np.empty, and zeroed explicitly by calling reset() at the end of __init__.",
        edit(MEMO, "            key_cache = Tensor(np.zeros(self.cache_shape))\n            value_cache = Tensor(np.zeros(self.cache_shape))\n",
             "            key_cache = Tensor(np.empty(self.cache_shape, dtype=np.float32))\n"
             "            value_cache = Tensor(np.empty(self.cache_shape, dtype=np.float32))\n"),
        edit(MEMO, "            self.caches.append((key_cache, value_cache))\n",
             "            self.caches.append((key_cache, value_cache))\n        self.reset()  # np.empty holds garbage\n"),
    ),
    alternative(
        "method_type_patch",
        "The patch is a bound method (types.MethodType) set on the attention object; disable deletes it, "
        "so the class's own forward shows through again (nothing saved on the block).",
        edit(MEMO, "import numpy as np\n", "import types\n\nimport numpy as np\n"),
        edit(MEMO, PATCH_LOOP, """    for layer_idx, block in enumerate(model.blocks):
        forward = _make_cached_forward(layer_idx, block.attention, block.attention.forward, cache)
        block.attention.forward = types.MethodType(lambda self, x, mask=None, f=forward: f(x, mask), block.attention)
"""),
        edit(MEMO, RESTORE, """        if "forward" in vars(block.attention):
            del block.attention.forward
"""),
    ),
    alternative(
        "python_loop_writes",
        "update writes element by element with Python loops over batch and heads (slow, but O(1) in "
        "the sequence length and allocation-free).",
        edit(MEMO, WRITES, """        for b in range(self.batch_size):
            for h in range(self.num_heads):
                key_cache.data[b, h, pos, :] = key.data[b, h, 0, :]
                value_cache.data[b, h, pos, :] = value.data[b, h, 0, :]
"""),
    ),
    alternative(
        "layout_2025",
        "The 2025 package layout: tinytorch/generation/kv_cache.py, with the student's own model in "
        "tinytorch/models/transformer.py (discovered without flags).",
        adds=(
            ("tinytorch/generation/__init__.py", ""),
            ("tinytorch/models/__init__.py", ""),
            ("tinytorch/models/transformer.py", MODELS_TRANSFORMER),
        ),
        moves=((MEMO, "tinytorch/generation/kv_cache.py"),),
        deletes=("tinytorch/perf",),
    ),
    alternative(
        "course_2026_module18",
        "The 2026 course's module 18, written by us in its style: the cache is used only inside "
        "`with cache.generation():`, enable_kv_cache wraps each attention in a CachedAttention stand-in "
        "that calls the attention's _split_heads / _merge_heads, _cached_generate decodes a prompt, bools "
        "are refused as dimensions, get returns copies, enable and disable print.",
        adds=((MEMO, course2026.module("from tinytorch.core.tensor import Tensor")),),
    ),
    alternative(
        "loose_files",
        "A loose memoization.py next to its tensor.py, no package (discovered without flags).",
        edit(MEMO, "from tinytorch.core.tensor import Tensor\n", "from tensor import Tensor\n"),
        moves=((MEMO, "memoization.py"), (TENSOR, "tensor.py")),
        deletes=("tinytorch",),
    ),
]
