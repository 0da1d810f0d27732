"""Group model: enable_kv_cache on the grader's GPT, and cached decoding equal to uncached.

The model is the reference GPT built around the submission's own Tensor class; it owns
positions, so the submission owns only attention. Helpers (strategies, the decode
protocol, diagnosis of a wrong step) live in spec/checks/_model.py.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from spec.checks._model import (
    ATOL,
    OVERFLOWING,
    REQUIRED_ATTRIBUTES,
    RTOL,
    SHARP_TOLERANCE,
    DecodeCase,
    GreedyCase,
    PromptCase,
    TwoSequences,
    close,
    decode,
    decode_cases,
    greedy_cases,
    last_line,
    prompt_cases,
    sharp_decode_cases,
    tokens_array,
    two_sequences,
    uncached_rows,
)
from reference.gpt import GPT, MultiHeadAttention
from spec.checks._evidence import counted, current, measuring, tolerant
from spec.clauses import NOT_APPLICABLE, checks
from spec.isolation.driver import Driver, FloatArray, ModelConfig
from spec.session import CacheRef, ModelRef, Session
from spec.strategies import model_configs


@checks("KV-MOD-1")
@given(config=model_configs())
def test_enable_returns_a_cache_sized_to_the_model(driver: Driver, config: ModelConfig) -> None:
    s = Session(driver)
    model = s.new_model(config)
    cache = model.enable()
    head_dim = config.embed_dim // config.num_heads
    expected = {
        "batch_size": 1,
        "max_seq_len": config.max_seq_len,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "head_dim": head_dim,
        "seq_pos": 0,
    }
    hints = {
        "batch_size": "the course decodes one sequence: KVCache(1, ...)",
        "head_dim": f"head_dim is embed_dim // num_heads = {config.embed_dim} // {config.num_heads}",
        "seq_pos": "a new cache has cached nothing yet",
    }
    for attr, want in expected.items():
        got = cache.attr(attr)
        if got != want:
            raise s.fail("KV-MOD-1", want, got, hint=hints.get(attr, f"read it from model.{attr}"))
    state = model.state()
    if state.cache_enabled is not True:
        raise s.fail("KV-MOD-1", True, state.cache_enabled, call=f"print(getattr({model.name}, '_cache_enabled', None))",
                     hint="enable_kv_cache must set model._cache_enabled = True (None means the attribute is missing)")
    if not state.kv_cache_is_last_enabled:
        raise s.fail("KV-MOD-1", True, False, call=f"print({model.name}._kv_cache is {cache.name})",
                     hint="enable_kv_cache must store the cache it returns on model._kv_cache")


@checks("KV-MOD-2")
@measuring("KV-MOD-2", "KV-BND-3")
@given(case=decode_cases())
@tolerant
@counted
def test_cached_decoding_equals_uncached_forward(driver: Driver, case: DecodeCase) -> None:
    s = Session(driver)
    model = s.new_model(case.config)
    full = uncached_rows(s, model, case.tokens)
    cache = model.enable()
    decode(s, model, cache, case.config, case.tokens, full, "KV-MOD-2")


def greedy_uncached(s: Session, model: ModelRef, prompt: list[int], new_tokens: int) -> tuple[list[int], list[FloatArray]]:
    s.record(f"tokens = {prompt!r}")
    s.record(
        f"for _ in range({new_tokens}):  # greedy, uncached: the whole sequence every step\n"
        f"    logits = {model.name}.forward(Tensor(np.array([tokens])), start_pos=0)\n"
        "    tokens.append(int(np.argmax(logits.data[0, -1])))\n"
        f"print('uncached:', tokens[{len(prompt)}:])"
    )
    tokens, rows = list(prompt), []
    for _ in range(new_tokens):
        row = model.forward(tokens_array(tokens))[0, -1]
        rows.append(row)
        tokens.append(int(np.argmax(row)))
    return tokens[len(prompt):], rows


def greedy_cached(s: Session, model: ModelRef, cache: CacheRef, prompt: list[int], new_tokens: int) -> list[int]:
    n = len(prompt)
    s.record(f"tokens = {prompt!r}")
    forward = f"{model.name}.forward(Tensor(np.array([[tokens[pos]]])), start_pos=pos)"
    step = (f"    with {cache.name}.generation():\n        logits = {forward}\n" if cache.scoped
            else f"    logits = {forward}\n")
    s.record(
        f"for pos in range({n + new_tokens - 1}):  # greedy, cached: one token per step\n"
        + step +
        f"    {cache.name}.advance()\n"
        f"    if pos >= {n - 1}:\n"
        "        tokens.append(int(np.argmax(logits.data[0, -1])))\n"
        f"print('cached:  ', tokens[{n}:])"
    )
    tokens, lines = list(prompt), len(s.script.lines)
    for pos in range(n + new_tokens - 1):
        logits = model.forward_in_scope(cache, tokens_array([tokens[pos]]), start_pos=pos)
        cache.advance()
        if pos >= n - 1:
            tokens.append(int(np.argmax(logits[0, -1])))
    del s.script.lines[lines:]  # the loop above is already in the script
    return tokens[n:]


@checks("KV-MOD-7")
@measuring("KV-MOD-7", "KV-BND-3")
@example(case=OVERFLOWING)
@given(case=sharp_decode_cases())
@tolerant
@counted
def test_cached_decoding_survives_large_attention_scores(driver: Driver, case: DecodeCase) -> None:
    s = Session(driver)
    model = s.new_model(case.config)
    full = uncached_rows(s, model, case.tokens)
    cache = model.enable()
    decode(s, model, cache, case.config, case.tokens, full, "KV-MOD-7", widen=SHARP_TOLERANCE,
           context="this model's attention scores reach several hundred (q_proj and k_proj weights x12); ")


@checks("KV-MOD-3")
@measuring("KV-MOD-3", "KV-BND-3")
@given(case=greedy_cases())
@tolerant
@counted
def test_greedy_generation_is_token_identical(driver: Driver, case: GreedyCase) -> None:
    s = Session(driver)
    model = s.new_model(case.config)
    expected, rows = greedy_uncached(s, model, case.prompt, case.new_tokens)
    cache = model.enable()
    got = greedy_cached(s, model, cache, case.prompt, case.new_tokens)
    if got == expected:
        return
    i = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
    row = rows[i]
    if row[expected[i]] - row[got[i]] <= 2 * (ATOL + RTOL * abs(row[expected[i]])):
        return  # a tie within float32 noise: either token is a correct greedy choice, and the runs part here
    raise s.fail(
        "KV-MOD-3", expected, got, call=last_line(s).split("\n")[-1],
        hint=f"the first different token is generated token {i}; the check of KV-MOD-2 shows which decode "
             "step's logits go wrong.",
    )


@checks("KV-MOD-4")
@measuring("KV-MOD-4", "KV-GET-1")
@given(case=prompt_cases())
@tolerant
def test_multi_token_forward_with_cache_enabled_is_original_and_leaves_cache(driver: Driver, case: PromptCase) -> None:
    s = Session(driver)
    model = s.new_model(case.config)
    expected = model.forward_recorded(tokens_array(case.probe), start_pos=case.start_pos)
    s.record("expected = logits.data  # the same forward before enable_kv_cache")
    cache = model.enable()
    decode(s, model, cache, case.config, case.decoded, None, "KV-MOD-4")
    seq_pos = cache.seq_pos
    before = [cache.get(layer) for layer in range(case.config.num_layers)]
    # "Leaves the cache untouched" measures something only if the cache holds something.
    held = sum(int(np.any(keys)) for keys, _ in before)
    if held:
        current().saw(held)
    elif case.decoded:
        current().blocked("KV-GET-1", f"after {len(case.decoded)} cached decode steps get() shows nothing", s)
    got = model.forward_in_scope(cache, tokens_array(case.probe), start_pos=case.start_pos, recorded=True)
    if not close(got, expected):
        unmasked = unmasked_logits(case.config, case.probe, case.start_pos)
        hint = ("the causal mask was dropped: these logits are the model's with every token attending to later ones too. "
                "The path for several tokens must hand the block's mask on to the original attention, "
                "original_forward(x, mask)" if close(got, unmasked) else
                "a forward of several tokens must take the original attention path"
                + (", inside the generation scope too" if cache.scoped else ""))
        raise s.fail("KV-MOD-4", expected, got, call=last_line(s), hint=hint)
    after_pos = cache.seq_pos
    if after_pos != seq_pos:
        raise s.fail("KV-MOD-4", seq_pos, after_pos,
                     hint="a forward of several tokens must neither advance nor reset the cache")
    for layer, (keys, values) in enumerate(before):
        now_keys, now_values = cache.get(layer)
        for what, old, new in (("keys", keys, now_keys), ("values", values, now_values)):
            if old.shape != new.shape or not np.array_equal(old, new):
                raise s.fail("KV-MOD-4", old, new,
                             hint=f"layer {layer}'s cached {what} changed during a forward of several tokens, which "
                                  "must leave the cache alone")


def unmasked_logits(config: ModelConfig, tokens: list[int], start_pos: int) -> FloatArray:
    """The grader's own copy of the model, run with no causal mask (every attention gets mask=None)."""
    model = GPT(config.vocab_size, config.embed_dim, config.num_layers, config.num_heads, config.max_seq_len, seed=config.seed)

    def unmasked(attention: MultiHeadAttention) -> Callable[..., Any]:
        return lambda x, mask=None: MultiHeadAttention.forward(attention, x, None)

    for block in model.blocks:
        block.attention.forward = unmasked(block.attention)  # type: ignore[method-assign]
    logits: FloatArray = np.asarray(model.forward(tokens_array(tokens), start_pos=start_pos).data, dtype=np.float64)
    return logits


