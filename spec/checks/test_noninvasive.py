"""Group non-invasive: enabling the cache changes no weight, and disabling it gives the model back
(its original attention, and flags that no longer say the cache is on).

"Bit-identical" is literal here (np.array_equal): after disable_kv_cache the model must
run its original attention again, which computes exactly what it computed before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from spec.checks._evidence import counted, measuring, tolerant
from spec.checks._model import decode, token_lists, tokens_array, uncached_rows, well_conditioned
from spec.clauses import checks
from spec.isolation.driver import Driver, FloatArray, ModelConfig, SubmissionCrashed, SubmissionRaised
from spec.session import ModelRef, Session
from spec.strategies import model_configs

Probe = tuple[list[int], int]  # tokens, start_pos


@dataclass(frozen=True)
class ProbeCase:
    """A model, a full-length token sequence, and how many of its tokens to decode with the cache."""

    config: ModelConfig
    tokens: list[int]
    decoded: int


@st.composite
def probe_cases(draw: st.DrawFn, conditioned: bool = False) -> ProbeCase:
    config = draw(well_conditioned() if conditioned else model_configs())
    tokens = draw(token_lists(config, config.max_seq_len, config.max_seq_len))
    return ProbeCase(config, tokens, draw(st.integers(1, config.max_seq_len)))


def probes(case: ProbeCase) -> list[Probe]:
    """One-token forwards at the start, where decoding stopped, and the end; two multi-token forwards."""
    tokens, last = case.tokens, case.config.max_seq_len - 1
    out: list[Probe] = []
    for pos in (0, min(case.decoded, last), last):
        if ([tokens[pos]], pos) not in out:
            out.append(([tokens[pos]], pos))
    return out + [(tokens, 0), (tokens[1:], 1)]


def outputs(model: ModelRef, probe_set: list[Probe]) -> list[FloatArray]:
    return [model.forward(tokens_array(tokens), start_pos=pos) for tokens, pos in probe_set]


def expect_same_outputs(s: Session, model: ModelRef, probe_set: list[Probe], before: list[FloatArray], clause: str, hint: str) -> None:
    for (tokens, pos), expected in zip(probe_set, before):
        got = model.forward(tokens_array(tokens), start_pos=pos)
        if got.shape != expected.shape or not np.array_equal(got, expected):
            detail = f" (max |difference| {np.abs(got - expected).max():.3g})" if got.shape == expected.shape else ""
            which = "one token" if len(tokens) == 1 else f"{len(tokens)} tokens"
            raise s.fail(clause, expected, got, hint=f"a forward of {which}{detail}: {hint} Expected is what the same "
                                                     "forward returned before enable_kv_cache.")


@checks("KV-NI-1")
@measuring("KV-NI-1", "KV-BND-3")
@given(case=probe_cases())
@tolerant
@counted
def test_enable_and_cached_decoding_change_no_weight(driver: Driver, case: ProbeCase) -> None:
    s = Session(driver)
    model = s.new_model(case.config)
    original = model.state().weights_digest
    cache = model.enable()
    after_enable = model.state().weights_digest
    if after_enable != original:
        raise s.fail("KV-NI-1", f"the model's weights as before (sha256 {original[:16]})",
                     f"changed weights (sha256 {after_enable[:16]})", call=f"{cache.name} = enable_kv_cache({model.name})",
                     hint="enable_kv_cache must not re-initialise, convert or replace any weight or bias")
    decode(s, model, cache, case.config, case.tokens[: case.decoded], None, "KV-NI-1")
    after_decode = model.state().weights_digest
    if after_decode != original:
        raise s.fail("KV-NI-1", f"the model's weights as before (sha256 {original[:16]})",
                     f"changed weights (sha256 {after_decode[:16]})", call=s.script.lines[-1],
                     hint=f"the weights changed while decoding {case.decoded} token(s) with the cache; the cached "
                          "attention must only read the projections' weights")


@checks("KV-NI-2")
@measuring("KV-NI-2", "KV-BND-3")
@given(case=probe_cases())
@tolerant
@counted
def test_disable_restores_bit_identical_outputs(driver: Driver, case: ProbeCase) -> None:
    s = Session(driver)
    model = s.new_model(case.config)
    probe_set = probes(case)
    before = outputs(model, probe_set)
    cache = model.enable()
    decode(s, model, cache, case.config, case.tokens[: case.decoded], None, "KV-NI-2")
    model.disable()
    expect_same_outputs(s, model, probe_set, before, "KV-NI-2",
                        "after disable_kv_cache every block must run its original attention again (restore the "
                        "original forward or the original attention object) and leave no trace of the cache.")


@checks("KV-NI-3")
@given(case=probe_cases())
def test_disable_on_a_never_enabled_model_is_a_no_op(driver: Driver, case: ProbeCase) -> None:
    s = Session(driver)
    model = s.new_model(case.config)
    probe_set = probes(case)
    before = outputs(model, probe_set)
    original = model.state().weights_digest
    model.disable()
    after = model.state().weights_digest
    if after != original:
        raise s.fail("KV-NI-3", f"the model's weights as before (sha256 {original[:16]})", f"changed weights (sha256 {after[:16]})",
                     call=f"disable_kv_cache({model.name})")
    expect_same_outputs(s, model, probe_set, before, "KV-NI-3",
                        "disable_kv_cache on a model that was never enabled must change nothing.")
    refused = s.new_model(case.config, remove=("blocks",))  # enable_kv_cache refuses it (KV-MOD-5)
    try:
        refused.disable()
    except SubmissionRaised as exc:
        raise s.fail("KV-NI-3", "no exception", f"{exc.type_name}: {exc.message}", call=f"disable_kv_cache({refused.name})",
                     hint="a model that was never enabled, here one without blocks that enable_kv_cache refused, must "
                          "come through disable_kv_cache untouched: return first when model._cache_enabled is not set, "
                          "or read the blocks with getattr(model, 'blocks', [])") from None


@checks("KV-NI-4")
@measuring("KV-NI-4", "KV-BND-3")
@given(case=probe_cases(conditioned=True))
@tolerant
@counted
def test_enabling_twice_is_harmless(driver: Driver, case: ProbeCase) -> None:
    s = Session(driver)
    model = s.new_model(case.config)
    probe_set = probes(case)
    before = outputs(model, probe_set)
    full = uncached_rows(s, model, case.tokens)
    first = model.enable()
    decode(s, model, first, case.config, case.tokens[: case.decoded], None, "KV-NI-4")
    first_pos = first.seq_pos
    first_keys = first.get(0)[0]
    second = model.enable()

    def context() -> str:
        """Blame wrapping only when the first enable's cache is still being written."""
        where = f"decoding with the cache the second enable_kv_cache returned ({second.name}): "
        try:
            still_written = first.seq_pos != first_pos or not np.array_equal(first.get(0)[0], first_keys)
        except (SubmissionRaised, SubmissionCrashed):
            still_written = False
        if still_written:
            return where + (f"the first enable's cache ({first.name}) was written too, so the first patch still runs: a "
                            "second enable must replace the first patch (or unwrap it), not wrap it. ")
        return where

    decode(s, model, second, case.config, case.tokens[: case.decoded], full, "KV-NI-4", context=context)
    model.disable()
    expect_same_outputs(s, model, probe_set, before, "KV-NI-4",
                        "one disable_kv_cache after enabling twice must restore the original attention: did the second "
                        "enable save the first patch as the 'original'?")


