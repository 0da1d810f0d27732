"""Tests of the reference implementation itself (reference/), not of the spec.

The spec (spec/checks) grades submissions through a Driver; these tests hold the
reference to the decisions its docstrings document, and to the one property the whole
project rests on: decoding with the cache gives the same tokens and the same logits
as decoding without it.

Logit tolerance. Cached and uncached decoding compute the same float32 sums in a
different order (BLAS matrix-vector vs matrix-matrix kernels block differently; the
cached softmax runs over a concatenated row, the uncached one over a masked row), so
each layer's output differs by a few float32 ulps (eps = 1.2e-7), and LayerNorm can
amplify that by 1/std. Over 300 random configurations (1-3 layers, 1-4 heads, head_dim
1-8, up to 24 positions) the worst difference seen was 7.3e-5 absolute, 3e-5 relative
to the largest logit. LOGIT_TOLERANCE = 1e-3 x max(1, max |logit|) leaves 10x headroom
over that, and stays far below what a real defect does (an uncached first token, a
wrong position or another layer's weights move logits by 1e-2 to 1).
"""

from __future__ import annotations

import hashlib
import tracemalloc
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import GPT, KVCache, Tensor, disable_kv_cache, enable_kv_cache, generate_greedy
from reference.gpt import MultiHeadAttention

LOGIT_TOLERANCE = 1e-3
REQUIRED = ("embed_dim", "num_layers", "num_heads", "max_seq_len", "blocks")

FAST = settings(max_examples=40, deadline=None)
MANY = settings(max_examples=150, deadline=None)


# -- helpers --------------------------------------------------------------------------------


def data(x: Any) -> np.ndarray[Any, Any]:
    return np.asarray(getattr(x, "data", x))


def assert_logits_close(cached: np.ndarray[Any, Any], uncached: np.ndarray[Any, Any], where: str) -> None:
    assert cached.shape == uncached.shape, f"{where}: shape {cached.shape} != {uncached.shape}"
    diff = float(np.abs(cached - uncached).max())
    bound = LOGIT_TOLERANCE * max(1.0, float(np.abs(uncached).max()))
    assert diff <= bound, f"{where}: cached logits differ from uncached by {diff:.3g} > {bound:.3g}"


def weights_digest(model: GPT) -> str:
    arrays = [model.token_embedding, model.position_embedding, model.lm_head.weight, model.lm_head.bias]
    arrays += [model.ln_f.gamma, model.ln_f.beta]
    for b in model.blocks:
        a = b.attention
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.out_proj, b.mlp.fc1, b.mlp.fc2):
            arrays += [lin.weight, lin.bias]
        arrays += [b.ln1.gamma, b.ln1.beta, b.ln2.gamma, b.ln2.beta]
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def cached_step_logits(model: GPT, tokens: list[int]) -> np.ndarray[Any, Any]:
    """The grader's decode protocol: one token at a time, prompt included; logits (T, vocab)."""
    cache = enable_kv_cache(model)
    rows = []
    try:
        for t, tok in enumerate(tokens):
            rows.append(data(model.forward(model.tensor(np.array([[tok]])), start_pos=t))[0, -1])
            cache.advance()
    finally:
        disable_kv_cache(model)
    return np.stack(rows)


def snapshot(cache: KVCache) -> tuple[int, list[np.ndarray[Any, Any]]]:
    """Everything observable about a cache: seq_pos and the full storage of every layer."""
    saved, cache.seq_pos = cache.seq_pos, cache.max_seq_len
    try:
        arrays = [data(x).copy() for layer in range(cache.num_layers) for x in cache.get(layer)]
    finally:
        cache.seq_pos = saved
    return saved, arrays


def assert_unchanged(cache: KVCache, before: tuple[int, list[np.ndarray[Any, Any]]]) -> None:
    after = snapshot(cache)
    assert after[0] == before[0], f"seq_pos moved from {before[0]} to {after[0]}"
    for a, b in zip(after[1], before[1]):
        np.testing.assert_array_equal(a, b)


@st.composite
def model_configs(draw: st.DrawFn) -> dict[str, int]:
    """Small GPTs, including 1 layer, 1 head, head_dim 1 and vocab 2."""
    num_heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, 8))
    return {
        "vocab_size": draw(st.integers(2, 40)),
        "embed_dim": num_heads * head_dim,
        "num_layers": draw(st.integers(1, 3)),
        "num_heads": num_heads,
        "max_seq_len": draw(st.integers(2, 16)),
        "seed": draw(st.integers(0, 2**16)),
    }


