"""KVCache: pre-allocated per-layer key/value storage for autoregressive decoding.

Each decision on an edge where course releases disagree is written next to the code
that makes it, with its reason; docs/spec.md turns them into clauses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from reference.tensor import Tensor

BYTES_PER_ELEMENT = 4  # float32
MB = 1024 * 1024


def _positive_int(name: str, value: object) -> int:
    """Constructor arguments must be positive ints.

    Decision: a non-int (2.5, "4", None) raises TypeError and a non-positive int raises
    ValueError, at construction. Reason: either would otherwise surface later as a
    confusing NumPy error deep inside update, or as a cache that can hold nothing.
    bool is rejected too: True is an int to Python but never a dimension.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def _as_array(x: Any) -> NDArray[Any]:
    """Accept any Tensor-like (reads `.data`) or an array."""
    return np.asarray(getattr(x, "data", x))


class KVCache:
    """Keys and values of every layer for one batch of sequences being decoded.

    Storage: per layer, two float32 arrays of shape (B, H, max_seq_len, D), allocated
    once. `seq_pos` counts the tokens cached so far; `update` writes at `seq_pos`
    without moving it, `advance` moves it once per token after all layers have written.
    """

    def __init__(
        self, batch_size: int, max_seq_len: int, num_layers: int, num_heads: int, head_dim: int
    ) -> None:
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_seq_len = _positive_int("max_seq_len", max_seq_len)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.num_heads = _positive_int("num_heads", num_heads)
        self.head_dim = _positive_int("head_dim", head_dim)
        self.seq_pos = 0
        shape = (self.batch_size, self.num_heads, self.max_seq_len, self.head_dim)
        self._keys = [np.zeros(shape, dtype=np.float32) for _ in range(self.num_layers)]
        self._values = [np.zeros(shape, dtype=np.float32) for _ in range(self.num_layers)]

    def _check_layer(self, layer_idx: int) -> None:
        """Decision: a layer index outside [0, num_layers) raises ValueError, negatives too.

        Reason: some releases let -1 through, where NumPy indexing silently reads and
        writes the last layer; a layer loop with an off-by-one then corrupts the cache
        with no error.
        """
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, (int, np.integer)):
            raise ValueError(f"Layer index must be an int, got {layer_idx!r}")
        if layer_idx < 0:
            raise ValueError(f"Layer index {layer_idx} < 0")
        if layer_idx >= self.num_layers:
            raise ValueError(f"Layer index {layer_idx} >= num_layers {self.num_layers}")

    def update(self, layer_idx: int, key: Any, value: Any) -> None:
        """Write one token's key and value for `layer_idx` at position `seq_pos`.

        O(1) in the sequence length: one indexed write, no resizing, no copying of history.
        Does not advance `seq_pos`. Every check runs before the write, so a call that
        raises leaves the cache exactly as it was.

        Decision: key and value must each have shape exactly (B, H, 1, D). Reason: NumPy
        would broadcast a (1, H, 1, D) key into every batch element, or a (B, H, 1, 1)
        one across head_dim, and silently cache the wrong thing.
        """
        self._check_layer(layer_idx)
        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"Sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")
        expected = (self.batch_size, self.num_heads, 1, self.head_dim)
        k, v = _as_array(key), _as_array(value)
        for name, array in (("key", k), ("value", v)):
            if array.shape != expected:
                raise ValueError(f"{name} shape {array.shape} != expected {expected} (B, H, 1, D)")
        self._keys[layer_idx][:, :, self.seq_pos, :] = k[:, :, 0, :]
        self._values[layer_idx][:, :, self.seq_pos, :] = v[:, :, 0, :]

    def get(self, layer_idx: int) -> tuple[Tensor, Tensor]:
        """Keys and values cached for `layer_idx`: the valid prefix, (B, H, seq_pos, D).

        Decision: views of the storage, not copies. Reason: a decode step reads every
        layer's whole prefix, so a copy would cost O(seq_pos) per layer per token on top
        of the attention that reads it. Later updates never touch the prefix returned
        (they write at seq_pos and beyond); `reset` zeroes it, so a caller keeping keys
        across a reset must copy them. The spec allows both (KV-GET-3).
        """
        self._check_layer(layer_idx)
        n = self.seq_pos
        return Tensor(self._keys[layer_idx][:, :, :n, :], copy=False), Tensor(self._values[layer_idx][:, :, :n, :], copy=False)

    def advance(self) -> None:
        """Move to the next position, once per token after every layer has updated.

        Decision: advancing a full cache raises ValueError and leaves seq_pos unchanged.
        Reason: every other rule relies on 0 <= seq_pos <= max_seq_len; a seq_pos past the
        end would make `get` return fewer positions than `seq_pos` claims.
        """
        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"Cannot advance: sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")
        self.seq_pos += 1

    def reset(self) -> None:
        """Start a new sequence: seq_pos = 0 and every stored value zeroed.

        Zeroing costs O(cache size) once per sequence, not per token. Reason: a position
        that the new sequence has not written must never show the old sequence's data.
        """
        self.seq_pos = 0
        for keys, values in zip(self._keys, self._values):
            keys.fill(0.0)
            values.fill(0.0)

    def get_memory_usage(self) -> dict[str, float]:
        """Memory held by the storage: 2 x L x B x H x S x D float32 elements, MB = 2**20 bytes."""
        total_elements = 2 * self.num_layers * self.batch_size * self.num_heads * self.max_seq_len * self.head_dim
        total_mb = total_elements * BYTES_PER_ELEMENT / MB
        return {
            "total_mb": total_mb,
            "per_layer_mb": total_mb / self.num_layers,
            "cache_tensors": 2 * self.num_layers,
            "total_elements": total_elements,
        }
