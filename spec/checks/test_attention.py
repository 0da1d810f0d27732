"""Group attention: attention over what the cache returns equals attention from scratch.

For random queries, keys and values (noise, so every score is different) fed one token
at a time to every layer, the check does what a cached attention layer does: update the
cache with the token's key and value, read the prefix with get, append the current
token, and attend with the token's query. The result must equal row t of full causal
attention over the whole history, computed from scratch by spec.oracle.causal_attention.

Tolerance: rtol = atol = 1e-6. Every number sent is a float32 value, which any float32
(or wider) storage returns exactly; both sides then compute in float64, so they differ
only by summation order (about 1e-15). A wrong, missing, stale or misplaced key or value
changes the output by about 0.1 (standard-normal data), five orders of magnitude above.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from spec.checks._evidence import current, measuring, tolerant
from spec.clauses import checks
from spec.data import Noise
from spec.isolation.driver import Driver, FloatArray
from spec.oracle import attend_one, causal_attention
from spec.session import Session
from spec.strategies import CacheConfig, cache_configs

RTOL = ATOL = 1e-6


def diagnose(past: tuple[FloatArray, FloatArray], history: tuple[list[FloatArray], list[FloatArray]], t: int,
             expected_shape: tuple[int, ...]) -> str:
    """Which part of what get returned is not the history, in a student's terms."""
    for kind, name in enumerate(("keys", "values")):
        got = past[kind]
        if got.shape != expected_shape:
            return (f"get returned {name} of shape {got.shape}, expected {expected_shape}: attention must see exactly "
                    "the cached positions (slice [:, :, :seq_pos]) and then the current token")
        for p in range(t):
            if not np.allclose(got[:, :, p, :], history[kind][p][:, :, 0, :], rtol=RTOL, atol=ATOL):
                other = history[1 - kind][p][:, :, 0, :]
                if np.allclose(got[:, :, p, :], other, rtol=RTOL, atol=ATOL):
                    return f"position {p}: keys and values are swapped"
                return f"position {p} of the cached {name} is not the {name[:-1]} written at step {p}"
    return "the cached prefix is right; compare the attention over it step by step"


@checks("KV-ATT-1")
@measuring("KV-ATT-1", "KV-GET-1")
@given(config=cache_configs(max_seq_len=8), steps=st.integers(1, 8), seed=st.integers(0, 10_000))
@tolerant
def test_cached_attention_equals_full_causal_attention(driver: Driver, config: CacheConfig, steps: int, seed: int) -> None:
    s = Session(driver)
    cache = s.new_cache(*config.args)
    n, shape, L = min(steps, config.max_seq_len), config.token_shape, config.num_layers
    # Per layer: the queries, keys and values of every step so far, each (B, H, 1, D).
    queries: list[list[FloatArray]] = [[] for _ in range(L)]
    history: list[tuple[list[FloatArray], list[FloatArray]]] = [([], []) for _ in range(L)]
    for t in range(n):
        for layer in range(L):
            base = seed + 3 * (t * L + layer)
            q, k, v = Noise(base, shape), Noise(base + 1, shape), Noise(base + 2, shape)
            queries[layer].append(q.array())
            history[layer][0].append(k.array())
            history[layer][1].append(v.array())
            cache.update(layer, k, v)
            past = cache.get(layer)
            full = [np.concatenate(a, axis=2) for a in (queries[layer], *history[layer])]
            expected = causal_attention(*full)[:, :, t, :]
            show = f"attend({q.code()}, keys.data, values.data, {k.code()}, {v.code()})"
            if past[0].shape != config.prefix_shape(t) or past[1].shape != config.prefix_shape(t):
                got: object = f"get returned shapes {past[0].shape}, {past[1].shape}"
                show = "keys.data.shape, values.data.shape"
            else:
                keys = np.concatenate([past[0], k.array()], axis=2)
                values = np.concatenate([past[1], v.array()], axis=2)
                out = attend_one(q.array(), keys, values)
                if np.allclose(out, expected, rtol=RTOL, atol=ATOL):
                    current().saw(t)  # t cached positions took part
                    continue
                got = out
            raise s.fail(
                "KV-ATT-1", expected, got,
                hint=f"step {t}, layer {layer}, query {q.code()}: "
                + diagnose(past, history[layer], t, config.prefix_shape(t)),
                show=show,
            )
        cache.advance()
