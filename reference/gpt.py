"""A small NumPy GPT with TinyTorch's shape, built around any TinyTorch-like Tensor class.

Layers compute on NumPy arrays and read only `.data` from their inputs; every value that
crosses into attention (the part students patch) is wrapped in `tensor`, the model's
Tensor class, so student attention code receives the class it knows. The model owns
positions: `forward(tokens, start_pos)` knows each token's absolute position, so a
cached single-token forward needs nothing from attention but keys and values.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from reference.tensor import Tensor

Array = NDArray[np.float32]
TensorFactory = Callable[[Any], Any]


def _data(x: Any) -> Array:
    return np.asarray(getattr(x, "data", x), dtype=np.float32)


def softmax(scores: Array) -> Array:
    """Numerically stable softmax over the last axis."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    out: Array = e / e.sum(axis=-1, keepdims=True)
    return out


class Linear:
    """y = x W + b. Counts the rows it has projected in `rows_seen` (memoization checks read it)."""

    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator, tensor: TensorFactory) -> None:
        scale = 1.0 / math.sqrt(in_features)
        self.weight: Array = rng.normal(0.0, scale, (in_features, out_features)).astype(np.float32)
        self.bias: Array = rng.normal(0.0, 0.1, (out_features,)).astype(np.float32)
        self.tensor = tensor
        self.rows_seen = 0

    def project(self, x: Array) -> Array:
        self.rows_seen += x.size // x.shape[-1]
        out: Array = x @ self.weight + self.bias
        return out

    def forward(self, x: Any) -> Any:
        return self.tensor(self.project(_data(x)))

    __call__ = forward


class LayerNorm:
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        self.gamma: Array = np.ones(dim, dtype=np.float32)
        self.beta: Array = np.zeros(dim, dtype=np.float32)
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        # sum / n rather than .mean()/.var(): same numbers, a third of the per-call overhead,
        # which is what a one-token decode step pays for (the arrays are tiny).
        n = x.shape[-1]
        centered = x - x.sum(axis=-1, keepdims=True) / n
        var = (centered * centered).sum(axis=-1, keepdims=True) / n
        out: Array = centered / np.sqrt(var + self.eps) * self.gamma + self.beta
        return out


class MultiHeadAttention:
    """Causal multi-head self-attention; `forward(x, mask)` is the method students patch.

    mask: (T, T), 1.0 where query i may attend to key j, 0.0 where it may not (binary).
    The surface of the course's Module 12 that student code may touch: `embed_dim`,
    `num_heads`, `head_dim`, `q_proj` / `k_proj` / `v_proj` / `out_proj` (Linear, with
    `.forward`), `_split_heads`, `_merge_heads`, `forward(x, mask=None)`, `__call__` and
    `parameters()`.
    """

    def __init__(self, embed_dim: int, num_heads: int, rng: np.random.Generator, tensor: TensorFactory) -> None:
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = Linear(embed_dim, embed_dim, rng, tensor)
        self.k_proj = Linear(embed_dim, embed_dim, rng, tensor)
        self.v_proj = Linear(embed_dim, embed_dim, rng, tensor)
        self.out_proj = Linear(embed_dim, embed_dim, rng, tensor)
        self.tensor = tensor

    def _heads(self, x: Array) -> Array:
        """(B, T, E) -> (B, H, T, D)."""
        b, t, _ = x.shape
        out: Array = x.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        return out

    # Module 12's helpers, which the 2026 course's cached step calls on the attention it wraps.
    def _split_heads(self, x: Any, batch: int, seq: int) -> Any:
        """(B, seq, E) -> (B, H, seq, D), as the model's Tensor class."""
        return self.tensor(_data(x).reshape(batch, seq, self.num_heads, self.head_dim).transpose(0, 2, 1, 3))

    def _merge_heads(self, x: Any, batch: int, seq: int) -> Any:
        """(B, H, seq, D) -> (B, seq, E), as the model's Tensor class."""
        return self.tensor(_data(x).transpose(0, 2, 1, 3).reshape(batch, seq, self.embed_dim))

    def parameters(self) -> list[Array]:
        """Every weight and bias of the four projections (q, k, v, out), in that order."""
        return [p for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj) for p in (lin.weight, lin.bias)]

    def forward(self, x: Any, mask: Any = None) -> Any:
        b, t, _ = _data(x).shape
        q = self._heads(_data(self.q_proj.forward(x)))
        k = self._heads(_data(self.k_proj.forward(x)))
        v = self._heads(_data(self.v_proj.forward(x)))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(self.head_dim))
        if mask is not None:
            scores = np.where(_data(mask) > 0, scores, np.float32(-np.inf))
        out = softmax(scores) @ v
        return self.out_proj.forward(self.tensor(out.transpose(0, 2, 1, 3).reshape(b, t, self.embed_dim)))

    def __call__(self, x: Any, mask: Any = None) -> Any:
        return self.forward(x, mask)  # looks `forward` up on the instance, so a patched forward is the one called


