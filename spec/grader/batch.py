"""Many submissions: find them, name them, split them into shards, and summarise the class.

`grade DIR1 DIR2 ...` grades each directory; `grade CLASS_DIR` where CLASS_DIR holds no
cache module itself but at least two of its subdirectories do, grades every
subdirectory. A submission is named by its path (relative to the directories' common
parent, `/` written `-`: `alice/hw5` and `bob/hw5` are alice-hw5 and bob-hw5). Reports go
to OUT/<name>/ as each submission finishes, plus
OUT/gradebook.csv (one row per submission: path, status, score, points per group),
OUT/class-summary.md (the score distribution, the clauses the class failed most, import
failures apart: what to reteach) and OUT/grades.json (every grade, machine-readable: what
`python -m spec merge` combines) at the end.

What is finished is recorded under OUT/.kvspec-progress/ (the options that matter to a
score, then one record per finished submission: its grade, or its one-line grader
fault), so `--resume` picks up an interrupted batch without regrading anyone, and
refuses to mix runs made with other options.

`--shard K/N` grades the K-th of N deterministic parts of the class (member i, in the
class's sorted order, belongs to shard i mod N + 1), so N machines of any engine (a CI
matrix, a Slurm array, a Kubernetes Indexed Job) can each grade one part; `merge` then
writes the one gradebook and class summary a single run would have.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from spec.clauses import BY_ID, GROUPS
from spec.discovery import CANDIDATE_MODULES
from spec.grader import forms
from spec.grader.grade import Grade, TestScore
from spec.grader.rubric import Check, clause_order, fmt
from spec.grader.safe_io import UnsafeFile, read_bounded

PROGRESS_DIR = ".kvspec-progress"
MAX_RECORD = 64 << 20  # bytes: one grade with every message at its cap is under 2 MB

GRADES_FILE = "grades.json"
GRADES_FORMAT = 1
SPEC_DOC = "docs/spec.md"  # the clauses' text, in the kvspec repository
HISTOGRAM_IMAGE = "score-histogram.png"


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


def _safe(part: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in part).strip(".") or "submission"


def name_members(paths: list[Path]) -> list[Member]:
    """Unique, filesystem-safe names from each path relative to the paths' common parent
    (`alice/hw5` -> alice-hw5, `bob/hw5` -> bob-hw5; one directory level, so each report
    directory is cleaned as a whole); -2, -3 ... if two still clash (case-insensitively)."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved])) if resolved else Path("/")
    used: set[str] = set()
    out = []
    for path, full in zip(paths, resolved):
        try:
            parts = full.relative_to(common).parts
        except ValueError:
            parts = (full.name,)
        base = "-".join(_safe(part) for part in parts) or _safe(full.name)
        name, n = base, 1
        while name.lower() in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name.lower())
        out.append(Member(name, str(path)))
    return out


# -- shards ------------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' with 1 <= K <= N -> (K, N); ValueError with a one-line reason otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--shard takes K/N (shard K of N, counted from 1), not {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be between 1 and N")
    return k, n


def shard_of(members: list[Member], k: int, n: int) -> list[int]:
    """Indices (into the whole class, in its sorted order) of shard k of n."""
    return [i for i in range(len(members)) if i % n == k - 1]


# -- grades.json: what merge reads -------------------------------------------------------------


def grades_json(members: list[Member], graded: dict[int, Grade], shard: tuple[int, int] | None) -> str:
    """The whole class's member list, and the grades this run produced (by class index)."""
    data = {
        "kvspec_grades": GRADES_FORMAT,
        "shard": list(shard) if shard else None,
        "class": [[m.name, m.path] for m in members],
        "grades": [{"index": i, "grade": grade_to_dict(graded[i])} for i in sorted(graded)],
    }
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


class MergeError(Exception):
    """The shard outputs do not make one class (one-line reason)."""


