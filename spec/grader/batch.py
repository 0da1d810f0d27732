"""Many submissions: find them, name them, and summarise the class.

`grade DIR1 DIR2 ...` grades each directory; `grade CLASS_DIR` where CLASS_DIR holds no
cache module itself but at least two of its subdirectories do, grades every
subdirectory. Reports go to OUT/<name>/, plus OUT/gradebook.csv (one row per
submission) and OUT/class-summary.md (per clause, how many submissions failed it,
most-failed first: what to reteach).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from spec.clauses import BY_ID, GROUPS
from spec.discovery import CANDIDATE_MODULES, DiscoveryError, find_target
from spec.grader.grade import Grade
from spec.grader.rubric import clause_order, fmt


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


def _discoverable(path: Path, module: str | None) -> bool:
    try:
        find_target(str(path), module)
    except DiscoveryError:
        return False
    return True


def class_members(root: Path, module: str | None) -> list[Path] | None:
    """The submissions in a class directory, or None if `root` is one submission."""
    if _has_module(root, module):
        return None
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    if sum(_discoverable(p, module) for p in subdirs) >= 2:
        return subdirs
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
