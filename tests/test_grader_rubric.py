"""The rubric and the reports, on synthetic verdicts (no pytest subprocess: fast).

The reports' format is checked against Gradescope's results format by a small
JSON-schema-like validator (`gradescope_problems`), which tests/test_grader_cli.py also
applies to the results.json of real runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from spec.clauses import BY_ID, CLAUSES, GROUPS, OPTIONAL_GROUPS
from spec.grader import batch, reports
from spec.grader.grade import Grade, score
from spec.grader.rubric import DEFAULT_RUBRIC, Check, RubricError, fmt, group_points, load, max_scores, parse, split
from spec.grader.run import Outcome, RunResult

VISIBILITIES = {"hidden", "after_due_date", "after_published", "visible"}


def gradescope_problems(data: Any) -> list[str]:
    """What makes `data` not a valid Gradescope results.json (empty list: valid).

    Gradescope's documented format: top-level `score` (number), optional
    `execution_time` (number of seconds), `output` (string), `output_format`,
    `visibility`, `stdout_visibility`, `extra_data`, `leaderboard`, and `tests`: a list of
    objects with `score` and `max_score` (numbers), `name`, `output` (strings), `status`
    ("passed"/"failed"), `tags` (list of strings), `visibility` (one of four), `number`.
    kvspec additionally requires every test to carry exactly one group word among its tags.
    """
    problems: list[str] = []

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(data, dict):
        return ["top level is not an object"]
    allowed = {"score", "execution_time", "output", "output_format", "visibility", "stdout_visibility", "extra_data", "tests", "leaderboard"}
    problems += [f"unknown top-level key {k!r}" for k in data if k not in allowed]
    if not number(data.get("score")):
        problems.append("score is missing or not a number")
    if "execution_time" in data and not number(data["execution_time"]):
        problems.append("execution_time is not a number")
    if not isinstance(data.get("output", ""), str):
        problems.append("output is not a string")
    if data.get("output_format", "text") not in {"text", "html", "simple_format", "md", "ansi"}:
        problems.append("bad output_format")
    tests = data.get("tests")
    if not isinstance(tests, list) or not tests:
        return problems + ["tests is missing or empty"]
    test_keys = {"score", "max_score", "status", "name", "name_format", "number", "output", "output_format", "tags", "visibility", "extra_data"}
    for i, t in enumerate(tests):
        where = f"tests[{i}]"
        if not isinstance(t, dict):
            problems.append(f"{where} is not an object")
            continue
        problems += [f"{where}: unknown key {k!r}" for k in t if k not in test_keys]
        for key in ("score", "max_score"):
            if not number(t.get(key)):
                problems.append(f"{where}.{key} is missing or not a number")
        if number(t.get("score")) and number(t.get("max_score")) and not 0 <= t["score"] <= t["max_score"]:
            problems.append(f"{where}: score outside [0, max_score]")
        for key in ("name", "output"):
            if not isinstance(t.get(key), str) or not t.get(key):
                problems.append(f"{where}.{key} is missing or not a non-empty string")
        if t.get("status") not in {"passed", "failed"}:
            problems.append(f"{where}.status is not passed/failed")
        if t.get("visibility") not in VISIBILITIES:
            problems.append(f"{where}.visibility {t.get('visibility')!r} is not one of Gradescope's")
        tags = t.get("tags")
        if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
            problems.append(f"{where}.tags is not a list of strings")
            continue
        groups = [x for x in tags if x in GROUPS]
        if len(groups) != 1:
            problems.append(f"{where}.tags holds {len(groups)} group words, not exactly one")
        clauses = [x for x in tags if x not in GROUPS]
        if not clauses or any(c not in BY_ID for c in clauses):
            problems.append(f"{where}.tags clause ids {clauses} are not the spec's")
        elif groups and any(BY_ID[c].group != groups[0] for c in clauses):
            problems.append(f"{where}.tags mixes clauses of another group")
    if number(data.get("score")) and all(isinstance(t, dict) and number(t.get("score")) for t in tests):
        if abs(sum(t["score"] for t in tests) - data["score"]) > 1e-6:
            problems.append("score is not the sum of the tests' scores")
    return problems


def synthetic_checks() -> list[Check]:
    """Two checks per group (one for import), each citing the group's first clause."""
    out = []
    for group in GROUPS:
        clause = next(c.id for c in CLAUSES if c.group == group)
        for n in range(1 if group == "import" else 2):
            out.append(Check(f"test_{group}.py::test_{n}", f"test_{group.replace('-', '_')}_{n}", (clause,), group))
    return out