@checks("KV-MOD-5")
@given(config=model_configs())
def test_enable_refuses_a_model_without_a_required_attribute(driver: Driver, config: ModelConfig) -> None:
    for missing in REQUIRED_ATTRIBUTES:  # every one, in every example (a fresh script for each)
        s = Session(driver)
        model = s.new_model(config, remove=(missing,))
        with s.expect_raises("KV-MOD-5", f"cache = enable_kv_cache({model.name})", "AttributeError"):
            model.enable()


@st.composite
def indivisible(draw: st.DrawFn) -> tuple[ModelConfig, int]:
    config = draw(model_configs().filter(lambda c: c.num_heads >= 2))
    return config, config.embed_dim + draw(st.integers(1, config.num_heads - 1))


@checks("KV-MOD-5")
@given(case=indivisible())
def test_enable_refuses_embed_dim_not_divisible_by_num_heads(driver: Driver, case: tuple[ModelConfig, int]) -> None:
    config, embed_dim = case
    s = Session(driver)
    model = s.new_model(config, override={"embed_dim": embed_dim})
    with s.expect_raises("KV-MOD-5", f"cache = enable_kv_cache({model.name})", "ValueError"):
        model.enable()


@checks("KV-MOD-6")
@measuring("KV-MOD-6", "KV-BND-3")
@given(case=two_sequences())
@tolerant
@counted
def test_second_sequence_after_reset_equals_uncached(driver: Driver, case: TwoSequences) -> None:
    s = Session(driver)
    model = s.new_model(case.config)
    second = uncached_rows(s, model, case.second, name="second")
    cache = model.enable()
    decode(s, model, cache, case.config, case.first, None, "KV-MOD-6")
    cache.reset()
    decode(s, model, cache, case.config, case.second, second, "KV-MOD-6", name="second",
           context="after cache.reset() the second sequence starts again at seq_pos 0 with nothing cached; ")


