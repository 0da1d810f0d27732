"""Decode benchmark of the reference: what the KV cache buys, measured against physical limits.

Figures, never assertions (a slow or busy machine must not fail anything). Run
`nox -s bench` or `python -m bench.decode [--quick] [--out DIR]`; docs/benchmark.md
explains the figures. What it measures:

1. Decode throughput, cached vs uncached greedy generation, side by side (each repeat
   runs both, uncached first) at 10, 25, 50, 100 and 200 new tokens from a one-token
   prompt, on two GPT configurations; medians over the repeats.
2. Three ratios beside the measured speedup: the exact K/V-projection ratio (n+1)/2
   (also counted with `Linear.rows_seen`), and a roofline prediction in which a step
   over t tokens costs max(weight-read time, t x per-token compute time), with the
   bandwidth and FLOP rate measured here.
3. The weight-streaming limit: one matrix-vector product over as many bytes as the
   model's weights, and the cached step's efficiency = that time / cached step time.
4. KVCache.update cost at position 0 vs S-1 (S = 8192) and tracemalloc bytes per update.
5. Cache memory reported by get_memory_usage() vs bytes held after construction.

It never sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE or thread counts in the environment;
it prints what numpy's BLAS uses, and the load average (other processes on a 2-core
machine change every figure here).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from reference import GPT, KVCache, Tensor, disable_kv_cache, enable_kv_cache, generate_greedy
from reference.gpt import Linear

NEW_TOKENS = (10, 25, 50, 100, 200)
PROMPT = [1]  # one token: uncached step i then projects i rows, so the K/V ratio is exactly (n+1)/2
MB = 1024 * 1024
BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Config:
    name: str
    vocab_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    max_seq_len: int = 256

    def build(self) -> GPT:
        return GPT(self.vocab_size, self.embed_dim, self.num_layers, self.num_heads, self.max_seq_len, seed=0)


CONFIGS = (
    Config("small", vocab_size=1000, embed_dim=256, num_layers=4, num_heads=4),
    Config("larger", vocab_size=1000, embed_dim=512, num_layers=4, num_heads=8),
)
# The course's worked examples: (batch, max_seq_len, layers, heads, head_dim) and the bytes it states.
MEMORY_EXAMPLES = (
    ("GPT-2 small", (1, 1024, 12, 12, 64), 75_497_472),
    ("L=12 H=8 D=64 S=1024 B=4", (4, 1024, 12, 8, 64), 201_326_592),
)


# -- timing helpers ---------------------------------------------------------------------------------


def seconds(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` calls of fn, after one untimed warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def linears(model: GPT) -> Iterator[Linear]:
    """Every weight matrix a decode step reads (embeddings are looked up: one row each)."""
    for block in model.blocks:
        a = block.attention
        yield from (a.q_proj, a.k_proj, a.v_proj, a.out_proj, block.mlp.fc1, block.mlp.fc2)
    yield model.lm_head


def weight_count(model: GPT) -> int:
    return sum(lin.weight.size + lin.bias.size for lin in linears(model))


# -- 1, 2: throughput and the ratios ------------------------------------------------------------------


def key_rows(model: GPT) -> int:
    return sum(block.attention.k_proj.rows_seen for block in model.blocks)


def decode_throughput(model: GPT, new_tokens: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
    """Per n: median tokens/s without and with the cache, and K/V rows each projected."""
    rows = []
    for n in new_tokens:
        uncached_s, cached_s, identical = [], [], True
        for _ in range(repeats):
            before = key_rows(model)
            start = time.perf_counter()
            plain = generate_greedy(model, PROMPT, n, use_cache=False)
            uncached_s.append(time.perf_counter() - start)
            uncached_rows = key_rows(model) - before
            before = key_rows(model)
            start = time.perf_counter()
            cached = generate_greedy(model, PROMPT, n, use_cache=True)
            cached_s.append(time.perf_counter() - start)
            cached_rows = key_rows(model) - before
            identical = identical and plain == cached
        rows.append(
            {
                "new_tokens": n,
                "uncached_tokens_per_s": n / median(uncached_s),
                "cached_tokens_per_s": n / median(cached_s),
                "speedup": median(uncached_s) / median(cached_s),
                "uncached_seconds": uncached_s,
                "cached_seconds": cached_s,
                "identical_tokens": identical,
                "kv_rows_uncached": uncached_rows // model.num_layers,
                "kv_rows_cached": cached_rows // model.num_layers,
                "kv_projection_ratio_counted": uncached_rows / cached_rows,
                "kv_projection_ratio_exact": (n + 1) / 2,
            }
        )
    return rows


def roofline_ratio(n: int, weight_read_s: float, token_compute_s: float, prompt_len: int = len(PROMPT)) -> float:
    """Predicted uncached/cached time for n new tokens: each step over t tokens costs
    max(weight-read time, t x per-token compute time)."""

    def step(t: int) -> float:
        return max(weight_read_s, t * token_compute_s)

    uncached = sum(step(t) for t in range(prompt_len, prompt_len + n))
    cached = (prompt_len + n - 1) * step(1)  # one forward per token, prompt included, none for the last
    return uncached / cached


# -- 3: the weight-streaming limit and the cached step --------------------------------------------------


def streaming_layouts(n_weights: int, embed_dim: int) -> tuple[int, Callable[[], object], Callable[[], object]]:
    """One matrix-vector product over n_weights float32 (the cost of reading the weights once), two ways.

    Returns (bytes, x @ M with M (in, out) row-major, the layout Linear uses; M @ x with M
    (out, in) row-major, a dot-product kernel). Operands are built once, here.
    """
    rng = np.random.default_rng(0)
    rows = n_weights // embed_dim
    matrix = rng.standard_normal((rows, embed_dim), dtype=np.float32)
    x_in = rng.standard_normal((1, rows), dtype=np.float32)
    transposed = np.ascontiguousarray(matrix.T)
    x_out = rng.standard_normal(rows, dtype=np.float32)
    return matrix.nbytes, lambda: x_in @ matrix, lambda: transposed @ x_out


def stream_matvec(n_weights: int, embed_dim: int, repeats: int) -> dict[str, float]:
    """Both layouts of the streaming matvec timed; the limit is the faster."""
    nbytes, as_linear, as_dot = streaming_layouts(n_weights, embed_dim)
    linear_s, dot_s = median(seconds(as_linear, repeats)), median(seconds(as_dot, repeats))
    return {"bytes": nbytes, "linear_layout_s": linear_s, "dot_layout_s": dot_s, "seconds": min(linear_s, dot_s)}


def gemm_flop_rate(model: GPT, tokens: int, repeats: int) -> float:
    """FLOP/s of the model's own weight matmuls over `tokens` rows (an uncached step's shape)."""
    rng = np.random.default_rng(1)
    weights = [lin.weight for lin in linears(model)]
    inputs = {w.shape[0]: rng.standard_normal((tokens, w.shape[0]), dtype=np.float32) for w in weights}

    def all_matmuls() -> None:
        for w in weights:
            inputs[w.shape[0]] @ w

    flops = 2 * tokens * sum(w.size for w in weights)
    return flops / median(seconds(all_matmuls, repeats))


def streaming_matvec(n_weights: int, embed_dim: int, repeats: int) -> Callable[[], object]:
    """The weight-streaming limit as a callable: the layout that is faster here."""
    _, as_linear, as_dot = streaming_layouts(n_weights, embed_dim)
    return min((as_linear, as_dot), key=lambda fn: median(seconds(fn, repeats)))


def projections_alone(model: GPT) -> Callable[[], object]:
    """A cached step's weight matmuls with nothing around them: every Linear once, in order, one row each."""
    pairs = [(np.ones((1, 1, lin.weight.shape[0]), dtype=np.float32), lin.weight) for lin in linears(model)]

    def run() -> None:
        for x, weight in pairs:
            x @ weight

    return run


