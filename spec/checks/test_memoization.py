"""Group memoization: each token's keys and values are computed once, deterministically counted.

The grader's model counts the rows each projection processes (the grader keeps its own
references to the projections, so a wrapper-object design cannot hide them). Over n
decode steps a cache projects n key rows and n value rows per layer; recomputing the
prefix projects 1 + 2 + ... + n = n(n+1)/2, even when its outputs are right.
"""

from __future__ import annotations

from hypothesis import given

from spec.checks._model import DecodeCase, decode_cases, tokens_array
from spec.clauses import checks
from spec.isolation.driver import Driver, ModelState
from spec.session import Session


def closure_hint(layer: int, proj: str) -> str:
    return (
        f"layer {layer}'s {proj} never ran: is every layer's patched attention using its own block's projections? "
        "A closure over the loop variable (`for block in model.blocks: def forward(x): ... block.attention ...`) "
        "makes every layer use the last block's"
    )


def decode_counting(s: Session, case: DecodeCase) -> tuple[str, list[ModelState]]:
    """Enable, then decode every token; the model's state before the first step and after each."""
    model = s.new_model(case.config)
    cache = model.enable()
    states = [model.state()]
    for t, tok in enumerate(case.tokens):
        model.step(cache, tokens_array([tok]), start_pos=t)
        cache.advance()
        states.append(model.state())
    return model.name, states


@checks("KV-MEMO-1")
@given(case=decode_cases(conditioned=False))
def test_keys_and_values_are_projected_once_per_token(driver: Driver, case: DecodeCase) -> None:
    s = Session(driver)
    model, states = decode_counting(s, case)
    n = len(case.tokens)
    for layer in range(case.config.num_layers):
        for proj, field in (("k_proj", "key_rows"), ("v_proj", "value_rows")):
            counts: list[int] = [getattr(state, field)[layer] for state in states]
            if counts[-1] - counts[0] != n:
                per_step = [b - a for a, b in zip(counts, counts[1:])]
                raise s.fail(
                    "KV-MEMO-1", counts[0] + n, counts[-1],
                    call=f"print({model}.blocks[{layer}].attention.{proj}.rows_seen)  # rows projected so far",
                    hint=closure_hint(layer, proj) if not any(per_step) else
                    f"over {n} decode steps layer {layer}'s {proj} projected {per_step} rows per step; each step "
                    "must project only the new token and take earlier keys and values from the cache "
                    "(cache.get), computed once when their token was decoded",
                )


@checks("KV-MEMO-2")
@given(case=decode_cases(conditioned=False))
def test_each_step_projects_the_query_of_the_new_token_only(driver: Driver, case: DecodeCase) -> None:
    s = Session(driver)
    model, states = decode_counting(s, case)
    for layer in range(case.config.num_layers):
        counts = [state.query_rows[layer] for state in states]
        per_step = [b - a for a, b in zip(counts, counts[1:])]
        if any(rows != 1 for rows in per_step):
            raise s.fail(
                "KV-MEMO-2", counts[0] + len(case.tokens), counts[-1],
                call=f"print({model}.blocks[{layer}].attention.q_proj.rows_seen)  # rows projected so far",
                hint=closure_hint(layer, "q_proj") if not any(per_step) else
                f"layer {layer}'s q_proj projected {per_step} rows per decode step, expected 1 each: only the new "
                "token's query is needed, earlier queries are never used again",
            )
