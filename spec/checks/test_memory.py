"""Group memory: get_memory_usage() reports the pre-allocated storage, and the storage
is really there, in float32, from construction on.

The worked examples build the course's two large caches (72 MB and 192 MB of float32
zeros; np.zeros maps them lazily, so building them costs almost nothing), once each,
in separate checks so that only one is alive at a time.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from spec.checks._cache import write_history
from spec.clauses import checks
from spec.isolation.driver import Driver
from spec.session import CacheRef, Session
from spec.strategies import CacheConfig, cache_configs

KEYS = ("total_mb", "per_layer_mb", "cache_tensors", "total_elements")
MB = 2**20
RTOL = 1e-9  # KV-MEM-3's tolerance: the same arithmetic in another order, nothing more
GPT2_SMALL = CacheConfig(batch_size=1, max_seq_len=1024, num_layers=12, num_heads=12, head_dim=64)
BATCH_4 = CacheConfig(batch_size=4, max_seq_len=1024, num_layers=12, num_heads=8, head_dim=64)


def elements(config: CacheConfig) -> int:
    c = config
    return 2 * c.num_layers * c.batch_size * c.num_heads * c.max_seq_len * c.head_dim


def megabytes(config: CacheConfig) -> float:
    return elements(config) * 4 / MB


def report(s: Session, cache: CacheRef, clause: str) -> dict[str, float]:
    usage = cache.memory_usage()
    missing = [k for k in KEYS if k not in usage]
    if missing:
        raise s.fail(clause, f"a dict with keys {', '.join(KEYS)}", f"keys {sorted(usage)}",
                     hint=f"missing {', '.join(missing)}")
    return usage


def mb_hint(expected: float, got: float, what: str) -> str:
    if math.isclose(got * 1e6, expected * MB, rel_tol=1e-6):
        return f"{what}: MB here is 1024 * 1024 bytes (2**20), not 10**6"
    if math.isclose(got, expected * 2, rel_tol=1e-6):
        return f"{what} is twice the float32 size: 4 bytes per element (are you counting 8, float64?)"
    if math.isclose(got * 2, expected, rel_tol=1e-6):
        return f"{what} is half: keys and values are two tensors per layer (the factor 2)"
    return f"{what} = total_elements * 4 bytes / 2**20"


@checks("KV-MEM-1")
@given(config=cache_configs())
def test_memory_report_has_four_numeric_entries(driver: Driver, config: CacheConfig) -> None:
    s = Session(driver)
    cache = s.new_cache(*config.args)
    usage = report(s, cache, "KV-MEM-1")
    for key in KEYS:
        if not math.isfinite(usage[key]):
            raise s.fail("KV-MEM-1", f"{key}: a finite number", usage[key],
                         hint="every entry of the report is a plain number (int or float), not a string or array")


@checks("KV-MEM-2")
@given(config=cache_configs(), tokens=st.integers(0, 6))
def test_memory_counts_every_element_of_the_storage(driver: Driver, config: CacheConfig, tokens: int) -> None:
    """2 x L x B x H x S x D elements in 2 x L tensors, on a new cache and after some tokens."""
    s = Session(driver)
    cache = s.new_cache(*config.args)
    expected = elements(config)
    for moment in ("new", "used"):
        if moment == "used":
            write_history((cache,), config, min(tokens, config.max_seq_len))
        usage = report(s, cache, "KV-MEM-2")
        got = usage["total_elements"]
        if got != expected:
            if got * 2 == expected:
                hint = "keys and values are two tensors per layer: count both (the factor 2)"
            elif moment == "used":
                hint = "the report changed as tokens were cached: count the pre-allocated max_seq_len positions"
            else:
                hint = "total_elements = 2 * num_layers * batch_size * num_heads * max_seq_len * head_dim"
            raise s.fail("KV-MEM-2", expected, got, hint=hint)
        if usage["cache_tensors"] != 2 * config.num_layers:
            raise s.fail("KV-MEM-2", 2 * config.num_layers, usage["cache_tensors"],
                         hint="one key tensor and one value tensor per layer: 2 * num_layers")


def check_megabytes(s: Session, cache: CacheRef, config: CacheConfig) -> None:
    usage = report(s, cache, "KV-MEM-3")
    total = megabytes(config)
    if not math.isclose(usage["total_mb"], total, rel_tol=RTOL):
        raise s.fail("KV-MEM-3", total, usage["total_mb"], hint=mb_hint(total, usage["total_mb"], "total_mb"))
    per_layer = total / config.num_layers
    if not math.isclose(usage["per_layer_mb"], per_layer, rel_tol=RTOL):
        got = usage["per_layer_mb"]
        hint = ("per_layer_mb is the whole cache's size: divide total_mb by num_layers" if math.isclose(got, total, rel_tol=RTOL)
                else mb_hint(per_layer, got, "per_layer_mb"))
        raise s.fail("KV-MEM-3", per_layer, got, hint=hint)


@checks("KV-MEM-3")
@given(config=cache_configs())
def test_memory_megabytes_follow_from_the_element_count(driver: Driver, config: CacheConfig) -> None:
    """total_mb = 2LBHSD * 4 / 2**20 and per_layer_mb = total_mb / L, for random sizes."""
    s = Session(driver)
    check_megabytes(s, s.new_cache(*config.args), config)


@checks("KV-MEM-3")
@given(config=cache_configs(max_batch=1), batch=st.integers(2, 4))
def test_memory_is_linear_in_batch_size(driver: Driver, config: CacheConfig, batch: int) -> None:
    s = Session(driver)
    one = report(s, s.new_cache(*config.args), "KV-MEM-3")["total_mb"]
    args = (batch,) + config.args[1:]
    many = report(s, s.new_cache(*args), "KV-MEM-3")["total_mb"]
    if not math.isclose(many, batch * one, rel_tol=RTOL):
        raise s.fail("KV-MEM-3", f"{batch} x {one} = {batch * one}", many,
                     hint="every batch element has its own keys and values: memory grows linearly with batch_size")


@checks("KV-MEM-3")
def test_gpt2_small_cache_is_72_mb(driver: Driver) -> None:
    """The course's worked example: L=12, H=12, S=1024, D=64, B=1 is 75,497,472 bytes = 72.0 MB."""
    s = Session(driver)
    check_megabytes(s, s.new_cache(*GPT2_SMALL.args), GPT2_SMALL)


