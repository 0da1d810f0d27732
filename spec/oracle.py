"""What the checks compare a submission with: a plain-Python model of the cache, and
an obviously-correct causal attention.

Neither shares code with the reference implementation: the model keeps a dict from
(layer, position) to the last key and value written there, and builds the expected
`get` result position by position; the attention is a loop over query positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spec.isolation.driver import FloatArray
from spec.strategies import CacheConfig


@dataclass
class CacheModel:
    """The cache as the spec describes it, for one configuration.

    `written` maps (layer, position) to every (key, value) written there since the last
    reset, oldest first, each of shape (B, H, D); the last one is what `get` must show.
    `write` takes the position explicitly, so a check can model the position the
    submission reports (its observed seq_pos) rather than the one it should have.
    """

    config: CacheConfig
    seq_pos: int = 0
    written: dict[tuple[int, int], list[tuple[FloatArray, FloatArray]]] = field(default_factory=dict)

    def write(self, layer: int, position: int, key: FloatArray, value: FloatArray) -> None:
        """Record update(layer, key, value) at `position`; key, value have shape (B, H, 1, D)."""
        self.written.setdefault((layer, position), []).append((key[:, :, 0, :].copy(), value[:, :, 0, :].copy()))

    def reset(self) -> None:
        self.seq_pos = 0
        self.written.clear()

    def last(self, layer: int, position: int) -> tuple[FloatArray, FloatArray] | None:
        """The last (key, value) written at (layer, position) since the reset, or None."""
        history = self.written.get((layer, position))
        return history[-1] if history else None

    def expected(self, layer: int, length: int) -> tuple[FloatArray, FloatArray]:
        """What get(layer) must return when seq_pos == length: (B, H, length, D) each,
        the last write per position, zeros where nothing was written since the reset."""
        shape = self.config.prefix_shape(length)
        keys, values = np.zeros(shape), np.zeros(shape)
        for p in range(length):
            entry = self.last(layer, p)
            if entry is not None:
                keys[:, :, p, :], values[:, :, p, :] = entry
        return keys, values


def causal_attention(q: FloatArray, k: FloatArray, v: FloatArray) -> FloatArray:
    """Scaled dot-product attention with a causal mask, from scratch, in float64.

    q, k, v: (B, H, T, D). Row t of the output attends to positions 0..t only:
    out[b, h, t] = sum_s softmax_s(q[b, h, t] . k[b, h, s] / sqrt(D)) v[b, h, s], s <= t.
    Written as a loop over t so that it is obviously right, not fast.
    """
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    batch, heads, steps, dim = q.shape
    out = np.zeros((batch, heads, steps, dim))
    for t in range(steps):
        scores = np.einsum("bhd,bhsd->bhs", q[:, :, t, :], k[:, :, : t + 1, :]) / math.sqrt(dim)
        scores -= scores.max(axis=-1, keepdims=True)  # stable softmax; does not change the result
        weights = np.exp(scores)
        weights /= weights.sum(axis=-1, keepdims=True)
        out[:, :, t, :] = np.einsum("bhs,bhsd->bhd", weights, v[:, :, : t + 1, :])
    return out


def attend_one(q: FloatArray, keys: FloatArray, values: FloatArray) -> FloatArray:
    """One query token (B, H, 1, D) attending to every position of keys/values (B, H, n, D),
    as cached attention does: no mask, the keys already stop at the current token."""
    dim = q.shape[-1]
    scores = np.einsum("bhd,bhsd->bhs", q[:, :, 0, :], keys) / math.sqrt(dim)
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    out: FloatArray = np.einsum("bhs,bhsd->bhd", weights, values)
    return out
