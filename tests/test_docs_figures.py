"""Figures quoted from a measurement come from a committed script and its committed output.

Each entry names where figures are quoted, the script that measures them and the file
holding that script's output (committed, under docs/measurements/), and the figures as
quoted. The test checks that the quoting file still says each figure, that the output
says it too, and that the script and the output exist; so a figure cannot be changed in
the docs without rerunning the script, nor the output regenerated without the docs
following. docs/benchmark.md's throughput table, its update cost and its efficiency are
checked against the committed JSON of the run it quotes. Not covered yet (issue 11):
docs/benchmark.md's other spot figures, docs/zoo.md's reach table and
the rest of docs/threat-model.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TOLERANCE = ("bench/tolerance.py", "docs/measurements/tolerance.txt")
SEEDS = ("tests/zoo/seeds.py", "docs/measurements/seeds-quick.txt")
ZOO = ("tests/test_zoo.py", "docs/measurements/zoo-quick.txt")
ATTACKS = ("tests/test_attacks.py", "docs/measurements/attacks.txt")
MUTATION = ("tests/mutation/score.py", "docs/measurements/mutation-score.md")
MEASURED: list[tuple[str, tuple[str, str], tuple[str, ...]]] = [
    # KV-MOD-2's tolerance and the ill-conditioned models it leaves out
    ("spec/checks/_model.py", TOLERANCE, ("1000 models", "1.79e-06", "0.00918", "0.0366")),
    # KV-MOD-7's 100x
    ("spec/checks/_model.py", TOLERANCE, ("0.414", "45.1 times")),
    ("spec/clauses.py", TOLERANCE, ("0.414", "1000", "45.1 times")),
    ("docs/spec.md", TOLERANCE, ("0.414", "1000", "45.1 times")),
    # the five-seed table of the whole zoo
    ("docs/zoo.md", SEEDS, ("1196 s", "55/56", "| softmax_without_max_subtraction | 3/5 |", "5/5 since 2c9a348")),
    # the zoo test's table, from a CI run
    ("docs/zoo.md", ZOO, ("| bug | 56 | 56 |", "| alternative | 14 |", "14/14", "412 s", "55 s", "56 of 56")),
    # the attack batches, from the same CI run
    # the mutation score (nox -s mutation, then tests/mutation/score.py)
    ("docs/mutation.md", MUTATION, ("370 mutants", "300 killed", "70 survived", "300 / 300")),
    ("docs/threat-model.md", ATTACKS, ("32.56 of 36", "10 submissions took 71 s", "batch of 11 took 65 s", "11 took 85 s")),
]


def _flat(text: str) -> str:
    """Python string concatenation and line breaks removed: what a reader sees."""
    return " ".join(re.sub(r'"\s*\n\s*"', "", text).split())


@pytest.mark.parametrize("quoting, source, figures", MEASURED, ids=[f"{q}:{f[0]}" for q, _, f in MEASURED])
def test_quoted_figures_appear_in_the_committed_output(quoting: str, source: tuple[str, str], figures: tuple[str, ...]) -> None:
    script, output = (ROOT / p for p in source)
    assert script.is_file() and output.is_file(), source
    quoted, measured = _flat((ROOT / quoting).read_text()), _flat(output.read_text())
    assert source[1] in quoted, f"{quoting} quotes figures from {source[1]} without naming it"
    for figure in figures:
        assert figure in quoted, f"{quoting} no longer quotes {figure!r}: update MEASURED"
        number = NUMBER.search(figure)
        assert number is not None and number.group() in measured, f"{figure!r} is not in {source[1]}: rerun {source[0]}"


NUMBER = re.compile(r"\d[\d.e+-]*\d|\d")


def test_every_file_that_names_a_measurement_is_listed() -> None:
    listed = {(q, s[1]) for q, s, _ in MEASURED}
    for path in [*ROOT.glob("docs/*.md"), *ROOT.glob("spec/**/*.py")]:
        text = path.read_text()
        for output in re.findall(r"docs/measurements/[\w.-]+", text):
            assert (str(path.relative_to(ROOT)), output) in listed, f"{path.relative_to(ROOT)} quotes {output}: list its figures"


# -- docs/benchmark.md's table: the committed JSON of the run it quotes --------------------------

BENCH_JSON = ROOT / "docs" / "bench" / "2026-11-22-decode.json"


def test_benchmark_table_is_the_committed_run() -> None:
    """Each row of the throughput table, rounded as printed, from docs/bench/*.json (written by
    `python -m bench.decode --out DIR`, the run the doc names)."""
    import json

    doc = (ROOT / "docs" / "benchmark.md").read_text()
    assert BENCH_JSON.name in doc
    data = json.loads(BENCH_JSON.read_text())
    rows = re.findall(r"^\| (small|larger) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| \**([\d.]+)x\** \| ([\d.]+)x \| ([\d.]+)x \|$", doc, re.M)
    assert len(rows) == 10, rows
    measured = {(c["config"]["name"], t["new_tokens"]): t for c in data["configs"] for t in c["throughput"]}
    for name, tokens, uncached, cached, speedup, roofline, exact in rows:
        t = measured[(name, int(tokens))]
        assert (uncached, cached) == (f"{t['uncached_tokens_per_s']:.1f}", f"{t['cached_tokens_per_s']:.1f}"), (name, tokens)
        assert (speedup, roofline, exact) == (f"{t['speedup']:.2f}", f"{t['roofline_ratio']:.2f}",
                                              f"{t['kv_projection_ratio_exact']:.1f}"), (name, tokens)
    u = data["update"]
    assert f"{u['first_s'] * 1e6:.2f} us at position 0 and {u['last_s'] * 1e6:.2f} us at 8191, ratio **{u['ratio']:.2f}**" in doc
    e = data["efficiency"]
    assert f"**efficiency {e['efficiency']:.2f}**" in doc
