"""Module 15 (Memoization): KV cache for fast autoregressive generation.

An example submission with two realistic bugs, for trying the grader:
`python -m spec grade examples/buggy-submission --profile quick`.

Bug 1 (get): returns seq_pos + 1 positions ("include the token I just wrote"), one
more than the valid prefix. This student's own attention code is consistent with it,
so their generation still works; the cache's contract (KV-GET-1) is broken.
Bug 2 (reset): only rewinds seq_pos and forgets to clear the data, so the next
sequence can see the previous one's keys (KV-RST-2).
"""

import numpy as np

from tinytorch.core.tensor import Tensor


class KVCache:
    def __init__(self, batch_size, max_seq_len, num_layers, num_heads, head_dim):
        for name, value in [("batch_size", batch_size), ("max_seq_len", max_seq_len),
                            ("num_layers", num_layers), ("num_heads", num_heads), ("head_dim", head_dim)]:
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.seq_pos = 0
        # Pre-allocate (B, H, max_seq_len, D) keys and values for every layer.
        self.caches = []
        for _ in range(num_layers):
            key_cache = Tensor(np.zeros((batch_size, num_heads, max_seq_len, head_dim)))
            value_cache = Tensor(np.zeros((batch_size, num_heads, max_seq_len, head_dim)))
            self.caches.append((key_cache, value_cache))

    def _check_layer(self, layer_idx):
        if layer_idx < 0 or layer_idx >= self.num_layers:
            raise ValueError(f"Layer index {layer_idx} >= num_layers {self.num_layers}")

    def update(self, layer_idx, key, value):
        self._check_layer(layer_idx)
        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"Sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")
        expected = (self.batch_size, self.num_heads, 1, self.head_dim)
        if tuple(key.shape) != expected or tuple(value.shape) != expected:
            raise ValueError(f"key/value must have shape {expected}, got {key.shape} and {value.shape}")
        key_cache, value_cache = self.caches[layer_idx]
        key_cache.data[:, :, self.seq_pos:self.seq_pos + 1, :] = key.data
        value_cache.data[:, :, self.seq_pos:self.seq_pos + 1, :] = value.data

    def get(self, layer_idx):
        self._check_layer(layer_idx)
        key_cache, value_cache = self.caches[layer_idx]
        valid_len = self.seq_pos + 1  # BUG 1: "include the token just written": one too many
        return Tensor(key_cache.data[:, :, :valid_len, :]), Tensor(value_cache.data[:, :, :valid_len, :])

    def advance(self):
        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"Sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")
        self.seq_pos += 1

    def reset(self):
        self.seq_pos = 0  # BUG 2: the old keys and values are still there

    def get_memory_usage(self):
        total_elements = 2 * self.num_layers * self.batch_size * self.num_heads * self.max_seq_len * self.head_dim
        total_mb = total_elements * 4 / (1024 * 1024)
        return {
            "total_mb": total_mb,
            "per_layer_mb": total_mb / self.num_layers,
            "cache_tensors": 2 * self.num_layers,
            "total_elements": total_elements,
        }


def _make_cached_forward(attention, original_forward, cache, layer_idx):
    def cached_forward(x, mask=None):
        batch, seq_len, _ = x.shape
        if seq_len > 1:
            return original_forward(x, mask)
        heads, head_dim = attention.num_heads, attention.head_dim
        q = attention.q_proj.forward(x).data.reshape(batch, heads, 1, head_dim)
        k = attention.k_proj.forward(x).data.reshape(batch, heads, 1, head_dim)
        v = attention.v_proj.forward(x).data.reshape(batch, heads, 1, head_dim)
        cache.update(layer_idx, Tensor(k), Tensor(v))
        keys, values = cache.get(layer_idx)  # with bug 1 this already holds the new token
        scores = q @ keys.data.transpose(0, 1, 3, 2) / np.sqrt(head_dim)
        scores = scores - scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        weights = weights / weights.sum(axis=-1, keepdims=True)
        out = (weights @ values.data).reshape(batch, 1, heads * head_dim)
        return attention.out_proj.forward(Tensor(out))

    return cached_forward


def enable_kv_cache(model):
    for name in ("embed_dim", "num_layers", "num_heads", "max_seq_len", "blocks"):
        if not hasattr(model, name):
            raise AttributeError(f"model has no attribute {name!r}")
    if model.embed_dim % model.num_heads != 0:
        raise ValueError(f"embed_dim {model.embed_dim} not divisible by num_heads {model.num_heads}")
    if getattr(model, "_cache_enabled", False):
        disable_kv_cache(model)
    head_dim = model.embed_dim // model.num_heads
    cache = KVCache(1, model.max_seq_len, model.num_layers, model.num_heads, head_dim)
    for layer_idx, block in enumerate(model.blocks):
        block._original_attention_forward = block.attention.forward
        block.attention.forward = _make_cached_forward(block.attention, block.attention.forward, cache, layer_idx)
    model._kv_cache = cache
    model._cache_enabled = True
    return cache


def disable_kv_cache(model):
    for block in getattr(model, "blocks", []):
        if hasattr(block, "_original_attention_forward"):
            block.attention.forward = block._original_attention_forward
            del block._original_attention_forward
    model._kv_cache = None
    model._cache_enabled = False
