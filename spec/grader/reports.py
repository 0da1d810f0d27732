"""The reports: results.json (Gradescope's format), junit.xml, report.md, and the terminal summary.

Written only by the grader process, after the submission's runs (and so every process
they left) have ended, each atomically (a temporary file in the same directory, then
os.replace): in a batch, each submission's reports as soon as it is graded. Whatever
appeared in the output directory while submissions ran is removed first: a submission
that writes its own results.json there cannot make it the final one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

from spec.clauses import GROUPS
from spec.grader.grade import Grade, TestScore
from spec.grader.rubric import fmt, to_points
from spec.grader.safe_io import remove_tree
from spec.isolation import wall
from spec.session import EXAMPLE_END, EXAMPLE_START

REPORT_FILES = ("results.json", "junit.xml", "report.md", "report-full.md")  # the last only when checks are hidden
BATCH_FILES = ("gradebook.csv", "class-summary.md", "grades.json", "score-histogram.png")
_XML_BAD = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# -- the output directory ----------------------------------------------------------------------


class OutDir:
    """The directory the reports go to. Created (and cleared of old reports) before any
    submission runs; `clean()` then removes whatever appeared in it during the runs."""

    def __init__(self, path: Path, batch: bool, keep: tuple[str, ...] = ()) -> None:
        self.path = path
        try:
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise OSError(f"{path} exists and is not a directory")
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot use {str(path)!r} as the output directory: {exc}") from None
        for name in REPORT_FILES + (BATCH_FILES if batch else ()):
            _remove(path / name)
        for name in os.listdir(path):
            if name.startswith(".kvspec-") and name not in keep:  # progress of an earlier batch
                _remove(path / name)
        self.before = set(os.listdir(path))
        self.inode = path.stat().st_ino

    def clean(self) -> None:
        if self.path.is_symlink() or not self.path.is_dir() or self.path.stat().st_ino != self.inode:
            _remove(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            self.inode = self.path.stat().st_ino
            self.before = set()
        for name in sorted(set(os.listdir(self.path)) - self.before):
            _remove(self.path / name)

    def keep(self, name: str) -> None:
        """`name` (a report, a submission's subdirectory) is the grader's: clean() leaves it."""
        self.before.add(name)

    def subdir(self, name: str, only: tuple[str, ...] = REPORT_FILES) -> Path:
        """OUT/name, a real directory holding nothing but the grader's files `only`."""
        sub = self.path / name
        if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
            _remove(sub)
        sub.mkdir(exist_ok=True)
        for entry in os.listdir(sub):
            if entry not in only:
                _remove(sub / entry)
        self.keep(name)
        return sub


def _remove(path: Path) -> None:
    """Remove a file, link or tree a submission may have put there; never raises."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return
    except OSError:
        pass
    remove_tree(path)


def write_atomic(directory: Path, name: str, text: str) -> Path:
    target = directory / name
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a report is an ordinary file
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0o077)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


def write_reports(grade: Grade, directory: Path) -> list[Path]:
    """results.json (each test with its visibility, for Gradescope to enforce), and junit.xml
    and report.md as a student may see them; report-full.md, everything, for the staff,
    when the rubric hides checks."""
    view = student_view(grade)
    written = [
        write_atomic(directory, "results.json", results_json(grade)),
        write_atomic(directory, "junit.xml", junit_xml(view)),
        write_atomic(directory, "report.md", report_md(view)),
    ]
    if view is not grade:
        written.append(write_atomic(directory, "report-full.md", report_md(grade)))
    return written


# -- what a student may see --------------------------------------------------------------------

# Gradescope's visibilities, least restrictive first.
_VISIBILITIES = ("visible", "after_published", "after_due_date", "hidden")


def student_view(grade: Grade) -> Grade:
    """The grade as a student may see it before grades are published: only the checks whose
    visibility is "visible" (a hidden check's, group's or rubric's name, score and message
    appear nowhere else), and no raw test-run output (it names every check). The grade
    itself when nothing is hidden."""
    shown = [t for t in grade.tests if t.visibility == "visible"]
    if len(shown) == len(grade.tests):
        return grade
    return replace(grade, tests=shown, output_tail="")


def student_summary(grade: Grade) -> str:
    """Gradescope's top-level output: the summary of the checks shown."""
    view = student_view(grade)
    if view is grade:
        return summary_text(grade)
    hidden = len(grade.tests) - len(view.tests)
    if not view.tests:
        return f"kvspec grade: {grade.submission}: your results are shown when grades are published ({hidden} checks)."
    return summary_text(view) + (
        f"\nThe points above are those of the {len(view.tests)} checks shown; {hidden} more are shown when grades are published."
    )


# -- shared pieces -----------------------------------------------------------------------------


def test_title(t: TestScore) -> str:
    return f"{t.check.group}: {t.check.name}"


def header_lines(grade: Grade) -> list[str]:
    where = grade.path or "the bundled reference"
    return [
        f"submission: {where}",
        *(f"form: {line}" for line in grade.form),
        f"module: {grade.module}",
        f"Tensor: {grade.tensor}",
        f"profile: {grade.profile}, seed: {grade.seed}, isolation: {grade.isolation}, rubric: {grade.rubric}",
    ] + [f"warning: {line}" for line in [wall.warning(grade.isolation)] if line] + (
        [f"grader install: {grade.install}"] if grade.install else []
    )


def group_table(grade: Grade) -> list[tuple[str, str, str]]:
    rows = []
    for group, (got, top, passed, count) in grade.groups().items():
        rows.append((group, f"{fmt(got)}/{fmt(top)}", f"{passed}/{count} checks"))
    return rows


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


FIELDS = ("Call:", "Expected:", "Got:", "Hint:", "Why:", "Clause:", "Minimal example")


def fields(text: str) -> dict[str, str]:
    """A failure message's labelled fields (Expected, Got, ...), each with its continuation
    lines joined and runs of whitespace made single spaces."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        label = next((f for f in FIELDS if line.startswith(f)), None)
        if label is not None:
            current = found.setdefault(label.rstrip(":"), []) if label.endswith(":") else None
            if current is not None:
                current.append(line[len(label):])
        elif current is not None:
            current.append(line)
    return {k: " ".join(" ".join(v).split()) for k, v in found.items()}


def first_difference(expected: str, got: str, context: int = 24) -> tuple[str, str]:
    """Both texts, cut to a window around the first character where they differ when
    either is longer than 2 * context."""
    if max(len(expected), len(got)) <= 2 * context:
        return expected, got
    i = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    start = max(0, i - context // 2)

    def cut(text: str) -> str:
        window = text[start : i + context]
        return ("..." if start else "") + window + ("..." if i + context < len(text) else "")

    return cut(expected), cut(got)


def brief(text: str) -> str:
    """One line for a failure: the clause, then expected and got where they first differ."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head = lines[0] if lines else ""
    found = fields(text)
    if "Expected" in found and "Got" in found:
        clause = head.split("]", 1)[0] + "]" if head.startswith("[") else ""
        expected, got = first_difference(found["Expected"], found["Got"])
        return f"{clause} expected {expected}, got {got}".strip()
    return head


def summary_text(grade: Grade) -> str:
    """The terminal summary (also Gradescope's top-level output)."""
    lines = [f"kvspec grade: {grade.submission}: {fmt(grade.total)}/{fmt(grade.maximum)} points"]
    lines += ["  " + line for line in header_lines(grade)]
    width = max((len(g) for g in grade.groups()), default=8)
    lines.append("score per group:")
    for group, score, checks in group_table(grade):
        lines.append(f"  {group:<{width}}  {score:>11}  ({checks})")
    lines.append(f"  {'total':<{width}}  {fmt(grade.total) + '/' + fmt(grade.maximum):>11}")
    for group in grade.unscored:
        lines.append(f"  note: group {group!r} has points in the rubric but no checks in this suite: not scored")
    for note in grade.notes:
        lines.append(f"note: {note}")
    failing = grade.failing()
    if failing:
        lines.append(f"failing checks ({len(failing)}):")
        for t in failing:
            lines.append(f"  {test_title(t)}: {brief(t.output)[:200]}")
    else:
        lines.append("failing checks: none")
    return "\n".join(lines)


# -- results.json (Gradescope) -----------------------------------------------------------------


def results_dict(grade: Grade) -> dict[str, object]:
    order = {g: i + 1 for i, g in enumerate(GROUPS)}
    counters: dict[str, int] = {}
    tests = []
    for t in grade.tests:
        counters[t.check.group] = counters.get(t.check.group, 0) + 1
        tests.append(
            {
                "name": test_title(t),
                "number": f"{order[t.check.group]}.{counters[t.check.group]}",
                "score": to_points(t.score),
                "max_score": to_points(t.max_score),
                "status": "passed" if t.passed else "failed",
                "output": t.output if t.output else "passed",
                "output_format": "text",
                "tags": list(t.check.clauses) + [t.check.group],
                "visibility": t.visibility,
            }
        )
    return {
        "score": to_points(grade.total),
        "execution_time": int(round(grade.execution_time)),
        "output": student_summary(grade),
        "output_format": "text",
        "tests": tests,
    } | _top_visibility(grade)


def _top_visibility(grade: Grade) -> dict[str, object]:
    """No check visible (say `[rubric] visibility = "after_published"`): the whole result,
    its total score included, takes the least restrictive of the checks' visibilities."""
    if not grade.tests or any(t.visibility == "visible" for t in grade.tests):
        return {}
    return {"visibility": min((t.visibility for t in grade.tests), key=_VISIBILITIES.index)}


def results_json(grade: Grade) -> str:
    return json.dumps(results_dict(grade), indent=2, ensure_ascii=False) + "\n"


# -- junit.xml ---------------------------------------------------------------------------------


def _xml(text: str) -> str:
    return _XML_BAD.sub("\ufffd", text)


def junit_xml(grade: Grade) -> str:
    failing = grade.failing()
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites,
        "testsuite",
        {
            "name": f"kvspec.{_xml(grade.submission)}",
            "tests": str(len(grade.tests)),
            "failures": str(len(failing)),
            "errors": "0",
            "skipped": "0",
            "time": f"{sum(t.duration for t in grade.tests):.3f}",
        },
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("score", fmt(grade.total)),
        ("max_score", fmt(grade.maximum)),
        ("module", grade.module),
        ("profile", grade.profile),
        ("seed", str(grade.seed)),
        ("rubric", grade.rubric),
        ("isolation", grade.isolation),
        *[("isolation_warning", line) for line in [wall.warning(grade.isolation)] if line],
    ):
        ET.SubElement(props, "property", {"name": name, "value": _xml(value)})
    for t in grade.tests:
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": f"kvspec.{t.check.group}",
                "name": _xml(t.check.name),
                "time": f"{t.duration:.3f}",
                "file": t.check.nodeid.split("::")[0],
            },
        )
        case_props = ET.SubElement(case, "properties")
        ET.SubElement(case_props, "property", {"name": "clauses", "value": " ".join(t.check.clauses)})
        ET.SubElement(case_props, "property", {"name": "score", "value": f"{fmt(t.score)}/{fmt(t.max_score)}"})
        if not t.passed:
            failure = ET.SubElement(case, "failure", {"message": _xml(first_line(t.output)[:500]), "type": "SpecFailure"})
            failure.text = _xml(t.output)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# -- report.md ---------------------------------------------------------------------------------