def build(config: dict[str, int], tensor: Callable[[Any], Any] = Tensor) -> GPT:
    return GPT(
        config["vocab_size"], config["embed_dim"], config["num_layers"], config["num_heads"],
        config["max_seq_len"], seed=config["seed"], tensor=tensor,
    )


@st.composite
def decodes(draw: st.DrawFn) -> tuple[dict[str, int], list[int], int]:
    """A model config, a prompt (length 1 included) and a number of new tokens that fit."""
    config = draw(model_configs())
    prompt_len = draw(st.integers(1, config["max_seq_len"] - 1))
    prompt = draw(st.lists(st.integers(0, config["vocab_size"] - 1), min_size=prompt_len, max_size=prompt_len))
    new = draw(st.integers(0, config["max_seq_len"] - prompt_len))
    return config, prompt, new


# -- cached == uncached -----------------------------------------------------------------------


@MANY
@given(case=decodes())
def test_cached_greedy_equals_uncached_token_for_token(case: tuple[dict[str, int], list[int], int]) -> None:
    config, prompt, new = case
    model = build(config)
    uncached = generate_greedy(model, prompt, new, use_cache=False)
    cached = generate_greedy(model, prompt, new, use_cache=True)
    assert len(uncached) == new
    assert cached == uncached, f"{config}, prompt {prompt}: cached {cached} != uncached {uncached}"
    assert "forward" not in vars(model.blocks[0].attention), "generate_greedy left the cache enabled"


@MANY
@given(config=model_configs(), data_=st.data())
def test_every_step_logits_match_uncached_within_float32_tolerance(config: dict[str, int], data_: st.DataObject) -> None:
    model = build(config)
    n = data_.draw(st.integers(1, config["max_seq_len"]), label="tokens")
    tokens = data_.draw(st.lists(st.integers(0, config["vocab_size"] - 1), min_size=n, max_size=n), label="ids")
    uncached = data(model.forward(np.array([tokens])))[0]
    cached = cached_step_logits(model, tokens)
    for t in range(n):
        assert_logits_close(cached[t], uncached[t], f"{config}, step {t}")


@FAST
@given(config=model_configs(), data_=st.data())
def test_multi_token_forward_under_the_cache_takes_the_original_path(config: dict[str, int], data_: st.DataObject) -> None:
    """A multi-token forward under the cache takes the original path and touches no cache state."""
    model = build(config)
    n = data_.draw(st.integers(2, config["max_seq_len"]), label="tokens")
    tokens = data_.draw(st.lists(st.integers(0, config["vocab_size"] - 1), min_size=n, max_size=n), label="ids")
    uncached = data(model.forward(np.array([tokens])))
    cache = enable_kv_cache(model)
    before = snapshot(cache)
    assert_logits_close(data(model.forward(np.array([tokens]))), uncached, "multi-token forward with the cache enabled")
    assert_unchanged(cache, before)
    assert [b.attention.k_proj.rows_seen for b in model.blocks] == [2 * n] * config["num_layers"]  # two forwards
    disable_kv_cache(model)


# -- KVCache ------------------------------------------------------------------------------------


@st.composite
def cache_args(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    return (
        draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 3)),
        draw(st.integers(1, 3)), draw(st.integers(1, 4)),
    )


def token(cache: KVCache, fill: float) -> Tensor:
    return Tensor(np.full((cache.batch_size, cache.num_heads, 1, cache.head_dim), fill, dtype=np.float32))


