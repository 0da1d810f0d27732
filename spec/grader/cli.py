"""`python -m spec grade`: grade one submission, several, or a class directory.

Exit codes: 0 graded (and at or above --fail-under if given); 1 graded, but below
--fail-under (in a batch: some submission below it); 2 the grader could not run (bad
arguments, a missing directory, a bad rubric), with a one-line message and no traceback;
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NoReturn, Sequence

from spec import profiles
from spec.discovery import DiscoveryError, Target, find_target
from spec.grader import batch, reports
from spec.grader.grade import Grade, failed_run, score
from spec.grader.rubric import Check, Rubric, RubricError, fmt
from spec.grader.rubric import load as load_rubric
from spec.grader.run import TIME_LIMITS, GraderError, Options, RunResult, become_subreaper, collect, kill_descendants, run_suite

PROG = "python -m spec grade"


class UsageError(Exception):
    """Exit 2 with this one-line message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Grade KV-cache submissions against the kvspec suite and write Gradescope, JUnit and Markdown reports.",
        epilog="Exit codes: 0 graded; 1 graded below --fail-under; 2 the grader could not run.",
    )
    p.add_argument("submissions", nargs="*", metavar="SUBMISSION_DIR",
                   help="a submission directory, several, or one directory of submissions (none: the bundled reference)")
    p.add_argument("--module", metavar="DOTTED", help="dotted name of the cache module (default: discovered)")
    p.add_argument("--tensor", metavar="DOTTED:NAME", help="the Tensor class (default: the module's Tensor, else the reference's)")
    p.add_argument("--out", metavar="DIR", default="grade-report", help="where the reports go (default: ./grade-report/)")
    p.add_argument("--seed", metavar="N", type=int, default=profiles.DEFAULT_SEED, help=f"seed of the examples (default: {profiles.DEFAULT_SEED})")
    p.add_argument("--profile", choices=profiles.PROFILES, default=profiles.DEFAULT_PROFILE, help="how many examples per check (default: default)")
    p.add_argument("--rubric", metavar="FILE", help="a rubric TOML file replacing the default one")
    p.add_argument("--fail-under", metavar="POINTS", type=float, help="exit 1 if the score is below POINTS")
    p.add_argument("--jobs", metavar="N", type=int, default=2, help="pytest-xdist workers per submission (default: 2)")
    p.add_argument("--isolation", choices=("process", "none"), default="process",
                   help="process: submission code runs in killable worker processes (default); none: in the test process (trusted code only)")
    p.add_argument("--time-limit", metavar="SECONDS", type=float,
                   help="wall-clock limit of one submission's run (default: " + ", ".join(f"{k} {v:.0f}" for k, v in TIME_LIMITS.items()) + ")")
    p.add_argument("--quiet", action="store_true", help="print only the score line per submission")
    return p


