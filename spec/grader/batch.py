"""Many submissions: find them, name them, and summarise the class.

`grade DIR1 DIR2 ...` grades each directory; `grade CLASS_DIR` where CLASS_DIR holds no
cache module itself but at least two of its subdirectories do, grades every
subdirectory. Reports go to OUT/<name>/ as each submission finishes, plus
OUT/gradebook.csv (one row per submission) and OUT/class-summary.md (per clause, how
many submissions failed it, most-failed first: what to reteach) at the end.

What is finished is recorded under OUT/.kvspec-progress/ (the options that matter to a
score, then one record per finished submission: its grade, or its one-line grader
fault), so `--resume` picks up an interrupted batch without regrading anyone, and
refuses to mix runs made with other options.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spec.clauses import BY_ID, GROUPS
from spec.discovery import CANDIDATE_MODULES
from spec.grader import forms
from spec.grader.grade import Grade, TestScore
from spec.grader.rubric import Check, clause_order, fmt
from spec.grader.safe_io import UnsafeFile, read_bounded

PROGRESS_DIR = ".kvspec-progress"
MAX_RECORD = 64 << 20  # bytes: one grade with every message at its cap is under 2 MB


@dataclass(frozen=True)
class Member:
    name: str  # unique among the batch; the report subdirectory
    path: str


def _has_module(root: Path, module: str | None) -> bool:
    for dotted in (module,) if module else CANDIDATE_MODULES:
        base = root.joinpath(*dotted.split("."))
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return True
    return False


def class_members(root: Path, module: str | None) -> list[Path] | None:
    """The submissions in a class directory, or None if `root` is one submission. A member
    is a subdirectory, or an archive or notebook file (spec.grader.forms)."""
    if _has_module(root, module):
        return None
    entries = sorted(p for p in root.iterdir() if not p.name.startswith((".", "__")))
    members = [p for p in entries if p.is_dir() or forms.recognisable(p, module)]
    if sum(forms.recognisable(p, module) for p in members) >= 2:
        return members
    return None


def name_members(paths: list[Path]) -> list[Member]:
    """Unique, filesystem-safe names: the directory's name, then -2, -3 ... on clashes."""
    used: set[str] = set()
    out = []
    for path in paths:
        base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.resolve().name).strip(".") or "submission"
        name, n = base, 1
        while name.lower() in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name.lower())
        out.append(Member(name, str(path)))
    return out


def gradebook_csv(grades: list[Grade]) -> str:
    groups = [g for g in GROUPS if any(g in grade.groups() for grade in grades)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["submission", "total", "max"] + groups)
    for grade in grades:
        per = grade.groups()
        writer.writerow([grade.submission, fmt(grade.total), fmt(grade.maximum)] + [fmt(per[g][0]) if g in per else "" for g in groups])
    return buffer.getvalue()


