"""Group bounds: layer indices outside [0, num_layers), a full cache, and what an error
leaves behind.

Before each bad call the cache holds a short history (every layer written at each
position, then advanced), so a call that corrupts it before raising has something to
corrupt. KV-BND-5 compares the cache with a twin that received the same calls except
the one that raised: the position being written is not visible through `get` until
the next advance, so both caches advance (when there is room) and then must be
indistinguishable. The twin makes the comparison independent of whether update, get
and advance are themselves right (their checks say that), so only the failed call's
side effects can show.
"""

from __future__ import annotations

import re
from typing import Callable

from hypothesis import given
from hypothesis import strategies as st

from spec.checks._cache import Snapshot, has_room, write_history
from spec.checks._evidence import current, measuring, tolerant
from spec.clauses import checks
from spec.data import Pattern
from spec.isolation.driver import Driver, SubmissionRaised
from spec.session import CacheRef, Refused, Session, SpecFailure
from spec.strategies import CacheConfig, cache_configs

LAYER_HINT = (
    "check 0 <= layer_idx < num_layers before indexing: Python lists and NumPy arrays accept -1 "
    "(the last layer) silently, and an index past the end raises IndexError, not ValueError"
)


def bad_layer_calls(cache: CacheRef, config: CacheConfig, layer: int) -> list[tuple[str, Callable[[], object]]]:
    shape = config.token_shape
    key, value = Pattern(900, shape), Pattern(-900, shape)
    return [
        (f"{cache.name}.update({layer!r}, {key.code()}, {value.code()})", lambda: cache.update(layer, key, value)),
        (f"keys, values = {cache.name}.get({layer!r})", lambda: cache.get(layer)),
    ]


@checks("KV-BND-1")
@given(config=cache_configs(), tokens=st.integers(0, 5), past=st.integers(0, 2))
def test_layer_index_past_the_last_raises(driver: Driver, config: CacheConfig, tokens: int, past: int) -> None:
    s = Session(driver)
    cache = s.new_cache(*config.args)
    write_history((cache,), config, min(tokens, config.max_seq_len - 1))  # room left: the layer is the only fault
    layer = config.num_layers + past
    for call, do in bad_layer_calls(cache, config, layer):
        with s.expect_raises("KV-BND-1", call, "ValueError", hint=LAYER_HINT):
            do()


@checks("KV-BND-2")
@given(config=cache_configs(), tokens=st.integers(0, 5), below=st.integers(1, 4))
def test_negative_layer_index_raises(driver: Driver, config: CacheConfig, tokens: int, below: int) -> None:
    s = Session(driver)
    cache = s.new_cache(*config.args)
    write_history((cache,), config, min(tokens, config.max_seq_len - 1))
    for call, do in bad_layer_calls(cache, config, -below):
        with s.expect_raises("KV-BND-2", call, "ValueError", hint=LAYER_HINT):
            do()


def fill(s: Session, cache: CacheRef, config: CacheConfig, clause: str) -> None:
    """Write max_seq_len tokens: the cache is then full, and not before."""
    try:
        write_history((cache,), config, config.max_seq_len, tolerate=False)
    except Refused as exc:
        raise s.fail(clause, f"no exception while seq_pos < max_seq_len {config.max_seq_len}",
                     f"{exc.type_name}: {exc.message}",
                     hint="the cache is full when seq_pos == max_seq_len, not one position earlier: compare "
                     "seq_pos >= max_seq_len (max_seq_len - 1 is the last position that can be written)") from None


@checks("KV-BND-3")
@given(config=cache_configs())
def test_update_on_a_full_cache_raises_naming_the_limit(driver: Driver, config: CacheConfig) -> None:
    s = Session(driver)
    cache = s.new_cache(*config.args)
    fill(s, cache, config, "KV-BND-3")
    shape, limit = config.token_shape, config.max_seq_len
    key, value = Pattern(900, shape), Pattern(-900, shape)
    call = f"{cache.name}.update(0, {key.code()}, {value.code()})"
    hint = f"before writing, check seq_pos < max_seq_len and raise ValueError(f'Sequence position {{seq_pos}} >= max_seq_len {{max_seq_len}}')"
    try:
        cache.update(0, key, value)
    except SubmissionRaised as exc:
        if not exc.is_a("ValueError"):
            raise s.fail("KV-BND-3", "ValueError", f"{exc.type_name}: {exc.message}", call, hint=hint) from None
        if not re.search(rf"(?<![0-9]){limit}(?![0-9])", exc.message):
            raise s.fail("KV-BND-3", f"ValueError: a message containing {limit}", f"{exc.type_name}: {exc.message}", call,
                         hint="say which limit was hit, e.g. 'Sequence position 128 >= max_seq_len 128'") from None
        return
    raise s.fail("KV-BND-3", "ValueError raised", "no exception", call, hint=hint)


