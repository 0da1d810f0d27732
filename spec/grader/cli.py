"""`python -m spec grade`: grade one submission, several, or a class directory.

Exit codes: 0 graded (and at or above --fail-under if given); 1 graded, but below
--fail-under (in a batch: some submission below it); 2 the grader could not run (bad
arguments, a missing directory, a bad rubric), with a one-line message and no traceback,
or (in a batch) could not grade some submission: every other one is graded and its
reports written, and the faulty one gets OUT/<name>/grader-fault.txt (one line);
130 interrupted (Ctrl-C; a batch continues with --resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, Sequence, TextIO

from spec import profiles
from spec.clauses import GROUPS
from spec.discovery import Target
from spec.grader import batch, forms, reports
from spec.grader.grade import Grade, failed_run, score
from spec.grader.integrity import IntegrityError, check_install
from spec.grader.rubric import Check, Rubric, RubricError, fmt
from spec.grader.rubric import load as load_rubric
from spec.isolation import wall
from spec.grader.run import TIME_LIMITS, GraderError, Options, RunResult, become_subreaper, collect, harden_self, run_suite, sweep

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
    p.add_argument("submissions", nargs="*", metavar="SUBMISSION",
                   help="a submission (a folder, a notebook, a zip or tar archive), several, or one folder of submissions (none: the bundled reference)")
    p.add_argument("--module", metavar="DOTTED", help="dotted name of the cache module (default: discovered)")
    p.add_argument("--tensor", metavar="DOTTED:NAME", help="the Tensor class (default: the module's Tensor, else the reference's)")
    p.add_argument("--tensor-file", metavar="PATH.py",
                   help="the course's Tensor module, used for a submission whose own Tensor module is missing or does not compile")
    p.add_argument("--out", metavar="DIR", default="grade-report", help="where the reports go (default: ./grade-report/)")
    p.add_argument("--seed", metavar="N", type=int, default=profiles.DEFAULT_SEED, help=f"seed of the examples (default: {profiles.DEFAULT_SEED})")
    p.add_argument("--profile", choices=profiles.PROFILES, default=profiles.DEFAULT_PROFILE, help="how many examples per check (default: default)")
    p.add_argument("--rubric", metavar="FILE", help="a rubric TOML file replacing the default one")
    p.add_argument("--fail-under", metavar="POINTS", type=float, help="exit 1 if the score is below POINTS")
    p.add_argument("--jobs", metavar="N", type=int, default=2, help="pytest-xdist workers per submission (default: 2)")
    p.add_argument("--isolation", choices=wall.MODES,
                   help="sandbox: bubblewrap namespaces; user: a dedicated unprivileged uid (grader as root); process: worker processes "
                        "of the grader's user, not protected against hostile code; none: in the test process, trusted code only "
                        "(default: the strongest this machine offers; docs/threat-model.md)")
    p.add_argument("--groups", metavar="G1,G2",
                   help="grade only these groups of checks (comma-separated, e.g. get,reset): a quicker answer while you work "
                        "on one part; the score is out of their points only, and the rubric's name says so")
    p.add_argument("--time-limit", metavar="SECONDS", type=float,
                   help="wall-clock limit of one submission's run (default: " + ", ".join(f"{k} {v:.0f}" for k, v in TIME_LIMITS.items()) + ")")
    p.add_argument("--quiet", action="store_true", help="print only the score line per submission")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted batch in --out: submissions already graded there (with the same options) are not graded again")
    p.add_argument("--shard", metavar="K/N", help="grade only part K of N of the class (a deterministic split; "
                   "combine the N outputs with `python -m spec merge`)")
    return p


def _args(argv: Sequence[str]) -> argparse.Namespace:
    args = parser().parse_args(list(argv))
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {args.jobs}")
    if args.fail_under is not None and not args.fail_under >= 0:
        raise UsageError(f"--fail-under must be a number of points >= 0, not {args.fail_under}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise UsageError(f"--time-limit must be a positive number of seconds, not {args.time_limit}")
    if args.isolation is None:
        args.isolation = wall.strongest()
    elif wall.unavailable(args.isolation):
        raise UsageError(f"--isolation {args.isolation} is not available here: {wall.unavailable(args.isolation)}")
    if args.tensor is not None and ":" not in args.tensor:
        raise UsageError(f"--tensor takes dotted.module:ClassName, got {args.tensor!r}")
    if args.tensor_file is not None:
        if args.tensor is not None:
            raise UsageError("give --tensor or --tensor-file, not both")
        if not Path(args.tensor_file).is_file() or not args.tensor_file.endswith(".py"):
            raise UsageError(f"--tensor-file takes a Python file holding the course's Tensor class, got {args.tensor_file!r}")
        args.tensor_file = str(Path(args.tensor_file).resolve())
    if args.groups is not None:
        args.groups = tuple(dict.fromkeys(g.strip() for g in args.groups.split(",") if g.strip()))
        unknown = [g for g in args.groups if g not in GROUPS or g == "import"]
        if unknown or not args.groups:
            raise UsageError(f"--groups takes groups of the spec, comma-separated ({', '.join(g for g in GROUPS if g != 'import')}), "
                             f"not {','.join(unknown) or repr('')!s}")
    if args.shard is not None:
        try:
            args.shard = batch.parse_shard(args.shard)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return args


def _members(args: argparse.Namespace) -> tuple[list[batch.Member], bool]:
    """(submissions, is_batch). Raises UsageError for missing paths and, for a single
    submission, for one without a cache module or that cannot be read (spec.grader.forms)."""
    for d in args.submissions:
        if not Path(d).exists():
            raise UsageError(f"submission {d!r} does not exist")
    if not args.submissions:
        return [batch.Member("reference", "")], False
    if len(args.submissions) == 1:
        root = Path(args.submissions[0])
        found = batch.class_members(root, args.module) if root.is_dir() else None
        if found is None:
            _check_form(args.submissions[0], args)  # a single submission must be readable, or exit 2
            return batch.name_members([root]), False
        return batch.name_members(found), True
    return batch.name_members([Path(d) for d in args.submissions]), True


def _check_form(path: str, args: argparse.Namespace) -> None:
    try:
        with forms.prepared(path, args.module, args.tensor, args.tensor_file):
            pass
    except forms.FormError as exc:
        raise UsageError(str(exc)) from None


def _grade_one(member: batch.Member, args: argparse.Namespace, checks: list[Check], rubric: Rubric, options: Options,
               install: str = "") -> Grade:
    start = time.monotonic()
    try:
        with forms.prepared(member.path, args.module, args.tensor, args.tensor_file) as prepared:
            target, tensor, form = prepared.target, prepared.tensor, prepared.form
            result: RunResult = run_suite(target, checks, options)
    except forms.FormError as exc:
        target, tensor, form = Target(member.path, args.module or "?", args.tensor), "not known", [str(exc)]
        result = failed_run(checks, str(exc))
    killed = sweep()
    notes = list(result.notes)
    if killed:
        notes.append(f"{killed} process(es) left running after the run were killed.")
    tests, unscored = score(result, rubric)
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
        form=form,
        notes=notes,
        unscored=unscored,
        execution_time=time.monotonic() - start,
        output_tail=result.output_tail,
        install=install,
        timed_out=result.timed_out,
    )


FAULT_FILE = "grader-fault.txt"


def _grade_contained(member: batch.Member, args: argparse.Namespace, checks: list[Check], rubric: Rubric,
                     options: Options, install: str = "") -> batch.Finished:
    """Grade one submission; whatever goes wrong with the grader while it does (an
    exception, a grader fault, a run it cannot clean up after) ends as a one-line fault
    of this submission alone, after every process it left is killed."""
    try:
        return batch.Finished(member.name, _grade_one(member, args, checks, rubric, options, install))
    except GraderError as exc:
        line = str(exc)
    except Exception as exc:  # a defect of the grader met on this submission: contain it
        line = f"internal error, a grader fault and not the submission's: {type(exc).__name__}: {exc} (no score was written)"
    sweep()
    return batch.Finished(member.name, None, " ".join(line.split())[:1000])


def only_groups(checks: list[Check], rubric: Rubric, groups: tuple[str, ...]) -> tuple[list[Check], Rubric]:
    """`--groups`: the import checks and those of `groups`; the other groups' points are set to
    0, so the score is out of the chosen groups' points and nothing else is reported as not
    scored (an optional group among them that does not apply still spreads over the others)."""
    keep = set(groups) | {"import"}
    points = {g: (p if g in keep else 0) for g, p in rubric.group_points.items()}
    name = f"{rubric.name}, only {', '.join(groups)} (--groups)"
    return [c for c in checks if c.group in keep], replace(rubric, name=name, group_points=points)


def _options_record(args: argparse.Namespace, options: Options, rubric: Rubric, checks: list[Check]) -> dict[str, object]:
    """What decides a score: a batch is resumed only with exactly these."""
    import hashlib

    digest = hashlib.sha256(json.dumps([(c.nodeid, c.clauses) for c in checks]).encode()).hexdigest()[:16]
    rubric_text = Path(args.rubric).read_bytes() if args.rubric else b""
    return {
        "profile": options.profile, "seed": options.seed, "isolation": options.isolation, "time_limit": options.time_limit,
        "module": args.module, "tensor": args.tensor, "rubric": rubric.name,
        "rubric_sha256": hashlib.sha256(rubric_text).hexdigest()[:16], "checks": digest,
    }  # fmt: skip


def _write_member(out: reports.OutDir, finished: batch.Finished, is_batch: bool) -> None:
    """This submission's reports (its processes are dead): first remove what appeared in
    the output directory meanwhile, then write atomically. A grader fault gets no
    results.json (Gradescope must not show a 0), only grader-fault.txt, in a batch."""
    out.clean()
    directory = out.subdir(finished.name) if is_batch else out.path
    if finished.grade is not None:
        written = reports.write_reports(finished.grade, directory)
        if not is_batch:  # (a batch keeps the whole subdirectory)
            for path in written:
                out.keep(path.name)
    elif is_batch:
        reports.write_atomic(directory, FAULT_FILE, finished.fault + "\n")


def _print_member(finished: batch.Finished, is_batch: bool, quiet: bool) -> None:
    grade = finished.grade
    if grade is None:
        print(f"{finished.name}: {PROG}: error: {finished.fault}", file=sys.stderr, flush=True)
    elif is_batch or quiet:
        print(f"{grade.submission}: {fmt(grade.total)}/{fmt(grade.maximum)} ({grade.execution_time:.1f} s)", flush=True)
    else:
        print(reports.summary_text(grade), flush=True)


def _by_index(members: list[batch.Member], finished: list[batch.Finished], options: Options, rubric: Rubric) -> dict[int, Grade]:
    """Each finished member's grade by its index in the class; a grader fault becomes an
    empty grade with `fault` set (a gradebook row with status "grader fault", no score)."""
    index = {m.name: j for j, m in enumerate(members)}
    out = {}
    for f in finished:
        j = index[f.name]
        out[j] = f.grade if f.grade is not None else Grade(
            f.name, members[j].path, "", "", options.profile, options.seed, options.isolation, rubric.name, [], fault=f.fault
        )
    return out


def run(argv: Sequence[str]) -> int:
    args = _args(argv)
    try:
        rubric = load_rubric(args.rubric)
    except RubricError as exc:
        raise UsageError(str(exc)) from None
    members, is_batch = _members(args)
    if args.resume and not is_batch:
        raise UsageError("--resume continues a batch (several submissions); one submission is simply graded again")
    if args.shard is not None and not is_batch:
        raise UsageError("--shard splits a class: give a class directory or several submission directories")
    selected = batch.shard_of(members, *args.shard) if args.shard else list(range(len(members)))
    try:
        out = reports.OutDir(Path(args.out), is_batch, keep=(batch.PROGRESS_DIR,) if args.resume else ())
    except OSError as exc:
        raise UsageError(str(exc)) from None
    options = Options(args.profile, args.seed, args.jobs, args.isolation, args.time_limit or TIME_LIMITS[args.profile],
                      args.groups or ())
    try:
        install = check_install()
    except IntegrityError as exc:
        raise UsageError(str(exc)) from None
    harden_self()  # it holds the verdict keys
    become_subreaper()
    try:
        checks = collect(Target(None, "reference.memoization"), options)
        rubric.validate_checks(checks)
    except (GraderError, RubricError) as exc:
        raise UsageError(str(exc)) from None
    if options.groups:
        checks, rubric = only_groups(checks, rubric, options.groups)
    progress = None
    if is_batch:
        try:
            progress = batch.Progress(out.path, _options_record(args, options, rubric, checks), args.resume)
        except batch.ResumeError as exc:
            raise UsageError(str(exc)) from None
        out.keep(batch.PROGRESS_DIR)
        if progress.note:
            print(progress.note, flush=True)

    finished: list[batch.Finished] = []
    if is_batch or args.quiet:
        print(f"isolation: {options.isolation}" + (f" ({wall.warning(options.isolation)})" if wall.warning(options.isolation) else ""), flush=True)
    for i, member in enumerate([members[j] for j in selected], 1):
        done = progress.done.get(member.name) if progress else None
        if done is not None and done.grade is not None:  # a grader fault is tried again
            finished.append(done)
            out.keep(member.name)
            continue
        if is_batch:
            print(f"[{i}/{len(selected)}] grading {member.name} ...", flush=True)
        result = _grade_contained(member, args, checks, rubric, options, install)
        if result.grade is None and not is_batch:
            raise UsageError(result.fault)  # one submission: exit 2, one line, no reports
        _write_member(out, result, is_batch)
        if progress is not None:
            progress.record(result)
        finished.append(result)
        _print_member(result, is_batch, args.quiet)

    grades = [f.grade for f in finished if f.grade is not None]
    faults = [f for f in finished if f.grade is None]
    out.clean()
    if is_batch:
        for grade in grades:  # again: a later submission may have written into an earlier one's directory
            reports.write_reports(grade, out.subdir(grade.submission))
        batch.write_class(out.path, members, _by_index(members, finished, options, rubric), args.shard)
        print(f"reports: {out.path}/<submission>/{{results.json,junit.xml,report.md}}, {out.path}/gradebook.csv, {out.path}/class-summary.md")
    else:
        print(f"reports: {out.path}/results.json, {out.path}/junit.xml, {out.path}/report.md")

    if faults:
        names = ", ".join(f.name for f in faults[:10]) + (" ..." if len(faults) > 10 else "")
        print(f"{PROG}: error: {len(faults)} submission(s) not graded, a grader fault (see {FAULT_FILE} in each): {names}", file=sys.stderr)
        return 2
    if args.fail_under is not None:
        below = [g for g in grades if g.total < round(args.fail_under * 100)]
        if below:
            names = ", ".join(g.submission for g in below[:10]) + (" ..." if len(below) > 10 else "")
            print(f"below --fail-under {fmt(round(args.fail_under * 100))}: {names}")
            return 1
    return 0


class _Console:
    """stdout that survives a reader going away (`python -m spec grade class/ | head`): the
    grading goes on and every report is written; only the console lines stop."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.gone = False

    def _lost(self) -> None:
        self.gone = True
        try:  # the interpreter's own flush at exit must not complain either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._lost()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._lost()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a submission's message may hold any character
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")
    if not isinstance(sys.stdout, _Console):
        sys.stdout = _Console(sys.stdout)
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the shell's convention, 128 + SIGINT
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
