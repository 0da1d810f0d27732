"""Group construction: building a cache, its attributes, and bad dimensions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from spec.clauses import checks
from spec.data import Pattern
from spec.driver import Driver
from spec.session import Session
from spec.strategies import CacheConfig, cache_configs

DIMENSIONS = ("batch_size", "max_seq_len", "num_layers", "num_heads", "head_dim")


@checks("KV-CON-1")
@given(config=cache_configs())
def test_attributes_read_back_as_given(driver: Driver, config: CacheConfig) -> None:
    s = Session(driver)
    cache = s.new_cache(*config.args)
    for name, expected in zip(DIMENSIONS, config.args):
        got = cache.attr(name)
        if got != expected:
            raise s.fail("KV-CON-1", expected, got)
    if cache.seq_pos != 0:
        raise s.fail("KV-CON-1", 0, cache.seq_pos)


@checks("KV-CON-2")
@given(config=cache_configs(), which=st.integers(0, 4), bad=st.sampled_from([0, -1, -7]))
def test_non_positive_dimension_raises_value_error(driver: Driver, config: CacheConfig, which: int, bad: int) -> None:
    s = Session(driver)
    args = list(config.args)
    args[which] = bad
    call = f"KVCache({', '.join(map(repr, args))})"
    with s.expect_raises("KV-CON-2", call, "ValueError"):
        s.new_cache(*args)


@checks("KV-CON-3")
@given(config=cache_configs(), which=st.integers(0, 4), bad=st.sampled_from([2.5, "4", None]))
def test_non_integer_dimension_raises(driver: Driver, config: CacheConfig, which: int, bad: object) -> None:
    s = Session(driver)
    args: list[object] = list(config.args)
    args[which] = bad
    call = f"KVCache({', '.join(map(repr, args))})"
    with s.expect_raises("KV-CON-3", call, "TypeError", "ValueError"):
        s.new_cache(*args)


@checks("KV-CON-4")
@given(config=cache_configs(min_seq_len=2))
def test_two_caches_never_share_storage(driver: Driver, config: CacheConfig) -> None:
    s = Session(driver)
    first = s.new_cache(*config.args)
    second = s.new_cache(*config.args)
    shape = config.token_shape
    first.update(0, Pattern(1, shape), Pattern(-1, shape))
    first.advance()
    second.advance()
    keys, values = second.get(0)
    if keys.shape != config.prefix_shape(1) or keys.any() or values.any():
        raise s.fail("KV-CON-4", "zeros of shape " + str(config.prefix_shape(1)), keys,
                     hint="the second cache shows what was written to the first: is the storage a class attribute?")
    first.reset()
    second.update(0, Pattern(2, shape), Pattern(-2, shape))
    second.advance()
    if first.seq_pos != 0:
        raise s.fail("KV-CON-4", 0, first.seq_pos)
