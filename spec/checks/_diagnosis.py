"""Why a cached decode went wrong: every independent root cause that the evidence supports.

Called only when a model-level check has already failed. It decodes the same tokens again
on a fresh model (a separate Session whose script is thrown away), keeps every step's
logits and, at the end, what each layer of the cache holds; then:

- the cache's contents: no layer written at all (with the generation scope named when the
  cache has one), some layers never written, position 0 never written;
- a differential diagnosis: the same decode simulated on the grader's own copy of the
  model with the cached step deliberately broken in each known way (a closure over the
  last block, the first token left uncached, the current token not attended, the cached
  prefix ignored, scores scaled by 1/head_dim), alone and combined. The smallest
  combination whose logits equal the submission's at every step it finished is named,
  every cause in it.

The simulation runs on the reference GPT around the reference Tensor, never on submission
code, so it cannot be steered by what it diagnoses.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
from hypothesis.control import current_build_context
from hypothesis.errors import InvalidArgument

from reference.gpt import GPT, softmax
from spec.isolation.driver import Driver, FloatArray, ModelConfig, SubmissionCrashed, SubmissionRaised, SubmissionUnavailable
from spec.session import Session

CAUSES: dict[str, str] = {
    "closure": (
        "every layer uses the last block's projections and the last layer's cache slot: a closure over the loop "
        "variable (`for layer_idx, block in enumerate(model.blocks): def forward(x): ... block.attention ...`) reads "
        "`block` and `layer_idx` when it runs, after the loop has ended; bind them when the patch is made (a factory "
        "function taking them as arguments, or a wrapper object holding them)"
    ),
    "first_uncached": (
        "the first token (seq_pos == 0) is never cached: it takes the original path, so every later token attends "
        "to zeros at position 0; the first token must take the cached step (update, get, attend) like every other"
    ),
    "no_self": (
        "the current token does not attend to itself: attend over cache.get(layer_idx), the prefix before this "
        "token, plus the token's own key and value"
    ),
    "only_self": (
        "the cached prefix is ignored: each step attends only to the token itself; attend over "
        "cache.get(layer_idx) plus the current token"
    ),
    "scale": "scores are divided by head_dim: scaled dot-product attention divides by sqrt(head_dim)",
}
EXCLUSIVE = {frozenset({"no_self", "only_self"})}
RTOL = ATOL = 1e-4


@dataclass
class Observed:
    logits: list[FloatArray | None]  # per step: the submission's (1, vocab) row, None where it raised or was not finite
    layers: list[tuple[FloatArray, FloatArray] | None]  # per layer after the decode: (keys, values), None if get raised
    scoped: bool


def observe(driver: Driver, config: ModelConfig, tokens: list[int]) -> Observed | None:
    """Decode `tokens` on a fresh model through the protocol, keeping everything (None if even
    enabling fails)."""
    try:
        s = Session(driver)
        model = s.new_model(config)
        cache = model.enable()
        scoped = cache.scoped
    except (SubmissionRaised, SubmissionCrashed, SubmissionUnavailable):
        return None
    rows: list[FloatArray | None] = []
    for t, tok in enumerate(tokens):
        try:
            logits = model.step(cache, np.array([[tok]], dtype=np.int64), start_pos=t)
            row = logits.reshape(-1, logits.shape[-1])[-1] if logits.ndim >= 1 and logits.size else None
            rows.append(row if row is not None and row.shape == (config.vocab_size,) and np.isfinite(row).all() else None)
        except (SubmissionRaised, SubmissionCrashed):
            rows.append(None)
        try:
            cache.advance()
        except (SubmissionRaised, SubmissionCrashed):
            break
    layers: list[tuple[FloatArray, FloatArray] | None] = []
    for layer in range(config.num_layers):
        try:
            layers.append(cache.get(layer))
        except (SubmissionRaised, SubmissionCrashed):
            layers.append(None)
    return Observed(rows, layers, scoped)


def simulate(config: ModelConfig, tokens: list[int], causes: frozenset[str]) -> list[FloatArray | None]:
    """Per-step logits of a cached decode on the grader's own model, broken in the ways named."""
    model = GPT(config.vocab_size, config.embed_dim, config.num_layers, config.num_heads, config.max_seq_len, seed=config.seed)
    if config.qk_scale != 1:
        for block in model.blocks:
            block.attention.q_proj.weight *= np.float32(config.qk_scale)
            block.attention.k_proj.weight *= np.float32(config.qk_scale)
    heads, head_dim, n_layers = config.num_heads, config.embed_dim // config.num_heads, config.num_layers
    keys = np.zeros((n_layers, 1, heads, config.max_seq_len, head_dim), dtype=np.float32)
    values = np.zeros_like(keys)
    pos = [0]
    last = model.blocks[-1].attention
    last_original = last.forward

    def patched(layer: int, attention: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        if "closure" in causes:  # everything the loop bound is read late: the last block's
            layer, attention, original = n_layers - 1, last, last_original

        def forward(x: Any, mask: Any = None) -> Any:
            data = np.asarray(x.data)
            batch, seq, _ = data.shape
            if seq != 1 or ("first_uncached" in causes and pos[0] == 0):
                return original(x, mask)

            def split(lin: Any) -> Any:
                return lin.project(data).reshape(batch, heads, 1, head_dim)

            q, k, v = split(attention.q_proj), split(attention.k_proj), split(attention.v_proj)
            keys[layer, :, :, pos[0]] = k[:, :, 0]
            values[layer, :, :, pos[0]] = v[:, :, 0]
            past_k, past_v = keys[layer, :, :, : pos[0]], values[layer, :, :, : pos[0]]
            if "only_self" in causes:
                all_k, all_v = k, v
            elif "no_self" in causes and pos[0] > 0:
                all_k, all_v = past_k, past_v
            else:
                all_k, all_v = np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2)
            scale = np.float32(head_dim if "scale" in causes else math.sqrt(head_dim))
            out = (softmax(q @ all_k.transpose(0, 1, 3, 2) / scale) @ all_v).reshape(batch, 1, heads * head_dim)
            return attention.out_proj.forward(model.tensor(out))

        return forward

    for i, block in enumerate(model.blocks):
        block.attention.forward = patched(i, block.attention, block.attention.forward)  # type: ignore[method-assign]
    out: list[FloatArray | None] = []
    with np.errstate(all="ignore"):
        for t, tok in enumerate(tokens):
            logits = np.asarray(model.forward(np.array([[tok]]), start_pos=t).data, dtype=np.float64)[0, -1]
            out.append(logits if np.isfinite(logits).all() else None)
            pos[0] += 1
    return out


