"""docs/spec.md and the suite cannot drift: the document is what the generator writes, every
clause has a check, every check cites known clauses of one group.

The tests on synthetic inputs below show that each of these meta-tests can fail.
"""

from __future__ import annotations

import difflib
import types
import unittest

import pytest

from spec import docgen
from spec.clauses import CLAUSES, GROUPS, Clause, checks
from spec.docgen import Check, discover_checks, problems


@pytest.fixture(scope="module")
def suite() -> list[Check]:
    return discover_checks()


def test_document_is_what_the_generator_writes(suite: list[Check]) -> None:
    expected = docgen.render(suite)
    current = docgen.DOCUMENT.read_text() if docgen.DOCUMENT.exists() else ""
    if current != expected:
        diff = "".join(difflib.unified_diff(current.splitlines(True), expected.splitlines(True), "docs/spec.md", "generated", n=1))
        pytest.fail(f"docs/spec.md is stale: run `{docgen.REGENERATE}` and commit it.\n{diff[:4000]}")


def test_the_suite_has_checks(suite: list[Check]) -> None:
    assert len(suite) >= len(GROUPS), [c.ref for c in suite]
    assert any(c.file == "test_model.py" for c in suite)


def test_every_clause_has_a_check(suite: list[Check]) -> None:
    cited = {cid for check in suite for cid in check.clauses}
    missing = [c.id for c in CLAUSES if c.id not in cited]
    assert not missing, f"clauses no check cites: {missing}"


def test_every_check_cites_known_clauses_of_one_group(suite: list[Check]) -> None:
    broken = [p for p in problems(CLAUSES, GROUPS, suite) if "::" in p.split(": ")[0]]  # the checks' problems
    assert not broken, "\n".join(broken)


def test_every_group_used_is_a_rubric_group(suite: list[Check]) -> None:
    by_id = {c.id: c for c in CLAUSES}
    used = {c.group for c in CLAUSES} | {by_id[cid].group for check in suite for cid in check.clauses if cid in by_id}
    assert used <= set(GROUPS), sorted(used - set(GROUPS))


# -- the meta-tests can fail -----------------------------------------------------------

A = Clause("KV-A-1", "MUST", "alpha", "a", "why a")
B = Clause("KV-B-1", "MUST", "beta", "b", "why b")
C = Clause("KV-C-1", "MUST", "gamma", "c", "why c")  # gamma is not a group


def test_problems_reports_each_kind_of_break() -> None:
    found = problems(
        [A, B, C],
        ["alpha", "beta"],
        [
            Check("test_x.py", "test_both", ("KV-A-1", "KV-B-1")),  # spans two groups
            Check("test_x.py", "test_none", ()),  # cites nothing
            Check("test_x.py", "test_unknown", ("KV-Z-9",)),  # cites an unknown clause
        ],
    )
    text = "\n".join(found)
    assert "KV-C-1: group 'gamma' is not one of GROUPS" in text
    assert "KV-C-1: no check cites it" in text
    assert "test_x.py::test_both: its clauses span groups ['alpha', 'beta']" in text
    assert "test_x.py::test_none: cites no clause" in text
    assert "test_x.py::test_unknown: cites unknown clause(s) ['KV-Z-9']" in text
    assert not any(p.startswith("KV-A-1") or p.startswith("KV-B-1") for p in found)
    assert problems([A], ["alpha"], [Check("test_x.py", "test_a", ("KV-A-1",))]) == []


def _fake_check_module() -> types.ModuleType:
    module = types.ModuleType("spec.checks.test_fake")

    def test_marked() -> None: ...

    def test_unmarked() -> None: ...

    def helper() -> None: ...

    class TestMachine(unittest.TestCase):  # a state machine's TestCase, marked as a whole
        def runTest(self) -> None: ...

    class TestPlain:
        def test_method(self) -> None: ...

    for obj in (test_marked, test_unmarked, helper, TestMachine, TestPlain):
        obj.__module__ = module.__name__
    module.test_marked = checks("KV-MOD-2")(test_marked)  # type: ignore[attr-defined]
    module.test_unmarked = test_unmarked  # type: ignore[attr-defined]
    module.helper = helper  # type: ignore[attr-defined]
    module.TestMachine = checks("KV-UPD-1", "KV-UPD-2")(TestMachine)  # type: ignore[attr-defined]
    module.TestPlain = checks("KV-NI-3")(TestPlain)  # type: ignore[attr-defined]
    module.test_imported = discover_checks  # type: ignore[attr-defined]  # defined elsewhere: not a check here
    return module


def test_discovery_reads_marks_on_functions_and_test_case_classes() -> None:
    found = list(docgen._checks_in(_fake_check_module(), "test_fake.py"))
    assert found == [
        Check("test_fake.py", "test_marked", ("KV-MOD-2",)),
        Check("test_fake.py", "test_unmarked", ()),
        Check("test_fake.py", "TestMachine", ("KV-UPD-1", "KV-UPD-2")),
        Check("test_fake.py", "TestPlain::test_method", ("KV-NI-3",)),
    ]
    assert any("test_unmarked: cites no clause" in p for p in problems(CLAUSES, GROUPS, found))


def test_document_names_every_check_and_changes_when_one_goes(suite: list[Check]) -> None:
    text = docgen.render(suite)
    for check in suite:
        assert f"`{check.ref}`" in text
    dropped = docgen.render(suite[1:])
    assert f"`{suite[0].ref}`" not in dropped
