"""Group construction: building a cache, its attributes, bad dimensions, and that two
caches are two caches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from spec.checks._cache import Snapshot, write_history
from spec.checks._evidence import measuring, tolerant
from spec.clauses import checks
from spec.data import Pattern
from spec.isolation.driver import Driver
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
            raise s.fail("KV-CON-1", expected, got,
                         hint=f"store each argument under its own name, as an int: self.{name} = {name} "
                         "(the arguments come in the order batch_size, max_seq_len, num_layers, num_heads, head_dim)")
    seq_pos = cache.seq_pos
    if seq_pos != 0:
        raise s.fail("KV-CON-1", 0, seq_pos, hint="a new cache has cached nothing: self.seq_pos = 0")


@checks("KV-CON-2")
@given(config=cache_configs(), which=st.integers(0, 4), bad=st.sampled_from([0, -1, -7]))
def test_non_positive_dimension_raises_value_error(driver: Driver, config: CacheConfig, which: int, bad: int) -> None:
    s = Session(driver)
    args = list(config.args)
    args[which] = bad
    call = f"KVCache({', '.join(map(repr, args))})"
    with s.expect_raises("KV-CON-2", call, "ValueError",
                         hint=f"{DIMENSIONS[which]}={bad}: check every dimension in __init__ and raise ValueError "
                         "if it is not positive (np.zeros accepts 0 and makes a cache that holds nothing)"):
        s.new_cache(*args)


@checks("KV-CON-3")
@given(config=cache_configs(), which=st.integers(0, 4), bad=st.sampled_from([2.5, "4", None]))
def test_non_integer_dimension_raises(driver: Driver, config: CacheConfig, which: int, bad: object) -> None:
    s = Session(driver)
    args: list[object] = list(config.args)
    args[which] = bad
    call = f"KVCache({', '.join(map(repr, args))})"
    with s.expect_raises("KV-CON-3", call, "TypeError", "ValueError",
                         hint=f"{DIMENSIONS[which]}={bad!r}: check isinstance(x, int) for every dimension in __init__"):
        s.new_cache(*args)


@checks("KV-CON-5")
@given(config=cache_configs(), which=st.integers(0, 4), bad=st.sampled_from([True, False]))
def test_bool_dimension_raises(driver: Driver, config: CacheConfig, which: int, bad: bool) -> None:
    s = Session(driver)
    args: list[object] = list(config.args)
    args[which] = bad
    call = f"KVCache({', '.join(map(repr, args))})"
    with s.expect_raises("KV-CON-5", call, "TypeError", "ValueError",
                         hint=f"{DIMENSIONS[which]}={bad!r}: bool is a subclass of int, so isinstance({bad!r}, int) is "
                              "True; refuse bools first: if isinstance(x, bool) or not isinstance(x, int): raise ..."):
        s.new_cache(*args)


OPS = ("update", "advance", "reset")


@checks("KV-CON-4")
@measuring("KV-CON-4", "KV-GET-1")
@given(
    config=cache_configs(),
    lead=st.integers(0, 6),
    ops=st.lists(st.tuples(st.integers(0, 1), st.sampled_from(OPS), st.integers(0, 2)), min_size=1, max_size=12),
)
@tolerant
def test_two_caches_never_share_storage(
    driver: Driver, config: CacheConfig, lead: int, ops: list[tuple[int, str, int]]
) -> None:
    """Two caches of one configuration, the second a few tokens ahead (so writes to the
    first land inside what the second shows); then updates, advances and resets on
    either, and after each, the other cache's seq_pos and contents are as they were."""
    s = Session(driver)
    caches = (s.new_cache(*config.args), s.new_cache(*config.args))
    tag = write_history((caches[1],), config, min(lead, config.max_seq_len))
    positions = [config.max_seq_len if not isinstance(p, int) else p for p in (c.seq_pos for c in caches)]
    for which, op, layer in ops:
        cache, other = caches[which], caches[1 - which]
        if op != "reset" and positions[which] >= config.max_seq_len:
            continue  # a full cache: bounds are not this check's business
        before = Snapshot.of(other, config)
        before.witness(s, written=isinstance(before.seq_pos, int) and before.seq_pos > 0)
        if op == "update":
            cache.update(layer % config.num_layers, Pattern(tag, config.token_shape), Pattern(-tag, config.token_shape))
            tag += 1
        elif op == "advance":
            cache.advance()
        else:
            cache.reset()
        seq_pos = cache.seq_pos
        positions[which] = seq_pos if isinstance(seq_pos, int) else config.max_seq_len
        diff = before.difference(Snapshot.of(other, config))
        if diff is not None:
            raise s.fail(
                "KV-CON-4", diff.expected, diff.got, diff.call(other), show=diff.show,
                hint=f"{op} on {cache.name} changed {other.name}'s {diff.where}: keep the storage on the instance "
                "(self._keys = ... in __init__), not in a class attribute or a mutable default argument",
            )