def _args(argv: Sequence[str]) -> argparse.Namespace:
    args = parser().parse_args(list(argv))
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {args.jobs}")
    if args.fail_under is not None and not args.fail_under >= 0:
        raise UsageError(f"--fail-under must be a number of points >= 0, not {args.fail_under}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise UsageError(f"--time-limit must be a positive number of seconds, not {args.time_limit}")
    if args.tensor is not None and ":" not in args.tensor:
        raise UsageError(f"--tensor takes dotted.module:ClassName, got {args.tensor!r}")
    return args


def _members(args: argparse.Namespace) -> tuple[list[batch.Member], bool]:
    """(submissions, is_batch). Raises UsageError for missing directories and, for a
    single submission, for a directory without a cache module."""
    for d in args.submissions:
        if not Path(d).is_dir():
            raise UsageError(f"submission directory {d!r} does not exist or is not a directory")
    if not args.submissions:
        return [batch.Member("reference", "")], False
    if len(args.submissions) == 1:
        root = Path(args.submissions[0])
        found = batch.class_members(root, args.module)
        if found is None:
            _target(args.submissions[0], args)  # a single submission must be found, or exit 2
            return batch.name_members([root]), False
        return batch.name_members(found), True
    return batch.name_members([Path(d) for d in args.submissions]), True


def _target(path: str, args: argparse.Namespace) -> Target:
    try:
        return find_target(path or None, args.module, args.tensor)
    except DiscoveryError as exc:
        raise UsageError(str(exc)) from None


def _grade_one(member: batch.Member, args: argparse.Namespace, checks: list[Check], rubric: Rubric, options: Options) -> Grade:
    start = time.monotonic()
    try:
        target = find_target(member.path or None, args.module, args.tensor)
    except DiscoveryError as exc:
        target = Target(member.path, args.module or "?", args.tensor)
        result: RunResult = failed_run(checks, str(exc))
    else:
        result = run_suite(target, checks, options)
    killed = kill_descendants()
    notes = list(result.notes)
    if killed:
        notes.append(f"{killed} process(es) left running after the run were killed.")
    tests, unscored = score(result, rubric)
    tensor = target.tensor or "the module's Tensor, else reference.tensor:Tensor"
    return Grade(
        submission=member.name,
        path=member.path,
        module=target.module,
        tensor=tensor,
        profile=options.profile,
        seed=options.seed,
        isolation=options.isolation,
        rubric=rubric.name if rubric.source == "default" else f"{rubric.name} ({rubric.source})",
        tests=tests,
        notes=notes,
        unscored=unscored,
        execution_time=time.monotonic() - start,
        output_tail=result.output_tail,
    )


def run(argv: Sequence[str]) -> int:
    args = _args(argv)
    try:
        rubric = load_rubric(args.rubric)
    except RubricError as exc:
        raise UsageError(str(exc)) from None
    members, is_batch = _members(args)
    try:
        out = reports.OutDir(Path(args.out), is_batch)
    except OSError as exc:
        raise UsageError(str(exc)) from None
    options = Options(args.profile, args.seed, args.jobs, args.isolation, args.time_limit or TIME_LIMITS[args.profile])
    become_subreaper()
    try:
        checks = collect(Target(None, "reference.memoization"), options)
        rubric.validate_checks(checks)
    except (GraderError, RubricError) as exc:
        raise UsageError(str(exc)) from None

    grades: list[Grade] = []
    for i, member in enumerate(members, 1):
        if is_batch:
            print(f"[{i}/{len(members)}] grading {member.name} ...", flush=True)
        try:
            grade = _grade_one(member, args, checks, rubric, options)
        except GraderError as exc:
            raise UsageError(str(exc)) from None
        grades.append(grade)
        if is_batch or args.quiet:
            print(f"{grade.submission}: {fmt(grade.total)}/{fmt(grade.maximum)} ({grade.execution_time:.1f} s)", flush=True)
        else:
            print(reports.summary_text(grade), flush=True)

    # Every run (and worker) has ended: only now does anything get written.
    out.clean()
    for member, grade in zip(members, grades):
        directory = out.subdir(member.name) if is_batch else out.path
        reports.write_reports(grade, directory)
    if is_batch:
        reports.write_atomic(out.path, "gradebook.csv", batch.gradebook_csv(grades))
        reports.write_atomic(out.path, "class-summary.md", batch.class_summary_md(grades))
        print(f"reports: {out.path}/<submission>/{{results.json,junit.xml,report.md}}, {out.path}/gradebook.csv, {out.path}/class-summary.md")
    else:
        print(f"reports: {out.path}/results.json, {out.path}/junit.xml, {out.path}/report.md")

    if args.fail_under is not None:
        below = [g for g in grades if g.total < round(args.fail_under * 100)]
        if below:
            names = ", ".join(g.submission for g in below[:10]) + (" ..." if len(below) > 10 else "")
            print(f"below --fail-under {fmt(round(args.fail_under * 100))}: {names}")
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a submission's message may hold any character
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the shell's convention, 128 + SIGINT
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