class MLP:
    def __init__(self, embed_dim: int, rng: np.random.Generator, tensor: TensorFactory) -> None:
        self.fc1 = Linear(embed_dim, 4 * embed_dim, rng, tensor)
        self.fc2 = Linear(4 * embed_dim, embed_dim, rng, tensor)

    def __call__(self, x: Array) -> Array:
        h = self.fc1.project(x)
        h = 0.5 * h * (1.0 + np.tanh(np.float32(0.7978845608) * (h + np.float32(0.044715) * h * h * h)))  # GELU
        # (h * h * h, not h**3: NumPy's float32 power is a slow general pow, ~10x this whole MLP's arithmetic)
        return self.fc2.project(h)


class TransformerBlock:
    """Pre-norm block: x + attention(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, embed_dim: int, num_heads: int, rng: np.random.Generator, tensor: TensorFactory) -> None:
        self.attention = MultiHeadAttention(embed_dim, num_heads, rng, tensor)
        self.ln1 = LayerNorm(embed_dim)
        self.ln2 = LayerNorm(embed_dim)
        self.mlp = MLP(embed_dim, rng, tensor)
        self.tensor = tensor

    def forward(self, x: Array, mask: Any) -> Array:
        x = x + _data(self.attention.forward(self.tensor(self.ln1(x)), mask))
        return x + self.mlp(self.ln2(x))


class GPT:
    """Token and learned position embeddings, `num_layers` blocks, final norm, lm_head."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        max_seq_len: int = 128,
        *,
        seed: int = 0,
        tensor: TensorFactory = Tensor,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.max_seq_len = max_seq_len
        self.tensor = tensor
        self.token_embedding: Array = rng.normal(0.0, 1.0, (vocab_size, embed_dim)).astype(np.float32)
        self.position_embedding: Array = rng.normal(0.0, 1.0, (max_seq_len, embed_dim)).astype(np.float32)
        self.blocks = [TransformerBlock(embed_dim, num_heads, rng, tensor) for _ in range(num_layers)]
        self.ln_f = LayerNorm(embed_dim)
        self.lm_head = Linear(embed_dim, vocab_size, rng, tensor)

    def forward(self, tokens: Any, start_pos: int = 0) -> Any:
        """Logits (B, T, vocab) for tokens (B, T) sitting at positions start_pos .. start_pos+T-1."""
        ids = np.asarray(getattr(tokens, "data", tokens)).astype(np.int64)
        if ids.ndim != 2:
            raise ValueError(f"tokens must be (batch, seq_len), got shape {ids.shape}")
        t = ids.shape[1]
        if start_pos < 0 or start_pos + t > self.max_seq_len:
            raise ValueError(f"positions {start_pos}..{start_pos + t - 1} outside [0, {self.max_seq_len})")
        x = self.token_embedding[ids] + self.position_embedding[start_pos : start_pos + t]
        mask = self.tensor(np.tri(t, dtype=np.float32))  # 1.0 on and below the diagonal
        for block in self.blocks:
            x = block.forward(x, mask)
        return self.tensor(self.lm_head.project(self.ln_f(x)))

    __call__ = forward

    def keys_and_values(self, tokens: Any, start_pos: int = 0) -> list[tuple[Array, Array]]:
        """Per layer, the keys and values (B, H, T, D) that the uncached forward of `tokens`
        projects: what a working cache holds after decoding them one at a time. The grader
        calls it on its own copy of a model (same seed), never on a submission's."""
        ids = np.asarray(getattr(tokens, "data", tokens)).astype(np.int64)
        t = ids.shape[1]
        x = self.token_embedding[ids] + self.position_embedding[start_pos : start_pos + t]
        mask = self.tensor(np.tri(t, dtype=np.float32))
        out: list[tuple[Array, Array]] = []
        for block in self.blocks:
            h, a = block.ln1(x), block.attention
            out.append((a._heads(h @ a.k_proj.weight + a.k_proj.bias), a._heads(h @ a.v_proj.weight + a.v_proj.bias)))
            x = block.forward(x, mask)
        return out


def generate_greedy(model: GPT, prompt: list[int], max_new_tokens: int, use_cache: bool) -> list[int]:
    """Greedy decoding; with use_cache, every token (prompt included) goes through the cache once.

    Without the cache, each step runs the whole sequence so far; with it, each step runs one
    token at its absolute position and the cache supplies the keys and values before it.
    """
    from reference.memoization import disable_kv_cache, enable_kv_cache

    tokens = list(prompt)
    if not use_cache:
        for _ in range(max_new_tokens):
            logits = _data(model.forward(np.array([tokens])))
            tokens.append(int(np.argmax(logits[0, -1])))
        return tokens[len(prompt) :]
    cache = enable_kv_cache(model)
    try:
        for pos in range(len(prompt) + max_new_tokens - 1):
            logits = _data(model.forward(np.array([[tokens[pos]]]), start_pos=pos))
            cache.advance()
            if pos >= len(prompt) - 1:
                tokens.append(int(np.argmax(logits[0, -1])))
    finally:
        disable_kv_cache(model)
    return tokens[len(prompt) :]
