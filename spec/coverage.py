"""Operation-sequence coverage of the cache state machines: which ordered pairs and
triples of operations the checks' histories reach, in each profile.

An operation is update, get, advance or reset; update and get carry a layer. An n-gram
of consecutive operations is written with its layers named by first appearance, so
`update a, get a` is "a get of the layer just updated" and `update a, get b` "of another
layer": every n-gram a history can hold is one of these canonical forms (20 pairs, 120
triples over four operations; see `possible`). A new cache starts a new history.

The machines record their operations (CacheMachine.trace) when KVSPEC_COVERAGE names a
file; `python -m spec.coverage` runs the cache-machine checks on the reference in each
profile with recording on and prints the table (nox -s coverage).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

OPS = ("update", "get", "advance", "reset")
LAYERED = ("update", "get")
SHORT = {"update": "U", "get": "G", "advance": "A", "reset": "R"}
ENV = "KVSPEC_COVERAGE"
MACHINES = ("UpdateMachine", "GetMachine", "AdvanceMachine", "ResetMachine")
CHECKS = "spec/checks/test_cache_machine.py"

Op = tuple[str, "int | None"]


def canonical(ops: Sequence[Op]) -> str:
    """'U a, G b, A': layers renamed a, b, c in order of first appearance."""
    names: dict[int, str] = {}
    out = []
    for op, layer in ops:
        if op in LAYERED:
            assert layer is not None
            name = names.setdefault(layer, "abc"[len(names)])
            out.append(f"{SHORT[op]}{name}")
        else:
            out.append(SHORT[op])
    return " ".join(out)


def possible(n: int) -> set[str]:
    """Every canonical n-gram (a cache with at least n layers and room reaches each)."""
    out = set()
    for kinds in itertools.product(OPS, repeat=n):
        for layers in itertools.product(range(n), repeat=n):
            out.add(canonical([(k, layer if k in LAYERED else None) for k, layer in zip(kinds, layers)]))
    return out


def ngrams(trace: Sequence[Op], n: int) -> Iterable[str]:
    """The n-grams of one history; a ("new", None) entry (a fresh cache) splits it."""
    run: list[Op] = []
    for entry in list(trace) + [("new", None)]:
        if entry[0] == "new":
            for i in range(len(run) - n + 1):
                yield canonical(run[i : i + n])
            run = []
        else:
            run.append(entry)


def record(machine: str, trace: Sequence[Op]) -> None:
    """Append one history to $KVSPEC_COVERAGE (one JSON line), if set."""
    path = os.environ.get(ENV)
    if path and trace:
        with open(path, "a") as f:
            f.write(json.dumps([machine, list(trace)]) + "\n")


def reached(path: Path) -> dict[str, dict[int, set[str]]]:
    """machine (and "all") -> n -> the canonical n-grams reached."""
    out: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for line in path.read_text().splitlines():
        machine, trace = json.loads(line)
        ops = [(op, layer) for op, layer in trace]
        for n in (2, 3):
            grams = set(ngrams(ops, n))
            out[machine][n] |= grams
            out["all"][n] |= grams
    return out


def measure(profile: str, seed: int) -> dict[str, dict[int, set[str]]]:
    """Run the cache-machine checks on the reference, in process, recording their histories."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "coverage.jsonl"
        env = dict(os.environ, **{ENV: str(path), "KVSPEC_PROFILE": profile, "KVSPEC_SEED": str(seed)})
        env.pop("KVSPEC_SUBMISSION", None)
        root = Path(__file__).resolve().parent.parent
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                               "--pyargs", "spec.checks.test_cache_machine", "-k", "machine or writes or prefix or moves or clean"],
                              cwd=root, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the checks failed on the reference:\n{proc.stdout[-3000:]}")
        return reached(path) if path.exists() else {}


def table(results: dict[str, dict[str, dict[int, set[str]]]]) -> str:
    pairs, triples = possible(2), possible(3)
    lines = ["| profile | machine | pairs reached | triples reached |", "| --- | --- | ---: | ---: |"]
    for profile, by_machine in results.items():
        for machine in MACHINES + ("all",):
            got = by_machine.get(machine, {})
            p, t = got.get(2, set()) & pairs, got.get(3, set()) & triples
            lines.append(f"| {profile} | {machine} | {len(p)}/{len(pairs)} | {len(t)}/{len(triples)} |")
    missing = {profile: sorted(triples - by.get("all", {}).get(3, set())) for profile, by in results.items()}
    for profile, gone in missing.items():
        if gone:
            lines.append(f"\n{profile}: triples not reached: {', '.join(gone)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spec.coverage", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", action="append", choices=("quick", "default", "thorough"),
                   help="profiles to measure (repeatable; default: quick and default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    results = {profile: measure(profile, args.seed) for profile in (args.profile or ["quick", "default"])}
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
