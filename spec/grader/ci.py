"""Course CI: `pytest --pyargs spec.checks --kvspec-submission=. --kvspec-fail-under=POINTS`.

Registered by spec.plugin (its `pytest_plugins`), so the options exist wherever the kvspec
plugin is loaded. With `--kvspec-fail-under`, the session's verdicts are scored with the
default rubric (or `--kvspec-rubric FILE`) at the end, the score per group is printed in
the terminal summary, and the exit status follows the score: 0 at or above POINTS, 1
below it. A failure of a test that is not a kvspec check (a course's own tests in the
same run), a collection error or an internal error keeps pytest's own exit status. Scoring needs a
submission: `--kvspec-fail-under` or `--kvspec-rubric` without `--kvspec-submission` (or
`--kvspec-module`) is a usage error, not a silent grade of the bundled reference. A check
that failed because of a grader fault (the isolated worker broke before the submission's
import began, spec.isolation.isolated) makes the exit status 3, pytest's internal error: not a score.
"""

from __future__ import annotations

import os

import pytest

from spec.clauses import GROUPS, NOT_APPLICABLE, group_of
from spec.grader.rubric import Check, Rubric, RubricError, fmt, load, max_scores, unscored_groups
from spec.results import Collector


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvspec", "KV-cache conformance suite")
    group.addoption(
        "--kvspec-fail-under", dest="kvspec_fail_under", default=None, metavar="POINTS",
        help="score the checks with the rubric; exit 1 below POINTS, 0 at or above; env KVSPEC_FAIL_UNDER",
    )  # fmt: skip
    group.addoption(
        "--kvspec-rubric", dest="kvspec_rubric", default=None, metavar="FILE",
        help="rubric TOML for --kvspec-fail-under (default: the bundled one); env KVSPEC_RUBRIC",
    )  # fmt: skip


def _option(config: pytest.Config, name: str, env: str) -> str | None:
    value = config.getoption(name)
    return str(value) if value is not None else (os.environ.get(env) or None)


class Score:
    """Gathers each check's outcome (controller side) and scores them at the end."""

    def __init__(self, threshold: float, rubric: Rubric) -> None:
        self.threshold = int(round(threshold * 100))
        self.rubric = rubric
        self.checks: dict[str, Check] = {}
        self.passed: dict[str, bool] = {}
        self.other_failures = 0
        self.faults: list[str] = []
        self.lines: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if props.get("kvspec_fault"):
            self.faults.append(f"{report.nodeid}: {props['kvspec_fault']}")
        clauses = props.get("kvspec_clauses")
        if not isinstance(clauses, list):
            if report.failed:
                self.other_failures += 1
            return
        if report.skipped and NOT_APPLICABLE in report.longreprtext:
            self.checks.pop(report.nodeid, None)  # a check that does not apply: not scored
            self.passed.pop(report.nodeid, None)
            return
        if report.nodeid not in self.checks:
            ids = tuple(str(c) for c in clauses)
            self.checks[report.nodeid] = Check(report.nodeid, report.nodeid.split("::")[-1], ids, group_of(ids))
            self.passed[report.nodeid] = True
        if report.failed or report.skipped:
            self.passed[report.nodeid] = False

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        checks = sorted(self.checks.values(), key=lambda c: c.nodeid)
        shares = max_scores(self.rubric, checks)
        total = sum(shares[c.nodeid] for c in checks if self.passed[c.nodeid])
        top = sum(shares.values())
        ok = bool(checks) and total >= self.threshold
        verdict = "passed" if ok else "FAILED"
        self.lines = [f"kvspec score: {fmt(total)}/{fmt(top)} ({self.rubric.name}); fail-under {fmt(self.threshold)}: {verdict}"]
        for group in GROUPS:
            members = [c for c in checks if c.group == group]
            if members:
                got = sum(shares[c.nodeid] for c in members if self.passed[c.nodeid])
                ok_count = sum(self.passed[c.nodeid] for c in members)
                self.lines.append(f"  {group:<13} {fmt(got) + '/' + fmt(sum(shares[c.nodeid] for c in members)):>11}  ({ok_count}/{len(members)} checks)")
        missing = unscored_groups(self.rubric, checks)
        if missing:
            self.lines.append(f"  not scored (no checks ran): {', '.join(missing)}")
        if not checks:
            self.lines.append("  no kvspec check ran: nothing to score")
        status = session.exitstatus
        if self.faults:
            self.lines = [f"kvspec: internal error, a grader fault and not the submission's; not scored: {self.faults[0]}"]
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        elif status in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not self.other_failures:
            session.exitstatus = pytest.ExitCode.OK if ok else pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.lines:
            terminalreporter.section("kvspec score")
            for line in self.lines:
                terminalreporter.write_line(line)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    from spec.plugin import option

    text = _option(config, "kvspec_fail_under", "KVSPEC_FAIL_UNDER")
    rubric_file = _option(config, "kvspec_rubric", "KVSPEC_RUBRIC")
    if (text is not None or rubric_file is not None) and option(config, "submission") is None and option(config, "module") is None:
        # Scoring the bundled reference by accident passes every threshold: a CI that forgot
        # the option would always be green. The reference is graded only when named.
        flag = "--kvspec-fail-under" if text is not None else "--kvspec-rubric"
        raise pytest.UsageError(
            f"kvspec: {flag} scores a submission, but none was given: add --kvspec-submission=DIR "
            "(or --kvspec-submission=reference to score the bundled reference)"
        )
    if text is None:
        return
    try:
        threshold = float(text)
    except ValueError:
        raise pytest.UsageError(f"kvspec: --kvspec-fail-under takes a number of points, not {text!r}") from None
    if not threshold >= 0:
        raise pytest.UsageError(f"kvspec: --kvspec-fail-under must be >= 0, not {text!r}")
    try:
        rubric = load(rubric_file)
    except RubricError as exc:
        raise pytest.UsageError(f"kvspec: {exc}") from None
    pm = config.pluginmanager
    if pm.get_plugin("kvspec-collector") is None and pm.get_plugin("kvspec-annotator") is None:
        pm.register(Collector(None), "kvspec-annotator")  # attaches each check's clauses to its reports
    if not hasattr(config, "workerinput"):
        pm.register(Score(threshold, rubric), "kvspec-score")
