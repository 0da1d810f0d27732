"""Replayable test data: every array the suite sends is rebuilt from a tag or a seed.

A failing example prints as `pattern(3, (1, 2, 1, 4))` or `noise(7, (1, 2, 1, 4))`, which
a student can paste and run (the helpers' source is printed with the example), instead
of a truncated NumPy repr that does not replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spec.isolation.driver import FloatArray

PATTERN_SOURCE = '''def pattern(tag, shape):
    """tag + 0.001, tag + 0.002, ...: every element distinct, never 0 for tag != 0."""
    n = int(np.prod(shape))
    return Tensor((tag + np.arange(1, n + 1) / 1000).reshape(shape).astype(np.float32))'''

NOISE_SOURCE = '''def noise(seed, shape):
    """Standard normal values from a seeded generator."""
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))'''

ATTEND_SOURCE = '''def attend(query, keys, values, key, value):
    """What a cached attention layer computes: one query token over the cached keys and
    values (keys, values: what get returned, as arrays) plus the current token's."""
    q = query.data[:, :, 0, :].astype(np.float64)
    k = np.concatenate([keys, key.data], axis=2).astype(np.float64)
    v = np.concatenate([values, value.data], axis=2).astype(np.float64)
    scores = np.einsum("bhd,bhsd->bhs", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return np.einsum("bhs,bhsd->bhd", weights / weights.sum(axis=-1, keepdims=True), v)'''


@dataclass(frozen=True)
class Pattern:
    """tag + (i + 1) / 1000 for element i (C order), as float32.

    Distinct elements within an array (up to 999 of them), distinct arrays for distinct
    tags, and never zero for a nonzero tag, so a zero read back means "never written"."""

    tag: int
    shape: tuple[int, ...]

    def array(self) -> FloatArray:
        n = int(np.prod(self.shape))
        values = (self.tag + np.arange(1, n + 1) / 1000).reshape(self.shape)
        return values.astype(np.float32).astype(np.float64)

    def code(self) -> str:
        return f"pattern({self.tag}, {self.shape})"


@dataclass(frozen=True)
class Noise:
    """Standard normal float32 values from numpy's default_rng(seed)."""

    seed: int
    shape: tuple[int, ...]

    def array(self) -> FloatArray:
        values = np.random.default_rng(self.seed).standard_normal(self.shape)
        return values.astype(np.float32).astype(np.float64)

    def code(self) -> str:
        return f"noise({self.seed}, {self.shape})"


Data = Pattern | Noise