def step_efficiency(model: GPT, rounds: int, steps: int, matvec_repeats: int) -> dict[str, Any]:
    """The cached step against the weight-streaming limit, timed in interleaved pairs.

    Each pair is one streaming matvec, then at once one cached decode step (forward one
    token, advance, argmax) at positions 0..steps-1 of a round, so both halves of a pair
    see the same machine: the same load, clock and cache contents. Efficiency is the
    median of the pairs' ratios; on a shared machine it is far steadier than a ratio of
    separately timed medians. The step's projections alone (`projections_alone`) are
    paired with the limit the same way: that ratio is the ceiling for any code that
    calls the projections one by one, as the course's API does.
    """
    limit = streaming_matvec(weight_count(model), model.embed_dim, matvec_repeats)
    projections = projections_alone(model)
    limit_s, step_s, ratios, projection_ratios = [], [], [], []
    cache = enable_kv_cache(model)
    try:
        for _ in range(rounds):
            cache.reset()
            token = PROMPT[0]
            for pos in range(steps):
                t0 = time.perf_counter()
                limit()
                t1 = time.perf_counter()
                logits = model.forward(np.array([[token]]), start_pos=pos)
                cache.advance()
                token = int(np.argmax(logits.data[0, -1]))
                t2 = time.perf_counter()
                limit()
                t3 = time.perf_counter()
                projections()
                t4 = time.perf_counter()
                limit_s.append(t1 - t0)
                step_s.append(t2 - t1)
                ratios.append((t1 - t0) / (t2 - t1))
                projection_ratios.append((t3 - t2) / (t4 - t3))
    finally:
        disable_kv_cache(model)
    return {
        "weight_bytes": 4 * weight_count(model),
        "matvec_s": median(limit_s),
        "cached_step_s": median(step_s),
        "efficiency": median(ratios),
        "efficiency_quartiles": statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3,
        "projections_alone_efficiency": median(projection_ratios),
        "projections": len(list(linears(model))),
        "pairs": len(ratios),
        "steps_per_round": steps,
    }