@FAST
@given(args=cache_args(), seed=st.integers(0, 2**16))
def test_cache_holds_exactly_what_was_written(args: tuple[int, int, int, int, int], seed: int) -> None:
    cache = KVCache(*args)
    b, s, layers, h, d = args
    assert (cache.batch_size, cache.max_seq_len, cache.num_layers, cache.num_heads, cache.head_dim) == args
    assert cache.seq_pos == 0
    rng = np.random.default_rng(seed)
    written = rng.standard_normal((layers, 2, b, h, s, d)).astype(np.float32)
    for pos in range(s):
        for layer in range(layers):
            key = written[layer, 0, :, :, pos : pos + 1, :].copy()
            value = written[layer, 1, :, :, pos : pos + 1, :].copy()
            cache.update(layer, Tensor(key), value)  # a Tensor or a plain array
            key[...] = 99.0  # the cache keeps its own copy
            assert cache.seq_pos == pos, "update must not advance"
        cache.advance()
        for layer in range(layers):
            keys, values = cache.get(layer)
            assert isinstance(keys, Tensor) and isinstance(values, Tensor)
            np.testing.assert_array_equal(keys.data, written[layer, 0, :, :, : pos + 1, :])
            np.testing.assert_array_equal(values.data, written[layer, 1, :, :, : pos + 1, :])
    assert cache.seq_pos == s


def test_get_before_any_advance_is_empty_prefix() -> None:
    cache = KVCache(2, 4, 1, 3, 5)
    cache.update(0, token(cache, 1.0), token(cache, 2.0))
    keys, values = cache.get(0)
    assert keys.shape == values.shape == (2, 3, 0, 5)


@pytest.mark.parametrize("layer", [-1, -4, 4, 5])
@pytest.mark.parametrize("call", ["update", "get"])
def test_layer_outside_range_raises_value_error_negative_too(layer: int, call: str) -> None:
    cache = KVCache(1, 3, 4, 2, 2)
    cache.update(3, token(cache, 7.0), token(cache, 7.0))
    before = snapshot(cache)
    with pytest.raises(ValueError, match=f"Layer index {layer}"):
        if call == "update":
            cache.update(layer, token(cache, 1.0), token(cache, 1.0))
        else:
            cache.get(layer)
    assert_unchanged(cache, before)  # -1 must not have written the last layer


def test_layer_error_messages_are_the_courses() -> None:
    cache = KVCache(1, 3, 4, 2, 2)
    with pytest.raises(ValueError, match=r"^Layer index 4 >= num_layers 4$"):
        cache.get(4)
    with pytest.raises(ValueError, match=r"^Layer index -1 < 0$"):
        cache.get(-1)


@pytest.mark.parametrize("layer", [True, 1.0, "0", None])
def test_non_int_layer_raises_value_error(layer: Any) -> None:
    cache = KVCache(1, 3, 2, 2, 2)
    with pytest.raises(ValueError, match="must be an int"):
        cache.get(layer)


def test_numpy_int_layer_is_accepted() -> None:
    cache = KVCache(1, 3, 2, 2, 2)
    cache.update(np.int64(1), token(cache, 1.0), token(cache, 1.0))
    assert cache.get(np.int32(1))[0].shape == (1, 2, 0, 2)


def test_full_cache_update_raises_the_courses_message_and_changes_nothing() -> None:
    cache = KVCache(1, 4, 2, 2, 3)
    for pos in range(4):
        for layer in range(2):
            cache.update(layer, token(cache, pos + 1.0), token(cache, -pos - 1.0))
        cache.advance()
    before = snapshot(cache)
    with pytest.raises(ValueError, match=r"^Sequence position 4 >= max_seq_len 4$"):
        cache.update(0, token(cache, 9.0), token(cache, 9.0))
    assert_unchanged(cache, before)


def test_advance_past_capacity_raises_and_leaves_seq_pos() -> None:
    cache = KVCache(1, 2, 1, 1, 1)
    cache.advance()
    cache.advance()
    with pytest.raises(ValueError, match="Cannot advance"):
        cache.advance()
    assert cache.seq_pos == 2
    assert cache.get(0)[0].shape == (1, 1, 2, 1)


@pytest.mark.parametrize("which", range(5))
@pytest.mark.parametrize("bad", [2.5, "4", None, True, [2]])
def test_constructor_non_int_raises_type_error(which: int, bad: Any) -> None:
    args: list[Any] = [1, 4, 2, 2, 3]
    args[which] = bad
    with pytest.raises(TypeError, match="must be an int"):
        KVCache(*args)


@pytest.mark.parametrize("which", range(5))
@pytest.mark.parametrize("bad", [0, -1, -7])
def test_constructor_non_positive_raises_value_error(which: int, bad: int) -> None:
    args = [1, 4, 2, 2, 3]
    args[which] = bad
    with pytest.raises(ValueError, match="must be positive"):
        KVCache(*args)