def read_shards(dirs: list[Path]) -> tuple[list[Member], list[Grade], list[Path]]:
    """Combine the grades.json of each shard's output directory; every member of the class
    must be graded by exactly one shard, and the shards must agree on the class. Returns
    the class, its grades and the directory holding each one's reports, in class order."""
    members: list[Member] | None = None
    graded: dict[int, tuple[Grade, Path]] = {}
    shards: dict[int, Path] = {}
    total: int | None = None
    for d in dirs:
        try:
            data = json.loads((d / GRADES_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MergeError(f"{d}: no readable {GRADES_FILE} (is it a `grade --shard` output directory?): {exc}") from None
        if not isinstance(data, dict) or data.get("kvspec_grades") != GRADES_FORMAT:
            raise MergeError(f"{d / GRADES_FILE}: not a kvspec grades file of format {GRADES_FORMAT}")
        these = [Member(str(name), str(path)) for name, path in data["class"]]
        if members is None:
            members = these
        elif these != members:
            raise MergeError(f"{d}: graded a different class than {dirs[0]} (its submissions differ)")
        k, n = data["shard"] if data["shard"] else (1, 1)
        if total is None:
            total = n
        elif n != total:
            raise MergeError(f"{d}: shard {k}/{n}, but {dirs[0]} was one of {total} shards")
        if k in shards:
            raise MergeError(f"{d} and {shards[k]} are both shard {k}/{n}")
        shards[k] = d
        for entry in data["grades"]:
            graded[int(entry["index"])] = (grade_from_dict(entry["grade"]), d)
    assert members is not None and total is not None
    missing = sorted(set(range(1, total + 1)) - set(shards))
    if missing:
        raise MergeError(f"shard {missing[0]}/{total} is missing: give every shard's output directory")
    ungraded = [members[i].name for i in range(len(members)) if i not in graded]
    if ungraded:
        raise MergeError(f"{len(ungraded)} submission(s) were graded by no shard, e.g. {ungraded[0]}")
    return members, [graded[i][0] for i in range(len(members))], [graded[i][1] for i in range(len(members))]


# -- gradebook.csv -----------------------------------------------------------------------------


def gradebook_csv(grades: list[Grade]) -> str:
    groups = [g for g in GROUPS if any(g in grade.groups() for grade in grades)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["submission", "path", "status", "total", "max"] + groups)
    for grade in grades:
        per = grade.groups()
        writer.writerow(
            [grade.submission, grade.path, grade.status, fmt(grade.total), fmt(grade.maximum)]
            + [fmt(per[g][0]) if g in per else "" for g in groups]
        )
    return buffer.getvalue()


# -- class-summary.md --------------------------------------------------------------------------

_LEAD = re.compile(r"\s*\[([^\]]*)\]\s*(.*)", re.S)


def failed_clauses(cited: tuple[str, ...], message: str) -> list[str]:
    """The clauses a failing check actually failed on: those its message leads with
    (`[KV-GET-1] MUST: ...`), not every clause the check cites. A check that was not graded
    (time limit, module not loaded) failed on none."""
    m = _LEAD.match(message)
    if not m:
        return list(cited)
    if m.group(2).startswith("not graded"):
        return []
    named = [c.strip() for c in m.group(1).split(",") if c.strip() in cited]
    return named or list(cited)


def anchor(clause: str) -> str:
    """GitHub's anchor of the clause's heading in docs/spec.md (`#### KV-GET-1 (MUST)`)."""
    c = BY_ID.get(clause)
    heading = f"{clause} ({c.level})" if c else clause
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def quantiles(values: list[int]) -> tuple[int, int, int, int, int]:
    """Minimum, lower quartile, median, upper quartile, maximum (centipoints, rounded)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        q = [float(ordered[0])] * 3
    else:
        q = statistics.quantiles(ordered, n=4, method="inclusive")
    return ordered[0], round(q[0]), round(q[1]), round(q[2]), ordered[-1]


def histogram(values: list[int], top: int, bins: int = 10) -> list[int]:
    """How many scores fall in each tenth of the maximum (the last bin includes full marks)."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, v * bins // top) if top > 0 else 0] += 1
    return counts


def histogram_text(values: list[int], top: int) -> list[str]:
    counts = histogram(values, top)
    width = max(counts, default=0)
    lines = []
    for i, count in enumerate(counts):
        low, high = fmt(top * i // 10), fmt(top * (i + 1) // 10)
        bracket = "]" if i == len(counts) - 1 else ")"
        bar = "#" * (round(count * 40 / width) if width else 0)
        lines.append(f"[{low:>6}, {high:>6}{bracket} {count:>4}  {bar}")
    return lines


def histogram_image(values: list[int], top: int, path: Path) -> bool:
    """The histogram as a PNG, with the optional plotting extra (matplotlib); False without."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    counts = histogram(values, top)
    fig, ax = plt.subplots(figsize=(6, 3))
    edges = [top * i / 10 / 100 for i in range(11)]
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges, edges[1:])], align="edge", edgecolor="black")
    ax.set_xlabel("score (points)")
    ax.set_ylabel("submissions")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def class_summary_md(grades: list[Grade], image: str | None = None) -> str:
    n = len(grades)
    scored = [g for g in grades if g.status not in ("import failed", "grader fault")]
    failed: dict[str, int] = {}
    cited: set[str] = set()
    for grade in scored:
        missed: set[str] = set()
        for t in grade.tests:
            cited.update(t.check.clauses)
            if not t.passed:
                missed.update(failed_clauses(t.check.clauses, t.output))
        for clause in missed:
            failed[clause] = failed.get(clause, 0) + 1
    order = clause_order()
    ranked = sorted(cited, key=lambda c: (-failed.get(c, 0), order.get(c, len(order))))
    out = [f"# Class summary: {n} submission{'s' if n != 1 else ''}", ""]
    statuses = {s: sum(g.status == s for g in grades) for s in ("graded", "timed out", "import failed", "grader fault")}
    out += ["Status: " + ", ".join(f"{s} {c}" for s, c in statuses.items() if c) + ".", ""]
    if grades:
        totals = [g.total for g in grades]
        top = max(g.maximum for g in grades)
        low, q1, median, q3, high = quantiles(totals)
        full = sum(1 for g in grades if g.total == g.maximum)
        out += ["## Score distribution", ""]
        out += [f"Out of {fmt(top)}: mean {fmt(round(sum(totals) / n))}; minimum {fmt(low)}, lower quartile {fmt(q1)}, "
                f"median {fmt(median)}, upper quartile {fmt(q3)}, maximum {fmt(high)}; full marks: {full} of {n}.", ""]  # fmt: skip
        if image:
            out += [f"![score histogram]({image})", ""]
        out += ["```text", "score range        count"] + histogram_text(totals, top) + ["```", ""]
    out += ["## Clauses, most-failed first", ""]
    out += [f"What to reteach: for each clause, how many of the {len(scored)} submissions that imported failed a "
            "check on that very clause (a check citing several clauses counts only the one its failure names). "
            f"Each clause links to its text in {SPEC_DOC}.", ""]  # fmt: skip
    out += ["| clause | group | failed by | clause text |", "| --- | --- | ---: | --- |"]
    for clause in ranked:
        c = BY_ID.get(clause)
        text = c.text.replace("|", "\\|") if c else ""
        link = f"[{clause}]({SPEC_DOC}#{anchor(clause)})"
        out.append(f"| {link} | {c.group if c else '?'} | {failed.get(clause, 0)} of {len(scored)} | {text} |")
    not_scored = [g for g in grades if g.status in ("import failed", "grader fault")]
    if not_scored:
        out += ["", f"## Not counted above: {len(not_scored)} submission(s) that did not import or hit a grader fault", ""]
        out += ["| submission | status | why |", "| --- | --- | --- |"]
        for grade in sorted(not_scored, key=lambda g: g.submission):
            first = next((t.output for t in grade.tests if t.check.group == "import" and not t.passed), grade.fault)
            line = next((ln.strip() for ln in first.splitlines() if ln.strip()), "")  # not the traceback
            why = line[:200].replace("|", "\\|")
            out.append(f"| {grade.submission} | {grade.status} | {why} |")
    out += ["", "## Submissions", "", "| submission | status | score |", "| --- | --- | ---: |"]
    for grade in sorted(grades, key=lambda g: (g.total, g.submission)):
        out.append(f"| {grade.submission} | {grade.status} | {fmt(grade.total)} / {fmt(grade.maximum)} |")
    return "\n".join(out) + "\n"


def write_class(directory: Path, members: list[Member], graded: dict[int, Grade], shard: tuple[int, int] | None) -> None:
    """gradebook.csv, class-summary.md (and its histogram image, with the plotting extra) and
    grades.json of the members graded here, in the class's order."""
    from spec.grader.reports import write_atomic

    grades = [graded[i] for i in sorted(graded)]
    totals = [g.total for g in grades]
    top = max((g.maximum for g in grades), default=0)
    image = HISTOGRAM_IMAGE if grades and histogram_image(totals, top, directory / HISTOGRAM_IMAGE) else None
    write_atomic(directory, "gradebook.csv", gradebook_csv(grades))
    write_atomic(directory, "class-summary.md", class_summary_md(grades, image))
    write_atomic(directory, GRADES_FILE, grades_json(members, graded, shard))


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
            if _record_name(finished.name) == entry and (finished.grade is not None or finished.fault):
                self.done[finished.name] = finished

    def record(self, finished: Finished) -> None:
        self.done[finished.name] = finished
        data = {"name": finished.name, "grade": grade_to_dict(finished.grade) if finished.grade else None, "fault": finished.fault}
        _write_json(self.dir / "done" / _record_name(finished.name), data)


def _record_name(name: str) -> str:
    return quote(name, safe="") + ".json"


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
