"""Grade the zoo through the real grader command and judge its verdicts.

    python -m spec grade DIR1 DIR2 ... --profile P --out OUT --jobs N --quiet

is run on the materialized variants (batch mode: one invocation grades many submissions,
reports in OUT/<name>/results.json, Gradescope format). Optionally the zoo is split into
shards graded by concurrent invocations. Each test entry's `tags` hold its clause IDs and
one group word; the verdicts are read back from those files only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from spec.clauses import GROUPS
from tests.zoo.variants import Variant, materialize, registry

REPO = Path(__file__).resolve().parents[2]
FORGED_MARKER = "FORGED-BY-SUBMISSION"
MAX_RESULTS_BYTES = 4 << 20  # a results.json bigger than this was flooded by a submission's output
TIME_LIMITS = {"quick": 180.0, "default": 300.0, "thorough": 1800.0}  # the CLI's per-submission defaults


@dataclass(frozen=True)
class TestResult:
    name: str
    group: str
    clauses: tuple[str, ...]
    passed: bool
    score: float
    max_score: float
    output: str


@dataclass
class Graded:
    name: str
    score: float
    max_score: float
    tests: list[TestResult]
    execution_time: float
    results_bytes: int
    problems: list[str] = field(default_factory=list)  # results.json missing, malformed, forged

    def failed_groups(self) -> set[str]:
        return {t.group for t in self.tests if not t.passed}

    def failing(self) -> list[TestResult]:
        return [t for t in self.tests if not t.passed]

    def statuses(self) -> dict[str, bool]:
        return {t.name: t.passed for t in self.tests}


@dataclass
class Run:
    graded: dict[str, Graded]
    exit_codes: list[int]
    wall: float
    stdout: str
    stderr: str
    out_dirs: list[Path]
    command: str


def parse_results(name: str, path: Path) -> Graded:
    problems: list[str] = []
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        return Graded(name, float("nan"), float("nan"), [], float("nan"), 0, [f"results.json unreadable: {exc}"])
    tests = []
    for entry in data.get("tests", []):
        tags = list(entry.get("tags", []))
        groups = [t for t in tags if t in GROUPS]
        if len(groups) != 1:
            problems.append(f"test {entry.get('name')!r} has tags {tags}: not exactly one group word")
        status = entry.get("status")
        passed = status == "passed" if status else entry.get("score") == entry.get("max_score")
        tests.append(
            TestResult(
                name=str(entry.get("name")),
                group=groups[0] if groups else "?",
                clauses=tuple(t for t in tags if t.startswith("KV-")),
                passed=bool(passed),
                score=float(entry.get("score", 0.0)),
                max_score=float(entry.get("max_score", 0.0)),
                output=str(entry.get("output", "")),
            )
        )
    max_score = sum(t.max_score for t in tests)
    if FORGED_MARKER.encode() in raw:
        problems.append("results.json holds text forged by the submission")
    return Graded(name, float(data.get("score", float("nan"))), max_score, tests,
                  float(data.get("execution_time", float("nan"))), len(raw), problems)


def materialize_all(variants: Iterable[Variant], root: Path) -> dict[str, Path]:
    out = {}
    for v in variants:
        out[v.name] = materialize(v, root / v.name)
    return out


def _grade_shard(dirs: Sequence[Path], out: Path, profile: str, jobs: int, extra: Sequence[str], env: dict[str, str]) -> tuple[int, str, str, str]:
    cmd = [sys.executable, "-m", "spec", "grade", *map(str, dirs), "--profile", profile, "--out", str(out),
           "--jobs", str(jobs), "--quiet", *extra]
    # A scratch cwd: hostile variants write forged reports into the grader's cwd, which
    # must never be the repository.
    cwd = out.with_name(out.name + "-cwd")
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    shown = " ".join(["python"] + cmd[1:5] + ["DIR..."] + cmd[5 + len(dirs):])
    return proc.returncode, proc.stdout, proc.stderr, shown


def grade(dirs: dict[str, Path], out_root: Path, profile: str = "quick", jobs: int = 2, shards: int = 1,
          extra: Sequence[str] = ()) -> Run:
    """Grade every directory with the real grader command; `shards` concurrent invocations."""
    names = sorted(dirs)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    groups = [g for g in groups if g]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVSPEC_", "PYTEST_", "HYPOTHESIS_"))}
    start = time.monotonic()
    outs = [out_root / f"shard{i}" for i in range(len(groups))]
    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        results = list(pool.map(lambda i: _grade_shard([dirs[n] for n in groups[i]], outs[i], profile, jobs, extra, env),
                                range(len(groups))))
    wall = time.monotonic() - start
    graded: dict[str, Graded] = {}
    for names_in, out in zip(groups, outs):
        for name in names_in:
            path = out / name / "results.json" if len(names_in) > 1 else out / "results.json"
            graded[name] = parse_results(name, path)
    return Run(graded, [r[0] for r in results], wall, "".join(r[1] for r in results), "".join(r[2] for r in results), outs,
               results[0][3] if results else "")


# Variants whose code attacks the grader, its processes or its files: graded behind the wall
# (the CLI's default isolation, the strongest this machine offers). The others (bugs and
# correct designs) are honest code, and the verdicts are what the zoo tests: they are graded
# in-process (--isolation none), twice as fast; tests/test_zoo.py grades a few of them behind
# the wall too and requires the same verdicts.
UNTRUSTED = ("hostile", "twin")
TRUSTED_ISOLATION = ("--isolation", "none")


def grade_by_trust(dirs: dict[str, Path], untrusted: set[str], out_root: Path, profile: str = "quick", jobs: int = 2,
                   shards: int = 1, extra: Sequence[str] = ()) -> Run:
    """`grade`, with the untrusted submissions behind the wall (one invocation beside the
    others: their hangs cost wall time, not CPU) and the trusted ones in-process, unless
    `extra` names an isolation mode itself."""
    if any(a == "--isolation" or a.startswith("--isolation=") for a in extra):
        return grade(dirs, out_root, profile, jobs, shards, extra)
    honest = {n: d for n, d in dirs.items() if n not in untrusted}
    hostile = {n: d for n, d in dirs.items() if n in untrusted}
    parts = [(honest, out_root / "trusted", shards, [*extra, *TRUSTED_ISOLATION]), (hostile, out_root / "walled", 1, list(extra))]
    parts = [p for p in parts if p[0]]
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        runs = list(pool.map(lambda p: grade(p[0], p[1], profile, jobs, p[2], p[3]), parts))
    return Run(
        {n: g for r in runs for n, g in r.graded.items()}, [c for r in runs for c in r.exit_codes], max(r.wall for r in runs),
        "".join(r.stdout for r in runs), "".join(r.stderr for r in runs), [d for r in runs for d in r.out_dirs],
        " ; ".join(f"{r.command} ({len(r.graded)} submissions)" for r in runs),
    )


def surviving_daemons(submissions: Path, wait: float = 1.5) -> list[int]:
    """Pids of processes a submission left behind (they record themselves in .daemon-pids)
    that are still alive `wait` seconds after the grader exited. Killed here, so a fooled
    grader cannot leave them running; the caller reports them."""
    files = list(submissions.rglob(".daemon-pids"))
    if not files:
        return []
    time.sleep(wait)
    alive = []
    for f in files:
        for line in f.read_text().split():
            pid = int(line)
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):
                continue
            alive.append(pid)
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    return alive


def forged_files(out_dirs: Iterable[Path]) -> list[str]:
    """Report files under the grader's --out holding text a submission forged."""
    bad = []
    for d in out_dirs:
        for path in d.rglob("*"):
            if path.is_file():
                try:
                    if FORGED_MARKER.encode() in path.read_bytes():
                        bad.append(str(path))
                except OSError:
                    pass
    return bad