def test_constructor_accepts_numpy_ints_and_stores_python_ints() -> None:
    cache = KVCache(np.int64(2), np.int32(3), np.int64(1), np.int64(2), np.int16(4))
    assert cache.batch_size == 2 and type(cache.batch_size) is int
    assert cache.get(0)[0].shape == (2, 2, 0, 4)


BAD_SHAPES = [
    (1, 2, 1, 3),  # batch 1 for batch 2: would broadcast into every sequence
    (2, 2, 1, 1),  # head_dim 1: would broadcast across head_dim
    (2, 1, 1, 3),  # one head for two
    (2, 2, 2, 3),  # two positions for one slot
    (2, 2, 3),  # missing the seq axis
    (2, 2, 1, 3, 1),  # an extra axis
    (2, 2, 0, 3),  # no position at all
]


@pytest.mark.parametrize("bad", BAD_SHAPES)
@pytest.mark.parametrize("which", ["key", "value"])
def test_update_needs_exact_shape_and_a_failed_update_writes_nothing(bad: tuple[int, ...], which: str) -> None:
    cache = KVCache(2, 3, 2, 2, 3)
    cache.update(0, token(cache, 1.0), token(cache, 2.0))
    cache.update(1, token(cache, 3.0), token(cache, 4.0))
    cache.advance()
    before = snapshot(cache)
    good, wrong = token(cache, 5.0), Tensor(np.full(bad, 5.0, dtype=np.float32))
    key, value = (wrong, good) if which == "key" else (good, wrong)
    with pytest.raises(ValueError, match=f"{which} shape"):
        cache.update(1, key, value)
    assert_unchanged(cache, before)


def test_reset_zeroes_storage_and_seq_pos() -> None:
    cache = KVCache(1, 3, 2, 2, 2)
    for _ in range(3):
        for layer in range(2):
            cache.update(layer, token(cache, 5.0), token(cache, -5.0))
        cache.advance()
    cache.reset()
    assert cache.seq_pos == 0
    cache.advance()
    cache.advance()
    for layer in range(2):
        keys, values = cache.get(layer)
        assert keys.shape == (1, 2, 2, 2)
        assert not keys.data.any() and not values.data.any(), "reset left the previous sequence's data"


@FAST
@given(args=cache_args())
def test_memory_usage_follows_the_formula(args: tuple[int, int, int, int, int]) -> None:
    b, s, layers, h, d = args
    usage = KVCache(*args).get_memory_usage()
    elements = 2 * layers * b * h * s * d
    assert usage["total_elements"] == elements
    assert usage["cache_tensors"] == 2 * layers
    assert usage["total_mb"] == pytest.approx(elements * 4 / 2**20)
    assert usage["per_layer_mb"] == pytest.approx(usage["total_mb"] / layers)


@pytest.mark.parametrize(
    "args, total_bytes, total_mb",
    [((1, 1024, 12, 12, 64), 75_497_472, 72.0), ((4, 1024, 12, 8, 64), 201_326_592, 192.0)],
)
def test_course_memory_examples_are_reported_and_actually_held(
    args: tuple[int, int, int, int, int], total_bytes: int, total_mb: float
) -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = KVCache(*args)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    usage = cache.get_memory_usage()
    assert usage["total_elements"] * 4 == total_bytes
    assert usage["total_mb"] == total_mb
    assert total_bytes <= held <= total_bytes + 64 * 1024, f"held {held} bytes after construction"


def test_update_allocation_does_not_grow_with_position() -> None:
    seq = 4096
    cache = KVCache(1, seq, 1, 4, 16)
    key, value = token(cache, 1.0), token(cache, 2.0)

    def peak_of_update() -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            cache.update(0, key, value)
            return tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()

    first = peak_of_update()
    cache.seq_pos = seq - 1  # jump to the last slot (a test of the reference may; the spec never does)
    last = peak_of_update()
    assert last <= first + 256 and last < 4096, f"update allocated {first} bytes at 0, {last} at {seq - 1}"


# -- enable / disable ------------------------------------------------------------------------------


def small_model(**kwargs: Any) -> GPT:
    return GPT(17, 8, 3, 2, 10, seed=kwargs.pop("seed", 3), **kwargs)