def single_thread_efficiency(model: GPT, rounds: int, steps: int, matvec_repeats: int) -> dict[str, Any] | None:
    """The same with BLAS limited to one thread (threadpoolctl; None without it)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    with threadpool_limits(limits=1, user_api="blas"):
        return step_efficiency(model, rounds, steps, matvec_repeats)


# -- 4, 5: the cache itself ----------------------------------------------------------------------------------


def allocated_by(fn: Callable[[], object]) -> int:
    """Peak bytes tracemalloc sees allocated during fn() (0 if nothing)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return max(0, tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()


def update_cost(seq_len: int = 8192, num_heads: int = 8, head_dim: int = 64, repeats: int = 2000, rounds: int = 5) -> dict[str, Any]:
    """KVCache.update at seq_pos 0 vs seq_len-1 (update does not advance, so it can repeat in place)."""
    cache = KVCache(1, seq_len, 1, num_heads, head_dim)
    rng = np.random.default_rng(2)
    key = Tensor(rng.standard_normal((1, num_heads, 1, head_dim)))
    value = Tensor(rng.standard_normal((1, num_heads, 1, head_dim)))

    def update() -> None:
        cache.update(0, key, value)

    first: list[float] = []
    last: list[float] = []
    first_bytes = last_bytes = 0
    for _ in range(rounds):  # alternate the two positions so that load changes hit both alike
        cache.reset()
        first += seconds(update, repeats)
        first_bytes = allocated_by(update)
        while cache.seq_pos < seq_len - 1:
            cache.advance()
        last += seconds(update, repeats)
        last_bytes = allocated_by(update)
    return {
        "seq_len": seq_len,
        "num_heads": num_heads,
        "head_dim": head_dim,
        "first_s": median(first),
        "last_s": median(last),
        "ratio": median(last) / median(first),
        "first_bytes": first_bytes,
        "last_bytes": last_bytes,
    }


def cache_memory(label: str, args: tuple[int, int, int, int, int], course_bytes: int) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = KVCache(*args)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    usage = cache.get_memory_usage()
    del cache
    return {
        "label": label,
        "batch_size, max_seq_len, num_layers, num_heads, head_dim": list(args),
        "course_bytes": course_bytes,
        "course_mb": course_bytes / MB,
        "reported_mb": usage["total_mb"],
        "reported_bytes": usage["total_mb"] * MB,
        "held_bytes": held,
    }


# -- the machine ---------------------------------------------------------------------------------------------


def blas_info() -> dict[str, Any]:
    """Which BLAS numpy uses and with how many threads; the environment variables as found."""
    info: dict[str, Any] = {
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "environment": {name: os.environ.get(name) for name in BLAS_VARIABLES},
    }
    try:
        from threadpoolctl import threadpool_info

        keys = ("user_api", "internal_api", "version", "architecture", "num_threads", "threading_layer")
        info["threadpools"] = [{k: pool.get(k) for k in keys} for pool in threadpool_info()]
    except ImportError:
        config: Any = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        info["blas_build"] = {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
        info["threadpools"] = "threadpoolctl not installed: thread count unknown (pip install threadpoolctl)"
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- the run ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    configs: tuple[Config, ...] = CONFIGS
    new_tokens: tuple[int, ...] = NEW_TOKENS
    repeats: int = 3
    efficiency_config: str = "larger"
    efficiency_rounds: int = 7
    efficiency_steps: int = 100
    matvec_repeats: int = 20
    flop_tokens: int = 100
    update_seq_len: int = 8192
    update_repeats: int = 2000
    memory_examples: tuple[tuple[str, tuple[int, int, int, int, int], int], ...] = MEMORY_EXAMPLES


QUICK = Plan(new_tokens=(10, 25), repeats=1, efficiency_rounds=1, efficiency_steps=20, matvec_repeats=3, update_repeats=200)


def run(plan: Plan, log: Callable[[str], None] = print) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": blas_info(),
        "load_average_start": load_average(),
        "plan": asdict(plan),
        "configs": [],
    }
    for config in plan.configs:
        log(f"decoding with {config} ...")
        model = config.build()
        throughput = decode_throughput(model, plan.new_tokens, plan.repeats)
        limit = stream_matvec(weight_count(model), config.embed_dim, plan.matvec_repeats)
        flop_rate = gemm_flop_rate(model, plan.flop_tokens, plan.matvec_repeats)
        weight_read_s = limit["seconds"]
        token_compute_s = 2 * weight_count(model) / flop_rate
        for row in throughput:
            row["roofline_ratio"] = roofline_ratio(row["new_tokens"], weight_read_s, token_compute_s)
        results["configs"].append(
            {
                "config": asdict(config),
                "weights": weight_count(model),
                "weight_bytes": 4 * weight_count(model),
                "stream_matvec": limit,
                "bandwidth_bytes_per_s": limit["bytes"] / weight_read_s,
                "flop_rate": flop_rate,
                "token_compute_s": token_compute_s,
                "throughput": throughput,
            }
        )
    target = next(c for c in plan.configs if c.name == plan.efficiency_config)
    log(f"cached step vs weight streaming on {target} ...")
    model = target.build()
    results["efficiency"] = {"config": asdict(target), **step_efficiency(model, plan.efficiency_rounds, plan.efficiency_steps, plan.matvec_repeats)}
    results["efficiency_one_blas_thread"] = single_thread_efficiency(
        model, plan.efficiency_rounds, plan.efficiency_steps, plan.matvec_repeats
    )
    log("KVCache.update cost and memory ...")
    results["update"] = update_cost(plan.update_seq_len, repeats=plan.update_repeats)
    results["memory"] = [cache_memory(*example) for example in plan.memory_examples]
    results["load_average_end"] = load_average()
    return results


# -- output ---------------------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"kvspec decode benchmark, {results['date']}",
        f"numpy {m['numpy']}, python {m['python']}, {m['cpu_count']} CPUs, load average {results['load_average_start']}"
        f" -> {results['load_average_end']}",
        f"BLAS: {m['threadpools'] if isinstance(m['threadpools'], str) else '; '.join(_pool(p) for p in m['threadpools'])}",
    ]
    if "blas_build" in m:
        lines.append(f"BLAS build: {m['blas_build']}")
    lines.append("environment (as found, never changed): " + ", ".join(f"{k}={v}" for k, v in m["environment"].items()))
    for c in results["configs"]:
        cfg = c["config"]
        lines += [
            "",
            f"{cfg['name']}: vocab {cfg['vocab_size']}, embed {cfg['embed_dim']}, {cfg['num_layers']} layers, "
            f"{cfg['num_heads']} heads; {c['weights']:,} weights ({c['weight_bytes'] / MB:.1f} MB); prompt of 1 token",
            f"  measured: weight read {c['stream_matvec']['seconds'] * 1e3:.2f} ms "
            f"({c['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s), {c['flop_rate'] / 1e9:.1f} GFLOP/s "
            f"-> per-token compute {c['token_compute_s'] * 1e3:.3f} ms",
            f"  {'new tokens':>10} {'tok/s no cache':>15} {'tok/s cache':>12} {'speedup':>8} "
            f"{'roofline':>9} {'(n+1)/2':>8} {'K rows':>13} {'same tokens':>11}",
        ]
        for r in c["throughput"]:
            lines.append(
                f"  {r['new_tokens']:>10} {r['uncached_tokens_per_s']:>15.1f} {r['cached_tokens_per_s']:>12.1f} "
                f"{r['speedup']:>7.2f}x {r['roofline_ratio']:>8.2f}x {r['kv_projection_ratio_exact']:>7.1f}x "
                f"{r['kv_rows_uncached']:>6}/{r['kv_rows_cached']:<6} {str(r['identical_tokens']):>11}"
            )
    lines += ["", _efficiency("cached step vs weight streaming", results["efficiency"])]
    if results["efficiency_one_blas_thread"] is not None:
        lines.append(_efficiency("  the same with one BLAS thread", results["efficiency_one_blas_thread"]))
    u = results["update"]
    lines += [
        "",
        f"KVCache.update, S = {u['seq_len']} (H {u['num_heads']}, D {u['head_dim']}): "
        f"{u['first_s'] * 1e6:.2f} us at position 0, {u['last_s'] * 1e6:.2f} us at {u['seq_len'] - 1}, "
        f"ratio {u['ratio']:.2f}; tracemalloc bytes per update {u['first_bytes']} at 0, {u['last_bytes']} at {u['seq_len'] - 1}",
        "",
        "cache memory: course bytes | get_memory_usage() | held after construction (tracemalloc)",
    ]
    for mem in results["memory"]:
        lines.append(
            f"  {mem['label']:<26} {mem['course_bytes']:>12,} B = {mem['course_mb']:.1f} MB | "
            f"{mem['reported_mb']:.1f} MB = {mem['reported_bytes']:,.0f} B | {mem['held_bytes']:,} B"
        )
    return "\n".join(lines)