def grade_of(passed: dict[str, bool], rubric_path: Path | None = None, message: str = "boom") -> Grade:
    rubric = load(rubric_path)
    checks = synthetic_checks()
    result = RunResult([Outcome(c, passed.get(c.nodeid, True), "" if passed.get(c.nodeid, True) else message, 0.1) for c in checks])
    tests, unscored = score(result, rubric)
    return Grade("alice", "/x/alice", "tinytorch.perf.memoization", "t:T", "quick", 0, "process", rubric.name, tests, notes=[], unscored=unscored, execution_time=1.0)


def test_default_rubric_is_100_points_over_every_group() -> None:
    rubric = load()
    assert sum(rubric.group_points.values()) == 100_00
    assert set(rubric.group_points) == set(GROUPS)
    assert all(rubric.group_points[g] > 0 for g in GROUPS if g != "import")
    assert DEFAULT_RUBRIC.name == "rubric.toml" and DEFAULT_RUBRIC.parent.name == "spec"


def test_every_group_has_checks_in_the_suite() -> None:
    """A group with points but no check would silently shrink the maximum below 100."""
    from spec.grader.run import Options, collect
    from spec.discovery import Target

    checks = collect(Target(None, "reference.memoization"), Options("quick", 0, 1, "none", 60))
    missing = [g for g in GROUPS if g not in {c.group for c in checks}]
    assert not missing, f"groups without checks: {missing}"
    assert sum(max_scores(load(), checks).values()) == 100_00


def test_an_optional_group_that_does_not_apply_gives_its_points_to_the_others() -> None:
    """A submission without _cached_generate: the generate group's checks do not apply, and
    its points go to the other groups in proportion, so the maximum stays 100."""
    rubric = load()
    everything = synthetic_checks()
    without = [c for c in everything if c.group not in OPTIONAL_GROUPS]
    points = group_points(rubric, without)
    assert sum(points.values()) == 100_00 and all(points[g] == 0 for g in OPTIONAL_GROUPS)
    assert all(points[g] >= rubric.group_points[g] for g in GROUPS if g not in OPTIONAL_GROUPS)
    assert sum(max_scores(rubric, without).values()) == 100_00
    assert group_points(rubric, everything) == rubric.group_points  # it applies: nothing moves
    result = RunResult([Outcome(c, True, "", 0.1) for c in without])
    tests, unscored = score(result, rubric)
    assert sum(t.score for t in tests) == 100_00 and unscored == []


