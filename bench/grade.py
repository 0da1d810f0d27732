"""Grading-speed benchmark: what the wall costs. Figures, never assertions.

Run `nox -s bench_grade` or `python -m bench.grade [--profiles quick,default] [--zoo N]`.
It prints, on this machine as it is (the load average is printed too: other processes on
a 2-core machine change every figure here):

1. `python -m spec grade` of the bundled reference, wall time, per profile, in every
   isolation mode this machine offers, next to `--isolation none` in the same run (each
   mode's ratio to none). Issue 9's targets for the strongest mode: quick <= 4 s,
   default <= 12 s, ratio <= 1.5.
2. The start of one check's worker, median over N: a driver's first call (start and import
   of the reference) then close, through each mode's fork server, and spawned as a fresh
   interpreter (`--kvspec-isolation=process` without a fork server).
3. The wall time of one batch grade of a handful of zoo submissions (quick profile, the
   strongest mode), the way an instructor grades a class.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spec.discovery import find_target
from spec.isolation import wall
from spec.isolation.isolated import IsolatedDriver

ROOT = Path(__file__).resolve().parent.parent
ZOO = ("base", "get_returns_whole_buffer", "reset_does_not_rewind", "one_5d_array", "hostile_outlives_grader", "hostile_forges_results")


def grade_seconds(profile: str, mode: str, out: Path, *submissions: str) -> tuple[float, int]:
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "spec", "grade", *submissions, "--profile", profile, "--isolation", mode, "--out", str(out), "--quiet"],
        cwd=out.parent, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return time.monotonic() - start, run.returncode


def worker_start(mode: str, count: int, private: Path) -> float:
    """Median seconds from a driver's creation to the answer of its first call, plus close."""
    target = find_target(None)
    times = []
    with wall.start(target, mode, private) as w:
        for _ in range(count):
            start = time.monotonic()
            d = IsolatedDriver(w.target, forkserver=w.socket_path)
            d.describe()
            d.close()
            times.append(time.monotonic() - start)
    return statistics.median(times)


def zoo_batch(count: int, work: Path, mode: str) -> tuple[float, int, int]:
    listing = subprocess.run([sys.executable, "-m", "tests.zoo", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    known = [n for n in ZOO if n in names]
    chosen = (known + [n for n in names[::4] if n not in known and not n.startswith("hostile")])[:count]
    dirs = []
    for name in chosen:
        dest = work / "zoo" / name
        subprocess.run([sys.executable, "-m", "tests.zoo", "materialize", name, str(dest)], cwd=ROOT, check=True, capture_output=True)
        dirs.append(str(dest))
    seconds, code = grade_seconds("quick", mode, work / "zoo-out", *dirs)
    return seconds, len(dirs), code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grade", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--profiles", default="quick,default", help="comma-separated profiles to grade the reference with (default: quick,default)")
    p.add_argument("--starts", type=int, default=20, help="worker starts per mode for the median (default: 20)")
    p.add_argument("--zoo", type=int, default=6, help="zoo submissions in the batch grade (default: 6; 0: skip)")
    args = p.parse_args(argv)
    modes = [m for m in wall.MODES[:3] if wall.unavailable(m) is None]
    strongest = modes[0]
    print(f"# grading speed, {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"isolation modes available: {', '.join(modes)} (strongest: {strongest}); not here: "
          + ("; ".join(f"{m}: {wall.unavailable(m)}" for m in wall.MODES[:3] if m not in modes) or "none"))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kvspec-bench-") as tmp:
        work = Path(tmp)
        print("\n## python -m spec grade (the reference), wall seconds")
        print("| profile | mode | seconds | / none | exit |\n| --- | --- | ---: | ---: | ---: |")
        for profile in args.profiles.split(","):
            base, code = grade_seconds(profile, "none", work / f"out-{profile}-none")
            print(f"| {profile} | none | {base:.1f} | 1.00 | {code} |", flush=True)
            for mode in modes:
                seconds, code = grade_seconds(profile, mode, work / f"out-{profile}-{mode}")
                print(f"| {profile} | {mode} | {seconds:.1f} | {seconds / base:.2f} | {code} |", flush=True)
        print(f"\n## start of one check's worker (first call answered, then closed), median of {args.starts}")
        print("| how | seconds |\n| --- | ---: |")
        print(f"| a fresh interpreter per check (process, no fork server) | {spawned(args.starts):.3f} |", flush=True)
        for mode in modes:
            private = work / f"private-{mode}"
            private.mkdir(mode=0o700)
            print(f"| forked by the {mode} fork server | {worker_start(mode, args.starts, private):.3f} |", flush=True)
        if args.zoo:
            seconds, count, code = zoo_batch(args.zoo, work, strongest)
            print(f"\n## zoo batch: {count} submissions in one `grade` call, quick profile, {strongest}: {seconds:.1f} s ({seconds / max(count, 1):.1f} s each), exit {code}")
    return 0


def spawned(count: int) -> float:
    """worker_start without a fork server: `python -m spec.isolation.worker` per driver."""
    target = find_target(None)
    times = []
    for _ in range(count):
        start = time.monotonic()
        d = IsolatedDriver(target)
        d.describe()
        d.close()
        times.append(time.monotonic() - start)
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
