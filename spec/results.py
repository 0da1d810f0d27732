"""Collect one verdict per check: clauses, group, outcome and the student-facing message.

Registered by spec.plugin when `--kvspec-results=FILE` is given; works under pytest-xdist:
workers attach the clause IDs and message to each report's user_properties, and the
controlling process gathers the reports and writes FILE (JSON) at the end. The grader
turns that file into scores; nothing the submission prints or writes can reach it,
because the submission never runs in a process that holds this collector (isolated
drivers), and the file is read back only after the run ends.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generator

import pytest

from spec.clauses import BY_ID, NOT_APPLICABLE, group_of
from spec.isolation.driver import GraderFault, SubmissionCrashed, SubmissionRaised, SubmissionUnavailable
from spec.session import EXAMPLE_INTRO, NotMeasured, SpecFailure

MAX_OUTPUT = 20_000


@dataclass
class Verdict:
    nodeid: str
    name: str  # the check's function name, e.g. test_get_returns_last_write
    clauses: list[str]
    group: str
    passed: bool
    message: str  # empty when passed
    duration: float
    fault: str = ""  # a GraderFault's detail: the grader failed before the submission's code ran; not scored
    blocked_by: str = ""  # not measured: the clause whose failure stood in the way (no credit)
    applicable: bool = True  # False: a check that does not apply to this submission (not scored, costs nothing)


def explain(exc: BaseException, clauses: list[str]) -> str:
    """The student-facing message for a failed check."""
    cited = ", ".join(clauses)
    script = getattr(exc, "kvspec_script", "")
    example = f"\n{EXAMPLE_INTRO}\n{script}" if script else ""
    if isinstance(exc, SpecFailure):
        return str(exc)
    if isinstance(exc, GraderFault):
        return f"[{cited}] not graded: an internal error of the grader, not of your code ({exc.detail}); please report this to the course staff"
    if isinstance(exc, SubmissionUnavailable):
        return f"[{cited}] could not be checked: {exc.detail}\n{exc.traceback}".rstrip()
    if isinstance(exc, SubmissionCrashed):
        return f"[{cited}] could not be checked: your code's process {exc.kind}: {exc.detail}{example}"
    if isinstance(exc, SubmissionRaised):
        parts = [f"[{cited}] your code raised {exc.type_name}: {exc.message}", "(no exception was expected here)"]
        parts += [f"Clause:   [{c.id}] {c.level}: {c.text}" for c in map(BY_ID.get, clauses) if c is not None]
        parts.append(f"Hint:     {RAISED_HINT}")
        parts += [f"Why:      {c.why}" for c in map(BY_ID.get, clauses) if c is not None]
        tb = own_frames(exc.traceback)
        return "\n".join(parts + ([tb] if tb else [])).rstrip() + example
    return f"[{cited}] the check itself failed ({type(exc).__name__}: {exc}); please report this to the course staff"


RAISED_HINT = (
    "the example's last call raised. The checks make only calls the spec allows (a full cache, a bad "
    "layer or shape only where a clause asks for the error), so the error is your code's: the traceback "
    "below shows where. Run the example to see it. If it does not raise in a fresh Python, what an earlier "
    "example did in the same process is still there: storage shared between caches (a class attribute, a "
    "mutable default argument, a module-level array)."
)
_GRADER_DIR = str(Path(__file__).resolve().parent) + os.sep
_FRAME = re.compile(r'^  File "([^"]*)", line \d+')


def own_frames(traceback: str) -> str:
    """A submission's traceback without the grader's own frames (files under spec/): what
    the student needs is the path through their code (and the grader's model, which calls it)."""
    out: list[str] = []
    skipping = False
    for line in traceback.splitlines():
        frame = _FRAME.match(line)
        if frame:
            skipping = frame.group(1).startswith(_GRADER_DIR)
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out)


OUTPUT_EXCERPT = 4_000  # characters kept from each end of a worker's captured output
OUTPUT_LINES = 12  # lines kept from each end of it, after collapsing repeats
OUTPUT_LINE_WIDTH = 240