def flag_hint(model: ModelRef, enabled: bool, value: object) -> str:
    done = (f"after enable_kv_cache({model.name}) and disable_kv_cache({model.name})" if enabled
            else f"after disable_kv_cache({model.name}) on a model that was never enabled")
    if value is True:
        why = "no longer wired in" if enabled else "this model never had"
        return (f"{done}, model._cache_enabled must be False (or the attribute deleted): the course's generation code "
                f"reads it to choose the cached path, and True sends it into a cache {why}.")
    return f"{done}, model._cache_enabled must be False (or the attribute deleted), not another false-looking value."


@checks("KV-NI-5")
@given(config=model_configs(), enabled=st.booleans())
def test_disable_clears_the_cache_flags(driver: Driver, config: ModelConfig, enabled: bool) -> None:
    s = Session(driver)
    model = s.new_model(config)
    if enabled:
        model.enable()
    try:
        model.disable()
    except SubmissionRaised:
        if enabled:
            raise
        return  # raising on a never-enabled model is KV-NI-3's failure; there is no state after disable to judge
    state = model.state()
    if state.cache_enabled_present and state.cache_enabled is not False:
        raise s.fail("KV-NI-5", False, state.cache_enabled, call=f"print({model.name}._cache_enabled)",
                     hint=flag_hint(model, enabled, state.cache_enabled))
    if state.kv_cache not in ("absent", "None"):
        got = f"the {state.kv_cache} enable_kv_cache returned" if state.kv_cache_is_last_enabled else state.kv_cache
        raise s.fail("KV-NI-5", None, got, call=f"print({model.name}._kv_cache)",
                     hint="disable_kv_cache must set model._kv_cache = None (or delete the attribute), so the model no "
                          "longer holds the cache and its pre-allocated storage.")
