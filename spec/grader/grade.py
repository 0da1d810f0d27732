"""Turn one run's outcomes into a Grade: a score per check, per group, and in total."""

from __future__ import annotations

from dataclasses import dataclass, field

from spec.clauses import GROUPS
from spec.grader.rubric import Check, Rubric, max_scores, unscored_groups
from spec.grader.run import Outcome, RunResult


@dataclass(frozen=True)
class TestScore:
    check: Check
    passed: bool
    score: int  # centipoints
    max_score: int  # centipoints
    visibility: str
    output: str
    duration: float


@dataclass
class Grade:
    submission: str  # the name shown in reports (directory name, or "reference")
    path: str  # the submission directory as given ("" for the bundled reference)
    module: str
    tensor: str
    profile: str
    seed: int
    isolation: str
    rubric: str
    tests: list[TestScore]
    form: list[str] = field(default_factory=list)  # how it was handed in, what the grader made of it (spec.grader.forms)
    notes: list[str] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)  # groups with points but no checks
    execution_time: float = 0.0
    output_tail: str = ""
    install: str = ""  # whether the grader's installed files were verified (spec/grader/integrity.py)
    timed_out: bool = False  # the run hit its wall-clock limit
    fault: str = ""  # a grader fault (not the submission's): why no score counts

    @property
    def status(self) -> str:
        """graded | import failed | timed out | grader fault: what a gradebook row means."""
        if self.fault:
            return "grader fault"
        if self.timed_out:
            return "timed out"
        if self.import_failed():
            return "import failed"
        return "graded"

    @property
    def total(self) -> int:
        return sum(t.score for t in self.tests)

    @property
    def maximum(self) -> int:
        return sum(t.max_score for t in self.tests)

    def groups(self) -> dict[str, tuple[int, int, int, int]]:
        """group -> (score, max, checks passed, checks), in the spec's group order."""
        out: dict[str, tuple[int, int, int, int]] = {}
        for group in GROUPS:
            members = [t for t in self.tests if t.check.group == group]
            if members:
                out[group] = (
                    sum(t.score for t in members),
                    sum(t.max_score for t in members),
                    sum(t.passed for t in members),
                    len(members),
                )
        return out

    def failing(self) -> list[TestScore]:
        return [t for t in self.tests if not t.passed]

    def import_failed(self) -> bool:
        """The module could not be loaded at all: the import check failed and nothing passed."""
        imports = [t for t in self.tests if t.check.group == "import"]
        return bool(imports) and not any(t.passed for t in self.tests)


def score(result: RunResult, rubric: Rubric) -> tuple[list[TestScore], list[str]]:
    """Scores of every check (sorted by group, then nodeid) and the unscored groups."""
    checks = [o.check for o in result.outcomes]
    shares = max_scores(rubric, checks)
    order = {g: i for i, g in enumerate(GROUPS)}
    outcomes = sorted(result.outcomes, key=lambda o: (order[o.check.group], o.check.nodeid))
    import_checks = [o for o in outcomes if o.check.group == "import"]
    gate = bool(import_checks) and not any(o.passed for o in outcomes)
    pointer = ", ".join(o.check.name for o in import_checks)
    tests = []
    for o in outcomes:
        output = o.message
        if gate and o.check.group != "import":
            output = f"[{', '.join(o.check.clauses)}] not graded: your cache module could not be loaded; see {pointer} for why."
        top = shares[o.check.nodeid]
        tests.append(TestScore(o.check, o.passed, top if o.passed else 0, top, rubric.visibility_of(o.check), output, o.duration))
    return tests, unscored_groups(rubric, checks)


def failed_run(checks: list[Check], reason: str) -> RunResult:
    """Every check failed for one reason (a batch member whose module was not found)."""
    return RunResult([Outcome(c, False, f"[{', '.join(c.clauses)}] not graded: {reason}", 0.0) for c in checks], [reason])