@pytest.mark.parametrize("total", [0, 1, 100, 1000, 333, 1001])
@pytest.mark.parametrize("weights", [[1.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [0.5, 0.25, 7.0, 1.0]])
def test_split_is_exact_and_proportional(total: int, weights: list[float]) -> None:
    shares = split(total, weights)
    assert sum(shares) == total
    for share, w in zip(shares, weights):
        assert abs(share - total * w / sum(weights)) < 1


def test_fmt() -> None:
    assert [fmt(x) for x in (0, 100, 150, 1250, 3333, 5, 10000)] == ["0", "1", "1.5", "12.5", "33.33", "0.05", "100"]


def test_scores_sum_to_the_group_points_and_failures_score_zero() -> None:
    grade = grade_of({"test_get.py::test_0": False})
    groups = grade.groups()
    rubric = load()
    for group, (got, top, _, _) in groups.items():
        assert top == rubric.group_points[group]
    assert groups["get"][0] == rubric.group_points["get"] // 2
    assert grade.total == 100_00 - rubric.group_points["get"] // 2
    assert grade.maximum == 100_00


def test_clause_weights_and_visibility(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        '[groups]\nget = 9\nupdate = 1\n[clauses."KV-GET-1"]\nweight = 2\nvisibility = "after_due_date"\n'
        '[group_visibility]\nupdate = "hidden"\n[rubric]\nvisibility = "after_published"\n'
    )
    rubric = load(path)
    checks = [
        Check("a::get2", "get2", ("KV-GET-1", "KV-GET-2"), "get"),
        Check("b::get1", "get1", ("KV-GET-2",), "get"),
        Check("c::upd", "upd", ("KV-UPD-1",), "update"),
        Check("d::adv", "adv", ("KV-ADV-1",), "advance"),
    ]
    shares = max_scores(rubric, checks)
    assert shares == {"a::get2": 675, "b::get1": 225, "c::upd": 100, "d::adv": 0}
    assert [rubric.visibility_of(c) for c in checks] == ["after_due_date", "after_published", "hidden", "after_published"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[groups]\nnot_a_group = 3\n", "unknown group 'not_a_group'"),
        ('[groups]\nget = 3\n[clauses."KV-NOPE-1"]\nweight = 1\n', "unknown clause 'KV-NOPE-1'"),
        ("[groups]\nget = -1\n", "must be a number >= 0"),
        ('[groups]\nget = "ten"\n', "must be a number >= 0"),
        ("[groups]\nget = 0\n", "every group has 0 points"),
        ("[rubric]\nname = 'x'\n", "no [groups] table"),
        ('[groups]\nget = 1\n[rubric]\nvisibility = "secret"\n', "must be one of visible"),
        ("[groups]\nget = 1\n[extra]\nx = 1\n", "unknown key 'extra'"),
        ('[groups]\nget = 1\n[clauses."KV-GET-1"]\nweight = 0\n', "must be a number > 0"),
        ("[groups\nget = 1\n", "not valid TOML"),
    ],
)
def test_bad_rubrics_are_refused_with_a_message(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RubricError, match=None) as info:
        load(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_check_name_is_refused_after_collection() -> None:
    rubric = parse({"groups": {"get": 1}, "checks": {"test_nope": {"visibility": "hidden"}}}, "x.toml")
    with pytest.raises(RubricError, match="unknown check 'test_nope'"):
        rubric.validate_checks(synthetic_checks())


def test_missing_rubric_file() -> None:
    with pytest.raises(RubricError, match="cannot read rubric"):
        load("/nonexistent/rubric.toml")


def test_results_json_is_gradescope_format_and_agrees_with_the_other_reports(tmp_path: Path) -> None:
    nasty = "bad\x00control \x1b[31m chars ``` fence </failure> & ]]>"
    grade = grade_of({"test_get.py::test_0": False, "test_reset.py::test_1": False}, message=nasty)
    written = reports.write_reports(grade, tmp_path)
    assert sorted(p.name for p in written) == ["junit.xml", "report.md", "results.json"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert gradescope_problems(data) == []
    assert data["score"] == grade.total / 100
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    own = suite.find("properties")
    assert own is not None
    props = {p.get("name"): p.get("value") for p in own if p.get("name") in ("score", "max_score")}
    assert props == {"score": fmt(grade.total), "max_score": "100"}
    assert suite.get("failures") == "2" and suite.get("tests") == str(len(data["tests"]))
    md = (tmp_path / "report.md").read_text()
    assert f"**Score: {fmt(grade.total)} / 100**" in md
    assert md.count("### get: ") == 1 and md.count("### reset: ") == 1
    failures = [t for t in data["tests"] if t["status"] == "failed"]
    assert [t["output"] for t in failures] == [nasty, nasty]


def test_gradescope_validator_rejects_what_it_should() -> None:
    good = json.loads(reports.results_json(grade_of({})))
    assert gradescope_problems(good) == []
    for mutate in (
        lambda d: d.pop("score"),
        lambda d: d["tests"][0].update(visibility="public"),
        lambda d: d["tests"][0].update(tags=["KV-GET-1"]),
        lambda d: d["tests"][0].update(tags=["KV-GET-1", "get", "reset"]),
        lambda d: d["tests"][0].update(score=99),
        lambda d: d.update(score=1234),
        lambda d: d["tests"][0].pop("max_score"),
    ):
        bad = json.loads(json.dumps(good))
        mutate(bad)
        assert gradescope_problems(bad), mutate


def test_reports_are_deterministic() -> None:
    a, b = grade_of({"test_get.py::test_0": False}), grade_of({"test_get.py::test_0": False})
    a.execution_time, b.execution_time = 1.0, 99.0
    strip = lambda g: {k: v for k, v in reports.results_dict(g).items() if k != "execution_time"}  # noqa: E731
    assert strip(a) == strip(b)
    assert reports.report_md(a) == reports.report_md(b)


def test_import_failure_gates_the_other_outputs() -> None:
    checks = synthetic_checks()
    result = RunResult([Outcome(c, False, "ImportError: Traceback ... student line 3" if c.group == "import" else "could not be checked", 0) for c in checks])
    tests, _ = score(result, load())
    assert sum(t.score for t in tests) == 0
    imp = next(t for t in tests if t.check.group == "import")
    assert "student line 3" in imp.output
    assert all("could not be loaded" in t.output for t in tests if t.check.group != "import")


def test_out_dir_removes_what_appeared_and_replaces_reports(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "results.json").write_text('{"score": 100}')
    d = reports.OutDir(out, batch=False)
    assert not (out / "results.json").exists()  # an old report never survives a run
    (out / "results.json").mkdir()  # a submission plants a directory where the report goes
    (out / "evil.txt").write_text("forged")
    d.clean()
    reports.write_reports(grade_of({}), out)
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "keep.txt", "report.md", "results.json"]
    assert json.loads((out / "results.json").read_text())["score"] == 100.0


def test_gradebook_and_class_summary() -> None:
    alice = grade_of({"test_get.py::test_0": False, "test_reset.py::test_0": False})
    alice.submission = "alice"
    bob = grade_of({"test_get.py::test_1": False})
    bob.submission, bob.timed_out = "bob", True
    rows = list(csv.reader(io.StringIO(batch.gradebook_csv([alice, bob]))))
    assert rows[0][:5] == ["submission", "path", "status", "total", "max"] and "get" in rows[0] and "reset" in rows[0]
    assert [r[:3] for r in rows[1:]] == [["alice", "/x/alice", "graded"], ["bob", "/x/alice", "timed out"]]
    assert rows[1][3] == fmt(alice.total) and rows[2][3] == fmt(bob.total)
    summary = batch.class_summary_md([alice, bob])
    table = [line for line in summary.splitlines() if line.startswith("| [KV-")]
    assert table[0].startswith("| [KV-GET-1](docs/spec.md#kv-get-1-must) | get | 2 of 2")
    assert table[1].startswith("| [KV-RST-1](docs/spec.md#kv-rst-1-must) | reset | 1 of 2")
    assert all("| 0 of 2 |" in line for line in table[2:])


def _failing(clauses: tuple[str, ...], message: str, group: str = "get") -> Grade:
    checks = [Check("test_x.py::test_multi", "test_multi", clauses, group)]
    tests, _ = score(RunResult([Outcome(checks[0], False, message, 0.1)]), load())
    return Grade("s", "s", "m", "t:T", "quick", 0, "none", "r", tests)


@pytest.mark.parametrize(
    "message, counted",
    [
        ("[KV-GET-1] MUST: get returns the prefix\nExpected: 2\nGot: 3", {"KV-GET-1"}),  # Session.fail: the one clause
        ("[KV-GET-2] MUST: ...", {"KV-GET-2"}),
        ("[KV-GET-1, KV-GET-2, KV-GET-3] your code raised IndexError: ...", {"KV-GET-1", "KV-GET-2", "KV-GET-3"}),
        ("[KV-GET-1, KV-GET-2, KV-GET-3] not graded: the run reached its time limit", set()),
        ("no bracket at all", {"KV-GET-1", "KV-GET-2", "KV-GET-3"}),
    ],
)
def test_class_summary_counts_the_clause_a_check_failed_on(message: str, counted: set[str]) -> None:
    summary = batch.class_summary_md([_failing(("KV-GET-1", "KV-GET-2", "KV-GET-3"), message)])
    rows = {line.split("]")[0][3:]: line.split("|")[3].strip() for line in summary.splitlines() if line.startswith("| [KV-GET-")}
    assert {c for c, n in rows.items() if n == "1 of 1"} == counted


def test_class_summary_lists_import_failures_apart_and_shows_the_distribution() -> None:
    good = grade_of({})
    broken = grade_of({c.nodeid: False for c in synthetic_checks()}, message="[KV-IMP-1] boom")
    broken.submission = "broken"
    assert broken.status == "import failed"
    summary = batch.class_summary_md([good, broken])
    assert "| broken | import failed | [KV-IMP-1] boom |" in summary
    assert "| [KV-GET-1](docs/spec.md#kv-get-1-must) | get | 0 of 1 |" in summary  # the failure counts no clause
    assert "minimum 0, lower quartile 25, median 50, upper quartile 75, maximum 100; full marks: 1 of 2." in summary
    bars = [re.findall(r"[)\]]\s+(\d+)", line)[0] for line in summary.splitlines() if line.startswith("[")]
    assert bars == ["1"] + ["0"] * 8 + ["1"]


def test_quantiles_and_histogram() -> None:
    assert batch.quantiles([5000]) == (5000, 5000, 5000, 5000, 5000)
    assert batch.quantiles([0, 10000, 5000, 2500]) == (0, 1875, 3750, 6250, 10000)
    assert batch.histogram([0, 999, 1000, 9999, 10000], 10000) == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]