def test_enable_sizes_the_cache_to_the_model_and_marks_it() -> None:
    model = GPT(11, 12, 2, 3, 9, seed=1)
    cache = enable_kv_cache(model)
    assert isinstance(cache, KVCache)
    assert (cache.batch_size, cache.max_seq_len, cache.num_layers, cache.num_heads, cache.head_dim) == (1, 9, 2, 3, 4)
    assert model._kv_cache is cache and model._cache_enabled is True  # type: ignore[attr-defined]
    disable_kv_cache(model)
    assert model._kv_cache is None and model._cache_enabled is False  # type: ignore[attr-defined]


def test_enable_twice_does_not_wrap_twice_and_disable_restores_exactly() -> None:
    model = small_model()
    tokens = [3, 1, 4, 1, 5, 9]
    expected = data(model.forward(np.array([tokens])))[0]
    digest = weights_digest(model)
    enable_kv_cache(model)
    second = enable_kv_cache(model)
    assert model._kv_cache is second  # type: ignore[attr-defined]
    for block in model.blocks:
        assert block._original_attention_forward.__func__ is MultiHeadAttention.forward  # type: ignore[attr-defined]
    rows = []
    for t, tok in enumerate(tokens):
        rows.append(data(model.forward(np.array([[tok]]), start_pos=t))[0, -1])
        second.advance()
    assert_logits_close(np.stack(rows), expected, "after enabling twice")
    disable_kv_cache(model)
    for block in model.blocks:
        assert "forward" not in vars(block.attention), "disable left an instance attribute on attention"
        assert block.attention.forward.__func__ is MultiHeadAttention.forward  # type: ignore[attr-defined]
        assert not hasattr(block, "_original_attention_forward")
    assert weights_digest(model) == digest, "enable/decode/disable changed a weight"
    assert_logits_close(data(model.forward(np.array([tokens])))[0], expected, "after disable")


def test_disable_restores_an_instance_forward_that_was_there_before() -> None:
    model = small_model()
    attention = model.blocks[1].attention
    own = attention.forward  # a bound method, stored on the instance
    attention.forward = own  # type: ignore[method-assign]
    enable_kv_cache(model)
    assert vars(attention)["forward"] is not own
    disable_kv_cache(model)
    assert vars(attention)["forward"] is own
    assert "forward" not in vars(model.blocks[0].attention)


def test_disable_on_a_never_enabled_model_is_a_no_op() -> None:
    model = small_model()
    digest = weights_digest(model)
    disable_kv_cache(model)
    disable_kv_cache(model)
    assert all("forward" not in vars(b.attention) for b in model.blocks)
    assert weights_digest(model) == digest

    class NoBlocks:
        pass

    disable_kv_cache(NoBlocks())


@pytest.mark.parametrize("missing", REQUIRED)
def test_enable_needs_every_model_attribute(missing: str) -> None:
    model = small_model()
    delattr(model, missing)
    with pytest.raises(AttributeError, match=missing):
        enable_kv_cache(model)
    if missing != "blocks":
        assert all("forward" not in vars(b.attention) for b in model.blocks)


@pytest.mark.parametrize("embed_dim, num_heads", [(8, 3), (10, 4), (7, 2)])
def test_enable_rejects_embed_dim_not_divisible_by_heads(embed_dim: int, num_heads: int) -> None:
    model = small_model()
    model.embed_dim, model.num_heads = embed_dim, num_heads
    with pytest.raises(ValueError, match="divisible"):
        enable_kv_cache(model)
    assert all("forward" not in vars(b.attention) for b in model.blocks)
    assert getattr(model, "_cache_enabled", False) is False


def test_gpt_rejects_embed_dim_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        GPT(10, 8, 1, 3)