# -- judging -------------------------------------------------------------------------------
PROBLEMS = ("missed", "elsewhere", "spread", "false-failure", "fooled")


def same(a: float, b: float) -> bool:
    """Scores are reported to the hundredth of a point."""
    return abs(a - b) < 0.005


@dataclass
class Verdict:
    variant: Variant
    graded: Graded
    outcome: str  # bug: caught / spread / elsewhere / missed; alternative: full / false-failure; hostile: handled / fooled
    detail: str
    elsewhere: set[str] = field(default_factory=set)  # groups failing beyond the expected ones


def judge(variants: dict[str, Variant], run: Run, time_limit: float, daemons: Sequence[int] = ()) -> list[Verdict]:
    out: list[Verdict] = []
    forged = forged_files(run.out_dirs)
    for name, v in variants.items():
        g = run.graded.get(name)
        if g is None:
            continue
        failed = g.failed_groups()
        elsewhere = failed - set(v.expect_fail_groups)
        problems = list(g.problems)
        if v.kind == "bug" or v.kind == "twin":
            missing = set(v.expect_fail_groups) - failed
            if not failed:
                outcome, detail = "missed", "full marks"
            elif missing:
                outcome, detail = "elsewhere", f"no failing check in {sorted(missing)}; failed {sorted(failed)}"
            elif v.kind == "bug" and v.collateral_recorded and failed - set(v.expect_fail_groups) - set(v.collateral):
                spread = sorted(failed - set(v.expect_fail_groups) - set(v.collateral))
                outcome, detail = "spread", (f"also lost points in {spread}, outside its expected and declared "
                                             f"collateral groups (one defect, its own points: docs/rubric.md)")
            else:
                outcome, detail = "caught", f"failed {sorted(failed)}"
        elif v.kind == "alternative":
            if failed or not same(g.score, g.max_score) or problems:
                outcome = "false-failure"
                detail = "; ".join([f"{t.name}: {t.output.splitlines()[0] if t.output else ''}" for t in g.failing()] + problems)
            else:
                outcome, detail = "full", "full marks"
        else:  # hostile
            reasons = []
            if v.twin is not None:
                t = run.graded.get(v.twin)
                expected = t.score if t is not None else float("nan")
                if t is not None and g.statuses() != t.statuses() and not v.at_most:
                    diff = sorted(n for n in set(g.statuses()) | set(t.statuses()) if g.statuses().get(n) != t.statuses().get(n))
                    reasons.append(f"verdicts differ from twin {v.twin} on {diff}")
            else:
                expected = float(v.expect_score if v.expect_score is not None else "nan")
            if v.at_most and not g.score <= expected + 0.005:
                reasons.append(f"score {g.score} > {expected}: inflated")
            elif not v.at_most and not same(g.score, expected):
                reasons.append(f"score {g.score} != expected {expected}")
            missing = set(v.expect_fail_groups) - failed
            if missing:
                reasons.append(f"no failing check in {sorted(missing)}")
            if g.execution_time > time_limit:
                reasons.append(f"took {g.execution_time:.0f} s > {time_limit:.0f} s")
            if g.results_bytes > MAX_RESULTS_BYTES:
                reasons.append(f"results.json is {g.results_bytes} bytes")
            mine = [p for p in forged if f"/{name}/" in p or p.endswith(f"/{name}")]
            if mine or (v.name == "hostile_forges_results" and forged):
                reasons.append(f"forged files survived: {forged}")
            if v.name == "hostile_outlives_grader" and daemons:
                reasons.append(f"processes outlived the grader: {list(daemons)}")
            reasons += problems
            outcome = "fooled" if reasons else "handled"
            detail = "; ".join(reasons) if reasons else f"score {g.score} as expected ({g.execution_time:.0f} s)"
        out.append(Verdict(v, g, outcome, detail, elsewhere))
    return out


