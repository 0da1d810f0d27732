"""Hypothesis strategies shared by the checks: configurations small enough to be fast,
and including every dimension equal to 1 (the edge most bugs hide behind)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from spec.isolation.driver import ModelConfig


@dataclass(frozen=True)
class CacheConfig:
    batch_size: int
    max_seq_len: int
    num_layers: int
    num_heads: int
    head_dim: int

    @property
    def args(self) -> tuple[int, int, int, int, int]:
        """Constructor arguments, in KVCache's order."""
        return (self.batch_size, self.max_seq_len, self.num_layers, self.num_heads, self.head_dim)

    @property
    def token_shape(self) -> tuple[int, int, int, int]:
        """The shape update takes: (B, H, 1, D)."""
        return (self.batch_size, self.num_heads, 1, self.head_dim)

    def prefix_shape(self, seq_pos: int) -> tuple[int, int, int, int]:
        """The shape get returns at seq_pos: (B, H, seq_pos, D)."""
        return (self.batch_size, self.num_heads, seq_pos, self.head_dim)


@st.composite
def cache_configs(
    draw: st.DrawFn, min_seq_len: int = 1, max_seq_len: int = 6, max_layers: int = 3, max_batch: int = 2
) -> CacheConfig:
    return CacheConfig(
        batch_size=draw(st.integers(1, max_batch)),
        max_seq_len=draw(st.integers(min_seq_len, max_seq_len)),
        num_layers=draw(st.integers(1, max_layers)),
        num_heads=draw(st.integers(1, 3)),
        head_dim=draw(st.integers(1, 4)),
    )


@st.composite
def model_configs(draw: st.DrawFn, max_layers: int = 3, max_seq_len: int = 12) -> ModelConfig:
    """Reference GPTs small enough to decode in milliseconds."""
    num_heads = draw(st.integers(1, 4))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    return ModelConfig(
        vocab_size=draw(st.integers(5, 40)),
        embed_dim=num_heads * head_dim,
        num_layers=draw(st.integers(1, max_layers)),
        num_heads=num_heads,
        max_seq_len=draw(st.integers(4, max_seq_len)),
        seed=draw(st.integers(0, 2**16)),
    )
