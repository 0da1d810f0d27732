"""The zoo's registry: every variant is the base submission plus small, named edits.

A variant is `base/` (a correct submission laid out as a student lays it out) with
edits applied: each edit replaces a piece of text that must occur exactly once in the
base file, so a change to the base breaks the zoo loudly instead of silently turning a
bug into a no-op. Variants may also add files and move files (other course layouts).

    python -m tests.zoo list                 # every variant, its kind and expectation
    python -m tests.zoo show NAME            # the variant as a unified diff against base/
    python -m tests.zoo materialize NAME DIR # write the variant's submission into DIR

Kinds:
  bug          must lose points in each group of `expect_fail_groups`
  alternative  a correct design other than the base's: must get full marks
  hostile      attacks the grader, combined with a real bug: must end with the score
               of its `twin` (the same submission with the attack replaced by a plain
               exception, or the bug alone), or `expect_score`, and never more
  twin         not a student variant: the yardstick a hostile variant is compared with
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

BASE = Path(__file__).resolve().parent / "base"
KINDS = ("bug", "alternative", "hostile", "twin")

# Paths of the base files, relative to the submission directory.
MEMO = "tinytorch/perf/memoization.py"
TENSOR = "tinytorch/core/tensor.py"


class ZooError(Exception):
    """A variant does not apply to the base (an edit's text is missing or ambiguous)."""


@dataclass(frozen=True)
class Edit:
    """Replace `old` (exactly one occurrence in the base file) by `new`."""

    file: str
    old: str
    new: str


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str
    description: str
    edits: tuple[Edit, ...] = ()
    expect_fail_groups: frozenset[str] = frozenset()
    adds: tuple[tuple[str, str], ...] = ()  # (path, content): new files
    moves: tuple[tuple[str, str], ...] = ()  # (from, to): applied after edits and adds
    deletes: tuple[str, ...] = ()  # paths (files or directories) removed last
    twin: str | None = None  # hostile: the variant whose score this one must equal
    expect_score: float | None = None  # hostile: the exact score instead of a twin's
    origin: str = ""  # where the bug comes from (course text, published release, students)
    score_note: str = ""  # hostile / slow: what score to expect and why
    at_most: bool = False  # hostile: may end below its twin (it can sabotage itself), never above
    collateral: frozenset[str] = frozenset()  # bug: groups that may also lose points, and why (collateral_why)
    collateral_why: str = ""
    collateral_recorded: bool = False  # bug: collateral was measured and declared; losing points elsewhere is an error


def edit(file: str, old: str, new: str) -> Edit:
    return Edit(file, old, new)


def base_files() -> dict[str, str]:
    """The base submission: relative path -> text (no caches)."""
    out: dict[str, str] = {}
    for path in sorted(BASE.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            out[path.relative_to(BASE).as_posix()] = path.read_text(encoding="utf-8")
    return out


def apply(variant: Variant, files: dict[str, str] | None = None) -> dict[str, str]:
    """The variant's files (relative path -> text). Raises ZooError if an edit does not apply."""
    base = base_files() if files is None else files
    out = dict(base)
    for e in variant.edits:
        if e.file not in base:
            raise ZooError(f"{variant.name}: edit of {e.file}, which the base does not have")
        in_base = base[e.file].count(e.old)
        if in_base != 1:
            raise ZooError(f"{variant.name}: edit text occurs {in_base} times in base {e.file} (must be once):\n{e.old}")
        if out[e.file].count(e.old) != 1:
            raise ZooError(f"{variant.name}: an earlier edit of this variant changed the text of a later one:\n{e.old}")
        out[e.file] = out[e.file].replace(e.old, e.new)
    for path, content in variant.adds:
        out[path] = content
    for src, dst in variant.moves:
        if src not in out:
            raise ZooError(f"{variant.name}: cannot move {src}: no such file")
        out[dst] = out.pop(src)
    for gone in variant.deletes:
        matched = [p for p in out if p == gone or p.startswith(gone.rstrip("/") + "/")]
        if not matched:
            raise ZooError(f"{variant.name}: cannot delete {gone}: no such file or directory")
        for p in matched:
            del out[p]
    return out


def materialize(variant: Variant, dest: Path) -> Path:
    """Write the variant's submission into `dest` (created; must not hold files already)."""
    files = apply(variant)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ZooError(f"{dest} is not empty")
    for rel, text in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return dest


def diff(variant: Variant) -> str:
    """The variant as a unified diff against the base."""
    before, after = base_files(), apply(variant)
    chunks: list[str] = []
    for rel in sorted(set(before) | set(after)):
        a, b = before.get(rel), after.get(rel)
        if a == b:
            continue
        chunks.extend(
            difflib.unified_diff(
                (a or "").splitlines(keepends=True),
                (b or "").splitlines(keepends=True),
                fromfile=f"base/{rel}" if a is not None else "/dev/null",
                tofile=f"{variant.name}/{rel}" if b is not None else "/dev/null",
            )
        )
    return "".join(line if line.endswith("\n") else line + "\n" for line in chunks)


def registry() -> dict[str, Variant]:
    """Every variant by name (bugs, alternatives, hostile ones and their twins)."""
    from tests.zoo import alternatives, bugs, hostile

    out: dict[str, Variant] = {}
    for v in list(bugs.VARIANTS) + list(alternatives.VARIANTS) + list(hostile.VARIANTS) + list(hostile.ATTACKS):
        if v.name in out:
            raise ZooError(f"duplicate variant name {v.name}")
        if v.kind not in KINDS:
            raise ZooError(f"{v.name}: unknown kind {v.kind}")
        out[v.name] = v
    return out


def by_kind(variants: Iterable[Variant], kind: str) -> list[Variant]:
    return [v for v in variants if v.kind == kind]


def check_registry(variants: dict[str, Variant] | None = None) -> None:
    """Structural checks: edits apply, bugs and hostile ones name groups, twins exist."""
    from spec.clauses import GROUPS

    variants = registry() if variants is None else variants
    for v in variants.values():
        apply(v)
        unknown = set(v.expect_fail_groups) - set(GROUPS)
        if unknown:
            raise ZooError(f"{v.name}: unknown groups {sorted(unknown)}")
        if v.kind == "bug" and not v.expect_fail_groups:
            raise ZooError(f"{v.name}: a bug must name the groups that must fail")
        if set(v.collateral) - set(GROUPS) or (v.collateral and not v.collateral_why):
            raise ZooError(f"{v.name}: collateral must name groups of the spec, with collateral_why")
        if v.kind == "alternative" and v.expect_fail_groups:
            raise ZooError(f"{v.name}: an alternative must get full marks")
        if v.kind == "hostile" and (v.twin is None) == (v.expect_score is None):
            raise ZooError(f"{v.name}: a hostile variant needs exactly one of twin / expect_score")
        if v.twin is not None and v.twin not in variants:
            raise ZooError(f"{v.name}: twin {v.twin} is not a variant")
        if v.kind != "alternative" and not v.edits and not v.adds:
            raise ZooError(f"{v.name}: no edits")
    from tests.zoo.bugs import MEASURED_COLLATERAL

    stale = sorted(set(MEASURED_COLLATERAL) - {n for n, v in registry().items() if v.kind == "bug"})
    if stale:
        raise ZooError(f"MEASURED_COLLATERAL names bugs the zoo does not have: {stale}")
