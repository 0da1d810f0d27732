"""A correct submission in the 2026 course's style (module 18), written by us from the facts
in the contract sheet, not copied from the course: the cache takes the cached path only
inside `with cache.generation():`; `enable_kv_cache` replaces each `block.attention` with a
stand-in `CachedAttention` that calls the Module 12 helpers `_split_heads` / `_merge_heads`
of the attention it wraps; `_cached_generate` decodes a prompt inside the scope; the
constructor rejects bools with ValueError; `get` returns copies; enable and disable print.

`MODULE` is the module's text with `{tensor_import}` where its Tensor import goes (the
zoo lays it out at tinytorch/perf/memoization.py; the model-check mutants as a loose
memoization.py importing the reference Tensor).
"""

from __future__ import annotations

MODULE = '''"""Module 18: Memoization - a KV cache that is used only inside a generation scope."""

from contextlib import contextmanager

import numpy as np

{tensor_import}


class KVCache:
    """Keys and values of every layer, pre-allocated for max_seq_len tokens."""

    def __init__(self, batch_size, max_seq_len, num_layers, num_heads, head_dim):
        dims = dict(batch_size=batch_size, max_seq_len=max_seq_len, num_layers=num_layers,
                    num_heads=num_heads, head_dim=head_dim)
        for name, value in dims.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{{name}} must be a positive int, got {{value!r}}")
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.seq_pos = 0
        self._generation_active = False
        shape = (num_layers, batch_size, num_heads, max_seq_len, head_dim)
        self._keys = np.zeros(shape, dtype=np.float32)
        self._values = np.zeros(shape, dtype=np.float32)

    @contextmanager
    def generation(self):
        """While inside, a single-token forward of an enabled model uses the cache."""
        previous = self._generation_active
        self._generation_active = True
        try:
            yield self
        finally:
            self._generation_active = previous

    def _layer(self, layer_idx):
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int):
            raise ValueError(f"Layer index must be an int, got {{layer_idx!r}}")
        if not 0 <= layer_idx < self.num_layers:
            raise ValueError(f"Layer index {{layer_idx}} >= num_layers {{self.num_layers}} (or negative)")
        return layer_idx

    def update(self, layer_idx, key, value):
        layer = self._layer(layer_idx)
        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"Sequence position {{self.seq_pos}} >= max_seq_len {{self.max_seq_len}}")
        want = (self.batch_size, self.num_heads, 1, self.head_dim)
        k, v = np.asarray(key.data), np.asarray(value.data)
        if k.shape != want or v.shape != want:
            raise ValueError(f"key {{k.shape}} and value {{v.shape}} must both be {{want}}")
        self._keys[layer, :, :, self.seq_pos] = k[:, :, 0]
        self._values[layer, :, :, self.seq_pos] = v[:, :, 0]

    def get(self, layer_idx):
        layer = self._layer(layer_idx)
        n = self.seq_pos
        return Tensor(self._keys[layer, :, :, :n].copy()), Tensor(self._values[layer, :, :, :n].copy())

    def advance(self):
        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"Cannot advance: sequence position {{self.seq_pos}} >= max_seq_len {{self.max_seq_len}}")
        self.seq_pos += 1

    def reset(self):
        self.seq_pos = 0
        self._keys[...] = 0.0
        self._values[...] = 0.0

    def get_memory_usage(self):
        total_elements = self._keys.size + self._values.size
        total_mb = total_elements * 4 / (1024 * 1024)
        return {{"total_mb": total_mb, "per_layer_mb": total_mb / self.num_layers,
                "cache_tensors": 2 * self.num_layers, "total_elements": total_elements}}


def _stable_softmax(scores):
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


class CachedAttention:
    """Stands in for one block's attention while the cache is enabled."""

    def __init__(self, attention, cache, layer_idx):
        self.attention = attention
        self.cache = cache
        self.layer_idx = layer_idx

    def parameters(self):
        return self.attention.parameters()

    def __call__(self, x, mask=None):
        return self.forward(x, mask)

    def forward(self, x, mask=None):
        batch, seq, _ = x.shape
        if seq != 1 or not self.cache._generation_active:
            return self.attention.forward(x, mask)  # ordinary forwards never touch the cache
        return self._cached_step(x, mask, batch)

    def _cached_step(self, x, mask, batch):
        a = self.attention
        q = a._split_heads(a.q_proj.forward(x), batch, 1)
        k = a._split_heads(a.k_proj.forward(x), batch, 1)
        v = a._split_heads(a.v_proj.forward(x), batch, 1)
        self.cache.update(self.layer_idx, k, v)
        past_k, past_v = self.cache.get(self.layer_idx)
        keys = np.concatenate([past_k.data, k.data], axis=2)
        values = np.concatenate([past_v.data, v.data], axis=2)
        scores = q.data @ keys.transpose(0, 1, 3, 2) / np.sqrt(a.head_dim)
        if mask is not None:
            m = np.asarray(mask.data)
            if not np.isin(m, (0, 1)).all():
                raise ValueError("mask must be binary: 1 = may attend, 0 = blocked")
            row = m.reshape(-1, m.shape[-1])[-1:] if m.ndim >= 2 else m.reshape(1, -1)
            allowed = row[..., -keys.shape[2]:] if row.shape[-1] >= keys.shape[2] else np.ones((1, keys.shape[2]))
            if not allowed.any():
                raise ValueError("the mask blocks every position for this token")
            scores = np.where(allowed > 0, scores, -np.inf)
        context = Tensor(_stable_softmax(scores) @ values)
        return a.out_proj.forward(a._merge_heads(context, batch, 1))


def enable_kv_cache(model):
    """Wrap every block's attention in a CachedAttention sharing one new cache."""
    for name in ("embed_dim", "num_layers", "num_heads", "max_seq_len", "blocks"):
        if not hasattr(model, name):
            raise AttributeError(f"enable_kv_cache: the model has no {{name}}")
    if model.embed_dim % model.num_heads != 0:
        raise ValueError(f"embed_dim {{model.embed_dim}} is not a multiple of num_heads {{model.num_heads}}")
    for block in model.blocks:
        if isinstance(block.attention, CachedAttention):
            block.attention = block.attention.attention  # enabling twice: unwrap first
    cache = KVCache(1, model.max_seq_len, model.num_layers, model.num_heads, model.embed_dim // model.num_heads)
    for i, block in enumerate(model.blocks):
        block.attention = CachedAttention(block.attention, cache, i)
    model._kv_cache = cache
    model._cache_enabled = True
    print("KV cache enabled")
    print(f"  layers: {{model.num_layers}}, heads: {{model.num_heads}}, max_seq_len: {{model.max_seq_len}}")
    print(f"  memory: {{cache.get_memory_usage()['total_mb']:.3f}} MB")
    return cache


def disable_kv_cache(model):
    if not getattr(model, "_cache_enabled", False):
        print("warning: the KV cache is not enabled on this model")
        return
    for block in model.blocks:
        if isinstance(block.attention, CachedAttention):
            block.attention = block.attention.attention
    model._cache_enabled = False
    if hasattr(model, "_kv_cache"):
        del model._kv_cache
    print("KV cache disabled")


def _cached_generate(model, prompt_tokens, max_new_tokens, temperature, cache):
    """Decode max_new_tokens after the prompt, one token per step through the cache."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {{max_new_tokens!r}}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {{temperature!r}}")
    prompt = [int(t) for t in prompt_tokens]
    if not prompt:
        raise ValueError("the prompt is empty")
    if len(prompt) + max_new_tokens > cache.max_seq_len:
        raise ValueError(f"{{len(prompt)}} + {{max_new_tokens}} tokens do not fit max_seq_len {{cache.max_seq_len}}")
    cache.reset()
    rng = np.random.default_rng(0)
    new = []
    with cache.generation():
        logits = None
        for tok in prompt:
            logits = model.forward(Tensor(np.array([[tok]])), start_pos=cache.seq_pos)
            cache.advance()
        for i in range(max_new_tokens):
            last = np.asarray(logits.data)[0, -1].astype(np.float64)
            if temperature == 0:
                tok = int(np.argmax(last))
            else:
                p = _stable_softmax(last / temperature)
                tok = int(rng.choice(len(p), p=p / p.sum()))
            new.append(tok)
            if i < max_new_tokens - 1:
                logits = model.forward(Tensor(np.array([[tok]])), start_pos=cache.seq_pos)
                cache.advance()
    return new
'''


def module(tensor_import: str) -> str:
    return MODULE.format(tensor_import=tensor_import)