@checks("KV-MOD-8")
@measuring("KV-MOD-8", "KV-BND-3")
@given(case=prompt_cases())
@tolerant
@counted
def test_forward_outside_the_generation_scope_is_original_and_leaves_cache(driver: Driver, case: PromptCase) -> None:
    s = Session(driver)
    model = s.new_model(case.config)
    probe = case.probe[:1]
    expected = model.forward_recorded(tokens_array(probe), start_pos=case.start_pos)
    s.record("expected = logits.data  # the same forward before enable_kv_cache")
    cache = model.enable()
    if not cache.scoped:  # every single-token forward may use the cache (2025, module 17): nothing to measure
        pytest.skip(f"{NOT_APPLICABLE}: the cache has no generation() scope, so a forward outside one may use the cache")
    decode(s, model, cache, case.config, case.decoded, None, "KV-MOD-8")
    seq_pos = cache.seq_pos
    before = [cache.get(layer) for layer in range(case.config.num_layers)]
    got = model.forward_recorded(tokens_array(probe), start_pos=case.start_pos)
    scope = (f"outside `with {cache.name}.generation():` a forward, of one token too, must run the original "
             "attention: the cached step is for decoding inside the scope only")
    if not close(got, expected):
        raise s.fail("KV-MOD-8", expected, got, call=last_line(s), hint=scope + " (the logits differ from the model's own)")
    after_pos = cache.seq_pos
    if after_pos != seq_pos:
        raise s.fail("KV-MOD-8", seq_pos, after_pos, hint=scope + "; it moved seq_pos")
    for layer, (keys, values) in enumerate(before):
        now_keys, now_values = cache.get(layer)
        for what, old, new in (("keys", keys, now_keys), ("values", values, now_values)):
            if old.shape != new.shape or not np.array_equal(old, new):
                raise s.fail("KV-MOD-8", old, new, hint=scope + f"; layer {layer}'s cached {what} changed")
