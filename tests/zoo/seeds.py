"""Sensitivity across seeds: grade every bug of the zoo with several seeds and count, per
bug, the seeds that catch it (a failing check in each expected group), and the groups
that lost points (which must lie within the expected and declared collateral ones).

    python -m tests.zoo seeds [--seeds 5] [--profile quick] [--isolation none] [--table FILE]

A benchmark, not a test: it grades (bugs x seeds) submissions, one `python -m spec grade`
invocation per seed, two at a time. `--isolation none` (the default here) grades in the
grader's own process: the same checks and verdicts as process isolation for these plain
bugs, at about a third of the cost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.zoo.runner import Graded, grade, materialize_all
from tests.zoo.variants import Variant, by_kind, registry


def run(seeds: list[int], profile: str, isolation: str, names: list[str] | None, workdir: Path,
        shards: int = 2) -> tuple[dict[str, dict[int, Graded]], float]:
    bugs = {v.name: v for v in by_kind(registry().values(), "bug") if not names or v.name in names}
    dirs = materialize_all(bugs.values(), workdir / "submissions")
    start = time.monotonic()

    def one(seed: int) -> tuple[int, dict[str, Graded]]:
        out = grade(dirs, workdir / f"out-seed{seed}", profile, jobs=1, shards=1,
                    extra=["--seed", str(seed), "--isolation", isolation])
        return seed, out.graded

    results: dict[str, dict[int, Graded]] = {name: {} for name in bugs}
    with ThreadPoolExecutor(max_workers=shards) as pool:
        for seed, graded in pool.map(one, seeds):
            for name, g in graded.items():
                results[name][seed] = g
    return results, time.monotonic() - start


def caught(v: Variant, failed: set[str]) -> bool:
    return not (set(v.expect_fail_groups) - failed)


def failed_groups(results: dict[str, dict[int, Graded]]) -> dict[str, dict[str, list[str]]]:
    """bug -> seed -> the groups that lost points (what --save writes and --load reads)."""
    return {name: {str(seed): sorted(g.failed_groups()) for seed, g in by_seed.items()} for name, by_seed in results.items()}


def table(results: dict[str, dict[str, list[str]]], seeds: list[int], command: str, wall: float) -> str:
    variants = registry()
    lines = [f"Command: {command}", f"Wall time: {wall:.0f} s for {len(results)} bugs x {len(seeds)} seeds", "",
             "| bug | seeds that catch it | expected groups | declared collateral | groups that lost points (any seed) | outside both |",
             "| --- | ---: | --- | --- | --- | --- |"]
    every = 0
    spread = 0
    for name in sorted(results):
        v = variants[name]
        by_seed = {seed: set(groups) for seed, groups in results[name].items()}
        n = sum(caught(v, failed) for failed in by_seed.values())
        every += n == len(seeds)
        lost = set().union(*by_seed.values()) if by_seed else set()
        outside = lost - set(v.expect_fail_groups) - set(v.collateral)
        spread += bool(outside)
        lines.append(f"| {name} | {n}/{len(seeds)} | {' '.join(sorted(v.expect_fail_groups))} | "
                     f"{' '.join(sorted(v.collateral)) or '-'} | {' '.join(sorted(lost)) or '-'} | "
                     f"{' '.join(sorted(outside)) or '-'} |")
    lines += ["", f"Caught by every seed: {every}/{len(results)} bugs; losing points outside their expected and "
              f"declared collateral groups: {spread}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.zoo seeds", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--profile", default="quick", choices=("quick", "default", "thorough"))
    p.add_argument("--isolation", default="none", choices=("none", "process"))
    p.add_argument("--shards", type=int, default=2, help="seeds graded at once")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--table", type=Path)
    p.add_argument("--save", type=Path, help="write the failing groups per bug and seed (JSON) to this file")
    p.add_argument("--load", type=Path, help="print the table from a --save file instead of grading")
    args = p.parse_args(argv)
    seeds = list(range(args.seeds))
    if args.load:
        saved = json.loads(args.load.read_text())
        results, wall = saved["failed"], saved["wall"]
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kvspec-seeds-"))
        graded, wall = run(seeds, args.profile, args.isolation, args.names or None, workdir, args.shards)
        results = failed_groups(graded)
        if args.save:
            args.save.write_text(json.dumps({"failed": results, "wall": wall}, indent=1) + "\n")
    command = (f"python -m tests.zoo seeds --seeds {args.seeds} --profile {args.profile} --isolation {args.isolation}"
               + (" " + " ".join(args.names) if args.names else ""))
    text = table(results, seeds, command, wall)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    return 0
