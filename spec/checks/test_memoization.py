"""Group memoization: each token's keys and values are computed once, deterministically counted,
and only a working cache earns it.

The grader's model counts the rows each projection processes (the grader keeps its own
references to the projections, so a wrapper-object design cannot hide them). Over n
decode steps a cache projects n key rows and n value rows per layer; recomputing the
prefix projects 1 + 2 + ... + n = n(n+1)/2, even when its outputs are right.

Counting rows alone would pay a cache that does nothing: an enabled model whose
single-token forwards all run the original attention also projects one row per step.
So both clauses hold only when the decode is right (every step equals the uncached
forward) and the cache holds what the model projected (each layer's `get` equals the
keys and values of the uncached forward, computed on the grader's own copy of the model).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given

from spec.checks._evidence import counted, measuring, tolerant
from spec.checks._model import DecodeCase, Expected, close, decode_cases, grader_side, tokens_array
from spec.clauses import checks
from spec.isolation.driver import Driver, ModelState, SubmissionCrashed, SubmissionRaised
from spec.session import CacheRef, Session

PROJECTIONS = "projections"  # the script's name for the grader's own references to q/k/v_proj


@dataclass
class Counted:
    model: str
    states: list[ModelState]  # before the first step, then after each
    wrong_step: int | None  # the first decode step whose logits differ from the uncached forward
    unheld: str  # why the cache does not hold the projected keys and values ("" when it does)


def decode_counting(s: Session, case: DecodeCase) -> Counted:
    """Enable, then decode every token (the protocol); count projected rows, compare each step's
    logits with the uncached forward and, at the end, the cache's contents with the projected keys."""
    expected: Expected = grader_side(case.config, case.tokens)
    model = s.new_model(case.config)
    s.record(f"{PROJECTIONS} = [(b.attention.q_proj, b.attention.k_proj, b.attention.v_proj) for b in {model.name}.blocks]"
             "  # the grader's own references, taken before enable_kv_cache")
    cache = model.enable()
    states = [model.state()]
    wrong: int | None = None
    for t, tok in enumerate(case.tokens):
        logits = model.step(cache, tokens_array([tok]), start_pos=t)
        row = logits[0, 0] if logits.shape[:2] == (1, 1) else logits
        if wrong is None and not close(row, expected.logits[t]):
            wrong = t
        cache.advance()
        states.append(model.state())
    return Counted(model.name, states, wrong, "" if wrong is not None else unheld(cache, case, expected))


def unheld(cache: CacheRef, case: DecodeCase, expected: Expected) -> str:
    """Why the cache does not hold the keys and values the model projected ("" when it does)."""
    n, name = len(case.tokens), cache.name
    for layer in range(case.config.num_layers):
        try:
            keys, values = cache.get(layer)
        except (SubmissionRaised, SubmissionCrashed) as exc:
            return f"{name}.get({layer}) raised {exc}"
        for what, got, want in (("keys", keys, expected.keys[layer]), ("values", values, expected.values[layer])):
            if got.shape != want.shape:
                return (f"after {n} decode steps {name}.get({layer}) returned {what} of shape {got.shape}, expected "
                        f"{want.shape}: every decoded token's {what} must be in the cache")
            if not close(got, want):
                zeros = "only zeros" if not got.any() else "other numbers"
                return (f"after {n} decode steps {name}.get({layer}) holds {zeros} where the {what} the model projected "
                        "should be: the cached step must write each token's projected key and value with cache.update")
    return ""


def working_cache_hint(counted: Counted, n: int) -> str | None:
    """Why the memoization is not credited although the counts may look right, or None."""
    if counted.wrong_step is not None:
        return (f"decode step {counted.wrong_step} returned logits different from the uncached forward: memoization is "
                "credited only to a cache that decodes correctly (the model group's checks show what goes wrong)")
    if counted.unheld:
        return counted.unheld
    return None


def count_hint(layer: int, proj: str, per_step: list[int]) -> str:
    if not any(per_step):
        return (f"layer {layer}'s {proj} projected no row in any decode step: is every layer's cached attention using "
                "its own block's projections? A closure over the loop variable (`for block in model.blocks: def "
                "forward(x): ... block.attention ...`) makes every layer use the last block's")
    missing = [t for t, rows in enumerate(per_step) if rows == 0]
    if missing:
        return (f"layer {layer}'s {proj} projected {per_step} rows per decode step: none at step(s) {missing}; every "
                "step must project its own token once")
    return ""


@checks("KV-MEMO-1")
@measuring("KV-MEMO-1", "KV-BND-3")
@given(case=decode_cases())
@tolerant
@counted
def test_keys_and_values_are_projected_once_per_token(driver: Driver, case: DecodeCase) -> None:
    s = Session(driver)
    counted = decode_counting(s, case)
    n = len(case.tokens)
    problem = working_cache_hint(counted, n)
    if problem is not None:
        raise s.fail("KV-MEMO-1", "a cache that decodes correctly and holds each token's keys and values",
                     "see the hint", hint=problem)
    for layer in range(case.config.num_layers):
        for index, (proj, field) in enumerate((("k_proj", "key_rows"), ("v_proj", "value_rows")), start=1):
            counts: list[int] = [getattr(state, field)[layer] for state in counted.states]
            if counts[-1] - counts[0] != n:
                per_step = [b - a for a, b in zip(counts, counts[1:])]
                raise s.fail(
                    "KV-MEMO-1", counts[0] + n, counts[-1],
                    call=f"print({PROJECTIONS}[{layer}][{index}].rows_seen)  # layer {layer}'s {proj}: rows projected so far",
                    hint=count_hint(layer, proj, per_step) or
                    f"over {n} decode steps layer {layer}'s {proj} projected {per_step} rows per step; each step "
                    "must project only the new token and take earlier keys and values from the cache "
                    "(cache.get), computed once when their token was decoded",
                )


@checks("KV-MEMO-2")
@measuring("KV-MEMO-2", "KV-BND-3")
@given(case=decode_cases())
@tolerant
@counted
def test_each_step_projects_the_query_of_the_new_token_only(driver: Driver, case: DecodeCase) -> None:
    s = Session(driver)
    counted = decode_counting(s, case)
    problem = working_cache_hint(counted, len(case.tokens))
    if problem is not None:
        raise s.fail("KV-MEMO-2", "a cache that decodes correctly and holds each token's keys and values",
                     "see the hint", hint=problem)
    for layer in range(case.config.num_layers):
        counts = [state.query_rows[layer] for state in counted.states]
        per_step = [b - a for a, b in zip(counts, counts[1:])]
        if any(rows != 1 for rows in per_step):
            raise s.fail(
                "KV-MEMO-2", counts[0] + len(case.tokens), counts[-1],
                call=f"print({PROJECTIONS}[{layer}][0].rows_seen)  # layer {layer}'s q_proj: rows projected so far",
                hint=count_hint(layer, "q_proj", per_step) or
                f"layer {layer}'s q_proj projected {per_step} rows per decode step, expected 1 each: only the new "
                "token's query is needed, earlier queries are never used again",
            )