@checks("KV-MEM-3")
def test_batch_4_cache_is_192_mb(driver: Driver) -> None:
    """The course's worked example: L=12, H=8, D=64, S=1024, B=4 is 201,326,592 bytes = 192 MB."""
    s = Session(driver)
    check_megabytes(s, s.new_cache(*BATCH_4.args), BATCH_4)


# 1 MiB of storage each, in slices of 2 KiB per layer, position and kind (B * H * D * 4
# bytes), so that a layout of one small array per layer and position pays a few hundred
# bytes of object overhead per 2 KiB slice, far inside the bound; two shapes, so a layout
# that only works for one of them shows.
RETAINED_CONFIGS = (
    CacheConfig(batch_size=2, max_seq_len=128, num_layers=2, num_heads=4, head_dim=64),
    CacheConfig(batch_size=1, max_seq_len=128, num_layers=2, num_heads=8, head_dim=64),
)
LOW, HIGH = 0.95, 1.5  # KV-MEM-4: bytes held / (2 * L * B * H * S * D * 4)


@checks("KV-MEM-4")
def test_storage_is_allocated_at_construction_as_reported(driver: Driver) -> None:
    """Bytes a new cache still holds (tracemalloc, current not peak) are at least 95% of the
    formula's 2 x L x B x H x S x D x 4 and less than 1.5 times it. Lazy storage holds
    nothing, float64 twice the formula; the object overhead of a layout of many small
    arrays is a few percent here. Compared with the formula, not with the submission's
    own report (KV-MEM-2 compares the report with the formula)."""
    for config in RETAINED_CONFIGS:
        s = Session(driver)
        s.record("import tracemalloc")
        handle, held = s.call(lambda: s.driver.construction_retained(*config.args))
        args = ", ".join(map(str, config.args))
        s.record(f"tracemalloc.start(); cache = KVCache({args}); held = tracemalloc.get_traced_memory()[0]; "
                 "tracemalloc.stop()")
        expected = elements(config) * 4
        if not LOW * expected <= held.value < HIGH * expected:
            if held.value >= 1.9 * expected:
                hint = "the storage holds more than float32 needs: allocate with dtype=np.float32 (np.zeros defaults to float64)"
            elif held.value < 0.5 * expected:
                hint = "the storage is not allocated when the cache is built: pre-allocate (B, H, max_seq_len, D) per layer in __init__"
            else:
                hint = f"hold the keys and values of every layer and position, in float32, from __init__ on: {expected:,} bytes"
            raise s.fail("KV-MEM-4", f"{expected:,} bytes (2 x {' x '.join(map(str, (config.num_layers, config.batch_size, config.num_heads, config.max_seq_len, config.head_dim)))} x 4) "
                         f"held, at least {LOW:.0%} of it and less than {HIGH:g} times it", f"{held.value} bytes",
                         call=s.script.lines[-1], hint=hint, show="held, 'bytes'")
