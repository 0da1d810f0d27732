"""Group shapes: update accepts key and value of shape exactly (B, H, 1, D), nothing else,
and a rejected update writes nothing.

The wrong shapes are the ones students' code actually produces, chosen for each
configuration: the ones NumPy would broadcast into the slot without complaint
((1, H, 1, D) for B > 1, (B, 1, 1, D) for H > 1, (B, H, 1, 1) for D > 1, (H, 1, D)),
multi-token ones (a whole prompt's keys, the classic (1, 8, 64, 64) for (1, 8, 1, 64)),
un-transposed heads (B, 1, H, D), and plain wrong sizes.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from spec.checks._cache import Snapshot, has_room, write_history
from spec.checks._evidence import current, measuring, tolerant
from spec.clauses import checks
from spec.data import Pattern
from spec.isolation.driver import Driver
from spec.session import Session, SpecFailure
from spec.strategies import CacheConfig, cache_configs

SIDES = ("key", "value", "both")


def wrong_shapes(config: CacheConfig) -> list[tuple[tuple[int, ...], str]]:
    """Every wrong shape worth trying for this configuration, with what it is."""
    B, H, S, D = config.batch_size, config.num_heads, config.max_seq_len, config.head_dim
    candidates: list[tuple[tuple[int, ...], str]] = [
        ((1, H, 1, D), "one batch element, which NumPy would broadcast to every batch element"),
        ((B, 1, 1, D), "one head, which NumPy would broadcast to every head"),
        ((B, H, 1, 1), "one number per head, which NumPy would broadcast across head_dim"),
        ((H, 1, D), "no batch axis (3-D), which NumPy would broadcast"),
        ((B, H, 2, D), "two tokens: update takes one token"),
        ((B, H, S + 1, D), "a whole prompt of tokens: update takes one token"),
        ((B, 1, H, D), "heads not transposed: (B, 1, H, D) instead of (B, H, 1, D)"),
        ((B, H, D), "the token axis missing"),
        ((B, H, 1, D + 1), "head_dim too large"),
        ((B + 1, H, 1, D), "batch too large"),
        ((B, H, 1, D, 1), "an extra axis"),
    ]
    good = config.token_shape
    seen: set[tuple[int, ...]] = set()
    out = []
    for shape, what in candidates:
        if shape != good and shape not in seen:
            seen.add(shape)
            out.append((shape, what))
    return out


def bad_pair(config: CacheConfig, shape: tuple[int, ...], side: str, tag: int) -> tuple[Pattern, Pattern]:
    good = config.token_shape
    return (Pattern(tag, shape if side != "value" else good), Pattern(-tag, shape if side != "key" else good))


@checks("KV-SHP-1")
@given(config=cache_configs(), tokens=st.integers(0, 5))
def test_update_rejects_every_wrong_shape(driver: Driver, config: CacheConfig, tokens: int) -> None:
    """Every wrong shape for this configuration, as the key, as the value and as both.
    Each attempt runs in a session of its own, so a failure's script is that attempt only."""
    position = min(tokens, config.max_seq_len - 1)
    for shape, what in wrong_shapes(config):
        for side in SIDES:
            s = Session(driver)
            cache = s.new_cache(*config.args)
            for _ in range(position):
                if has_room(cache, config):
                    cache.advance()
            key, value = bad_pair(config, shape, side, 1)
            call = f"{cache.name}.update(0, {key.code()}, {value.code()})"
            with s.expect_raises(
                "KV-SHP-1", call, "ValueError",
                hint=f"the {side if side != 'both' else 'key and value'} had shape {shape}: {what}. "
                f"Compare each shape with (B, H, 1, D) = {config.token_shape} and raise ValueError on any difference",
            ):
                cache.update(0, key, value)


@checks("KV-SHP-2")
@measuring("KV-SHP-2", "KV-SHP-1")
@given(config=cache_configs(), tokens=st.integers(0, 5), partial=st.integers(0, 3), pick=st.integers(0, 30),
       layer=st.integers(0, 2))
@tolerant
def test_a_rejected_update_writes_nothing(
    driver: Driver, config: CacheConfig, tokens: int, partial: int, pick: int, layer: int
) -> None:
    """One wrong shape, as the key, as the value, and as both, each in a session of its own.
    A twin cache gets the same calls except the rejected one; after an advance (which
    makes the position being written visible) the two must be indistinguishable."""
    shapes = wrong_shapes(config)
    shape, _ = shapes[pick % len(shapes)]
    for side in SIDES:
        attempt(Session(driver), config, tokens, partial, shape, side, layer % config.num_layers)


def attempt(s: Session, config: CacheConfig, tokens: int, partial: int, shape: tuple[int, ...], side: str,
            layer: int) -> None:
    cache, twin = s.new_cache(*config.args), s.new_cache(*config.args)
    s.record(f"# {twin.name} gets the same calls as {cache.name}, except the one that raises")
    tag = write_history((cache, twin), config, min(tokens, config.max_seq_len - 1))
    for written in range(min(partial, config.num_layers)):  # some layers already hold this position
        if not has_room(cache, config):
            break
        for c in (cache, twin):
            c.update(written, Pattern(tag, config.token_shape), Pattern(-tag, config.token_shape))
        tag += 1
    key, value = bad_pair(config, shape, side, 900)
    call = f"{cache.name}.update({layer}, {key.code()}, {value.code()})"
    try:
        with s.expect_raises("KV-SHP-2", call, "BaseException"):
            cache.update(layer, key, value)
    except SpecFailure:  # accepted: that is KV-SHP-1's business
        current().blocked("KV-SHP-1", f"{call} did not raise, so there was no rejected update whose writes to look for", s)
        return
    if has_room(twin, config):  # (no room only after an update or advance bug: their checks say so)
        for c in (cache, twin):
            c.advance()
    expected = Snapshot.of(twin, config)
    expected.witness(s, written=tag > 1)
    diff = expected.difference(Snapshot.of(cache, config))
    if diff is not None:
        raise s.fail(
            "KV-SHP-2", diff.expected, diff.got, diff.call(cache), show=diff.show,
            hint=f"{diff.where} differs from {twin.name}, which never got the rejected update (its "
            f"{side if side != 'both' else 'key and value'} had shape {shape}): validate both shapes before "
            "writing either",
        )