def _fence(text: str, lang: str = "text") -> str:
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def failure_md(output: str) -> list[str]:
    """One failure's message as Markdown: the text in a text block, the minimal example in a
    python block of its own (copied from there, it runs as it is)."""
    start, end = output.find(EXAMPLE_START), output.find(EXAMPLE_END)
    if start < 0 or end < start:
        return [_fence(output)]
    end += len(EXAMPLE_END)
    out = [_fence(output[:start]), "", _fence(output[start:end], "python")]
    if output[end:].strip():
        out += ["", _fence(output[end:].strip("\n"))]
    return out


def report_md(grade: Grade) -> str:
    out = [f"# kvspec grade: {grade.submission}", "", f"**Score: {fmt(grade.total)} / {fmt(grade.maximum)}**", ""]
    out += [f"- {line}" for line in header_lines(grade)]
    passed = sum(t.passed for t in grade.tests)
    out += [f"- checks: {passed} passed, {len(grade.tests) - passed} failed, {len(grade.tests)} in all", ""]
    out += ["## Score per group", "", "| group | score | checks passed |", "| --- | ---: | ---: |"]
    for group, (got, top, ok, count) in grade.groups().items():
        out.append(f"| {group} | {fmt(got)} / {fmt(top)} | {ok} / {count} |")
    out.append(f"| **total** | **{fmt(grade.total)} / {fmt(grade.maximum)}** | {passed} / {len(grade.tests)} |")
    out.append("")
    if grade.unscored:
        out += [f"Not scored: {', '.join(grade.unscored)} (points in the rubric, but no checks in this suite).", ""]
    if grade.notes:
        out += ["## What happened to the run", ""] + [f"- {note}" for note in grade.notes] + [""]
    failing = grade.failing()
    out += ["## Failing checks", ""]
    if not failing:
        out += ["None: every check passed.", ""]
    for t in failing:
        out += [f"### {test_title(t)} ({', '.join(t.check.clauses)}): 0 / {fmt(t.max_score)}", ""] + failure_md(t.output) + [""]
    if grade.notes and grade.output_tail.strip():
        out += ["## End of the test run's output", "", _fence(grade.output_tail[-8000:]), ""]
    return "\n".join(out)
