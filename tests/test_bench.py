"""Smoke test of bench/decode.py on tiny sizes, so the benchmark cannot rot.

No timing is asserted (figures, never assertions); only what is deterministic: projection
row counts, the roofline arithmetic, the memory report, and that every output is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.decode import Config, Plan, main, report, roofline_ratio, run

TINY = Plan(
    configs=(Config("tiny", vocab_size=20, embed_dim=8, num_layers=2, num_heads=2, max_seq_len=16),),
    new_tokens=(1, 4),
    repeats=1,
    efficiency_config="tiny",
    efficiency_rounds=1,
    efficiency_steps=3,
    matvec_repeats=1,
    flop_tokens=4,
    update_seq_len=8,
    update_repeats=2,
    memory_examples=(("tiny", (1, 4, 2, 2, 2), 256),),
)


def test_bench_runs_end_to_end_on_tiny_sizes(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)], plan=TINY) == 0
    results = json.loads((tmp_path / "decode.json").read_text())
    rows = results["configs"][0]["throughput"]
    assert [r["new_tokens"] for r in rows] == [1, 4]
    four = rows[1]
    assert four["identical_tokens"] is True
    assert (four["kv_rows_uncached"], four["kv_rows_cached"]) == (1 + 2 + 3 + 4, 4)  # rows_seen, per layer
    assert four["kv_projection_ratio_counted"] == four["kv_projection_ratio_exact"] == 2.5
    assert results["efficiency"]["weight_bytes"] == results["configs"][0]["weight_bytes"]
    memory = results["memory"][0]
    assert memory["reported_bytes"] == 256 and memory["held_bytes"] >= 256
    assert results["update"]["seq_len"] == 8
    text = report(run(TINY, log=lambda _: None))
    assert "speedup" in text and "efficiency" in text and "tiny" in text


@pytest.mark.parametrize("n", [1, 10, 100])
def test_roofline_limits(n: int) -> None:
    # Weight-bound at every step: caching saves nothing; compute-bound: it saves the K/V ratio.
    assert roofline_ratio(n, weight_read_s=1.0, token_compute_s=0.0) == pytest.approx(1.0)
    assert roofline_ratio(n, weight_read_s=0.0, token_compute_s=1.0) == pytest.approx((n + 1) / 2)
    # In between: steps up to t = 4 cost the weight read, longer ones t x compute.
    expected = sum(max(4.0, t) for t in range(1, n + 1)) / (n * 4.0)
    assert roofline_ratio(n, weight_read_s=4.0, token_compute_s=1.0) == pytest.approx(expected)