@checks("KV-BND-4")
@given(config=cache_configs())
def test_advance_on_a_full_cache_raises(driver: Driver, config: CacheConfig) -> None:
    s = Session(driver)
    cache = s.new_cache(*config.args)
    fill(s, cache, config, "KV-BND-4")
    with s.expect_raises("KV-BND-4", f"{cache.name}.advance()", "ValueError",
                         hint="advance must refuse to move past max_seq_len: check seq_pos < max_seq_len first"):
        cache.advance()


FAULTS = ("layer past the last", "negative layer", "update on a full cache", "advance on a full cache", "get of a bad layer")


@checks("KV-BND-5")
@measuring("KV-BND-5", "KV-BND-1")
@given(config=cache_configs(), tokens=st.integers(0, 5), partial=st.integers(0, 3), offset=st.integers(0, 3))
@tolerant
def test_a_call_that_raises_leaves_the_cache_unchanged(
    driver: Driver, config: CacheConfig, tokens: int, partial: int, offset: int
) -> None:
    """Every kind of bad call, each in a session of its own (so a failure's script is that
    attempt only), on a history of `tokens` tokens plus `partial` layers written at the
    current position (or on a full cache)."""
    for fault in FAULTS:
        attempt(Session(driver), config, fault, tokens, partial, offset)


def attempt(s: Session, config: CacheConfig, fault: str, tokens: int, partial: int, offset: int) -> None:
    cache, twin = s.new_cache(*config.args), s.new_cache(*config.args)
    s.record(f"# {twin.name} gets the same calls as {cache.name}, except the one that raises")
    full = "full" in fault
    n = config.max_seq_len if full else min(tokens, config.max_seq_len - 1)
    tag = write_history((cache, twin), config, n)
    if not full:
        for layer in range(min(partial, config.num_layers)):
            if not has_room(cache, config):
                break
            for c in (cache, twin):
                c.update(layer, Pattern(tag, config.token_shape), Pattern(-tag, config.token_shape))
            tag += 1
    shape = config.token_shape
    key, value = Pattern(900, shape), Pattern(-900, shape)
    layer = {"layer past the last": config.num_layers + offset, "negative layer": -1 - offset,
             "get of a bad layer": config.num_layers + offset}.get(fault, 0)
    do: Callable[[], object]
    if fault == "advance on a full cache":
        call, do = f"{cache.name}.advance()", cache.advance
    elif fault == "get of a bad layer":
        call, do = f"keys, values = {cache.name}.get({layer!r})", lambda: cache.get(layer)
    else:
        call, do = f"{cache.name}.update({layer!r}, {key.code()}, {value.code()})", lambda: cache.update(layer, key, value)
    try:
        with s.expect_raises("KV-BND-5", call, "BaseException"):
            do()
    except SpecFailure:  # it did not raise: whether it must is KV-BND-1..4's business
        owner = {"layer past the last": "KV-BND-1", "negative layer": "KV-BND-2", "update on a full cache": "KV-BND-3",
                 "advance on a full cache": "KV-BND-4", "get of a bad layer": "KV-BND-1"}[fault]
        current().blocked(owner, f"{call} did not raise, so there was no failed call whose effects to look for", s)
        return
    if not full and has_room(twin, config):  # the position being written shows only after an advance
        for c in (cache, twin):
            c.advance()
    expected = Snapshot.of(twin, config)
    expected.witness(s, written=tag > 1)
    diff = expected.difference(Snapshot.of(cache, config))
    if diff is not None:
        raise s.fail("KV-BND-5", diff.expected, diff.got, diff.call(cache), show=diff.show,
                     hint=f"after the failing call ({fault}), {diff.where} differs from {twin.name}, which never got "
                     "it: check every condition first, and raise before writing anything or moving seq_pos")