def _pool(p: dict[str, Any]) -> str:
    return f"{p['internal_api']} {p['version']} ({p['architecture']}, {p['threading_layer']}), {p['num_threads']} threads"


def _efficiency(title: str, e: dict[str, Any]) -> str:
    q1, _, q3 = e["efficiency_quartiles"]
    return (
        f"{title}: {e['weight_bytes'] / MB:.1f} MB matvec {e['matvec_s'] * 1e3:.2f} ms, cached step "
        f"{e['cached_step_s'] * 1e3:.2f} ms (medians of {e['pairs']} interleaved pairs, positions 0-{e['steps_per_round'] - 1}), "
        f"efficiency {e['efficiency']:.2f} (quartiles {q1:.2f}-{q3:.2f}); "
        f"the step's {e['projections']} weight matmuls alone: {e['projections_alone_efficiency']:.2f}"
    )


def plot(results: dict[str, Any], path: Path) -> bool:
    """A PNG of speedups and throughput; False (and no file) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    configs = results["configs"]
    fig, axes = plt.subplots(2, len(configs), figsize=(5.5 * len(configs), 8), squeeze=False)
    for i, c in enumerate(configs):
        n = [r["new_tokens"] for r in c["throughput"]]
        top, bottom = axes[0][i], axes[1][i]
        top.plot(n, [r["speedup"] for r in c["throughput"]], "o-", label="measured")
        top.plot(n, [r["roofline_ratio"] for r in c["throughput"]], "s--", label="roofline")
        top.plot(n, [r["kv_projection_ratio_exact"] for r in c["throughput"]], "^:", label="K/V rows (n+1)/2")
        top.set(title=f"{c['config']['name']}: embed {c['config']['embed_dim']}", xlabel="new tokens", ylabel="speedup (x)")
        top.legend()
        bottom.plot(n, [r["uncached_tokens_per_s"] for r in c["throughput"]], "o-", label="no cache")
        bottom.plot(n, [r["cached_tokens_per_s"] for r in c["throughput"]], "o-", label="cache")
        bottom.set(xlabel="new tokens", ylabel="tokens/s", yscale="log")
        bottom.legend()
    fig.suptitle(f"greedy decode, cached vs uncached ({results['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None, plan: Plan | None = None) -> int:
    """Run, print the report, write JSON (and a PNG with matplotlib). `plan` overrides --quick (tests)."""
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 and 25 tokens, one repeat (seconds)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for decode.json / decode.png")
    args = parser.parse_args(argv)
    plan = plan or (QUICK if args.quick else Plan())
    results = run(plan, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(report(results))
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "decode.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {json_path.resolve()}")
    png_path = args.out / "decode.png"
    if plot(results, png_path):
        print(f"plot: {png_path.resolve()}")
    else:
        print("plot: skipped (matplotlib not installed; `pip install -e .[plot]` or `nox -s bench` adds it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