@FAST
@given(config=model_configs(), data_=st.data())
def test_every_token_is_cached_first_included_each_layer_with_its_own_weights(
    config: dict[str, int], data_: st.DataObject
) -> None:
    model = build(config)
    n = data_.draw(st.integers(1, config["max_seq_len"]), label="tokens")
    tokens = data_.draw(st.lists(st.integers(0, config["vocab_size"] - 1), min_size=n, max_size=n), label="ids")
    # Record what each layer's attention receives in the uncached forward: its keys and
    # values are those inputs through that layer's own k_proj / v_proj.
    seen: list[np.ndarray[Any, Any]] = []
    for block in model.blocks:
        block.attention.forward = record(block.attention, seen)  # type: ignore[method-assign]
    model.forward(np.array([tokens]))
    for block in model.blocks:
        del block.attention.forward
    rows_before = [b.attention.k_proj.rows_seen for b in model.blocks]
    cache = enable_kv_cache(model)
    for t, tok in enumerate(tokens):
        model.forward(np.array([[tok]]), start_pos=t)
        cache.advance()
    for layer, (block, x) in enumerate(zip(model.blocks, seen)):
        attention = block.attention
        for name, proj, got in zip(("keys", "values"), (attention.k_proj, attention.v_proj), cache.get(layer)):
            expected = (x @ proj.weight + proj.bias).reshape(1, n, attention.num_heads, attention.head_dim)
            expected = expected.transpose(0, 2, 1, 3)
            assert got.shape == expected.shape
            np.testing.assert_allclose(got.data, expected, rtol=1e-4, atol=1e-5, err_msg=f"layer {layer} {name}")
        assert attention.k_proj.rows_seen - rows_before[layer] == n, f"layer {layer} k_proj rows"
        assert attention.v_proj.rows_seen - rows_before[layer] == n, f"layer {layer} v_proj rows"
        assert attention.q_proj.rows_seen - rows_before[layer] == n, f"layer {layer} q_proj rows"
    disable_kv_cache(model)


def record(attention: MultiHeadAttention, seen: list[np.ndarray[Any, Any]]) -> Callable[..., Any]:
    original = attention.forward

    def forward(x: Any, mask: Any = None) -> Any:
        seen.append(data(x)[0].copy())
        return original(x, mask)

    return forward


def test_rows_seen_counts_every_projected_row() -> None:
    model = small_model()
    model.forward(np.array([[1, 2, 3], [4, 5, 6]]))
    for block in model.blocks:
        for lin in (block.attention.q_proj, block.attention.out_proj, block.mlp.fc1, block.mlp.fc2):
            assert lin.rows_seen == 6
    assert model.lm_head.rows_seen == 6
    lin = model.blocks[0].attention.k_proj
    lin.project(np.zeros((4, 8), dtype=np.float32))
    lin(model.tensor(np.zeros((1, 2, 8))))
    assert lin.rows_seen == 6 + 4 + 2


# -- the Tensor class the model is built around ---------------------------------------------------


class BoxTensor:
    """A minimal TinyTorch-like Tensor: holds `.data` as given (no float32 cast, no copy)."""

    def __init__(self, data: Any, requires_grad: bool = False) -> None:
        self.data = np.asarray(data)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@FAST
@given(config=model_configs(), data_=st.data())
def test_model_built_around_another_tensor_class_hands_attention_that_class(
    config: dict[str, int], data_: st.DataObject
) -> None:
    model = build(config, tensor=BoxTensor)
    n = data_.draw(st.integers(1, config["max_seq_len"]), label="tokens")
    tokens = data_.draw(st.lists(st.integers(0, config["vocab_size"] - 1), min_size=n, max_size=n), label="ids")
    received: list[tuple[type, type]] = []
    for block in model.blocks:
        block.attention.forward = spy(block.attention, received)  # type: ignore[method-assign]
    logits = model.forward(BoxTensor(np.array([tokens], dtype=np.float32)))
    assert isinstance(logits, BoxTensor)
    assert received and all(types == (BoxTensor, BoxTensor) for types in received), received
    for block in model.blocks:
        del block.attention.forward
    assert isinstance(model.blocks[0].attention.q_proj.forward(BoxTensor(np.zeros((1, 1, config["embed_dim"])))), BoxTensor)
    uncached = data(logits)[0]
    cached = cached_step_logits(model, tokens)
    for t in range(n):
        assert_logits_close(cached[t], uncached[t], f"BoxTensor model, step {t}")
    plain = data(build(config).forward(np.array([tokens])))[0]
    np.testing.assert_allclose(uncached, plain, rtol=1e-6, atol=1e-6)


def spy(attention: MultiHeadAttention, received: list[tuple[type, type]]) -> Callable[..., Any]:
    original = attention.forward

    def forward(x: Any, mask: Any = None) -> Any:
        received.append((type(x), type(mask)))
        out = original(x, mask)
        received.append((type(out), type(mask)))
        return out

    return forward


