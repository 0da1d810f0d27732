"""Module 15: Memoization - KV caching for fast autoregressive generation.

Generating one token at a time recomputes the keys and values of every earlier token
at every step. A KV cache stores them once, so each step only projects the new token.
"""

import numpy as np

from tinytorch.core.tensor import Tensor

BYTES_PER_FLOAT32 = 4
BYTES_PER_MB = 1024 * 1024


class KVCache:
    """Pre-allocated key/value storage for every layer of a transformer."""

    def __init__(self, batch_size, max_seq_len, num_layers, num_heads, head_dim):
        for name, dim in (
            ("batch_size", batch_size),
            ("max_seq_len", max_seq_len),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("head_dim", head_dim),
        ):
            if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {dim!r}")
            if dim <= 0:
                raise ValueError(f"{name} must be positive, got {dim}")

        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.seq_pos = 0

        # One (keys, values) pair of Tensors per layer, each (B, H, max_seq_len, D).
        self.cache_shape = (batch_size, num_heads, max_seq_len, head_dim)
        self.caches = []
        for _ in range(num_layers):
            key_cache = Tensor(np.zeros(self.cache_shape))
            value_cache = Tensor(np.zeros(self.cache_shape))
            self.caches.append((key_cache, value_cache))

    def _check_layer(self, layer_idx):
        if layer_idx < 0:
            raise ValueError(f"Layer index {layer_idx} must not be negative")
        if layer_idx >= self.num_layers:
            raise ValueError(f"Layer index {layer_idx} >= num_layers {self.num_layers}")

    def update(self, layer_idx, key, value):
        """Store one token's key and value (B, H, 1, D) at seq_pos. Does not advance."""
        self._check_layer(layer_idx)
        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"Sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")

        expected = (self.batch_size, self.num_heads, 1, self.head_dim)
        if tuple(key.shape) != expected:
            raise ValueError(f"Key shape {tuple(key.shape)} does not match expected {expected}")
        if tuple(value.shape) != expected:
            raise ValueError(f"Value shape {tuple(value.shape)} does not match expected {expected}")

        key_cache, value_cache = self.caches[layer_idx]
        pos = self.seq_pos
        key_cache.data[:, :, pos : pos + 1, :] = key.data
        value_cache.data[:, :, pos : pos + 1, :] = value.data

    def get(self, layer_idx):
        """Return (keys, values) for the valid prefix: each (B, H, seq_pos, D)."""
        self._check_layer(layer_idx)
        key_cache, value_cache = self.caches[layer_idx]
        valid_len = self.seq_pos
        cached_keys = key_cache.data[:, :, :valid_len, :]
        cached_values = value_cache.data[:, :, :valid_len, :]
        return Tensor(cached_keys), Tensor(cached_values)

    def advance(self):
        """Move to the next position once every layer has stored its key and value."""
        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"Cannot advance: sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")
        self.seq_pos += 1

    def reset(self):
        """Start a new sequence: rewind and clear every stored key and value."""
        self.seq_pos = 0
        for key_cache, value_cache in self.caches:
            key_cache.data.fill(0.0)
            value_cache.data.fill(0.0)

    def get_memory_usage(self):
        """Memory held by the cache, in MB (1 MB = 1024 * 1024 bytes)."""
        elements_per_tensor = self.batch_size * self.num_heads * self.max_seq_len * self.head_dim
        cache_tensors = 2 * self.num_layers
        total_elements = cache_tensors * elements_per_tensor
        total_bytes = total_elements * BYTES_PER_FLOAT32
        total_mb = total_bytes / BYTES_PER_MB
        return {
            "total_mb": total_mb,
            "per_layer_mb": total_mb / self.num_layers,
            "cache_tensors": cache_tensors,
            "total_elements": total_elements,
        }


def _softmax(scores):
    scores = scores - np.max(scores, axis=-1, keepdims=True)
    exp_scores = np.exp(scores)
    return exp_scores / np.sum(exp_scores, axis=-1, keepdims=True)


def _make_cached_forward(layer_idx, attention, original_forward, cache):
    """Build the cached attention forward for one layer."""

    def cached_forward(x, mask=None):
        batch_size, seq_len, embed_dim = x.shape
        if seq_len > 1:
            # A whole prompt at once: the original attention, the cache is not touched.
            return original_forward(x, mask)

        num_heads = attention.num_heads
        head_dim = attention.head_dim

        # Project only the new token: (B, 1, E) -> (B, H, 1, D).
        Q = attention.q_proj.forward(x).reshape(batch_size, 1, num_heads, head_dim).transpose(1, 2)
        K = attention.k_proj.forward(x).reshape(batch_size, 1, num_heads, head_dim).transpose(1, 2)
        V = attention.v_proj.forward(x).reshape(batch_size, 1, num_heads, head_dim).transpose(1, 2)

        # Remember this token, then attend over everything cached before it plus itself.
        cache.update(layer_idx, K, V)
        past_keys, past_values = cache.get(layer_idx)
        all_keys = np.concatenate([past_keys.data, K.data], axis=2)
        all_values = np.concatenate([past_values.data, V.data], axis=2)

        scores = np.matmul(Q.data, np.swapaxes(all_keys, -1, -2)) / np.sqrt(head_dim)
        weights = _softmax(scores)
        context = Tensor(np.matmul(weights, all_values))  # (B, H, 1, D)

        context = context.transpose(1, 2).reshape(batch_size, 1, embed_dim)
        return attention.out_proj.forward(context)

    return cached_forward


def enable_kv_cache(model):
    """Give the model a KV cache and patch every block's attention to use it."""
    for attr in ("embed_dim", "num_layers", "num_heads", "max_seq_len", "blocks"):
        if not hasattr(model, attr):
            raise AttributeError(f"Model has no attribute '{attr}', cannot enable KV cache")
    if model.embed_dim % model.num_heads != 0:
        raise ValueError(f"embed_dim {model.embed_dim} is not divisible by num_heads {model.num_heads}")

    if getattr(model, "_cache_enabled", False):
        disable_kv_cache(model)

    head_dim = model.embed_dim // model.num_heads
    cache = KVCache(1, model.max_seq_len, model.num_layers, model.num_heads, head_dim)
    model._kv_cache = cache
    model._cache_enabled = True

    for layer_idx, block in enumerate(model.blocks):
        block._original_attention_forward = block.attention.forward
        block.attention.forward = _make_cached_forward(
            layer_idx, block.attention, block._original_attention_forward, cache
        )
    return cache


def disable_kv_cache(model):
    """Put every block's original attention back."""
    for block in getattr(model, "blocks", []):
        if hasattr(block, "_original_attention_forward"):
            block.attention.forward = block._original_attention_forward
            del block._original_attention_forward
    model._kv_cache = None
    model._cache_enabled = False
