"""Group performance: one update is an indexed write, O(1) in the sequence length.

Counted, not timed: the driver measures with tracemalloc the peak bytes allocated during
one update, on the submission's side. Two measurements per layer, on one cache of a long
max_seq_len: the update at position 0 and the update at position max_seq_len - 2 (the last
position is the bounds checks' edge: a capacity check firing early costs bounds only), after a
history has been written. tracemalloc counts are deterministic, so the check gives the
same verdict on a loaded machine.

Thresholds (KV-PERF-1): at most 16 KiB more near the end than at the first position, and
below 1/8 of the storage. With the cache below (storage 1 MiB, each layer's keys 256 KiB):
- the reference's indexed write allocates under 1 KiB at either position (views, small
  temporaries; measured 896-992 bytes): far inside both limits;
- concatenating or stacking the history allocates about 256 KiB near the end
  (a new (B, H, 511, D) float32 array): 16 times the growth limit, twice the size limit;
- copying the layer's whole buffer on every update allocates 256 KiB at every position:
  no growth, but twice the 1/8 limit. (With num_layers <= 3 one layer's keys are at
  least 1/6 of the storage, so the size limit always catches it.)
"""

from __future__ import annotations

import numpy as np

from spec.clauses import checks
from spec.data import Pattern
from spec.isolation.driver import Driver
from spec.session import NotMeasured, Session, not_measured
from spec.strategies import CacheConfig

CONFIG = CacheConfig(batch_size=2, max_seq_len=512, num_layers=2, num_heads=4, head_dim=16)
GROWTH = 16 * 1024  # bytes the last update may allocate beyond the first
FRACTION = 8  # one update allocates less than storage / FRACTION


@checks("KV-PERF-1")
def test_update_allocation_does_not_grow_with_seq_pos(driver: Driver) -> None:
    s = Session(driver)
    c = CONFIG
    cache = s.new_cache(*c.args)
    storage = 2 * c.num_layers * c.batch_size * c.num_heads * c.max_seq_len * c.head_dim * 4
    key, value = Pattern(1, c.token_shape), Pattern(-1, c.token_shape)
    s.record("import tracemalloc")
    s.record(f"k, v = {key.code()}, {value.code()}")

    def measured(layer: int, name: str) -> int:
        s.record(f"tracemalloc.start(); {cache.name}.update({layer}, k, v); {name}_{layer} = tracemalloc.get_traced_memory()[1]; "
                 f"tracemalloc.stop(); print('bytes allocated:', {name}_{layer})")
        return s.call(lambda: s.driver.update_allocation(cache.handle, layer, key.array(), value.array())).value

    def seq_pos() -> int:
        pos = s.call(lambda: s.driver.attribute(cache.handle, "seq_pos"))
        return pos if isinstance(pos, int) else c.max_seq_len

    def blocked(clause: str, why: str) -> NotMeasured:
        return not_measured("KV-PERF-1", clause, why, s.script.render())

    def too_big(layer: int, position: int, got: int, name: str) -> None:
        if got >= storage // FRACTION:
            raise s.fail(
                "KV-PERF-1", f"less than {storage // FRACTION:,} bytes (1/{FRACTION} of the {storage:,}-byte storage)",
                f"update({layer}, k, v) at seq_pos {position}: {got} bytes",
                show=f"'update({layer}, k, v) at seq_pos {position}:', {name}_{layer}, 'bytes'",
                hint="update copies or reallocates storage: an indexed write into the existing array "
                "allocates almost nothing",
            )

    first = []
    for layer in range(c.num_layers):
        position = seq_pos()
        first.append(measured(layer, "first"))
        too_big(layer, position, first[-1], "first")
    # Fill to the end the way a decode loop does; recorded as one loop. The loop follows
    # seq_pos as the cache reports it, so an update that also advances (the update check
    # reports that) still gets its history; one that moves nothing cannot be measured.
    last_position = c.max_seq_len - 2  # the last position is the bounds checks' edge
    s.record(f"while {cache.name}.seq_pos < {last_position}:\n    for layer in range({c.num_layers}):\n"
             f"        {cache.name}.update(layer, k, v)\n    {cache.name}.advance()")
    k, v = key.array(), value.array()
    while (start := seq_pos()) < last_position:
        for layer in range(c.num_layers):
            if seq_pos() < last_position:
                s.call(lambda: s.driver.update(cache.handle, layer, k, v))
        if seq_pos() == start:
            s.call(lambda: s.driver.advance(cache.handle))
        if seq_pos() <= start:
            raise blocked("KV-ADV-1", f"neither update nor advance moved seq_pos past {start}: the end of the cache, "
                          "where the allocation is measured, is out of reach")
    if seq_pos() != last_position:
        raise blocked("KV-ADV-1", f"seq_pos went from {last_position - 1} to {seq_pos()}, past the position measured")
    last, where = [], []
    for layer in range(c.num_layers):
        if seq_pos() >= c.max_seq_len:
            break
        where.append(seq_pos())
        last.append(measured(layer, "last"))
    for layer in range(len(last)):
        at = f"update({layer}, k, v) at seq_pos {where[layer]}: "
        if last[layer] > first[layer] + GROWTH:
            raise s.fail(
                "KV-PERF-1", f"about {first[layer]:,} bytes, as at seq_pos 0 (at most {GROWTH:,} more)",
                at + f"{last[layer]} bytes", show=f"{at[:-2]!r}, last_{layer}, 'bytes'",
                hint="update allocates more as the sequence grows: write into the pre-allocated storage "
                "with cache[:, :, seq_pos, :] = key[:, :, 0, :] instead of concatenating or stacking the history",
            )
        too_big(layer, where[layer], last[layer], "last")
    # An update that stores nothing allocates nothing: the measurement counts only if the
    # measured writes are there to read back.
    if seq_pos() < c.max_seq_len:
        s.call(lambda: s.driver.advance(cache.handle))
        s.record(f"{cache.name}.advance()")
    for layer, p in enumerate(where):
        keys, _ = cache.get(layer)
        if keys.ndim != 4 or keys.shape[2] <= p:
            raise blocked("KV-GET-1", f"get({layer}) returned shape {keys.shape} at seq_pos {seq_pos()}: the write "
                          f"measured at position {p} cannot be read back")
        if not np.allclose(keys[:, :, p], key.array()[:, :, 0]):
            raise blocked("KV-UPD-1", f"position {p} of layer {layer} does not hold the key written by the measured "
                          "update: an update that does not store the key allocates nothing, and proves nothing")