def cap_output(text: str, lines: int = OUTPUT_LINES, width: int = OUTPUT_LINE_WIDTH) -> str:
    """A failure's share of what the worker printed: runs of identical lines collapsed into
    one with a count, long lines cut, and only the first and last `lines` lines kept."""
    collapsed = []
    for line, run in itertools.groupby(text.splitlines()):
        count = len(list(run))
        shown = line if len(line) <= width else line[:width] + f" [... {len(line) - width} more characters]"
        collapsed.append(shown + (f"   [this line {count} times in a row]" if count > 1 else ""))
    if len(collapsed) > 2 * lines:
        cut = len(collapsed) - 2 * lines
        collapsed = collapsed[:lines] + [f"[... {cut} more lines ...]"] + collapsed[-lines:]
    return "\n".join(collapsed)


def captured_output(item: pytest.Item) -> str:
    """What the check's isolated worker printed (capped: cap_output), or "" (in-process drivers capture nothing)."""
    read = getattr(getattr(item, "_kvspec_driver", None), "captured_output", None)
    text = read() if callable(read) else ""
    if not isinstance(text, str) or not text.strip():
        return ""
    if len(text) > 2 * OUTPUT_EXCERPT:
        text = f"{text[:OUTPUT_EXCERPT]}\n[... output cut ...]\n{text[-OUTPUT_EXCERPT:]}"
    return cap_output(text)


class Collector:
    """With a path: gather verdicts and write them (the controlling process).
    Without: only annotate reports (an xdist worker; the controller gathers)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.verdicts: dict[str, Verdict] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        marker = item.get_closest_marker("kvspec")
        if marker is None:
            return
        clauses = [str(a) for a in marker.args]
        report.user_properties.append(("kvspec_clauses", clauses))
        if report.failed and call.excinfo is not None:
            if isinstance(call.excinfo.value, GraderFault):
                report.user_properties.append(("kvspec_fault", call.excinfo.value.detail))
            if isinstance(call.excinfo.value, NotMeasured):
                report.user_properties.append(("kvspec_blocked", call.excinfo.value.blocked_by))
            message = explain(call.excinfo.value, clauses)
            output = captured_output(item)
            if output:
                message = message[: MAX_OUTPUT - len(output) - 100] + f"\n\nWhat your code printed (stdout and stderr):\n{output}"
            report.user_properties.append(("kvspec_message", message[:MAX_OUTPUT]))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.path is None:
            return
        props = dict(report.user_properties)
        clauses = props.get("kvspec_clauses")
        if not isinstance(clauses, list):
            return
        v = self.verdicts.get(report.nodeid)
        if v is None:
            name = report.nodeid.split("::")[-1]
            v = Verdict(report.nodeid, name, list(clauses), group_of(list(clauses)), True, "", 0.0)
            self.verdicts[report.nodeid] = v
        v.duration += report.duration
        if report.skipped and NOT_APPLICABLE in report.longreprtext:
            v.applicable = False
            v.message = report.longreprtext[-MAX_OUTPUT:]
            return
        if report.failed or report.skipped:
            v.passed = False
            fault = props.get("kvspec_fault")
            if fault and not v.fault:
                v.fault = str(fault)
            blocked = props.get("kvspec_blocked")
            if blocked and not v.blocked_by:
                v.blocked_by = str(blocked)
            message = props.get("kvspec_message")
            if not message:
                message = f"[{', '.join(v.clauses)}] {'skipped' if report.skipped else 'failed'} in {report.when}: {report.longreprtext[-MAX_OUTPUT:]}"
            v.message = (v.message + "\n" + str(message)).strip()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.path is None:
            return  # an xdist worker: the controller writes the file
        data = [asdict(v) for _, v in sorted(self.verdicts.items())]
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)


def load_verdicts(path: Path) -> list[Verdict]:
    return [Verdict(**entry) for entry in json.loads(path.read_text())]