# -- the model's arithmetic ----------------------------------------------------------------------


def naive_forward(model: GPT, tokens: list[int]) -> np.ndarray[Any, Any]:
    """The same GPT written the obvious way, in float64, one head at a time: a check that the
    reference's cheaper layer code (LayerNorm, GELU, head reshapes) computes what it says."""

    def layer_norm(x: np.ndarray[Any, Any], norm: Any) -> np.ndarray[Any, Any]:
        out: np.ndarray[Any, Any] = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + norm.eps)
        normed: np.ndarray[Any, Any] = out * norm.gamma + norm.beta
        return normed

    def linear(x: np.ndarray[Any, Any], lin: Any) -> np.ndarray[Any, Any]:
        out: np.ndarray[Any, Any] = x @ lin.weight.astype(np.float64) + lin.bias
        return out

    n = len(tokens)
    x = model.token_embedding[tokens].astype(np.float64) + model.position_embedding[:n]
    for block in model.blocks:
        a = block.attention
        h = layer_norm(x, block.ln1)
        q, k, v = linear(h, a.q_proj), linear(h, a.k_proj), linear(h, a.v_proj)
        heads = []
        for i in range(a.num_heads):
            cols = slice(i * a.head_dim, (i + 1) * a.head_dim)
            scores = q[:, cols] @ k[:, cols].T / np.sqrt(a.head_dim)
            scores[np.triu_indices(n, 1)] = -np.inf
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            heads.append(weights / weights.sum(-1, keepdims=True) @ v[:, cols])
        x = x + linear(np.concatenate(heads, axis=-1), a.out_proj)
        f = linear(layer_norm(x, block.ln2), block.mlp.fc1)
        f = 0.5 * f * (1 + np.tanh(np.sqrt(2 / np.pi) * (f + 0.044715 * f**3)))
        x = x + linear(f, block.mlp.fc2)
    out: np.ndarray[Any, Any] = linear(layer_norm(x, model.ln_f), model.lm_head)
    return out


@FAST
@given(config=model_configs(), data_=st.data())
def test_forward_computes_the_textbook_gpt(config: dict[str, int], data_: st.DataObject) -> None:
    model = build(config)
    n = data_.draw(st.integers(1, config["max_seq_len"]), label="tokens")
    tokens = data_.draw(st.lists(st.integers(0, config["vocab_size"] - 1), min_size=n, max_size=n), label="ids")
    assert_logits_close(data(model.forward(np.array([tokens])))[0], naive_forward(model, tokens), f"{config}")


def test_attention_without_a_mask_attends_everywhere() -> None:
    model = small_model()
    attention = model.blocks[0].attention
    x = Tensor(np.random.default_rng(0).standard_normal((1, 4, 8)))
    causal = data(attention.forward(x, Tensor(np.tril(np.ones((4, 4))))))
    open_ = data(attention.forward(x))
    np.testing.assert_allclose(open_[0, -1], causal[0, -1], rtol=1e-5, atol=1e-6)  # the last query sees all keys either way
    assert not np.allclose(open_[0, 0], causal[0, 0])  # the first one only its own key under the mask


# -- start_pos ------------------------------------------------------------------------------------


def test_start_pos_bounds() -> None:
    model = GPT(9, 4, 1, 1, 6, seed=0)
    assert data(model.forward(np.array([[1, 2]]), start_pos=4)).shape == (1, 2, 9)  # ends exactly at the last slot
    assert data(model.forward(np.array([[1]]), start_pos=5)).shape == (1, 1, 9)
    with pytest.raises(ValueError, match="outside"):
        model.forward(np.array([[1, 2]]), start_pos=5)
    with pytest.raises(ValueError, match="outside"):
        model.forward(np.array([[1]]), start_pos=-1)
    with pytest.raises(ValueError, match="outside"):
        model.forward(np.array([[1] * 7]))
    with pytest.raises(ValueError, match=r"\(batch, seq_len\)"):
        model.forward(np.array([1, 2]))