def table(verdicts: list[Verdict], run: Run, command: str) -> str:
    """The summary table (markdown), then one line per variant."""
    lines = [
        f"Command: {command}",
        f"Wall time: {run.wall:.0f} s for {len(run.graded)} submissions (grader exit codes {sorted(set(run.exit_codes))})",
        "",
        "| kind | count | caught in expected group | caught elsewhere only | missed | also failed elsewhere | false failures | hostile handled |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ("bug", "alternative", "hostile"):
        vs = [x for x in verdicts if x.variant.kind == kind]
        if not vs:
            continue
        if kind == "bug":
            row = [len(vs), sum(x.outcome == "caught" for x in vs), sum(x.outcome == "elsewhere" for x in vs),
                   sum(x.outcome == "missed" for x in vs), sum(bool(x.elsewhere) for x in vs), "-", "-"]
        elif kind == "alternative":
            row = [len(vs), "-", "-", "-", "-", sum(x.outcome == "false-failure" for x in vs), "-"]
        else:
            row = [len(vs), sum(not (set(x.variant.expect_fail_groups) - x.graded.failed_groups()) for x in vs), "-", "-", "-", "-",
                   f"{sum(x.outcome == 'handled' for x in vs)}/{len(vs)}"]
        lines.append(f"| {kind} | " + " | ".join(str(c) for c in row) + " |")
    lines += ["", "| variant | kind | expected to fail | failed groups | score | outcome | time (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for x in sorted(verdicts, key=lambda x: (("bug", "alternative", "hostile", "twin").index(x.variant.kind), x.variant.name)):
        g = x.graded
        lines.append(
            f"| {x.variant.name} | {x.variant.kind} | {' '.join(sorted(x.variant.expect_fail_groups)) or '-'} | "
            f"{' '.join(sorted(g.failed_groups())) or '-'} | {g.score:g}/{g.max_score:g} | {x.outcome} | {g.execution_time:.0f} |"
        )
    problems = [x for x in verdicts if x.outcome in PROBLEMS]
    if problems:
        lines += ["", "Problems:"]
        lines += [f"- {x.variant.name} ({x.variant.kind}): {x.outcome}: {x.detail}" for x in problems]
    return "\n".join(lines)


def run_zoo(profile: str = "quick", jobs: int = 2, shards: int = 1, names: Sequence[str] | None = None,
            workdir: Path | None = None, extra: Sequence[str] = ()) -> tuple[list[Verdict], Run, str]:
    variants = registry()
    if not names:  # the attacks on the grader itself are graded by tests/test_attacks.py, once per isolation mode
        variants = {n: v for n, v in variants.items() if not n.startswith("attack_")}
    if names:
        wanted = set(names)
        for n in names:  # bring the twins along
            if variants[n].twin:
                wanted.add(variants[n].twin)  # type: ignore[arg-type]
        variants = {n: v for n, v in variants.items() if n in wanted}
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kvspec-zoo-"))
    dirs = materialize_all(variants.values(), root / "submissions")
    run = grade_by_trust(dirs, {n for n, v in variants.items() if v.kind in UNTRUSTED}, root / "out", profile, jobs,
                         shards, extra)
    daemons = surviving_daemons(root / "submissions")
    verdicts = judge(variants, run, TIME_LIMITS[profile], daemons)
    command = f"{run.command}  ({len(dirs)} submissions, {len(run.out_dirs)} concurrent invocation(s))"
    return verdicts, run, table(verdicts, run, command)