def _matches(observed: list[FloatArray | None], simulated: list[FloatArray | None]) -> bool:
    compared = 0
    for got, want in zip(observed, simulated):
        if got is None or want is None:
            continue
        if not np.allclose(got, want, rtol=RTOL, atol=ATOL):
            return False
        compared += 1
    return compared > 0


def causes_named(config: ModelConfig, tokens: list[int], observed: list[FloatArray | None]) -> list[str] | None:
    """The smallest set of known causes whose simulation reproduces the observed logits
    ([] = the decode is right; None = no combination of the known causes explains it)."""
    names = sorted(CAUSES)
    for size in range(len(names) + 1):
        for combo in itertools.combinations(names, size):
            chosen = frozenset(combo)
            if any(pair <= chosen for pair in EXCLUSIVE):
                continue
            if _matches(observed, simulate(config, tokens, chosen)):
                return [c for c in CAUSES if c in chosen]
    return None


def cache_evidence(obs: Observed, config: ModelConfig, n: int) -> list[str]:
    """What the cache's contents say after decoding n tokens."""
    held = [layer for layer in obs.layers if layer is not None and layer[0].shape[2:3] == (n,)]
    if len(held) != config.num_layers or n == 0:
        return []
    written = [bool(k.any() or v.any()) for k, v in held]
    if not any(written):
        scope = (" Every step ran inside `with cache.generation():`: does the cached attention take the cached path "
                 "when the scope is active, and is the cache it writes the one enable_kv_cache returned?"
                 if obs.scoped else
                 " Does the patched attention call cache.update, and is the cache it writes the one enable_kv_cache "
                 "returned?")
        return [f"no layer's cache was ever written: after {n} decode step(s) cache.get returns only zeros in every "
                "layer." + scope]
    out = []
    empty = [i for i, w in enumerate(written) if not w]
    if empty:
        out.append(f"layer(s) {empty} of the cache hold only zeros while others were written: every layer must update "
                   "and read its own layer_idx")
    if n > 1 and all(not k[:, :, 0].any() for (k, _), w in zip(held, written) if w) and all(
            k[:, :, 1:].any() for (k, _), w in zip(held, written) if w):
        out.append("position 0 of the cache holds zeros while later positions were written: the first token must be "
                   "cached too")
    return out


# A model big enough for every known cause to show (several layers, heads and tokens): a
# shrunk minimal example often has one layer, where a closure over the last block is
# invisible, so the diagnosis also decodes this one and names what it adds.
PROBE = ModelConfig(vocab_size=13, embed_dim=8, num_layers=3, num_heads=2, max_seq_len=6, seed=7)
PROBE_TOKENS = [3, 1, 4, 1, 5, 9]


def findings(driver: Driver, config: ModelConfig, tokens: list[int]) -> list[str]:
    obs = observe(driver, config, tokens)
    if obs is None:
        return []
    found: list[str] = []
    evidence = cache_evidence(obs, config, len(obs.logits))
    if any("no layer's cache" in e for e in evidence):
        return evidence  # nothing cached: every step ran the original attention, which explains the logits
    causes = causes_named(config, tokens, obs.logits)
    if causes:
        found += [CAUSES[c] for c in causes]
    if evidence and not (causes and set(causes) & {"closure", "first_uncached"}):
        found += evidence  # else the simulation already names what these contents show
    return found


def reporting() -> bool:
    """True unless Hypothesis is still searching or shrinking: the diagnosis decodes again and
    simulates, so it runs only for the example that is reported (the final replay)."""
    try:
        return bool(current_build_context().is_final)
    except InvalidArgument:  # not inside a Hypothesis test: always report
        return True


def diagnose(driver: Driver, config: ModelConfig, tokens: list[int]) -> str:
    """Every cause found, as one hint ("" when the fresh decodes show nothing wrong or nothing
    known, or while Hypothesis is only shrinking)."""
    if not reporting():
        return ""
    found = findings(driver, config, tokens)
    if config != PROBE and found:
        found += [f for f in findings(driver, replace(PROBE, qk_scale=config.qk_scale), PROBE_TOKENS) if f not in found]
    if not found:
        return ""
    ended = [f if f.endswith(("?", ".")) else f + "." for f in found]
    if len(ended) == 1:
        return ended[0]
    return f"{len(ended)} causes found: " + " ".join(f"({i}) {f}" for i, f in enumerate(ended, start=1))