@FAST
@given(config=model_configs(), data_=st.data())
def test_start_pos_selects_the_position_embedding(config: dict[str, int], data_: st.DataObject) -> None:
    """forward(tokens, start_pos=p) is forward(tokens) on a model whose positions start at p."""
    model = build(config)
    p = data_.draw(st.integers(0, config["max_seq_len"] - 1), label="start_pos")
    n = data_.draw(st.integers(1, config["max_seq_len"] - p), label="tokens")
    tokens = np.array([data_.draw(st.lists(st.integers(0, config["vocab_size"] - 1), min_size=n, max_size=n))])
    shifted = build(config)
    shifted.position_embedding = np.roll(model.position_embedding, -p, axis=0)
    np.testing.assert_array_equal(data(model.forward(tokens, start_pos=p)), data(shifted.forward(tokens)))


def test_batch_of_sequences_is_independent() -> None:
    model = small_model()
    both = data(model.forward(np.array([[1, 2, 3], [4, 5, 6]])))
    np.testing.assert_allclose(both[1], data(model.forward(np.array([[4, 5, 6]])))[0], rtol=1e-5, atol=1e-5)


def test_generate_greedy_disables_the_cache_even_when_decoding_fails() -> None:
    model = GPT(9, 4, 2, 2, 4, seed=0)
    with pytest.raises(ValueError, match="outside"):
        generate_greedy(model, [1, 2], 5, use_cache=True)  # runs past max_seq_len
    assert all("forward" not in vars(b.attention) for b in model.blocks)
    assert model._cache_enabled is False  # type: ignore[attr-defined]


# -- the reference Tensor ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_tensor_is_a_float32_copy(dtype: Any) -> None:
    source = np.arange(6, dtype=dtype).reshape(2, 3)
    t = Tensor(source, requires_grad=True)
    assert t.data.dtype == np.float32 and t.shape == (2, 3) and t.requires_grad
    source[0, 0] = 100
    assert t.data[0, 0] == 0.0
    assert t.numpy() is t.data
    assert repr(t) == "Tensor(shape=(2, 3))"


def test_tensor_operations() -> None:
    a = Tensor(np.arange(6).reshape(2, 3))
    b = Tensor(np.ones((3, 2)))
    np.testing.assert_array_equal((a @ b).data, np.arange(6).reshape(2, 3) @ np.ones((3, 2)))
    np.testing.assert_array_equal(a.matmul(np.ones((3, 1))).data, [[3.0], [12.0]])
    np.testing.assert_array_equal((a + 1).data, np.arange(1, 7).reshape(2, 3))
    np.testing.assert_array_equal((a - a).data, np.zeros((2, 3)))
    np.testing.assert_array_equal((a * 2).data, 2 * np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal((a / Tensor(2.0)).data, np.arange(6).reshape(2, 3) / 2)
    np.testing.assert_array_equal(a[1].data, [3.0, 4.0, 5.0])
    assert a.reshape(3, 2).shape == (3, 2)
    assert a.transpose().shape == (3, 2)
    c = Tensor(np.zeros((2, 3, 4)))
    assert c.transpose(0, 2).shape == (4, 3, 2)
    assert c.transpose().shape == (2, 4, 3)
    with pytest.raises(ValueError, match="both"):
        c.transpose(0)
    assert all(isinstance(x, Tensor) for x in (a @ b, a + 1, a[0], a.reshape(6), a.transpose()))


def test_kv_mod_7s_explicit_example_overflows_float64_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    """spec.checks._model.OVERFLOWING must keep its purpose: some attention score above 709.8,
    where np.exp overflows in float64, so an unshifted softmax gives nan in every precision."""
    import reference.gpt as gpt_module
    from spec.checks._model import OVERFLOWING

    seen: list[float] = []
    original = gpt_module.softmax

    def spy(scores: Any) -> Any:
        seen.append(float(np.max(scores)))
        return original(scores)

    monkeypatch.setattr(gpt_module, "softmax", spy)
    c = OVERFLOWING.config
    model = GPT(c.vocab_size, c.embed_dim, c.num_layers, c.num_heads, c.max_seq_len, seed=c.seed)
    for block in model.blocks:
        block.attention.q_proj.weight *= np.float32(c.qk_scale)
        block.attention.k_proj.weight *= np.float32(c.qk_scale)
    model.forward(Tensor(np.array([OVERFLOWING.tokens])), start_pos=0)
    assert max(seen) > 709.8, max(seen)
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(np.exp(np.float64(max(seen))))
