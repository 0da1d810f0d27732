"""Group generate: the 2026 course's `_cached_generate(model, prompt_tokens, max_new_tokens,
temperature, cache)`, graded only when the module defines it.

When it does not (the 2025 package, the course site's module 17), every check here is
skipped as not applicable (spec.clauses.NOT_APPLICABLE) and the grader spreads this group's points over
the other groups (spec.clauses.OPTIONAL_GROUPS), so its absence costs nothing.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spec.checks._model import ATOL, RTOL, GreedyCase, decode, greedy_cases, token_lists
from spec.checks.test_model import greedy_uncached
from spec.clauses import NOT_APPLICABLE, checks
from spec.isolation.driver import Driver, FloatArray
from spec.session import Session, code

GENERATE = "_cached_generate"


def session_with_generate(driver: Driver) -> Session:
    s = Session(driver)
    if GENERATE not in s.script.info.names:
        pytest.skip(f"{NOT_APPLICABLE}: the module defines no {GENERATE}")
    s.record(f"from {s.script.info.module} import {GENERATE}")
    return s


def first_real_difference(expected: list[int], got: list[int], rows: list[FloatArray]) -> int | None:
    """The first generated token that differs beyond a float32 tie (None: equal, or parted at a tie)."""
    if len(got) != len(expected):
        return min(len(got), len(expected))
    for i, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            row = rows[i]
            tie = 0 <= a < len(row) and row[b] - row[a] <= 2 * (ATOL + RTOL * abs(row[b]))
            return None if tie else i
    return None


@checks("KV-GEN-1")
@given(case=greedy_cases())
def test_cached_generate_at_temperature_zero_is_greedy(driver: Driver, case: GreedyCase) -> None:
    s = session_with_generate(driver)
    model = s.new_model(case.config)
    expected, rows = greedy_uncached(s, model, case.prompt, case.new_tokens)
    cache = model.enable()
    got = model.generate(cache, case.prompt, case.new_tokens, 0.0)
    i = first_real_difference(expected, got, rows)
    if i is not None:
        raise s.fail("KV-GEN-1", expected, got,
                     hint=f"at temperature 0 every new token is the argmax of the last logits; the first wrong one is "
                          f"token {i}. Feed the prompt one token at a time inside `with cache.generation():` (when the "
                          "cache has it) at start_pos=cache.seq_pos, advance after each, then feed each new token but "
                          "the last.")


@checks("KV-GEN-2")
@given(case=greedy_cases())
def test_cached_generate_resets_first_and_leaves_seq_pos(driver: Driver, case: GreedyCase) -> None:
    s = session_with_generate(driver)
    model = s.new_model(case.config)
    expected, rows = greedy_uncached(s, model, case.prompt, case.new_tokens)
    cache = model.enable()
    other = [(t + 1) % case.config.vocab_size for t in case.prompt]
    decode(s, model, cache, case.config, other, None, "KV-GEN-2")  # another sequence is cached
    got = model.generate(cache, case.prompt, case.new_tokens, 0.0)
    i = first_real_difference(expected, got, rows)
    if i is not None:
        raise s.fail("KV-GEN-2", expected, got,
                     hint=f"the cache still held {len(other)} token(s) of another sequence: {GENERATE} must call "
                          f"cache.reset() before feeding the prompt (token {i} is the first wrong one)")
    want = len(case.prompt) + case.new_tokens - 1
    seq_pos = cache.seq_pos
    if seq_pos != want:
        hint = (f"after a prompt of {len(case.prompt)} and {case.new_tokens} new token(s), every prompt token and every "
                "new token but the last was fed and advanced: seq_pos = len(prompt) + max_new_tokens - 1")
        if seq_pos == want + len(other):
            hint = (f"seq_pos went on from the {len(other)} token(s) the cache held before: {GENERATE} must call "
                    "cache.reset() before feeding the prompt; " + hint)
        raise s.fail("KV-GEN-2", want, seq_pos, hint=hint)


def bad_arguments(prompt: list[int], room: int) -> list[tuple[str, list[int], object, object]]:
    """(what is wrong, prompt, max_new_tokens, temperature); `room` = max_seq_len - len(prompt)."""
    return [
        ("max_new_tokens is negative", prompt, -1, 0.0),
        ("max_new_tokens is not an int", prompt, 2.5, 0.0),
        ("temperature is negative", prompt, 1, -0.5),
        ("temperature is nan", prompt, 1, math.nan),
        ("temperature is inf", prompt, 1, math.inf),
        ("the prompt is empty", [], 1, 0.0),
        ("prompt + new tokens exceed cache.max_seq_len", prompt, room + 1, 0.0),
    ]


@checks("KV-GEN-3")
@given(case=greedy_cases())
def test_cached_generate_refuses_bad_arguments(driver: Driver, case: GreedyCase) -> None:
    room = case.config.max_seq_len - len(case.prompt)
    for what, prompt, new_tokens, temperature in bad_arguments(case.prompt, room):
        s = session_with_generate(driver)  # a fresh script for each
        model = s.new_model(case.config)
        cache = model.enable()
        call = f"{GENERATE}({model.name}, {code(prompt)}, {code(new_tokens)}, {code(temperature)}, {cache.name})"
        with s.expect_raises("KV-GEN-3", call, "ValueError", hint=f"{what}: check the arguments before anything else "
                                                                  "and raise ValueError naming the bad one"):
            model.generate(cache, prompt, new_tokens, temperature)


@checks("KV-GEN-4")
@given(case=greedy_cases(), temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_cached_generate_accepts_every_valid_argument(driver: Driver, case: GreedyCase, temperature: float) -> None:
    s = session_with_generate(driver)
    model = s.new_model(case.config)
    none = model.generate(model.enable(), case.prompt, 0, 0.0)
    if none != []:
        raise s.fail("KV-GEN-4", [], none, hint="max_new_tokens = 0 is a non-negative int: return no new token, "
                                              "an empty list, without raising")
    s = session_with_generate(driver)  # a fresh model and cache: whether generate resets is KV-GEN-2's business
    model = s.new_model(case.config)
    got = model.generate(model.enable(), case.prompt, case.new_tokens, temperature)
    vocab = case.config.vocab_size
    if len(got) != case.new_tokens or not all(0 <= t < vocab for t in got):
        raise s.fail("KV-GEN-4", f"{case.new_tokens} token ids in [0, {vocab})", got,
                     hint=f"at temperature {temperature} sample each new token from softmax(logits / temperature): "
                          "an int index into the vocabulary, one per new token")