def class_summary_md(grades: list[Grade]) -> str:
    n = len(grades)
    failed: dict[str, int] = {}
    cited: set[str] = set()
    for grade in grades:
        missed: set[str] = set()
        for t in grade.tests:
            cited.update(t.check.clauses)
            if not t.passed:
                missed.update(t.check.clauses)
        for clause in missed:
            failed[clause] = failed.get(clause, 0) + 1
    order = clause_order()
    ranked = sorted(cited, key=lambda c: (-failed.get(c, 0), order.get(c, len(order))))
    out = [f"# Class summary: {n} submission{'s' if n != 1 else ''}", ""]
    if grades:
        totals = sorted(g.total for g in grades)
        top = grades[0].maximum
        mean = round(sum(totals) / n)
        median = totals[n // 2] if n % 2 else round((totals[n // 2 - 1] + totals[n // 2]) / 2)
        full = sum(1 for g in grades if g.total == g.maximum)
        out += [f"Mean {fmt(mean)} / {fmt(top)}, median {fmt(median)}, full marks: {full} of {n}.", ""]
    out += ["## Clauses, most-failed first", "", "What to reteach: each clause, and how many submissions failed a check citing it.", ""]
    out += ["| clause | group | failed by | clause text |", "| --- | --- | ---: | --- |"]
    for clause in ranked:
        c = BY_ID.get(clause)
        text = c.text.replace("|", "\\|") if c else ""
        out.append(f"| {clause} | {c.group if c else '?'} | {failed.get(clause, 0)} of {n} | {text} |")
    out += ["", "## Submissions", "", "| submission | score |", "| --- | ---: |"]
    for grade in sorted(grades, key=lambda g: (g.total, g.submission)):
        out.append(f"| {grade.submission} | {fmt(grade.total)} / {fmt(grade.maximum)} |")
    return "\n".join(out) + "\n"


# -- progress: what is finished, for --resume ----------------------------------------------------


def grade_to_dict(grade: Grade) -> dict[str, Any]:
    return asdict(grade)


def grade_from_dict(data: dict[str, Any]) -> Grade:
    fields = dict(data)
    fields["tests"] = [
        TestScore(**{**t, "check": Check(t["check"]["nodeid"], t["check"]["name"], tuple(t["check"]["clauses"]), t["check"]["group"])})
        for t in data["tests"]
    ]
    return Grade(**fields)


@dataclass(frozen=True)
class Finished:
    """A finished submission of the batch: its grade, or the one line of its grader fault."""

    name: str
    grade: Grade | None
    fault: str = ""


class ResumeError(Exception):
    """--resume cannot continue the batch recorded in the output directory."""


class Progress:
    """OUT/.kvspec-progress/: options.json, then done/<name>.json per finished submission.

    Written by the grader only after the submission's processes are all dead; read back
    (with --resume) with bounds, since in `process` isolation a submission could have put
    anything there. A record that cannot be read is regraded."""

    def __init__(self, out: Path, options: dict[str, object], resume: bool) -> None:
        self.dir = out / PROGRESS_DIR
        self.options = options
        self.done: dict[str, Finished] = {}
        self.note = ""
        if resume and self._recorded_options() is not None:
            recorded = self._recorded_options()
            assert recorded is not None
            differ = [k for k in sorted(set(options) | set(recorded)) if options.get(k) != recorded.get(k)]
            if differ:
                k = differ[0]
                raise ResumeError(
                    f"--resume: {out} holds a batch graded with {k}={recorded.get(k)!r}, not {options.get(k)!r}; "
                    "grade with the same options, or without --resume to start over"
                )
            self._load_done()
            return
        if resume:
            self.note = f"--resume: nothing to resume in {out}; grading every submission"
        if self.dir.is_symlink() or self.dir.exists():
            _remove(self.dir)
        (self.dir / "done").mkdir(parents=True)
        _write_json(self.dir / "options.json", options)

    def _recorded_options(self) -> dict[str, object] | None:
        try:
            data = json.loads(read_bounded(self.dir / "options.json", MAX_RECORD))
        except (UnsafeFile, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _load_done(self) -> None:
        done = self.dir / "done"
        if done.is_symlink() or not done.is_dir():
            _remove(done)
            done.mkdir(parents=True)
            return
        for entry in sorted(os.listdir(done)):
            if not entry.endswith(".json"):
                continue
            try:
                data = json.loads(read_bounded(done / entry, MAX_RECORD))
                finished = Finished(str(data["name"]), grade_from_dict(data["grade"]) if data.get("grade") else None, str(data.get("fault", "")))
            except (UnsafeFile, ValueError, KeyError, TypeError):
                continue  # unreadable: that submission is graded again
            if finished.name + ".json" == entry and (finished.grade is not None or finished.fault):
                self.done[finished.name] = finished

    def record(self, finished: Finished) -> None:
        self.done[finished.name] = finished
        data = {"name": finished.name, "grade": grade_to_dict(finished.grade) if finished.grade else None, "fault": finished.fault}
        _write_json(self.dir / "done" / f"{finished.name}.json", data)


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    _remove(tmp)
    with open(tmp, "x", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        pass