def test_clause_anchors_are_the_headings_of_the_spec_document() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "spec.md").read_text()
    headings = {re.sub(r"[^a-z0-9 _-]", "", line[5:].lower()).replace(" ", "-") for line in text.splitlines() if line.startswith("#### ")}
    assert all(batch.anchor(c.id) in headings for c in CLAUSES)


@pytest.mark.parametrize("text, shard", [("1/3", (1, 3)), (" 3 / 3 ", (3, 3)), ("1/1", (1, 1))])
def test_parse_shard(text: str, shard: tuple[int, int]) -> None:
    assert batch.parse_shard(text) == shard


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"])
def test_parse_shard_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--shard"):
        batch.parse_shard(text)


def test_shards_partition_the_class() -> None:
    members = batch.name_members([Path(f"/c/s{i}") for i in range(7)])
    for n in (1, 2, 3, 7, 9):
        parts = [batch.shard_of(members, k, n) for k in range(1, n + 1)]
        assert sorted(i for part in parts for i in part) == list(range(7))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_grades_round_trip_through_grades_json() -> None:
    grade = grade_of({"test_get.py::test_0": False})
    grade.notes, grade.unscored = ["a note"], ["memory"]
    assert batch.grade_from_dict(json.loads(json.dumps(batch.grade_to_dict(grade)))) == grade


def test_batch_names_are_paths_and_unique(tmp_path: Path) -> None:
    paths = [tmp_path / "alice" / "hw5", tmp_path / "bob" / "hw5", tmp_path / "c" / "x y", tmp_path / "C" / "x y"]
    assert [m.name for m in batch.name_members(paths)] == ["alice-hw5", "bob-hw5", "c-x_y", "C-x_y-2"]
    klass = [tmp_path / "class" / name for name in ("alice", "bob")]
    assert [m.name for m in batch.name_members(klass)] == ["alice", "bob"]



@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_reports_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        written = reports.write_reports(grade_of({}), tmp_path)
    finally:
        os.umask(old)
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {oct(mode)}


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from spec.grader import cli

    def interrupted(argv: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    assert cli.main(["--profile", "quick"]) == 130
    assert capsys.readouterr().err == "python -m spec grade: interrupted\n"


# -- visibility: what a student sees respects the rubric -----------------------------------------

SECRET = "SECRET-MESSAGE-42"


def student_sees(directory: Path) -> str:
    """Everything of the reports a student can see before publication: results.json's
    top-level output and its visible tests (Gradescope hides the others), junit.xml and
    report.md; not report-full.md (the staff's)."""
    data = json.loads((directory / "results.json").read_text())
    seen = [data["output"]] if data.get("visibility", "visible") == "visible" else []
    seen += [json.dumps(t) for t in data["tests"] if t["visibility"] == "visible" and data.get("visibility", "visible") == "visible"]
    return "\n".join(seen + [(directory / "junit.xml").read_text(), (directory / "report.md").read_text()])


@pytest.mark.parametrize(
    "rubric, hidden",
    [
        ('[checks.test_get_1]\nvisibility = "hidden"\n', {"test_get_1"}),
        ('[group_visibility]\nreset = "after_due_date"\n', {"test_reset_0", "test_reset_1"}),
        ('[rubric]\nvisibility = "after_published"\n', {c.name for c in synthetic_checks()}),
    ],
    ids=["a check", "a group", "the whole rubric"],
)
def test_hidden_checks_appear_nowhere_a_student_can_see(tmp_path: Path, rubric: str, hidden: set[str]) -> None:
    path = tmp_path / "rubric.toml"
    points = "".join(f"{g} = {p / 100:g}\n" for g, p in load().group_points.items())
    path.write_text(f"[groups]\n{points}{rubric}")
    failing = {c.nodeid: False for c in synthetic_checks() if c.name in hidden or c.name == "test_get_0"}
    grade = grade_of(failing, path)
    grade.tests = [t if t.passed else dataclasses.replace(t, output=f"[{t.check.clauses[0]}] {SECRET}-{t.check.name}") for t in grade.tests]
    assert {t.check.name for t in grade.tests if t.visibility != "visible"} == hidden
    out = tmp_path / "out"
    out.mkdir()
    written = {p.name for p in reports.write_reports(grade, out)}
    assert written == {"results.json", "junit.xml", "report.md", "report-full.md"}
    seen = student_sees(out)
    for name in hidden:
        assert name not in seen and f"{SECRET}-{name}" not in seen, name
    if "test_get_0" not in hidden:  # a visible failing check still shows its message
        assert f"{SECRET}-test_get_0" in seen
    data = json.loads((out / "results.json").read_text())
    assert gradescope_problems(data) == [] and data["score"] == grade.total / 100  # the grade itself is whole
    shown = [t for t in data["tests"] if t["visibility"] == "visible"]
    if shown:  # the summary's points are those of the checks shown, nothing of the others
        assert f": {fmt(sum(round(t['score'] * 100) for t in shown))}/{fmt(sum(round(t['max_score'] * 100) for t in shown))} points" in data["output"]
        assert "are shown when grades are published" in data["output"]
    else:
        assert data["visibility"] == "after_published" and not list(ET.parse(out / "junit.xml").getroot().iter("testcase"))
    full = (out / "report-full.md").read_text()
    assert all(name in full for name in hidden if name in {t.check.name for t in grade.failing()})  # the staff see all


def test_nothing_hidden_writes_the_usual_reports(tmp_path: Path) -> None:
    grade = grade_of({"test_get.py::test_0": False})
    assert reports.student_view(grade) is grade
    assert sorted(p.name for p in reports.write_reports(grade, tmp_path)) == ["junit.xml", "report.md", "results.json"]
    assert "visibility" not in json.loads((tmp_path / "results.json").read_text())


def test_merge_reads_shards_including_an_empty_one(tmp_path: Path) -> None:
    members = batch.name_members([Path(f"/c/{name}") for name in ("ann", "ben", "cat")])
    grades = {}
    for j, m in enumerate(members):
        grades[j] = grade_of({"test_get.py::test_0": j == 1})
        grades[j].submission, grades[j].path = m.name, m.path
    for k in range(1, 5):  # four shards for three submissions: shard 4 is empty
        (tmp_path / f"s{k}").mkdir()
        picked = {j: grades[j] for j in batch.shard_of(members, k, 4)}
        (tmp_path / f"s{k}" / batch.GRADES_FILE).write_text(batch.grades_json(members, picked, (k, 4)))
    got_members, got, sources = batch.read_shards([tmp_path / f"s{k}" for k in (3, 1, 4, 2)])
    assert got_members == members and got == [grades[0], grades[1], grades[2]]
    assert sources == [tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"]
    assert batch.class_summary_md(got) == batch.class_summary_md(list(grades.values()))
    with pytest.raises(batch.MergeError, match="shard 4/4 is missing"):
        batch.read_shards([tmp_path / f"s{k}" for k in (1, 2, 3)])
